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

from llm_tuning.batching import prepare_batching
from llm_tuning.checkpoints import resume_argument
from llm_tuning.cli import exits_on_user_error
from llm_tuning.finetune import (
    Family, add_trainable_parameters, end_run, load_base_model, load_data, load_family_tokenizer, make_trainer, save,
    start_run,
)
from llm_tuning.modeling import LLAMA_PROJECTIONS
from llm_tuning.training import DataArguments, FinetuneArguments, ModelArguments, parse_args

# --- The Mistral family -------------------------------------------------------------------------
MISTRAL = Family(
    script=__file__,
    templates=frozenset({"mistral", "alpaca"}),
    lora_targets={"mistral": LLAMA_PROJECTIONS},
    trust_remote_code=False,
    padding_side="right",
)


# --- The stages (llm_tuning/finetune.py), in order: change any of them here ------------------------
@exits_on_user_error
def main() -> None:
    model_args, data_args, finetune_args, training_args = parse_args(
        ModelArguments, DataArguments, FinetuneArguments, TrainingArguments)  # flags, or one .yaml/.json file
    start_run(model_args, finetune_args, training_args)  # clashing flags refused before anything loads; seed
    data = load_data(MISTRAL, data_args, model_args)  # the rows, and the tokenizer + template that made them
    tokenizer = load_family_tokenizer(MISTRAL, data, model_args, training_args)  # must be the one that made the data
    batching = prepare_batching(data.dataset, tokenizer, data_args, training_args, data.max_seq_length)
    model = load_base_model(MISTRAL, data, model_args, batching)  # --dtype, 4/8-bit, RoPE scaling
    model = add_trainable_parameters(MISTRAL, model, tokenizer, finetune_args, batching, training_args)
    run = make_trainer(model, tokenizer, data, batching, data_args, finetune_args, training_args)
    run.trainer.train(resume_from_checkpoint=resume_argument(training_args))
    save(run, MISTRAL, model_args, finetune_args)  # adapter or model, tokenizer, stop tokens, llm_tuning.json


if __name__ == "__main__":
    main()
    end_run()  # torch.distributed ends after main's trainer is gone
