"""Loading a trained model for inference: base + adapters + chat template + remote code.

chat.py, web_demo.py, api_server.py, eval.py, RLHF/evaluate.py and llm_tuning.experiment all
load through here, so they agree on what an adapter directory means: its `llm_tuning.json` names
the base model, the chat template, trust_remote_code and the RoPE scaling it was trained with;
a flag given on the command line wins over the record.
"""

from __future__ import annotations

import argparse

from .cli import UserError, parse_bool
from .modeling import adapter_base_model, load_adapters, load_model, load_tokenizer
from .run_config import read_run_config
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


def model_source(args: argparse.Namespace) -> tuple[str, str, dict]:
    """(base model, directory holding the run config and tokenizer, its run config)."""
    base = args.base or (adapter_base_model(args.adapter[0]) if args.adapter else None)
    if base is None:
        raise UserError("pass --base (a model) or --adapter (a trained adapter)")
    run_dir = args.adapter[0] if args.adapter else base
    return base, run_dir, read_run_config(run_dir)


def remote_code(args: argparse.Namespace, run_config: dict) -> bool:
    """--trust_remote_code if given, else what the run was trained with."""
    flag = getattr(args, "trust_remote_code", None)
    return bool(run_config.get("trust_remote_code", False)) if flag is None else flag


def trust_remote_code_for(args: argparse.Namespace) -> bool:
    """Whether the model of these arguments runs its own code (for engines that load it themselves)."""
    return remote_code(args, model_source(args)[2])


def load_chat_tokenizer(args: argparse.Namespace) -> tuple[str, object, Template | NativeTemplate]:
    """(base model path, tokenizer, template) for the given base/adapters, without the weights."""
    base, run_dir, run_config = model_source(args)
    trust = remote_code(args, run_config)
    tokenizer = load_tokenizer(run_dir, trust)  # an adapter directory holds the tokenizer it was trained with
    template = resolve_template(getattr(args, "template", None), tokenizer, base, trust, run_dir=run_dir,
                                enable_thinking=getattr(args, "enable_thinking", False))
    return base, tokenizer, template


def load_chat_model(args: argparse.Namespace):
    """(model, tokenizer, template) in eval mode for the given base/adapters (see add_model_arguments)."""
    base, tokenizer, template = load_chat_tokenizer(args)
    _, _, run_config = model_source(args)
    weights = [float(w) for w in args.adapter_weights.split(",")] if getattr(args, "adapter_weights", None) else None
    rope_scaling = getattr(args, "rope_scaling", None) or run_config.get("rope_scaling")
    rope_factor = getattr(args, "rope_factor", None) or run_config.get("rope_factor", 2.0)
    model = load_model(base, getattr(args, "dtype", "auto"), remote_code(args, run_config),
                       rope_scaling=rope_scaling, rope_factor=rope_factor)
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
