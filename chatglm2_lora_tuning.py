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

from llm_tuning.batching import prepare_batching
from llm_tuning.checkpoints import resume_argument
from llm_tuning.cli import exits_on_user_error
from llm_tuning.finetune import (
    Family, add_trainable_parameters, end_run, load_base_model, load_data, load_family_tokenizer, make_trainer, save,
    start_run,
)
from llm_tuning.training import DataArguments, FinetuneArguments, ModelArguments, parse_args

# --- The ChatGLM2 / ChatGLM3 family -------------------------------------------------------------
CHATGLM2 = Family(
    script=__file__,
    templates=frozenset({"chatglm2", "chatglm3"}),
    # Fused q/k/v (query_key_value), attention output (dense) and the MLP's two linears.
    lora_targets={"chatglm": "query_key_value,dense,dense_h_to_4h,dense_4h_to_h"},
    trust_remote_code=True,  # model_type "chatglm" exists only in the checkpoint's own code
    padding_side="left",  # ChatGLM2/3's tokenizer refuses any other padding side
)


# --- The stages (llm_tuning/finetune.py), in order: change any of them here ------------------------
@exits_on_user_error
def main() -> None:
    model_args, data_args, finetune_args, training_args = parse_args(
        ModelArguments, DataArguments, FinetuneArguments, TrainingArguments)  # flags, or one .yaml/.json file
    start_run(model_args, finetune_args, training_args)  # clashing flags refused before anything loads; seed
    data = load_data(CHATGLM2, data_args, model_args)  # the rows, and the tokenizer + template that made them
    tokenizer = load_family_tokenizer(CHATGLM2, data, model_args, training_args)  # must be the one that made the data
    batching = prepare_batching(data.dataset, tokenizer, data_args, training_args, data.max_seq_length)
    model = load_base_model(CHATGLM2, data, model_args, batching)  # --dtype, 4/8-bit, RoPE scaling
    model = add_trainable_parameters(CHATGLM2, model, tokenizer, finetune_args, batching, training_args)
    run = make_trainer(model, tokenizer, data, batching, data_args, finetune_args, training_args)
    run.trainer.train(resume_from_checkpoint=resume_argument(training_args))
    save(run, CHATGLM2, model_args, finetune_args)  # adapter or model, tokenizer, stop tokens, llm_tuning.json


if __name__ == "__main__":
    main()
    end_run()  # torch.distributed ends after main's trainer is gone
