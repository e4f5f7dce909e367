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

from llm_tuning.finetune import Family, finetune
from llm_tuning.training import DataArguments, FinetuneArguments, ModelArguments, parse_args

# --- The Baichuan family ------------------------------------------------------------------------
BAICHUAN = Family(
    script="baichuan_lora_tuning.py",
    templates=frozenset({"baichuan", "alpaca"}),
    # Baichuan fuses q/k/v into one W_pack linear; the rest is LLaMA-shaped.
    lora_targets={"baichuan": "W_pack,o_proj,gate_proj,up_proj,down_proj"},
    trust_remote_code=True,  # model_type "baichuan" exists only in the checkpoint's own code
    padding_side="right",
)

if __name__ == "__main__":
    finetune(BAICHUAN, *parse_args(ModelArguments, DataArguments, FinetuneArguments, TrainingArguments))
