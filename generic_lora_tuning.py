"""LoRA / QLoRA fine-tuning of any causal LM that has no family recipe here.

For Gemma, DeepSeek, Phi, Llama-3.x, Falcon, BLOOM, Aquila, Yi and whatever comes next: the chat
format is the tokenizer's own chat template (`--template auto` picks it whenever the tokenizer has
one), LoRA goes on every linear layer but the output head (`all-linear`), and padding is on the
right. A base model without a chat template (Falcon-7B, BLOOM) trains with `--template alpaca`.

    python -m llm_tuning.info google/gemma-2-2b-it        # which template, a sample with the labels marked
    python tokenize_dataset_rows.py --model_checkpoint google/gemma-2-2b-it \
        --input_file data/simple_math_4op.jsonl --save_name math_gemma
    python generic_lora_tuning.py --tokenized_dataset math_gemma --output_dir weights/math_gemma \
        --lora_rank 8 --per_device_train_batch_size 4 --gradient_accumulation_steps 4 \
        --num_train_epochs 3 --learning_rate 2e-4 --bf16 true
    python generic_lora_tuning.py ... --quantization_bit 4      # QLoRA
    python generic_lora_tuning.py ... --lora_target q_proj,v_proj   # fewer targets (checked to exist)

    # a base model without a chat template
    python tokenize_dataset_rows.py --model_checkpoint tiiuae/falcon-7b --template alpaca \
        --input_file data/simple_math_4op.jsonl --save_name math_falcon
    python generic_lora_tuning.py --tokenized_dataset math_falcon --output_dir weights/math_falcon ...

Every flag of qwen_lora_tuning.py works here; models that ship their own modeling code need
`--trust_remote_code true`. A family with its own recipe (Qwen, LLaMA-2, Mistral, GLM, Baichuan,
InternLM) trains the same way there, with that family's quirks handled.
Verified offline on a tiny random model around the real Llama-3 vocabulary (tests/test_real_tokenizers.py).
"""

from transformers import TrainingArguments

from llm_tuning.batching import prepare_batching
from llm_tuning.checkpoints import resume_argument
from llm_tuning.cli import exits_on_user_error
from llm_tuning.finetune import (
    Family, add_trainable_parameters, end_run, load_base_model, load_data, load_family_tokenizer, make_trainer, save,
    start_run,
)
from llm_tuning.templates import TEMPLATES
from llm_tuning.training import DataArguments, FinetuneArguments, ModelArguments, parse_args

# --- Any model ------------------------------------------------------------------------------------
GENERIC = Family(
    script=__file__,
    templates=frozenset(TEMPLATES),  # the tokenizer's own template, or any registry one asked for
    lora_targets={},  # no per-type list: all-linear (every linear layer but lm_head)
    trust_remote_code=False,  # --trust_remote_code true for models that ship their own code
    padding_side="right",
)


# --- The stages (llm_tuning/finetune.py), in order: change any of them here ------------------------
@exits_on_user_error
def main() -> None:
    model_args, data_args, finetune_args, training_args = parse_args(
        ModelArguments, DataArguments, FinetuneArguments, TrainingArguments)  # flags, or one .yaml/.json file
    start_run(model_args, finetune_args, training_args)  # clashing flags refused before anything loads; seed
    data = load_data(GENERIC, data_args, model_args)  # the rows, and the tokenizer + template that made them
    tokenizer = load_family_tokenizer(GENERIC, data, model_args, training_args)  # must be the one that made the data
    batching = prepare_batching(data.dataset, tokenizer, data_args, training_args, data.max_seq_length)
    model = load_base_model(GENERIC, data, model_args, batching)  # --dtype, 4/8-bit, RoPE scaling
    model = add_trainable_parameters(GENERIC, model, tokenizer, finetune_args, batching, training_args)
    run = make_trainer(model, tokenizer, data, batching, data_args, finetune_args, training_args)
    run.trainer.train(resume_from_checkpoint=resume_argument(training_args))
    save(run, GENERIC, model_args, finetune_args)  # adapter or model, tokenizer, stop tokens, llm_tuning.json


if __name__ == "__main__":
    main()
    end_run()  # torch.distributed ends after main's trainer is gone
