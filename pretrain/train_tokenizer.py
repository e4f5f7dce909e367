"""Train a sentencepiece model on the pretraining corpus (step 1 of a vocabulary extension).

    python pretrain/train_tokenizer.py --corpus_dir data/tokenized_data/pretrain_corpus --vocab_size 20000 \
        --output_dir weights/zh_sp

Reads every training text of a corpus written by compress_data.py (or plain jsonl files with
`--inputs`) and writes `<output_dir>/tokenizer.model`, a BPE sentencepiece model (`--model_type
unigram` also works), the piece set merge_tokenizer.py adds to a base tokenizer.
Chinese-LLaMA trained 20k pieces on Chinese text for LLaMA's 32k; `--character_coverage 0.9995`
keeps rare characters out (they fall back to the base tokenizer's bytes). Prints the number of
pieces and a few of the longest.
"""

import argparse
import itertools
from pathlib import Path

from llm_tuning.cli import ArgumentParser, UserError, exits_on_user_error
from llm_tuning.pretrain.shards import iter_corpus, read_texts
from llm_tuning.pretrain.vocab import sentencepiece_pieces, train_sentencepiece


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--corpus_dir", help="a corpus written by compress_data.py")
    source.add_argument("--inputs", nargs="+", help="jsonl files with one text per line")
    parser.add_argument("--text_key", default="text", help="with --inputs: the key holding the text")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--vocab_size", type=int, default=20000)
    parser.add_argument("--model_type", choices=["bpe", "unigram"], default="bpe")
    parser.add_argument("--character_coverage", type=float, default=0.9995)
    parser.add_argument("--max_texts", type=int, default=None, help="train on at most this many texts")
    return parser.parse_args(argv)


@exits_on_user_error
def main(args: argparse.Namespace) -> None:
    if args.corpus_dir:
        texts = iter_corpus(args.corpus_dir)
    else:
        texts = itertools.chain.from_iterable(read_texts(path, args.text_key) for path in args.inputs)
    model = train_sentencepiece(itertools.islice(texts, args.max_texts), args.vocab_size, args.model_type,
                                args.character_coverage)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "tokenizer.model.tmp"
    tmp.write_bytes(model)
    tmp.replace(out / "tokenizer.model")
    pieces = sentencepiece_pieces(model)
    if not pieces:
        raise UserError("the trained model has no pieces; give it more text")
    longest = sorted(pieces, key=len, reverse=True)[:10]
    print(f"trained {len(pieces)} pieces; the longest: {' '.join(longest)}")
    print(f"wrote {out / 'tokenizer.model'}")


if __name__ == "__main__":
    main(parse_args())
