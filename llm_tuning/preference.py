"""Preference pairs (a prompt, a chosen and a rejected reply): read, validate, encode, score.

Accepted record formats (json list or jsonl), with optional `history` ([[question, answer], ...])
and `system` keys in each:
- `{"prompt": ..., "chosen": ..., "rejected": ...}`             (TRL / Anthropic-HH style)
- `{"prompt": ..., "selected": ..., "rejected": ...}`           (the original tutorial's files)
- `{"instruction": ..., "input": ..., "output": [chosen, rejected]}`  (alpaca-style comparisons;
  the prompt is the instruction, then a newline and the input when the input is not empty)

A record that breaks a rule stops the run with `file:line: what is wrong`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .cli import UserError
from .records import read_records
from .templates import Template, encode_turns

FORMATS_HELP = ("prompt/chosen/rejected, prompt/selected/rejected, "
                "or instruction/input/output with output = [chosen, rejected]")


@dataclass
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str
    history: list[tuple[str, str]] = field(default_factory=list)
    system: str | None = None


def _string(record: dict, key: str, where: str, allow_empty: bool = False) -> str:
    value = record[key]
    if not isinstance(value, str):
        raise UserError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise UserError(f"{where}: {key!r} is empty")
    return value


def _prompt_and_replies(record: dict, where: str) -> tuple[str, str, str]:
    if "instruction" in record and "output" in record:
        output = record["output"]
        if not (isinstance(output, list) and len(output) == 2):
            raise UserError(f"{where}: 'output' must be a list [chosen, rejected] of two strings")
        replies = {"output[0] (chosen)": output[0], "output[1] (rejected)": output[1]}
        chosen, rejected = (_string(replies, key, where) for key in replies)
        prompt = _string(record, "instruction", where)
        extra = _string(record, "input", where, allow_empty=True) if record.get("input") is not None else ""
        return (f"{prompt}\n{extra}" if extra.strip() else prompt), chosen, rejected
    chosen_key = "chosen" if "chosen" in record else "selected"
    missing = [key for key in ("prompt", chosen_key, "rejected") if key not in record]
    if missing:
        found = ", ".join(record) or "no keys"
        raise UserError(f"{where}: no key {missing[0]!r} (found: {found}); expected {FORMATS_HELP}")
    return (_string(record, "prompt", where), _string(record, chosen_key, where),
            _string(record, "rejected", where))


def record_to_pair(record: dict, where: str) -> PreferencePair:
    """Validate one record in any accepted format and return it as a PreferencePair."""
    prompt, chosen, rejected = _prompt_and_replies(record, where)
    if chosen.strip() == rejected.strip():
        raise UserError(f"{where}: the chosen and the rejected reply are the same; a pair must differ")
    history = record.get("history") or []
    if not isinstance(history, list) or not all(
        isinstance(turn, list | tuple) and len(turn) == 2 and all(isinstance(t, str) for t in turn)
        for turn in history
    ):
        raise UserError(f"{where}: 'history' must be a list of [question, answer] string pairs")
    system = record.get("system")
    if system is not None and not isinstance(system, str):
        raise UserError(f"{where}: 'system' must be a string, got {type(system).__name__}")
    return PreferencePair(prompt, chosen, rejected, [tuple(turn) for turn in history], system)


def load_preference_pairs(path: str | Path) -> list[PreferencePair]:
    return [record_to_pair(record, where) for where, record in read_records(path)]


@dataclass
class EncodedPair:
    """Token ids of a pair rendered with a chat template; each reply ends with its stop token."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


def encode_pair(tokenizer, template: Template, pair: PreferencePair) -> EncodedPair:
    """The ids a model trained with `template` sees for this pair: the prompt (with history) and
    each reply, encoded exactly as the SFT data and the chat prompt are."""
    turns = [*pair.history, (pair.prompt, pair.chosen)]
    encoded = encode_turns(tokenizer, template, turns, pair.system)
    prompt_ids = [token for p, a in encoded[:-1] for token in p + a] + encoded[-1][0]
    rejected_ids = encode_turns(tokenizer, template, [*pair.history, (pair.prompt, pair.rejected)],
                                pair.system)[-1][1]
    return EncodedPair(prompt_ids, encoded[-1][1], rejected_ids)


def pairwise_accuracy(chosen_scores: Sequence[float], rejected_scores: Sequence[float]) -> float:
    """Share of pairs whose chosen reply scores strictly higher than its rejected reply."""
    if len(chosen_scores) != len(rejected_scores) or not chosen_scores:
        raise ValueError("need the same, non-zero number of chosen and rejected scores")
    wins = sum(c > r for c, r in zip(chosen_scores, rejected_scores))
    return wins / len(chosen_scores)


