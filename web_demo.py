"""A chat page in the browser (gradio): streaming replies, sampling settings, history, adapter choice.

    python web_demo.py --adapter weights/simple_math_4op            # then open http://127.0.0.1:7860
    python web_demo.py --adapter weights/a --adapter weights/b      # pick either (or the base) on the page
    python web_demo.py --base weights/merged --port 7861 --host 0.0.0.0

The page sends the whole conversation with each message; the oldest turns are dropped when it no
longer fits the model's context (--max_context_tokens). "Clear" starts a new conversation.
The prompt is built by the family template, exactly as in training. A reasoning model's thinking
(its <think>…</think> block; Qwen3 with --enable_thinking true) streams into a "Reasoning" block of
its own above the answer, folded once the answer begins; only the answer goes back into the history.
"""

import argparse
import os
import threading

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline machines: no phoning home

from llm_tuning.cli import ArgumentParser, UserError, exits_on_user_error
from llm_tuning.generation import GenerationSettings, context_length, fit_history
from llm_tuning.inference import add_model_arguments, load_chat_model
from llm_tuning.modeling import AdapterMenu
from llm_tuning.reply_parts import CONTENT, REASONING, stream_reply_parts

BASE_CHOICE = AdapterMenu.BASE
REASONING_TITLE = "Reasoning"  # gradio shows a message with a metadata title as a foldable block


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--system", default=None, help="system prompt (default: the template's)")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to open the page to other machines")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--max_context_tokens", type=int, default=None, help="default: the model's context")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    return parser.parse_args(argv)


class ChatBackend:
    """The model, its adapter menu and one lock: a reply is generated with one choice active at a time."""

    def __init__(self, model, tokenizer, template, adapter_dirs: list[str], system: str | None,
                 max_context_tokens: int):
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.system = system
        self.max_context_tokens = max_context_tokens
        self.menu = AdapterMenu(model, adapter_dirs)
        self.lock = threading.Lock()

    def choices(self) -> list[str]:
        return self.menu.choices() or [BASE_CHOICE]

    def reply(self, query: str, history: list[tuple[str, str]], adapter: str, settings: GenerationSettings):
        """Yield the growing reply as (reasoning, answer)."""
        history = fit_history(self.tokenizer, self.template, query, history, self.system,
                              self.max_context_tokens - settings.max_new_tokens)
        with self.lock, self.menu.active(adapter):
            yield from self._stream(query, history, settings)

    def _stream(self, query, history, settings):
        parts = {REASONING: "", CONTENT: ""}
        for piece in stream_reply_parts(self.model, self.tokenizer, self.template, query, history, self.system,
                                        settings):
            parts[piece.kind] += piece.text
            yield parts[REASONING], parts[CONTENT]


def reply_messages(reasoning: str, answer: str, done: bool = False) -> list[dict]:
    """The chat messages of one reply: its reasoning in a titled block (open while it streams, folded
    once the answer begins), then the answer."""
    thought = {"role": "assistant", "content": reasoning,
               "metadata": {"title": REASONING_TITLE, "status": "done" if answer or done else "pending"}}
    return ([thought] if reasoning else []) + [{"role": "assistant", "content": answer}]


def message_text(content) -> str:
    """A chat message's text, whether gradio hands it over as a string or as content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return content.get("text", "")
    return "".join(message_text(part) for part in content or [])


def to_pairs(messages: list[dict]) -> list[tuple[str, str]]:
    """Chatbot messages -> (user, assistant) pairs for the template; reasoning blocks are left out."""
    pairs, pending = [], None
    for message in messages:
        if (message.get("metadata") or {}).get("title"):
            continue
        if message["role"] == "user":
            pending = message_text(message["content"])
        elif pending is not None:
            pairs.append((pending, message_text(message["content"])))
            pending = None
    return pairs


def build_demo(backend: ChatBackend):
    import gradio as gr

    def respond(message, messages, adapter, max_new_tokens, temperature, top_p):
        message = (message or "").strip()
        if not message:
            yield "", messages
            return
        history = to_pairs(messages)
        messages = [*messages, {"role": "user", "content": message}]
        settings = GenerationSettings(max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                                      top_p=float(top_p))
        reasoning, answer = "", ""
        try:
            for reasoning, answer in backend.reply(message, history, adapter, settings):
                yield "", messages + reply_messages(reasoning, answer)
        except UserError as err:
            raise gr.Error(str(err)) from None
        yield "", messages + reply_messages(reasoning, answer, done=True)

    with gr.Blocks(title="LLM-Tuning chat") as demo:
        gr.Markdown("## LLM-Tuning chat")
        chatbot = gr.Chatbot(label="Chat", height=420, elem_id="chatbot")
        with gr.Row():
            message = gr.Textbox(placeholder="Type a message, press Enter / 输入消息，按回车发送", show_label=False,
                                 scale=8, elem_id="message")
            send = gr.Button("Send", variant="primary", scale=1)
        with gr.Row():
            adapter = gr.Dropdown(backend.choices(), value=backend.choices()[0], label="Adapter")
            max_new_tokens = gr.Slider(1, 2048, value=512, step=1, label="max_new_tokens")
            temperature = gr.Slider(0, 2, value=0.0, step=0.05, label="temperature (0 = greedy)")
            top_p = gr.Slider(0.05, 1, value=1.0, step=0.05, label="top_p")
        clear = gr.Button("Clear history")
        inputs = [message, chatbot, adapter, max_new_tokens, temperature, top_p]
        message.submit(respond, inputs, [message, chatbot])
        send.click(respond, inputs, [message, chatbot])
        clear.click(lambda: [], None, [chatbot])  # the history only: a message being typed stays
    return demo


@exits_on_user_error
def main(args: argparse.Namespace, block: bool = True):
    model, tokenizer, template = load_chat_model(args)
    backend = ChatBackend(model, tokenizer, template, args.adapter, args.system,
                          args.max_context_tokens or context_length(model))
    demo = build_demo(backend)
    demo.queue().launch(server_name=args.host, server_port=args.port, share=args.share,
                        prevent_thread_lock=not block)
    return demo


if __name__ == "__main__":
    main(parse_args())
