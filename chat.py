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
unless --enable_thinking true; a reply's reasoning (its <think>…</think> block) is printed after
"Reasoning:", before the answer after "Assistant:", and only the answer goes into the history.
"""

import argparse
from collections.abc import Iterable

from llm_tuning.cli import ArgumentParser, UserError, exits_on_user_error
from llm_tuning.generation import GenerationSettings, context_length, fit_history
from llm_tuning.inference import add_model_arguments, load_chat_model
from llm_tuning.modeling import AdapterMenu
from llm_tuning.reply_parts import CONTENT, REASONING, ReplyPiece, stream_reply_parts

EXIT_COMMANDS = {"exit", "quit", "stop"}
CLEAR_COMMANDS = {"clear", "reset"}
ADAPTER_COMMAND = "adapter"  # "adapter" lists the choices, "adapter NAME" switches to one
LABELS = {REASONING: "Reasoning: ", CONTENT: "Assistant: "}


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


def print_reply(pieces: Iterable[ReplyPiece]) -> str:
    """Print a reply as it streams, its reasoning (if any) on a labelled line before the answer;
    returns the answer."""
    answer, shown = "", None
    for piece in pieces:
        if piece.kind != shown:
            print(("\n" if shown else "") + LABELS[piece.kind], end="", flush=True)
            shown = piece.kind
        print(piece.text, end="", flush=True)
        answer += piece.text if piece.kind == CONTENT else ""
    if shown != CONTENT:  # no answer (all reasoning, or nothing): still say so
        print(("\n" if shown else "") + LABELS[CONTENT], end="")
    print()
    return answer


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
        with menu.active():
            answer = print_reply(stream_reply_parts(model, tokenizer, template, query, history, system, settings))
        history.append((query, answer))


@exits_on_user_error
def main(args: argparse.Namespace) -> None:
    model, tokenizer, template = load_chat_model(args)
    settings = GenerationSettings(args.max_new_tokens, args.temperature, args.top_p, args.repetition_penalty)
    if args.query:
        for query in args.query:
            print(f"User: {query}")
            print_reply(stream_reply_parts(model, tokenizer, template, query, system=args.system, settings=settings))
        return
    max_context_tokens = args.max_context_tokens or context_length(model)
    if settings.max_new_tokens >= max_context_tokens:
        raise UserError(f"--max_new_tokens {settings.max_new_tokens} leaves no room for the prompt in a "
                        f"context of {max_context_tokens} tokens; lower it")
    interactive(model, tokenizer, template, args.system, settings, max_context_tokens, AdapterMenu(model, args.adapter))


if __name__ == "__main__":
    main(parse_args())