# --- What the RLHF scripts share -----------------------------------------------------------------


@dataclass
class PreferenceArguments:
    """The model, the data and the LoRA adapter of a reward-model, DPO or PPO run (`--max_length`
    and `--trust_remote_code` come with the trainer's config)."""

    model_name_or_path: str = field(metadata={"help": "The SFT model (hub id or path): the start and the reference."})
    train_file: str = field(metadata={"help": "Preference pairs (.json/.jsonl) in any accepted format."})
    eval_file: str | None = field(default=None, metadata={"help": "Held-out pairs the figures are measured on."})
    template: str = field(default="auto", metadata={"help": "Chat template; auto: the SFT run's, else from the model type."})
    lora_rank: int = field(default=8)
    lora_alpha: float = field(default=32.0)
    lora_dropout: float = field(default=0.0)
    lora_target: str = field(default="all-linear", metadata={"help": "Comma-separated module names, or all-linear."})


def lora_config(model, args: PreferenceArguments, task_type: str):
    """A LoRA config on checked target modules (peft silently ignores a partly wrong list)."""
    from peft import LoraConfig

    from .modeling import resolve_lora_targets

    return LoraConfig(task_type=task_type, r=args.lora_rank, lora_alpha=args.lora_alpha,
                      lora_dropout=args.lora_dropout, target_modules=resolve_lora_targets(model, args.lora_target))


def encode_pairs(tokenizer, template: Template, pairs: Sequence[PreferencePair],
                 max_length: int | None) -> list[EncodedPair]:
    """Encode every pair; drop (and count) those longer than max_length, refuse if none is left."""
    encoded = [encode_pair(tokenizer, template, pair) for pair in pairs]
    if max_length is None:
        return encoded
    kept = [e for e in encoded if len(e.prompt_ids) + max(len(e.chosen_ids), len(e.rejected_ids)) <= max_length]
    if not kept:
        raise UserError(f"every preference pair is longer than --max_length {max_length}; raise it")
    if len(kept) < len(encoded):
        print(f"dropped {len(encoded) - len(kept)} of {len(encoded)} pairs longer than {max_length} tokens")
    return kept


def parse_trainer_args(*dataclass_types, argv: list[str] | None = None):
    """`training.parse_args`, with the configs' own checks (bf16 without a GPU, …) as UserErrors."""
    from .modeling import first_line
    from .training import parse_args

    try:
        return parse_args(*dataclass_types, argv=argv)
    except ValueError as err:
        raise UserError(first_line(err)) from None


def render_prompt(tokenizer, template: Template, history: Sequence[tuple[str, str]], query: str,
                  system: str | None = None) -> str:
    """The prompt (history, then the query, up to where the reply starts) as text, for trainers
    that tokenize themselves (DPOTrainer, GRPOTrainer): the text of `encode_prompt`'s ids."""
    from .templates import EOS_PLACEHOLDER, NativeTemplate, conversation_messages

    if isinstance(template, NativeTemplate):
        messages = conversation_messages([*history, (query, None)], system)
        return template.render(tokenizer, messages, add_generation_prompt=True)
    rendered = template.render_turns([*history, (query, None)], system)
    prompt = "".join(p + a for p, a in rendered[:-1]).replace(EOS_PLACEHOLDER, tokenizer.eos_token or "")
    prompt += rendered[-1][0]
    if template.add_bos and tokenizer.bos_token and not getattr(tokenizer, "add_bos_token", False):
        prompt = tokenizer.bos_token + prompt
    return prompt


def render_pair(tokenizer, template: Template, pair: PreferencePair) -> dict[str, str]:
    """The pair as text for trainers that tokenize themselves (TRL's DPOTrainer): the prompt with
    its history, and each reply with the template's stop token, as `encode_pair` encodes them."""
    from .templates import EOS_PLACEHOLDER, NativeTemplate

    prompt = render_prompt(tokenizer, template, pair.history, pair.prompt, pair.system)
    reply = (template.end_of_turn(tokenizer) if isinstance(template, NativeTemplate)
             else template.answer_suffix.replace(EOS_PLACEHOLDER, tokenizer.eos_token or ""))
    return {"prompt": prompt, "chosen": pair.chosen + reply, "rejected": pair.rejected + reply}


EVAL_METRICS_FILE = "eval_metrics.json"


def save_eval_metrics(output_dir: str | Path, metrics: dict) -> dict:
    """Write a stage's held-out figures to output_dir/eval_metrics.json (read by RLHF/evaluate.py)."""
    import json

    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / EVAL_METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return metrics


