#!/usr/bin/env bash
# The offline demo: a tiny random Qwen2 learns a few arithmetic answers with LoRA on this CPU,
# through the same two commands you will run on a real model (sh tokenize.sh, sh train.sh).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup_env.sh

export MODEL=models/tiny-qwen2 SAVE_NAME=demo_math DATASET=demo_math OUTPUT_DIR=weights/demo_math
echo "==> 1/4 building a tiny Qwen2 model and a tokenizer trained on data/"
python -m llm_tuning.testing --arch qwen2 --out "$MODEL"

echo "==> 2/4 sh tokenize.sh (the first 8 rows of data/simple_math_4op.jsonl)"
MAX_SAMPLES=8 sh tokenize.sh

echo "==> 3/4 sh train.sh (LoRA; a tiny random model needs a high learning rate)"
rm -rf "$OUTPUT_DIR"
MAX_STEPS=150 LEARNING_RATE=5e-3 LOGGING_STEPS=25 SAVE_STEPS=1000 sh train.sh --lora_dropout 0

echo "==> 4/4 asking the trained model two of its training questions"
mapfile -t pair < <(python - <<'PY'
import json
rows = [json.loads(line) for line in open("data/simple_math_4op.jsonl", encoding="utf-8")][:8]
for row in (rows[0], rows[2]):
    print(row["q"]); print(row["a"])
PY
)
output=$(python chat.py --adapter "$OUTPUT_DIR" --query "${pair[0]}" --query "${pair[2]}" 2>/dev/null)
echo "$output"
if grep -qxF "Assistant: ${pair[1]}" <<<"$output" && grep -qxF "Assistant: ${pair[3]}" <<<"$output"; then
    echo "==> both answers are the trained answers. Loss curve: $OUTPUT_DIR/loss.png; tensorboard --logdir $OUTPUT_DIR/runs"
else
    echo "==> the answers differ from the training data (expected: ${pair[1]} / ${pair[3]})" >&2
    exit 1
fi
