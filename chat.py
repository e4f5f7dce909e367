"""Chat with a base model plus a LoRA adapter (or several), or with a merged model.

    # one question, greedy, then exit
    python chat.py --adapter weights/simple_math_4op --query "计算 3 + 94 等于多少？"

    # interactive, streaming, multi-turn ("clear" forgets the history, "exit" quits,
    # "adapter NAME" switches between loaded adapters, their mix and "base")
    python chat.py --adapter weights/simple_math_4op

    # two adapters mixed 70/30 (peft weighted combination); a merged model needs no --adapter
    python chat.py --adapter weights/a --adapter weights/b --adapter_weights 0.7,0.3
    python chat.py --base weights/merged

The base model and chat template default to what the adapter was trained with (its
llm_tuning.json); the prompt is built by the same function that built the training prompts (for the
tokenizer's own template: apply_chat_template(..., add_generation_prompt=True)), and a reply ends
on the template's end-of-turn token (<|im_end|>, <|eot_id|>, ...). Qwen3 answers without thinking
unless --enable_thinking true.
"""

import argparse

from llm_tuning.cli import ArgumentParser, UserError, exits_on_user_error, parse_bool
from llm_tuning.generation import GenerationSettings, context_length, fit_history, generate_reply, stream_reply
from llm_tuning.modeling import AdapterMenu, adapter_base_model, load_adapters, load_model, load_tokenizer, read_model_type
from llm_tuning.templates import NativeTemplate, auto_template, get_template
from llm_tuning.training import read_run_config

EXIT_COMMANDS = {"exit", "quit", "stop"}
CLEAR_COMMANDS = {"clear", "reset"}
ADAPTER_COMMAND = "adapter"  # "adapter" lists the choices, "adapter NAME" switches to one


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that pick the model to talk to; web_demo.py, api_server.py and eval.py share them."""
    parser.add_argument("--base", default=None, help="base or merged model (default: the adapter's base)")
    parser.add_argument("--adapter", action="append", default=[], help="LoRA adapter directory; repeat for several")
    parser.add_argument("--adapter_weights", default=None, help="comma-separated weights to mix several adapters")
    parser.add_argument("--template", default=None,
                        help="chat template (default: the adapter's, else the tokenizer's own, else the model type's)")
    parser.add_argument("--enable_thinking", type=parse_bool, default=False,
                        help="native templates of reasoning models (Qwen3): let the model think before answering")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--trust_remote_code", type=parse_bool, default=False)
    parser.add_argument("--rope_scaling", default=None, choices=("linear", "dynamic", "yarn"),
                        help="stretch RoPE for longer inputs (default: as the adapter was trained)")
    parser.add_argument("--rope_factor", type=float, default=None, help="context extension factor for --rope_scaling")


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--system", default=None, help="system prompt (default: the template's)")
    parser.add_argument("--query", action="append", default=[], help="ask this and exit; repeat for several")
    parser.add_argument("--max_new_tokens", type=int, default=512)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 for greedy decoding")
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--repetition_penalty", type=float, default=1.0)
    parser.add_argument("--max_context_tokens", type=int, default=None,
                        help="prompt + reply budget; older turns are forgotten past it (default: the model's context)")
    return parser.parse_args(argv)


def load_chat_tokenizer(args: argparse.Namespace):
    """(base model path, tokenizer, template) for the given base/adapters, without the weights."""
    base = args.base or (adapter_base_model(args.adapter[0]) if args.adapter else None)
    if base is None:
        raise UserError("pass --base (a model) or --adapter (a trained adapter)")
    run_config = read_run_config(args.adapter[0] if args.adapter else base)
    # The adapter directory holds the tokenizer it was trained with.
    tokenizer = load_tokenizer(args.adapter[0] if args.adapter else base, args.trust_remote_code)
    template_name = args.template or run_config.get("template") or auto_template(
        tokenizer, read_model_type(base, args.trust_remote_code), base)
    template = get_template(template_name)
    if isinstance(template, NativeTemplate):
        template = NativeTemplate(enable_thinking=getattr(args, "enable_thinking", False))
    return base, tokenizer, template


def load_chat_model(args: argparse.Namespace):
    """(model, tokenizer, template) for the given base/adapters, as chat.py and others use them."""
    base, tokenizer, template = load_chat_tokenizer(args)
    weights = [float(w) for w in args.adapter_weights.split(",")] if args.adapter_weights else None
    run_config = read_run_config(args.adapter[0] if args.adapter else base)
    rope_scaling = getattr(args, "rope_scaling", None) or run_config.get("rope_scaling")
    rope_factor = getattr(args, "rope_factor", None) or run_config.get("rope_factor", 2.0)
    model = load_model(base, args.dtype, args.trust_remote_code, rope_scaling=rope_scaling, rope_factor=rope_factor)
    model = load_adapters(model, args.adapter, weights)
    model.eval()
    return model, tokenizer, template


def switch_adapter(menu: AdapterMenu, command: str) -> None:
    """`adapter` lists the choices (the active one starred); `adapter NAME` switches to NAME."""
    choice = command[len(ADAPTER_COMMAND):].strip()
    if choice:
        try:
            menu.select(choice)
        except UserError as err:
            print(f"({err})")
            return
    print("(adapters: " + ", ".join(f"*{c}" if c == menu.current else c for c in menu.choices()) + ")")


def interactive(model, tokenizer, template, system, settings, max_context_tokens: int, menu: AdapterMenu) -> None:
    """The terminal chat loop: streams each reply; forgets the oldest turns when the context is full."""
    history: list[tuple[str, str]] = []
    max_prompt_tokens = max_context_tokens - settings.max_new_tokens
    print("Type a message; 'clear' forgets the conversation, 'exit' quits"
          + (", 'adapter NAME' switches adapters." if menu.choices() else "."))
    while True:
        try:
            query = input("\nUser: ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if query.lower() in EXIT_COMMANDS:
            return
        if query.lower() in CLEAR_COMMANDS:
            history = []
            print("(history cleared)")
            continue
        if menu.choices() and (query == ADAPTER_COMMAND or query.startswith(ADAPTER_COMMAND + " ")):
            switch_adapter(menu, query)
            continue
        if not query:
            continue
        try:
            kept = fit_history(tokenizer, template, query, history, system, max_prompt_tokens)
        except UserError as err:
            print(f"(not sent: {err})")
            continue
        if len(kept) < len(history):
            print(f"(forgot the {len(history) - len(kept)} oldest turn(s) to fit the context)")
        history = kept
        print("Assistant: ", end="", flush=True)
        reply = ""
        with menu.active():
            for piece in stream_reply(model, tokenizer, template, query, history, system, settings):
                print(piece, end="", flush=True)
                reply += piece
        print()
        history.append((query, reply))


@exits_on_user_error
def main(args: argparse.Namespace) -> None:
    model, tokenizer, template = load_chat_model(args)
    settings = GenerationSettings(args.max_new_tokens, args.temperature, args.top_p, args.repetition_penalty)
    if args.query:
        for query in args.query:
            print(f"User: {query}")
            print(f"Assistant: {generate_reply(model, tokenizer, template, query, system=args.system, settings=settings)}")
        return
    max_context_tokens = args.max_context_tokens or context_length(model)
    if settings.max_new_tokens >= max_context_tokens:
        raise UserError(f"--max_new_tokens {settings.max_new_tokens} leaves no room for the prompt in a "
                        f"context of {max_context_tokens} tokens; lower it")
    interactive(model, tokenizer, template, args.system, settings, max_context_tokens, AdapterMenu(model, args.adapter))


if __name__ == "__main__":
    main(parse_args())
