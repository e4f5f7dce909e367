"""RLHF on preference pairs and verifiable rewards (the library under RLHF/).

stage          what every stage shares: the model/LoRA/--dtype arguments, the LoRA config, saving, eval_metrics.json
pairs          preference pairs: read and validate the record formats, encode with the chat template, render as text
pair_batches   DPO/ORPO/reward-model pairs in length-sorted batches of a token budget, exact under accumulation
pair_training  DPO and ORPO: a TRL trainer that learns the policy from the text pairs
reward_model   load a reward model (adapter or merged) and score replies; its pairwise accuracy on pairs
rollouts       a policy's replies: sampling, packing, KL to the reference, reward and KL of greedy replies
ppo            the PPO algorithm: policy + value head, token log-probs, KL-shaped rewards, GAE, clipped losses
margins        log-prob preference margins and DPO's implicit reward margin
grpo, rewards  GRPO's questions and measurements; its reward functions (exact answer, format, reward model)
"""
