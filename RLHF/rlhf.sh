#!/bin/sh
# The RLHF tutorial end to end: SFT -> reward model -> PPO -> DPO -> ORPO -> GRPO, then a table of figures on
# held-out prompts. Offline by default (a tiny random Qwen2, minutes on 2 CPU cores); for a real
# model set MODEL and the learning rates, e.g.
#   MODEL=Qwen/Qwen2.5-7B-Instruct SFT_TYPE=lora SFT_LR=2e-4 RM_LR=2e-5 PPO_LR=1e-5 DPO_LR=5e-6 \
#       ORPO_LR=8e-6 GRPO_LR=1e-5 EXTRA="--bf16 true" sh RLHF/rlhf.sh
# The scripts' own defaults are for real models; the tiny model's settings are the values below.
set -e
cd "$(dirname "$0")/.."
MODEL=${MODEL:-models/tiny-qwen2}          # the base chat model (hub id or path)
RECIPE=${RECIPE:-qwen_lora_tuning.py}      # the SFT recipe of its family
OUT=${OUT:-weights/rlhf}                   # every stage writes under here (removed first)
# A tiny random model needs full fine-tuning to form real preferences (LoRA alone cannot sharpen
# its frozen lm_head); a pretrained model uses lora, merged into the SFT model below.
SFT_TYPE=${SFT_TYPE:-full}
SFT_STEPS=${SFT_STEPS:-300}; SFT_LR=${SFT_LR:-2e-3}
RM_STEPS=${RM_STEPS:-100};   RM_LR=${RM_LR:-3e-3}
PPO_ITERATIONS=${PPO_ITERATIONS:-20}; PPO_LR=${PPO_LR:-1e-3}; KL_COEF=${KL_COEF:-0.2}
DPO_STEPS=${DPO_STEPS:-60};  DPO_LR=${DPO_LR:-2e-3}; DPO_LOSS=${DPO_LOSS:-sigmoid}   # or ipo, hinge, ...
ORPO_STEPS=${ORPO_STEPS:-60}; ORPO_LR=${ORPO_LR:-2e-3}; ORPO_BETA=${ORPO_BETA:-0.5}     # β = ORPO's λ
GRPO_STEPS=${GRPO_STEPS:-30}; GRPO_LR=${GRPO_LR:-5e-3}; GRPO_BETA=${GRPO_BETA:-0.0}   # β: KL to SFT (0: none)
EXTRA=${EXTRA:---bf16 false}               # flags for every trainer (TRL defaults to bf16)
# The tiny model writes short replies: PPO rolls out 32 prompts (16 a step) with 24 new tokens, GRPO
# samples 16 tokens at temperature 0.7 for 8 prompts x 8 replies a step; another MODEL gets the
# scripts' defaults (256 new tokens, 64 prompts a rollout; TRL's GRPO settings).
TINY_PPO= TINY_GRPO= TINY_EVAL=
if [ "$MODEL" = models/tiny-qwen2 ]; then
    TINY_PPO="--batch_size 32 --mini_batch_size 16 --max_new_tokens 24"
    TINY_GRPO="--per_device_train_batch_size 64 --max_completion_length 16 --temperature 0.7"
    TINY_GRPO="$TINY_GRPO --gradient_checkpointing false --logging_steps 5"
    TINY_EVAL="--max_new_tokens 24"
fi
SEED=${SEED:-0}                            # every stage's seed (initialisation, batch order, sampling)
DATA=RLHF/data

if [ "$MODEL" = models/tiny-qwen2 ] && [ ! -f "$MODEL/config.json" ]; then
    echo "==> 0/7 building the tiny offline Qwen2 model"
    python -m llm_tuning.testing --arch qwen2 --out "$MODEL"
fi
rm -rf "$OUT"

echo "==> 1/7 the data: lively (chosen) vs flat (rejected) replies, train and held-out prompts"
python RLHF/make_rlhf_data.py

echo "==> 2/7 SFT with the ordinary two-step workflow ($SFT_TYPE)"
python tokenize_dataset_rows.py --model_checkpoint "$MODEL" --input_file $DATA/sft.jsonl \
    --save_name rlhf_sft --max_seq_length 256
