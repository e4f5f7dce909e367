"""LoRA / QLoRA fine-tuning of Qwen chat models (Qwen1.5, Qwen2, Qwen2.5, Qwen3; Qwen-7B v1).

Checkpoints: Qwen/Qwen2.5-7B-Instruct, Qwen/Qwen2.5-0.5B-Instruct, Qwen/Qwen3-8B, Qwen/Qwen1.5-7B-Chat
(native in transformers); Qwen/Qwen-7B-Chat (v1, needs --trust_remote_code true).
Tested with transformers 5.23-5.24, peft 0.21, torch 2.13.

Step 1 tokenizes the data with the model's tokenizer (see tokenize.sh), step 2 is this script:

    python tokenize_dataset_rows.py --model_checkpoint Qwen/Qwen2.5-7B-Instruct \
        --input_file data/simple_math_4op.jsonl --save_name simple_math_4op --max_seq_length 512

    # LoRA, one GPU (~17 GB in bf16 for 7B at batch 4 x 512 tokens)
    python qwen_lora_tuning.py --tokenized_dataset simple_math_4op --output_dir weights/simple_math_4op \
        --lora_rank 8 --per_device_train_batch_size 4 --gradient_accumulation_steps 4 \
        --num_train_epochs 3 --learning_rate 2e-4 --bf16 true --logging_steps 10 --save_steps 200

    # QLoRA: a 4-bit base (~7 GB for 7B); add --gradient_checkpointing true for longer rows
    python qwen_lora_tuning.py ... --quantization_bit 4

    # Other methods: adalora, prompt_tuning, prefix_tuning, p_tuning, freeze (last N layers), full
    python qwen_lora_tuning.py ... --finetuning_type freeze --freeze_trainable_layers 4
    # Longer contexts than the model was trained on (linear, dynamic NTK or yarn RoPE scaling)
    python qwen_lora_tuning.py ... --rope_scaling yarn --rope_factor 4

    # Several GPUs, data parallel
    torchrun --nproc_per_node 4 qwen_lora_tuning.py ...

    # Continue an interrupted run from the last checkpoint in --output_dir
    python qwen_lora_tuning.py ... --resume_from_checkpoint true

    # The settings in one YAML/JSON file instead of flags (configs/ has one per tutorial run)
    python qwen_lora_tuning.py configs/qwen_lora.yaml

Offline smoke test on a tiny random Qwen2 (what demo.sh does):
    python -m llm_tuning.testing --arch qwen2 --out models/tiny-qwen2 && sh tokenize.sh && sh train.sh

The base model defaults to the one the dataset was tokenized with (its metadata.json); data made
with a different tokenizer is refused. Every transformers TrainingArguments flag works.
Writes to --output_dir: the adapter (safetensors), the tokenizer, llm_tuning.json (template, base),
trainer_log.jsonl, loss.png and tensorboard logs under runs/.
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

# --- The Qwen family ---------------------------------------------------------------------------
LORA_TARGETS = {
    # Qwen1.5+ and Qwen3 are LLaMA-shaped: separate q/k/v/o projections and a gated MLP.
    "qwen2": LLAMA_PROJECTIONS, "qwen3": LLAMA_PROJECTIONS,
    "qwen2_moe": LLAMA_PROJECTIONS, "qwen3_moe": LLAMA_PROJECTIONS,  # the same names in every expert
    # Qwen-7B v1 (remote code) fuses q/k/v into c_attn; c_proj is both attention output and MLP out.
    "qwen": "c_attn,c_proj,w1,w2",
}


def fix_tokenizer(tokenizer):
    """Qwen-7B v1's tokenizer has no pad token; it pads with <|endoftext|> (its eod_id)."""
    if getattr(tokenizer, "eod_id", None) is not None and tokenizer.pad_token_id is None:
        tokenizer.pad_token_id = tokenizer.eod_id
    return tokenizer


QWEN = Family(
    script=__file__,
    # ChatML: qwen (Qwen1.5/2's default system prompt), qwen2.5 (its own), qwen3 (an empty <think> block)
    templates=frozenset({"qwen", "qwen2.5", "qwen3"}),
    lora_targets=LORA_TARGETS,
    trust_remote_code=False,  # Qwen1.5+ are native; Qwen-7B v1 needs --trust_remote_code true
    padding_side="right",  # training pads on the right; the attention mask hides the padding
    fix_tokenizer=fix_tokenizer,
)


# --- The stages (llm_tuning/finetune.py), in order: change any of them here ------------------------
@exits_on_user_error
def main() -> None:
    model_args, data_args, finetune_args, training_args = parse_args(
        ModelArguments, DataArguments, FinetuneArguments, TrainingArguments)  # flags, or one .yaml/.json file
    start_run(model_args, finetune_args, training_args)  # clashing flags refused before anything loads; seed
    data = load_data(QWEN, data_args, model_args)  # the rows, and the tokenizer + template that made them
    tokenizer = load_family_tokenizer(QWEN, data, model_args, training_args)  # must be the one that made the data
    batching = prepare_batching(data.dataset, tokenizer, data_args, training_args, data.max_seq_length)
    model = load_base_model(QWEN, data, model_args, batching)  # --dtype, 4/8-bit, RoPE scaling
    model = add_trainable_parameters(QWEN, model, tokenizer, finetune_args, batching, training_args)
    run = make_trainer(model, tokenizer, data, batching, data_args, finetune_args, training_args)
    run.trainer.train(resume_from_checkpoint=resume_argument(training_args))
    save(run, QWEN, model_args, finetune_args)  # adapter or model, tokenizer, stop tokens, llm_tuning.json


if __name__ == "__main__":
    main()
    end_run()  # torch.distributed ends after main's trainer is gone
