"""LoRA / QLoRA fine-tuning of GLM-4 chat models, native in transformers.

Checkpoints: THUDM/glm-4-9b-chat-hf (model_type glm), THUDM/GLM-4-9B-0414 (glm4): no remote code.
The older THUDM/glm-4-9b-chat (model_type chatglm) needs --trust_remote_code true.

    python tokenize_dataset_rows.py --model_checkpoint THUDM/glm-4-9b-chat-hf \
        --input_file data/simple_math_4op.jsonl --save_name math_glm4
    python glm4_lora_tuning.py --tokenized_dataset math_glm4 --output_dir weights/math_glm4 \
        --lora_rank 8 --per_device_train_batch_size 2 --gradient_accumulation_steps 8 \
        --num_train_epochs 3 --learning_rate 1e-4 --bf16 true --gradient_checkpointing true
    python glm4_lora_tuning.py ... --quantization_bit 4          # QLoRA, ~10 GB for 9B

Every flag of qwen_lora_tuning.py works here. Prompt: `[gMASK]<sop><|user|>\\n…<|assistant|>\\n`;
an answer ends with <|endoftext|>, and chat stops at <|user|> / <|observation|> too.
Verified offline on tiny native glm and glm4 models (tests/test_recipes.py).
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

# --- The GLM-4 family ---------------------------------------------------------------------------
NATIVE = "q_proj,k_proj,v_proj,o_proj,gate_up_proj,down_proj"  # the MLP fuses gate and up
GLM4 = Family(
    script=__file__,
    templates=frozenset({"glm4"}),
    lora_targets={"glm": NATIVE, "glm4": NATIVE,
                  "chatglm": "query_key_value,dense,dense_h_to_4h,dense_4h_to_h"},  # glm-4-9b-chat
    trust_remote_code=False,
    padding_side="right",
)


# --- The stages (llm_tuning/finetune.py), in order: change any of them here ------------------------
@exits_on_user_error
def main() -> None:
    model_args, data_args, finetune_args, training_args = parse_args(
        ModelArguments, DataArguments, FinetuneArguments, TrainingArguments)  # flags, or one .yaml/.json file
    start_run(model_args, finetune_args, training_args)  # clashing flags refused before anything loads; seed
    data = load_data(GLM4, data_args, model_args)  # the rows, and the tokenizer + template that made them
    tokenizer = load_family_tokenizer(GLM4, data, model_args, training_args)  # must be the one that made the data
    batching = prepare_batching(data.dataset, tokenizer, data_args, training_args, data.max_seq_length)
    model = load_base_model(GLM4, data, model_args, batching)  # --dtype, 4/8-bit, RoPE scaling
    model = add_trainable_parameters(GLM4, model, tokenizer, finetune_args, batching, training_args)
    run = make_trainer(model, tokenizer, data, batching, data_args, finetune_args, training_args)
    run.trainer.train(resume_from_checkpoint=resume_argument(training_args))
    save(run, GLM4, model_args, finetune_args)  # adapter or model, tokenizer, stop tokens, llm_tuning.json


if __name__ == "__main__":
    main()
    end_run()  # torch.distributed ends after main's trainer is gone
