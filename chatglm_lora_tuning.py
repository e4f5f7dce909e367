"""LoRA / QLoRA fine-tuning of ChatGLM-6B (the first ChatGLM).

Checkpoint: THUDM/chatglm-6b (remote code: this recipe always passes trust_remote_code). Its
remote code was written for transformers 4.2x; on transformers 5 pin the model revision that
still loads, or use chatglm2_lora_tuning.py / glm4_lora_tuning.py for newer GLMs.

    python tokenize_dataset_rows.py --model_checkpoint THUDM/chatglm-6b --trust_remote_code true \
        --template chatglm --input_file data/simple_math_4op.jsonl --save_name math_chatglm
    python chatglm_lora_tuning.py --tokenized_dataset math_chatglm --output_dir weights/math_chatglm \
        --lora_rank 8 --per_device_train_batch_size 4 --gradient_accumulation_steps 4 \
        --num_train_epochs 3 --learning_rate 2e-4 --fp16 true --logging_steps 10
    python chatglm_lora_tuning.py ... --quantization_bit 4       # QLoRA, ~6 GB GPU memory

Every flag of qwen_lora_tuning.py works here (--finetuning_type, --rope_scaling, all TrainingArguments).
Prompt: `[Round 0]\\n问：…\\n答：[gMASK]<sop>` + answer + `<eop>`; the prompt ends with the two
special tokens ChatGLM-6B's tokenizer appends and its 2-D positions count from (see templates.py).
Verified offline on a tiny native GLM with ChatGLM-6B's special tokens (tests/test_recipes.py).
"""

from transformers import TrainingArguments

from llm_tuning.finetune import Family, finetune
from llm_tuning.training import DataArguments, FinetuneArguments, ModelArguments, parse_args

# --- The ChatGLM-6B family ---------------------------------------------------------------------
CHATGLM = Family(
    script="chatglm_lora_tuning.py",
    templates=frozenset({"chatglm"}),
    # GLM blocks fuse q/k/v into one query_key_value linear; the original recipe trains only it.
    lora_targets={"chatglm": "query_key_value"},
    trust_remote_code=True,  # model_type "chatglm" exists only in the checkpoint's own code
    padding_side="left",  # its tokenizer pads on the left: positions are counted from <sop>
    marker_tokens=("[gMASK]", "<sop>"),  # the template writes them as text; each must be its special token
)

if __name__ == "__main__":
    finetune(CHATGLM, *parse_args(ModelArguments, DataArguments, FinetuneArguments, TrainingArguments))