# --- Offline preference training with a TRL trainer (dpo.py, orpo.py) ---------------------------


def train_and_save(trainer, tokenizer, args: PreferenceArguments, template: Template, stage: str,
                   **run_config) -> bool:
    """Train, then save the adapter, the tokenizer and llm_tuning.json (what chat.py --adapter and
    the later stages read) to the trainer's output_dir. False on the processes that are not the main one."""
    from .run_config import save_run_config
    from .atomic import atomic_files

    output_dir = trainer.args.output_dir
    trainer.train()
    # Written aside, then renamed in: a full disk or a kill leaves the previous adapter as it was.
    with atomic_files(output_dir, writer=trainer.is_world_process_zero()) as saving_dir:
        trainer.save_model(str(saving_dir))
        if trainer.is_world_process_zero():
            tokenizer.save_pretrained(saving_dir)
            save_run_config(str(saving_dir), base_model=args.model_name_or_path, template=template.name,
                            train_file=args.train_file, stage=stage, **run_config)
    return trainer.is_world_process_zero()


def check_same_ids(got: list[int], expected: EncodedPair, tokenizer, trainer_name: str) -> None:
    """A TRL trainer that tokenizes the rendered text itself must give the ids the policy is used
    with (prompt + chosen reply, as `encode_pair` encodes them)."""
    want = expected.prompt_ids + expected.chosen_ids
    if got != want:
        raise UserError(
            f"{trainer_name}'s token ids differ from the chat template's: "
            f"{tokenizer.decode(got)!r} vs {tokenizer.decode(want)!r}; check the tokenizer's special tokens"
        )


def train_on_pairs(trainer_class, args: PreferenceArguments, training_args, stage: str, trainer_ids,
                   trainer_kwargs: dict | None = None, run_config: dict | None = None) -> dict | None:
    """Train a LoRA adapter on the SFT model with a TRL trainer that learns from the text pairs
    (DPOTrainer, ORPOTrainer), and measure the held-out margin log π(chosen) - log π(rejected)
    before (adapter off: the SFT model) and after.

    `trainer_ids(row)` gives the prompt + chosen ids of one row of the trainer's tokenized dataset;
    they are checked against `encode_pair`, so the stage trains on exactly the prompt format chat.py
    uses. Saves the adapter, the tokenizer, llm_tuning.json (stage + run_config) and, with an
    --eval_file, eval_metrics.json; returns the metrics (None without held-out pairs)."""
    from datasets import Dataset
    from transformers import set_seed

    from .modeling import load_model, load_tokenizer
    from .ppo import preference_margin
    from .templates import resolve_template
    from .training import TrainerLogCallback, require_output_dir

    require_output_dir(training_args)
    set_seed(training_args.seed)
    tokenizer = load_tokenizer(args.model_name_or_path, training_args.trust_remote_code)
    template = resolve_template(args.template, tokenizer, args.model_name_or_path, training_args.trust_remote_code)
    pairs = load_preference_pairs(args.train_file)
    dataset = Dataset.from_list([render_pair(tokenizer, template, pair) for pair in pairs])
    held_out = (encode_pairs(tokenizer, template, load_preference_pairs(args.eval_file), training_args.max_length)
                if args.eval_file else None)

    # The SFT model; the trainer adds the LoRA adapter (for DPO the model without it is the reference).
    model = load_model(args.model_name_or_path, "float32", training_args.trust_remote_code)
    trainer = trainer_class(model=model, args=training_args, train_dataset=dataset, processing_class=tokenizer,
                            peft_config=lora_config(model, args, "CAUSAL_LM"), callbacks=[TrainerLogCallback()],
                            **(trainer_kwargs or {}))
    check_same_ids(trainer_ids(trainer.train_dataset[0]), encode_pair(tokenizer, template, pairs[0]), tokenizer,
                   trainer_class.__name__)
    print(f"{len(dataset)} pairs; first prompt: {dataset[0]['prompt']!r}")

    before = None
    if held_out:
        with trainer.model.disable_adapter():
            before = preference_margin(trainer.model, held_out, tokenizer.pad_token_id)
    if not train_and_save(trainer, tokenizer, args, template, stage, **(run_config or {})) or held_out is None:
        return None
    trainer.model.eval()
    metrics = {"pairs": len(held_out), "margin_before": before,
               "margin_after": preference_margin(trainer.model, held_out, tokenizer.pad_token_id)}
    save_eval_metrics(training_args.output_dir, metrics)
    print(f"held-out log π(chosen) - log π(rejected): {metrics['margin_before']:.2f} (SFT) -> "
          f"{metrics['margin_after']:.2f} ({stage.upper()}) on {len(held_out)} pairs")
    return metrics
