"""LoRA / QLoRA fine-tuning of Mistral instruct models (native in transformers).

Checkpoints: mistralai/Mistral-7B-Instruct-v0.2 / v0.3 (template mistral), mistralai/Mistral-7B-v0.1
(base; template alpaca).

    python tokenize_dataset_rows.py --model_checkpoint mistralai/Mistral-7B-Instruct-v0.2 \
        --input_file data/simple_math_4op.jsonl --save_name math_mistral
    python mistral_lora_tuning.py --tokenized_dataset math_mistral --output_dir weights/math_mistral \
        --lora_rank 8 --per_device_train_batch_size 4 --gradient_accumulation_steps 4 \
        --num_train_epochs 3 --learning_rate 2e-4 --bf16 true
    python mistral_lora_tuning.py ... --quantization_bit 4        # QLoRA, ~7 GB

Every flag of qwen_lora_tuning.py works here. Prompt: `<s>[INST] {q} [/INST]` + answer + `</s>`, no
system block. Mistral's tokenizer has no pad token: padding uses <unk>.
Verified offline on a tiny native Mistral (tests/test_recipes.py).
"""

from transformers import TrainingArguments

from llm_tuning.finetune import Family, finetune
from llm_tuning.modeling import LLAMA_PROJECTIONS
from llm_tuning.training import DataArguments, FinetuneArguments, ModelArguments, parse_args

# --- The Mistral family -------------------------------------------------------------------------
MISTRAL = Family(
    script="mistral_lora_tuning.py",
    templates=frozenset({"mistral", "alpaca"}),
    lora_targets={"mistral": LLAMA_PROJECTIONS},
    trust_remote_code=False,
    padding_side="right",
)

if __name__ == "__main__":
    finetune(MISTRAL, *parse_args(ModelArguments, DataArguments, FinetuneArguments, TrainingArguments))
