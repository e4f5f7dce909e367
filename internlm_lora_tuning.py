"""LoRA / QLoRA fine-tuning of InternLM chat models (InternLM, InternLM2/2.5, InternLM3).

Checkpoints: internlm/internlm-chat-7b (template internlm: `<|User|>:…<eoh>\\n<|Bot|>:` … `<eoa>`),
internlm/internlm2_5-7b-chat and internlm/internlm2-chat-7b (template internlm2, ChatML with
<s>): remote code, this recipe always passes trust_remote_code. internlm/internlm3-8b-instruct
is LLaMA-shaped.

    python tokenize_dataset_rows.py --model_checkpoint internlm/internlm2_5-7b-chat --trust_remote_code true \
        --template internlm2 --input_file data/simple_math_4op.jsonl --save_name math_internlm2
    python internlm_lora_tuning.py --tokenized_dataset math_internlm2 --output_dir weights/math_internlm2 \
        --lora_rank 8 --per_device_train_batch_size 4 --gradient_accumulation_steps 4 \
        --num_train_epochs 3 --learning_rate 2e-4 --bf16 true
    python internlm_lora_tuning.py ... --quantization_bit 4       # QLoRA, ~7 GB for 7B

Every flag of qwen_lora_tuning.py works here.
Verified offline on tiny native LLaMAs with InternLM's and InternLM2's tokens (tests/test_recipes.py).
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

# --- The InternLM family ------------------------------------------------------------------------
INTERNLM = Family(
    script=__file__,
    templates=frozenset({"internlm", "internlm2"}),
    lora_targets={
        "internlm": LLAMA_PROJECTIONS, "internlm3": LLAMA_PROJECTIONS,
        # InternLM2 renames everything: fused wqkv, output wo, MLP w1 (gate) w3 (up) w2 (down).
        "internlm2": "wqkv,wo,w1,w2,w3",
    },
    trust_remote_code=True,  # internlm / internlm2 exist only in the checkpoints' own code
    padding_side="right",
)


# --- The stages (llm_tuning/finetune.py), in order: change any of them here ------------------------
@exits_on_user_error
def main() -> None:
    model_args, data_args, finetune_args, training_args = parse_args(
        ModelArguments, DataArguments, FinetuneArguments, TrainingArguments)  # flags, or one .yaml/.json file
    start_run(model_args, finetune_args, training_args)  # clashing flags refused before anything loads; seed
    data = load_data(INTERNLM, data_args, model_args)  # the rows, and the tokenizer + template that made them
    tokenizer = load_family_tokenizer(INTERNLM, data, model_args, training_args)  # must be the one that made the data
    batching = prepare_batching(data.dataset, tokenizer, data_args, training_args, data.max_seq_length)
    model = load_base_model(INTERNLM, data, model_args, batching)  # --dtype, 4/8-bit, RoPE scaling
    model = add_trainable_parameters(INTERNLM, model, tokenizer, finetune_args, batching, training_args)
    run = make_trainer(model, tokenizer, data, batching, data_args, finetune_args, training_args)
    run.trainer.train(resume_from_checkpoint=resume_argument(training_args))
    save(run, INTERNLM, model_args, finetune_args)  # adapter or model, tokenizer, stop tokens, llm_tuning.json


if __name__ == "__main__":
    main()
    end_run()  # torch.distributed ends after main's trainer is gone
