"""RLHF on preference pairs and verifiable rewards (the library under RLHF/).

pairs          preference pairs: read and validate the record formats, encode with the chat template, render as text
reward_model   load a reward model (adapter or merged) and score replies; pairwise accuracy
ppo            the PPO core: rollouts, policy + value head, KL-shaped rewards, GAE, clipped losses, policy evaluation
margins        log-prob preference margins and DPO's implicit reward margin
pair_training  what the RLHF stages share (arguments, LoRA config, saving, eval_metrics.json) and DPO/ORPO training
pair_batches   DPO/ORPO/reward-model pairs in length-sorted batches of a token budget, exact under accumulation
grpo, rewards  GRPO's questions and measurements; its reward functions (exact answer, format, reward model)
"""
