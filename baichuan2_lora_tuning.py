"""LoRA / QLoRA fine-tuning of Baichuan2 chat models.

Checkpoints: baichuan-inc/Baichuan2-7B-Chat, baichuan-inc/Baichuan2-13B-Chat (remote code, model_type
"baichuan"; this recipe always passes trust_remote_code; their slow SentencePiece tokenizer is the
only one they ship). Written for transformers 4.3x.

    python tokenize_dataset_rows.py --model_checkpoint baichuan-inc/Baichuan2-7B-Chat --trust_remote_code true \
        --template baichuan2 --input_file data/simple_math_4op.jsonl --save_name math_baichuan2
    python baichuan2_lora_tuning.py --tokenized_dataset math_baichuan2 --output_dir weights/math_baichuan2 \
        --lora_rank 8 --per_device_train_batch_size 4 --gradient_accumulation_steps 4 \
        --num_train_epochs 3 --learning_rate 2e-4 --bf16 true
    python baichuan2_lora_tuning.py ... --quantization_bit 4      # QLoRA, ~7 GB for 7B

Every flag of qwen_lora_tuning.py works here. Prompt: `<reserved_106>{question}<reserved_107>`
(ids 195 user / 196 assistant) + answer + </s>. Its lm_head is a NormHead (it normalises the
weight rows), not a Linear: LoRA cannot target it, and a merged model keeps it as it was.
Verified offline on a tiny native LLaMA with Baichuan2's role tokens (tests/test_recipes.py).
"""

from transformers import TrainingArguments

from llm_tuning.batching import prepare_batching
from llm_tuning.checkpoints import resume_argument
from llm_tuning.cli import exits_on_user_error
from llm_tuning.finetune import (
    Family, add_trainable_parameters, end_run, load_base_model, load_data, load_family_tokenizer, make_trainer, save,
    start_run,
)
from llm_tuning.training import DataArguments, FinetuneArguments, ModelArguments, parse_args

# --- The Baichuan2 family -----------------------------------------------------------------------
BAICHUAN2 = Family(
    script=__file__,
    templates=frozenset({"baichuan2"}),
    # Fused q/k/v (W_pack), attention output and the gated MLP.
    lora_targets={"baichuan": "W_pack,o_proj,gate_proj,up_proj,down_proj"},
    trust_remote_code=True,  # model_type "baichuan" exists only in the checkpoint's own code
    padding_side="right",
    marker_tokens=("<reserved_106>", "<reserved_107>"),  # role markers: must be the reserved tokens 195/196
)


# --- The stages (llm_tuning/finetune.py), in order: change any of them here ------------------------
@exits_on_user_error
def main() -> None:
    model_args, data_args, finetune_args, training_args = parse_args(
        ModelArguments, DataArguments, FinetuneArguments, TrainingArguments)  # flags, or one .yaml/.json file
    start_run(model_args, finetune_args, training_args)  # clashing flags refused before anything loads; seed
    data = load_data(BAICHUAN2, data_args, model_args)  # the rows, and the tokenizer + template that made them
    tokenizer = load_family_tokenizer(BAICHUAN2, data, model_args, training_args)  # must be the one that made the data
    batching = prepare_batching(data.dataset, tokenizer, data_args, training_args, data.max_seq_length)
    model = load_base_model(BAICHUAN2, data, model_args, batching)  # --dtype, 4/8-bit, RoPE scaling
    model = add_trainable_parameters(BAICHUAN2, model, tokenizer, finetune_args, batching, training_args)
    run = make_trainer(model, tokenizer, data, batching, data_args, finetune_args, training_args)
    run.trainer.train(resume_from_checkpoint=resume_argument(training_args))
    save(run, BAICHUAN2, model_args, finetune_args)  # adapter or model, tokenizer, stop tokens, llm_tuning.json


if __name__ == "__main__":
    main()
    end_run()  # torch.distributed ends after main's trainer is gone
