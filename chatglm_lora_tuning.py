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

from llm_tuning.batching import prepare_batching
from llm_tuning.checkpoints import resume_argument
from llm_tuning.cli import exits_on_user_error
from llm_tuning.finetune import (
    Family, add_trainable_parameters, end_run, load_base_model, load_data, load_family_tokenizer, make_trainer, save,
    start_run,
)
from llm_tuning.training import DataArguments, FinetuneArguments, ModelArguments, parse_args

# --- The ChatGLM-6B family ---------------------------------------------------------------------
CHATGLM = Family(
    script=__file__,
    templates=frozenset({"chatglm"}),
    # GLM blocks fuse q/k/v into one query_key_value linear; the original recipe trains only it.
    lora_targets={"chatglm": "query_key_value"},
    trust_remote_code=True,  # model_type "chatglm" exists only in the checkpoint's own code
    padding_side="left",  # its tokenizer pads on the left: positions are counted from <sop>
    marker_tokens=("[gMASK]", "<sop>"),  # the template writes them as text; each must be its special token
)


# --- The stages (llm_tuning/finetune.py), in order: change any of them here ------------------------
@exits_on_user_error
def main() -> None:
    model_args, data_args, finetune_args, training_args = parse_args(
        ModelArguments, DataArguments, FinetuneArguments, TrainingArguments)  # flags, or one .yaml/.json file
    start_run(model_args, finetune_args, training_args)  # clashing flags refused before anything loads; seed
    data = load_data(CHATGLM, data_args, model_args)  # the rows, and the tokenizer + template that made them
    tokenizer = load_family_tokenizer(CHATGLM, data, model_args, training_args)  # must be the one that made the data
    batching = prepare_batching(data.dataset, tokenizer, data_args, training_args, data.max_seq_length)
    model = load_base_model(CHATGLM, data, model_args, batching)  # --dtype, 4/8-bit, RoPE scaling
    model = add_trainable_parameters(CHATGLM, model, tokenizer, finetune_args, batching, training_args)
    run = make_trainer(model, tokenizer, data, batching, data_args, finetune_args, training_args)
    run.trainer.train(resume_from_checkpoint=resume_argument(training_args))
    save(run, CHATGLM, model_args, finetune_args)  # adapter or model, tokenizer, stop tokens, llm_tuning.json


if __name__ == "__main__":
    main()
    end_run()  # torch.distributed ends after main's trainer is gone
