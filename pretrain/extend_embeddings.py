"""Give a base model rows for the new tokens of a merged tokenizer (mean of their old sub-tokens).

    python pretrain/extend_embeddings.py --base_model meta-llama/Llama-2-7b-hf \
        --tokenizer weights/llama2_zh_tokenizer --output_dir weights/llama2_zh_base

Resizes the input embeddings and the output projection to the merged tokenizer's size and sets
each new token's row to the mean of the rows of the tokens the OLD tokenizer splits its text
into: "北京" starts where the model already put "北" and "京" on average, so continued
pretraining starts from a sensible loss instead of random rows. Old rows are copied unchanged.
The merged tokenizer must keep every old id (merge_tokenizer.py guarantees it); otherwise this
stops and says which token moved.

Writes a full model (safetensors) and the merged tokenizer to --output_dir, plus
vocab_extension.json (old/new sizes); continue_pretraining.py sees that file and, under LoRA,
trains and saves the embeddings in full (`modules_to_save`), since new rows cannot be learned
through a low-rank update of other layers.
"""

import argparse
import json

from llm_tuning.atomic import atomic_directory
from llm_tuning.cli import ArgumentParser, exits_on_user_error, parse_bool
from llm_tuning.modeling import load_model, load_tokenizer
from llm_tuning.pretrain.vocab import VOCAB_EXTENSION_FILE, mean_init_new_embeddings


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base_model", required=True, help="hub id or folder of the base model")
    parser.add_argument("--tokenizer", required=True, help="the merged tokenizer from merge_tokenizer.py")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    parser.add_argument("--trust_remote_code", type=parse_bool, default=False,
                        help="true/false: run the model's own code (Baichuan, ChatGLM, ...)")
    return parser.parse_args(argv)


@exits_on_user_error
def main(args: argparse.Namespace) -> None:
    old = load_tokenizer(args.base_model, args.trust_remote_code)
    new = load_tokenizer(args.tokenizer, args.trust_remote_code)
    model = load_model(args.base_model, args.dtype, args.trust_remote_code)
    old_rows = model.get_input_embeddings().weight.shape[0]
    new_ids = mean_init_new_embeddings(model, old, new)

    with atomic_directory(args.output_dir) as tmp:
        model.save_pretrained(tmp)
        new.save_pretrained(tmp)
        record = {"base_model": args.base_model, "tokenizer": args.tokenizer, "old_vocab_size": len(old),
                  "new_vocab_size": len(new), "embedding_rows": {"old": old_rows,
                                                                 "new": model.get_input_embeddings().weight.shape[0]}}
        (tmp / VOCAB_EXTENSION_FILE).write_text(json.dumps(record, ensure_ascii=False, indent=2) + "\n",
                                                encoding="utf-8")
    print(f"initialised {len(new_ids)} new token rows (ids {new_ids[0] if new_ids else '-'}…); "
          f"embedding rows {old_rows} -> {record['embedding_rows']['new']}")
    print(f"wrote {args.output_dir}")


if __name__ == "__main__":
    main(parse_args())
