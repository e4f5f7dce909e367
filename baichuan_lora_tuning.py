"""LoRA / QLoRA fine-tuning of Baichuan-7B / Baichuan-13B base models.

Checkpoints: baichuan-inc/Baichuan-7B, baichuan-inc/Baichuan-13B-Base (remote code, model_type
"baichuan"; this recipe always passes trust_remote_code). They are base models with no chat
format, so the `baichuan` template is a plain `问：…\\n答：` prompt. For Baichuan2 use
baichuan2_lora_tuning.py.

    python tokenize_dataset_rows.py --model_checkpoint baichuan-inc/Baichuan-7B --trust_remote_code true \
        --template baichuan --input_file data/simple_math_4op.jsonl --save_name math_baichuan
    python baichuan_lora_tuning.py --tokenized_dataset math_baichuan --output_dir weights/math_baichuan \
        --lora_rank 8 --per_device_train_batch_size 4 --gradient_accumulation_steps 4 \
        --num_train_epochs 3 --learning_rate 2e-4 --bf16 true
    python baichuan_lora_tuning.py ... --quantization_bit 4       # QLoRA, ~7 GB for 7B

Every flag of qwen_lora_tuning.py works here. Its tokenizer has no pad token: padding uses <unk>.
Verified offline on a tiny native LLaMA with Baichuan's tokens (tests/test_recipes.py); a
LLaMA-format conversion of Baichuan (q_proj/k_proj/v_proj) trains with all-linear targets.
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

# --- The Baichuan family ------------------------------------------------------------------------
BAICHUAN = Family(
    script=__file__,
    templates=frozenset({"baichuan", "alpaca"}),
    # Baichuan fuses q/k/v into one W_pack linear; the rest is LLaMA-shaped.
    lora_targets={"baichuan": "W_pack,o_proj,gate_proj,up_proj,down_proj"},
    trust_remote_code=True,  # model_type "baichuan" exists only in the checkpoint's own code
    padding_side="right",
)


# --- The stages (llm_tuning/finetune.py), in order: change any of them here ------------------------
@exits_on_user_error
def main() -> None:
    model_args, data_args, finetune_args, training_args = parse_args(
        ModelArguments, DataArguments, FinetuneArguments, TrainingArguments)  # flags, or one .yaml/.json file
    start_run(model_args, finetune_args, training_args)  # clashing flags refused before anything loads; seed
    data = load_data(BAICHUAN, data_args, model_args)  # the rows, and the tokenizer + template that made them
    tokenizer = load_family_tokenizer(BAICHUAN, data, model_args, training_args)  # must be the one that made the data
    batching = prepare_batching(data.dataset, tokenizer, data_args, training_args, data.max_seq_length)
    model = load_base_model(BAICHUAN, data, model_args, batching)  # --dtype, 4/8-bit, RoPE scaling
    model = add_trainable_parameters(BAICHUAN, model, tokenizer, finetune_args, batching, training_args)
    run = make_trainer(model, tokenizer, data, batching, data_args, finetune_args, training_args)
    run.trainer.train(resume_from_checkpoint=resume_argument(training_args))
    save(run, BAICHUAN, model_args, finetune_args)  # adapter or model, tokenizer, stop tokens, llm_tuning.json


if __name__ == "__main__":
    main()
    end_run()  # torch.distributed ends after main's trainer is gone
