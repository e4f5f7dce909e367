"""LoRA / QLoRA fine-tuning of ChatGLM2-6B and ChatGLM3-6B.

Checkpoints: THUDM/chatglm2-6b (template chatglm2), THUDM/chatglm3-6b (template chatglm3, role
tokens <|user|>/<|assistant|>). Both are remote code (model_type "chatglm"); this recipe always
passes trust_remote_code. Their tokenizers were written for transformers 4.3x.

    python tokenize_dataset_rows.py --model_checkpoint THUDM/chatglm3-6b --trust_remote_code true \
        --template chatglm3 --input_file data/multi_turn_sample.jsonl --history_key history \
        --save_name chat_glm3
    python chatglm2_lora_tuning.py --tokenized_dataset chat_glm3 --output_dir weights/chat_glm3 \
        --lora_rank 8 --per_device_train_batch_size 4 --gradient_accumulation_steps 4 \
        --num_train_epochs 3 --learning_rate 2e-4 --bf16 true --logging_steps 10
    python chatglm2_lora_tuning.py ... --quantization_bit 4      # QLoRA, ~6 GB GPU memory

Every flag of qwen_lora_tuning.py works here. Prompts start with [gMASK]sop; ChatGLM2 writes
`[Round 1]\\n\\n问：…\\n\\n答：`, ChatGLM3 `<|user|>\\n …<|assistant|>\\n `; answers end with </s>.
Verified offline on a tiny native GLM with ChatGLM2/3's special tokens (tests/test_recipes.py).
"""

from transformers import TrainingArguments

from llm_tuning.finetune import Family, finetune
from llm_tuning.training import DataArguments, FinetuneArguments, ModelArguments, parse_args

# --- The ChatGLM2 / ChatGLM3 family -------------------------------------------------------------
CHATGLM2 = Family(
    script="chatglm2_lora_tuning.py",
    templates=frozenset({"chatglm2", "chatglm3"}),
    # Fused q/k/v (query_key_value), attention output (dense) and the MLP's two linears.
    lora_targets={"chatglm": "query_key_value,dense,dense_h_to_4h,dense_4h_to_h"},
    trust_remote_code=True,  # model_type "chatglm" exists only in the checkpoint's own code
    padding_side="left",  # ChatGLM2/3's tokenizer refuses any other padding side
)

if __name__ == "__main__":
    finetune(CHATGLM2, *parse_args(ModelArguments, DataArguments, FinetuneArguments, TrainingArguments))
