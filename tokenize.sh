#!/bin/sh
# Step 1 of 2: tokenize the instruction data once and save it under data/tokenized_data/$SAVE_NAME.
# Every setting is an environment variable; the defaults run the offline tiny model. For a real one:
#   MODEL=Qwen/Qwen2.5-7B-Instruct sh tokenize.sh
set -e
MODEL=${MODEL:-models/tiny-qwen2}                 # hub id or local path; its tokenizer is used
INPUT_FILE=${INPUT_FILE:-data/simple_math_4op.jsonl}
FORMAT=${FORMAT:-qa}                              # qa | alpaca | messages | sharegpt | auto
PROMPT_KEY=${PROMPT_KEY:-q}
TARGET_KEY=${TARGET_KEY:-a}
SAVE_NAME=${SAVE_NAME:-simple_math_4op}
MAX_SEQ_LENGTH=${MAX_SEQ_LENGTH:-512}
SKIP_OVERLENGTH=${SKIP_OVERLENGTH:-false}         # false: truncate long rows; true: drop them
TEMPLATE=${TEMPLATE:-auto}                        # auto: the tokenizer's own chat template, else the model type's
NUM_PROC=${NUM_PROC:-}                            # tokenizer processes (empty: one per core for big files)

if [ "$MODEL" = models/tiny-qwen2 ] && [ ! -d "$MODEL" ]; then
    echo "error: $MODEL does not exist; build the offline demo model first:" \
         "python -m llm_tuning.testing --arch qwen2 --out $MODEL (or set MODEL to your model)" >&2
    exit 2
fi

python tokenize_dataset_rows.py \
    --model_checkpoint "$MODEL" \
    --input_file "$INPUT_FILE" \
    --format "$FORMAT" \
    --prompt_key "$PROMPT_KEY" \
    --target_key "$TARGET_KEY" \
    --save_name "$SAVE_NAME" \
    --max_seq_length "$MAX_SEQ_LENGTH" \
    --skip_overlength "$SKIP_OVERLENGTH" \
    --template "$TEMPLATE" \
    ${NUM_PROC:+--num_proc "$NUM_PROC"} \
    ${HISTORY_KEY:+--history_key "$HISTORY_KEY"} \
    ${MAX_SAMPLES:+--max_samples "$MAX_SAMPLES"} \
    "$@"