SFT_OUT=$OUT/sft
[ "$SFT_TYPE" = full ] || SFT_OUT=$OUT/sft-adapter
python "$RECIPE" --tokenized_dataset rlhf_sft --output_dir "$SFT_OUT" --finetuning_type "$SFT_TYPE" \
    --max_steps "$SFT_STEPS" --learning_rate "$SFT_LR" --lora_dropout 0 --per_device_train_batch_size 8 \
    --logging_steps 50 --save_strategy no --report_to none --seed "$SEED"
[ "$SFT_TYPE" = full ] || python merge_lora.py --adapter "$SFT_OUT" --output "$OUT/sft"

echo "==> 3/7 reward model (LoRA + score head, TRL RewardTrainer)"
python RLHF/reward_model.py --model_name_or_path "$OUT/sft" --train_file $DATA/preference_train.jsonl \
    --eval_file $DATA/preference_eval.jsonl --output_dir "$OUT/reward_model" --max_steps "$RM_STEPS" \
    --learning_rate "$RM_LR" --per_device_train_batch_size 16 --logging_steps 25 --save_strategy no \
    --report_to none --seed "$SEED" $EXTRA

echo "==> 4/7 PPO (LoRA policy, reference = adapter off, value head on the same model)"
python RLHF/ppo.py --model_name_or_path "$OUT/sft" --reward_model "$OUT/reward_model" \
    --train_file $DATA/preference_train.jsonl --eval_file $DATA/preference_eval.jsonl \
    --output_dir "$OUT/ppo" --num_iterations "$PPO_ITERATIONS" --learning_rate "$PPO_LR" --kl_coef "$KL_COEF" \
    --seed "$SEED" $TINY_PPO

echo "==> 5/7 DPO (LoRA, reference = adapter off, TRL DPOTrainer, loss $DPO_LOSS)"
python RLHF/dpo.py --model_name_or_path "$OUT/sft" --train_file $DATA/preference_train.jsonl \
    --eval_file $DATA/preference_eval.jsonl --output_dir "$OUT/dpo" --max_steps "$DPO_STEPS" \
    --learning_rate "$DPO_LR" --beta 0.1 --loss_type "$DPO_LOSS" --per_device_train_batch_size 16 \
    --logging_steps 20 --save_strategy no --report_to none --seed "$SEED" $EXTRA

echo "==> 6/7 ORPO (LoRA, no reference model: NLL + odds-ratio loss, TRL experimental ORPOTrainer)"
python RLHF/orpo.py --model_name_or_path "$OUT/sft" --train_file $DATA/preference_train.jsonl \
    --eval_file $DATA/preference_eval.jsonl --output_dir "$OUT/orpo" --max_steps "$ORPO_STEPS" \
    --learning_rate "$ORPO_LR" --beta "$ORPO_BETA" --per_device_train_batch_size 16 \
    --logging_steps 20 --save_strategy no --report_to none --seed "$SEED" $EXTRA

echo "==> 6b/7 GRPO (LoRA, exact-answer reward on arithmetic, TRL GRPOTrainer, no value model)"
python RLHF/grpo.py --model_name_or_path "$OUT/sft" --train_file $DATA/grpo_math.jsonl \
    --output_dir "$OUT/grpo" --reward_funcs exact_answer \
    --max_steps "$GRPO_STEPS" --learning_rate "$GRPO_LR" --beta "$GRPO_BETA" --save_strategy no --report_to none \
    --seed "$SEED" \
    $TINY_GRPO $EXTRA

echo "==> 7/7 the figures, on held-out prompts"
python RLHF/evaluate.py --sft "$OUT/sft" --reward_model "$OUT/reward_model" \
    --eval_file $DATA/preference_eval.jsonl --policy PPO="$OUT/ppo" --policy DPO="$OUT/dpo" \
    --policy ORPO="$OUT/orpo" --policy GRPO="$OUT/grpo" $TINY_EVAL
cat "$OUT/grpo/eval_table.txt"
echo "chat with a policy: python chat.py --base $OUT/sft --adapter $OUT/ppo"
