"""Loading a trained model for inference: base + adapters + chat template + remote code.

chat.py, web_demo.py, api_server.py, eval.py, RLHF/evaluate.py and llm_tuning.experiment all
load through here, so they agree on what an adapter directory means: its `llm_tuning.json` names
the base model, the chat template, trust_remote_code and the RoPE scaling it was trained with
(read by `llm_tuning.run_config.run_settings`, as merging does); a flag given on the command line
wins over the record.
"""

from __future__ import annotations

import argparse

from .cli import UserError, parse_bool
from .modeling import adapter_base_model, load_adapters, load_model, load_tokenizer
from .run_config import RunSettings, run_settings
from .templates import NativeTemplate, Template, resolve_template


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that pick the model to talk to; chat.py, web_demo.py, api_server.py and eval.py share them."""
    parser.add_argument("--base", default=None, help="base or merged model (default: the adapter's base)")
    parser.add_argument("--adapter", action="append", default=[], help="LoRA adapter directory; repeat for several")
    parser.add_argument("--adapter_weights", default=None, help="comma-separated weights to mix several adapters")
    parser.add_argument("--template", default=None,
                        help="chat template (default: the adapter's, else the tokenizer's own, else the model type's)")
    parser.add_argument("--enable_thinking", type=parse_bool, default=False,
                        help="native templates of reasoning models (Qwen3): let the model think before answering")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--trust_remote_code", type=parse_bool, default=None,
                        help="run the model's own code (default: as the adapter was trained, else false)")
    parser.add_argument("--rope_scaling", default=None, choices=("linear", "dynamic", "yarn"),
                        help="stretch RoPE for longer inputs (default: as the adapter was trained)")
    parser.add_argument("--rope_factor", type=float, default=None, help="context extension factor for --rope_scaling")


def model_source(args: argparse.Namespace) -> tuple[str, str]:
    """(base model, directory holding the run config and tokenizer)."""
    base = args.base or (adapter_base_model(args.adapter[0]) if args.adapter else None)
    if base is None:
        raise UserError("pass --base (a model) or --adapter (a trained adapter)")
    return base, args.adapter[0] if args.adapter else base


def settings_for(args: argparse.Namespace, run_dir: str) -> RunSettings:
    """The run settings of `run_dir`, the --trust_remote_code/--rope_scaling/--rope_factor flags winning."""
    return run_settings(run_dir, trust_remote_code=getattr(args, "trust_remote_code", None),
                        rope_scaling=getattr(args, "rope_scaling", None),
                        rope_factor=getattr(args, "rope_factor", None))


def trust_remote_code_for(args: argparse.Namespace) -> bool:
    """Whether the model of these arguments runs its own code (for engines that load it themselves)."""
    return settings_for(args, model_source(args)[1]).trust_remote_code


def load_chat_tokenizer(args: argparse.Namespace) -> tuple[str, object, Template | NativeTemplate]:
    """(base model path, tokenizer, template) for the given base/adapters, without the weights."""
    base, run_dir = model_source(args)
    trust = settings_for(args, run_dir).trust_remote_code
    tokenizer = load_tokenizer(run_dir, trust)  # an adapter directory holds the tokenizer it was trained with
    template = resolve_template(getattr(args, "template", None), tokenizer, base, trust, run_dir=run_dir,
                                enable_thinking=getattr(args, "enable_thinking", False))
    return base, tokenizer, template


def load_chat_model(args: argparse.Namespace):
    """(model, tokenizer, template) in eval mode for the given base/adapters (see add_model_arguments)."""
    base, tokenizer, template = load_chat_tokenizer(args)
    settings = settings_for(args, model_source(args)[1])
    weights = [float(w) for w in args.adapter_weights.split(",")] if getattr(args, "adapter_weights", None) else None
    model = load_model(base, getattr(args, "dtype", "auto"), settings.trust_remote_code, **settings.rope)
    model = load_adapters(model, list(args.adapter), weights)
    model.eval()
    return model, tokenizer, template


def load_for_inference(base: str | None = None, adapters: list[str] | tuple[str, ...] = (), *,
                       template: str | None = None, dtype: str = "auto", trust_remote_code: bool | None = None):
    """load_chat_model for callers without a command line (experiments, RLHF evaluation)."""
    args = argparse.Namespace(base=base, adapter=[str(a) for a in adapters], adapter_weights=None, template=template,
                              enable_thinking=False, dtype=dtype, trust_remote_code=trust_remote_code,
                              rope_scaling=None, rope_factor=None)
    return load_chat_model(args)
