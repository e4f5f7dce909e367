#!/bin/sh
# Step 2 of 2: LoRA-tune from the tokenized data. The base model is the one the data was tokenized
# with. Every setting is an environment variable; extra arguments go to the recipe as they are:
#   RECIPE=qwen_lora_tuning.py DATASET=simple_math_4op sh train.sh --bf16 true
#   QUANTIZATION_BIT=4 sh train.sh                     # QLoRA
#   NPROC=4 sh train.sh                                # data parallel over 4 GPUs (torchrun)
set -e
RECIPE=${RECIPE:-qwen_lora_tuning.py}
DATASET=${DATASET:-simple_math_4op}               # name under data/tokenized_data/
OUTPUT_DIR=${OUTPUT_DIR:-weights/$DATASET}
LORA_RANK=${LORA_RANK:-8}
BATCH_SIZE=${BATCH_SIZE:-8}                       # per device; lower it if you run out of memory
GRAD_ACCUM=${GRAD_ACCUM:-1}                       # raise it to keep the effective batch when you lower BATCH_SIZE
LEARNING_RATE=${LEARNING_RATE:-2e-4}
EPOCHS=${EPOCHS:-3}
MAX_STEPS=${MAX_STEPS:--1}                        # > 0 overrides EPOCHS
LOGGING_STEPS=${LOGGING_STEPS:-10}
SAVE_STEPS=${SAVE_STEPS:-200}
REPORT_TO=${REPORT_TO:-tensorboard}
NPROC=${NPROC:-1}

if [ "$NPROC" -gt 1 ]; then
    LAUNCH="torchrun --nproc_per_node $NPROC"
else
    LAUNCH="python"
fi

$LAUNCH "$RECIPE" \
    --tokenized_dataset "$DATASET" \
    --output_dir "$OUTPUT_DIR" \
    --lora_rank "$LORA_RANK" \
    --per_device_train_batch_size "$BATCH_SIZE" \
    --gradient_accumulation_steps "$GRAD_ACCUM" \
    --learning_rate "$LEARNING_RATE" \
    --num_train_epochs "$EPOCHS" \
    --max_steps "$MAX_STEPS" \
    --logging_steps "$LOGGING_STEPS" \
    --save_steps "$SAVE_STEPS" \
    --save_total_limit 2 \
    --report_to "$REPORT_TO" \
    ${QUANTIZATION_BIT:+--quantization_bit "$QUANTIZATION_BIT"} \
    "$@"
