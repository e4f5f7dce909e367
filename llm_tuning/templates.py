"""Chat templates: the tokenizer's own `chat_template` where the model ships one, else the registry.

One interface turns a conversation into token ids for training AND inference, so the prompt a
model sees when chatting is token-for-token the prompt it was trained on:
`encode_conversation` gives training rows with their supervised spans, `encode_chat` the prompt
for the next assistant message. Two kinds of template share it:
- `NativeTemplate` ("native", in `native_template.py`): the tokenizer's own Jinja `chat_template`,
  rendered with `apply_chat_template`; each assistant turn is located by position (reasoning and
  tool calls included), see that module.
- `Template`: the hand-written registry below, for models without a chat template (ChatGLM,
  Baichuan, InternLM v1, `alpaca` for base models) and as an explicit choice. Each turn is encoded
  on its own (prompt text, then answer text), which gives the label boundaries. Registry formats
  know no tools; `qwen3` has a reasoning form, the others refuse reasoning.

Texts may contain the tokenizer's special tokens as strings (`<|im_start|>`); `{eos}` in an answer
suffix and `{bos}` in a turn separator stand for the tokenizer's own EOS / BOS tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from .cli import UserError
from .conversation import Conversation, EncodedSample, Span, answer_of, reasoning_of
from .modeling import read_model_type
from .native_template import NATIVE, SENTINEL, NativeTemplate, chat_template_hash, refuse_special_texts, traits_of
from .run_config import run_settings

EOS_PLACEHOLDER = "{eos}"
BOS_PLACEHOLDER = "{bos}"


@dataclass(frozen=True)
class RegistryTurn:
    query: str
    answer: str | None  # None: the question the model is to answer
    reasoning: str | None = None
    message: int | None = None  # index of the answer in the conversation's messages


@dataclass(frozen=True)
class Template:
    name: str
    # `{query}` is the user's message; `{round}` (if present) the 0-based turn index + round_offset;
    # `{system}` (if present) where the first turn holds the system block (LLaMA-2's [INST] <<SYS>>).
    user_format: str
    # Appended to every answer and supervised with it: the token(s) that end an assistant turn.
    answer_suffix: str = EOS_PLACEHOLDER
    # Put before every answer and supervised with it (LLaMA-2 writes `[/INST] {answer} </s>`).
    answer_prefix: str = ""
    # Put before each prompt after the first (unsupervised): usually a newline after the stop token.
    turn_separator: str = ""
    # `{system}` is the system prompt; used only when a system prompt is given or defaulted.
    system_format: str = "{system}"
    default_system: str | None = None
    # Text put once at the very start (special tokens such as `[gMASK]sop` as strings).
    prefix: str = ""
    add_bos: bool = False
    round_offset: int = 0
    # Strings whose token ends a reply at inference, besides the tokenizer's EOS.
    stop_words: tuple[str, ...] = ()
    # Put after the last turn's prompt when the model answers without thinking (Qwen3's empty think
    # block: its own template writes it for the answer after the last user message, never in the history).
    last_prompt_suffix: str = ""
    # How a reasoning trace opens the answer of the last turn (`{reasoning}`); None: no reasoning form.
    # Earlier turns are written without their reasoning, as Qwen3's template writes its history.
    reasoning_format: str | None = None
    notes: str = field(default="", compare=False)
    # Inference only: let a reasoning model think (no last_prompt_suffix). Training decides per turn.
    enable_thinking: bool = field(default=False, compare=False)

    def with_thinking(self, enable_thinking: bool) -> Template:
        return replace(self, enable_thinking=enable_thinking)

    # --- From messages to registry turns -----------------------------------------------------------

    def turns_of(self, conversation: Conversation) -> tuple[str | None, list[RegistryTurn]]:
        """(system, turns) of a conversation of system?, user, assistant, user, ... messages; the last
        turn has no answer when the conversation ends with a user message."""
        if conversation.tools or conversation.has_tool_messages():
            raise UserError(f"template {self.name} cannot render tools or tool calls; use a model whose own "
                            "chat template supports tools (--template native)")
        system, turns, query = None, [], None
        for index, message in enumerate(conversation.messages):
            role = message["role"]
            if role == "system" and index == 0:
                system = message["content"]
            elif role == "user" and query is None:
                query = message["content"]
            elif role == "assistant" and query is not None:
                reasoning = reasoning_of(message)
                if reasoning is not None and self.reasoning_format is None:
                    raise UserError(f"template {self.name} has no reasoning form, so the reasoning would be lost; "
                                    "use --template qwen3 or the tokenizer's own template (native), or drop it")
                turns.append(RegistryTurn(query, answer_of(message), reasoning, index))
                query = None
            else:
                raise UserError(f"template {self.name}: message {index} has role {role!r} out of order; after an "
                                "optional system message, user and assistant messages alternate")
        if query is not None:
            turns.append(RegistryTurn(query, None))
        return system, turns

    # --- Rendering and encoding ----------------------------------------------------------------------

    def render_turns(self, turns: Sequence[RegistryTurn], system: str | None = None) -> list[tuple[str, str]]:
        """(prompt_text, answer_text) per turn; an unanswered last turn renders its answer as ""."""
        system = self.default_system if system is None else system
        rendered = []
        system_block = self.system_format.format(system=system) if system else ""
        inline_system = "{system}" in self.user_format
        for index, turn in enumerate(turns):
            last = index == len(turns) - 1
            prompt = (self.prefix + ("" if inline_system else system_block)) if index == 0 else self.turn_separator
            prompt += self.user_format.format(query=turn.query, round=index + self.round_offset,
                                              system=system_block if index == 0 else "")
            thinking = self.enable_thinking if turn.answer is None else turn.reasoning is not None
            if last and not thinking:
                prompt += self.last_prompt_suffix
            answer_text = ""
            if turn.answer is not None:
                answer = turn.answer
                if last and turn.reasoning is not None:
                    answer = self.reasoning_format.format(reasoning=turn.reasoning.strip("\n")) + answer.lstrip("\n")
                answer_text = self.answer_prefix + answer + self.answer_suffix
            rendered.append((prompt, answer_text))
        return rendered

    def encode_rendered(self, tokenizer, rendered: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        """Each turn's prompt and answer text encoded on its own."""
        encoded = []
        for index, (prompt, answer) in enumerate(rendered):
            prompt = prompt.replace(BOS_PLACEHOLDER, tokenizer.bos_token or "")
            prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
            if index == 0 and self.add_bos and tokenizer.bos_token_id is not None:
                prompt_ids = [tokenizer.bos_token_id] + prompt_ids
            answer = answer.replace(EOS_PLACEHOLDER, tokenizer.eos_token or "")
            answer_ids = tokenizer.encode(answer, add_special_tokens=False) if answer else []
            encoded.append((prompt_ids, answer_ids))
        return encoded

    def encode_conversation(self, tokenizer, conversation: Conversation,
                            targets: list[int] | None = None) -> list[EncodedSample]:
        """Rows whose spans supervise the assistant messages `targets` (default: all). A turn the format
        writes otherwise as history (without its reasoning, or without the `last_prompt_suffix` its
        prompt ends with at inference) gets a row of its own that ends with it."""
        refuse_special_texts(tokenizer, conversation)
        system, turns = self.turns_of(conversation)
        targets = conversation.assistant_indices() if targets is None else targets
        chosen = [n for n, turn in enumerate(turns) if turn.message in targets]
        own_rows = [n for n in chosen
                    if n < len(turns) - 1 and (turns[n].reasoning is not None or self.last_prompt_suffix)]
        samples = [self._row(tokenizer, turns[:n + 1], system, [n], conversation) for n in own_rows]
        rest = [n for n in chosen if n not in own_rows]
        if rest:
            samples.append(self._row(tokenizer, turns, system, rest, conversation))
        return samples

    def _row(self, tokenizer, turns: list[RegistryTurn], system: str | None, supervised: list[int],
             conversation: Conversation) -> EncodedSample:
        ids, spans = [], []
        rendered = self.encode_rendered(tokenizer, self.render_turns(turns, system))
        for number, (prompt_ids, answer_ids) in enumerate(rendered):
            ids += prompt_ids
            if number in supervised:
                turn = turns[number]
                spans.append(Span(len(ids), len(ids) + len(answer_ids), turn.message, turn.reasoning is not None))
            ids += answer_ids
        last = turns[-1].message
        return EncodedSample(ids, spans, Conversation(conversation.messages[:last + 1], conversation.tools))

    def encode_chat(self, tokenizer, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """The ids a model is given to write the next assistant message."""
        conversation = Conversation(messages, tools)
        refuse_special_texts(tokenizer, conversation)
        system, turns = self.turns_of(conversation)
        return [t for prompt, answer in self.encode_rendered(tokenizer, self.render_turns(turns, system))
                for t in prompt + answer]

    def prompt_text(self, tokenizer, messages: list[dict], tools: list[dict] | None = None) -> str:
        """`encode_chat`'s prompt as text, for trainers that tokenize themselves (TRL)."""
        system, turns = self.turns_of(Conversation(messages, tools))
        rendered = self.render_turns(turns, system)
        text = "".join(p + a for p, a in rendered).replace(EOS_PLACEHOLDER, tokenizer.eos_token or "")
        text = text.replace(BOS_PLACEHOLDER, tokenizer.bos_token or "")
        if self.add_bos and tokenizer.bos_token and not getattr(tokenizer, "add_bos_token", False):
            text = tokenizer.bos_token + text
        return text

    def end_of_turn(self, tokenizer) -> str:
        """The text that ends an answer (the answer suffix with the tokenizer's EOS filled in)."""
        return self.answer_suffix.replace(EOS_PLACEHOLDER, tokenizer.eos_token or "")

    def stop_token_ids(self, tokenizer) -> list[int]:
        """The stop words that are single tokens, then EOS."""
        ids = []
        for word in self.stop_words:
            word_ids = tokenizer.encode(word, add_special_tokens=False)
            if len(word_ids) == 1:
                ids.append(word_ids[0])
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
        return list(dict.fromkeys(ids))

    def prompt_head_length(self, tokenizer, system: str | None) -> int:
        """Tokens before the question in a first-turn prompt (BOS, prefix, system block, user header)."""
        head_text = self.render_turns([RegistryTurn(SENTINEL, None)], system)[0][0].split(SENTINEL)[0]
        head_text = head_text.replace(BOS_PLACEHOLDER, tokenizer.bos_token or "")
        bos = int(self.add_bos and tokenizer.bos_token_id is not None)
        return bos + len(tokenizer.encode(head_text, add_special_tokens=False))

    def source(self, tokenizer) -> dict:
        """Where the format comes from, as metadata.json records it."""
        return {"kind": "registry", "name": self.name}


AnyTemplate = Template | NativeTemplate

TEMPLATES: dict[str, Template] = {}


def register(template: Template) -> Template:
    TEMPLATES[template.name] = template
    return template


def get_template(name: str) -> AnyTemplate:
    """A registry template by name, or the tokenizer's own for "native"."""
    if name == NATIVE:
        return NativeTemplate()
    try:
        return TEMPLATES[name]
    except KeyError:
        raise UserError(
            f"unknown template {name!r}; choose {NATIVE} (the tokenizer's own chat template) or one of: "
            f"{', '.join(sorted(TEMPLATES))}"
        ) from None


# --- The one interface ---------------------------------------------------------------------------


def encode_conversation(tokenizer, template: AnyTemplate, conversation: Conversation,
                        targets: list[int] | None = None) -> list[EncodedSample]:
    """Training rows of a conversation: ids, and the token spans of the assistant messages
    `targets` (default: all), each with its end-of-turn token. Usually one row; more when an
    earlier turn's reasoning is written only where that turn ends the conversation."""
    return template.encode_conversation(tokenizer, conversation, targets)


def encode_chat(tokenizer, template: AnyTemplate, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
    """The ids a model is given to write the next assistant message after `messages`."""
    return template.encode_chat(tokenizer, messages, tools)


def encode_turns(tokenizer, template: AnyTemplate, turns: Sequence[tuple[str, str | None]],
                 system: str | None = None) -> list[tuple[list[int], list[int]]]:
    """(prompt_ids, answer_ids) per (question, answer) turn of one row; the answer ids end with the
    end-of-turn token(s). A last turn whose answer is None ends with the prompt the model answers."""
    answered = [t for t in turns if t[1] is not None]
    pieces, cursor, ids = [], 0, []
    if answered:
        samples = encode_conversation(tokenizer, template, Conversation.from_turns(answered, system))
        if len(samples) != 1:
            raise UserError("these turns need several rows (an earlier turn has reasoning); use encode_conversation")
        ids = samples[0].input_ids
        for span in samples[0].spans:
            pieces.append((ids[cursor:span.start], ids[span.start:span.stop]))
            cursor = span.stop
    if len(answered) < len(turns):
        prompt = encode_chat(tokenizer, template, Conversation.from_turns(turns, system).messages)
        if prompt[:cursor] != ids[:cursor]:
            raise UserError(f"template {template.name}: the prompt does not extend the rendering of its history")
        pieces.append((prompt[cursor:], []))
    return pieces


def encode_prompt(tokenizer, template: AnyTemplate, query: str, history: Sequence[tuple[str, str]] = (),
                  system: str | None = None) -> list[int]:
    """The ids a model is given to answer `query` after `history`: exactly the training prompt."""
    return encode_chat(tokenizer, template, Conversation.from_turns([*history, (query, None)], system).messages)


def prompt_text(tokenizer, template: AnyTemplate, messages: list[dict], tools: list[dict] | None = None) -> str:
    """The prompt of `encode_chat` as text (for trainers that tokenize themselves)."""
    return template.prompt_text(tokenizer, messages, tools)


def stop_token_ids(tokenizer, template: AnyTemplate) -> list[int]:
    """Token ids that end a reply: the template's end-of-turn token(s), then EOS."""
    return template.stop_token_ids(tokenizer)


# --- The registry. Each entry says where its format comes from. -------------------------------

register(Template(
    name="qwen",
    notes="ChatML as in Qwen-7B-Chat, Qwen1.5/2/2.5-Instruct (default system prompt of Qwen1.5/2).",
    system_format="<|im_start|>system\n{system}<|im_end|>\n",
    default_system="You are a helpful assistant.",
    user_format="<|im_start|>user\n{query}<|im_end|>\n<|im_start|>assistant\n",
    answer_suffix="<|im_end|>",
    turn_separator="\n",
    stop_words=("<|im_end|>",),
))
register(replace(
    TEMPLATES["qwen"],
    name="qwen2.5",
    notes="ChatML as in Qwen2.5-Instruct, whose template defaults to its own system prompt.",
    default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
))
register(replace(
    TEMPLATES["qwen"],
    name="qwen3",
    notes="ChatML as in Qwen3 with thinking off: no default system prompt; the empty think block only "
    "opens the answer after the last user message (history answers are bare, as Qwen3's template writes them).",
    default_system=None,
    last_prompt_suffix="<think>\n\n</think>\n\n",
    reasoning_format="<think>\n{reasoning}\n</think>\n\n",
))
register(Template(
    name="chatglm",
    notes="THUDM/chatglm-6b: [Round N] 问/答 with 0-based rounds; its tokenizer ends a prompt with "
    "[gMASK]<sop> and the answer with <eop> (its EOS). Its chat() puts [gMASK]<sop> only before the "
    "last answer, so train it on single-turn data (or --last_turn_only true).",
    user_format="[Round {round}]\n问：{query}\n答：[gMASK]<sop>",
    turn_separator="\n",
))
register(Template(
    name="chatglm2",
    notes="THUDM/chatglm2-6b: 1-based rounds, blank lines, [gMASK]sop prefix, </s> ends an answer.",
    prefix="[gMASK]sop",
    user_format="[Round {round}]\n\n问：{query}\n\n答：",
    turn_separator="\n\n",
    round_offset=1,
))
register(Template(
    name="chatglm3",
    notes="THUDM/chatglm3-6b role tokens (its SentencePiece adds the space after each newline); "
    "chat() stops at the next role token, training appends EOS so a LoRA learns to stop.",
    prefix="[gMASK]sop",
    system_format="<|system|>\n {system}",
    user_format="<|user|>\n {query}<|assistant|>\n ",
    stop_words=("<|user|>", "<|observation|>"),
))
register(Template(
    name="glm4",
    notes="THUDM/glm-4-9b-chat(-hf) role tokens; <|endoftext|> (EOS) ends a trained answer, also in the "
    "history (the official template omits it there; generation stops at <|user|> either way).",
    prefix="[gMASK]<sop>",
    system_format="<|system|>\n{system}",
    user_format="<|user|>\n{query}<|assistant|>\n",
    stop_words=("<|user|>", "<|observation|>", "<|endoftext|>"),
))
register(Template(
    name="baichuan",
    notes="baichuan-inc/Baichuan-7B/13B base models fine-tuned with a plain 问/答 prompt.",
    user_format="问：{query}\n答：",
    turn_separator="\n",
    add_bos=True,
))
register(Template(
    name="baichuan2",
    notes="Baichuan2-Chat: reserved tokens <reserved_106> (user, id 195) and <reserved_107> (assistant, id 196).",
    user_format="<reserved_106>{query}<reserved_107>",
    add_bos=True,
))
register(Template(
    name="llama2",
    notes="meta-llama/Llama-2-*-chat: <s>[INST] q [/INST] a </s> per turn, <<SYS>> inside the first [INST]; "
    "<s>[INST] is one string, as the official template renders it (a SentencePiece tokenizer reads "
    "text after <s> differently from text encoded on its own).",
    prefix="{bos}",
    system_format="<<SYS>>\n{system}\n<</SYS>>\n\n",
    user_format="[INST] {system}{query} [/INST]",
    answer_prefix=" ",
    answer_suffix=" {eos}",
    turn_separator="{bos}",
))
register(Template(
    name="llama3",
    notes="meta-llama/Meta-Llama-3-8B-Instruct header format; <|eot_id|> (not EOS <|end_of_text|>) ends "
    "a turn. Llama-3.1+ templates add a dated system block: use native for them.",
    prefix="<|begin_of_text|>",
    system_format="<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
    user_format="<|start_header_id|>user<|end_header_id|>\n\n{query}<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    answer_suffix="<|eot_id|>",
    stop_words=("<|eot_id|>",),
))
register(replace(
    TEMPLATES["llama2"],
    name="chinese-llama2",
    notes="ymcui/Chinese-LLaMA-Alpaca-2: the llama2 format with its own default system prompt.",
    default_system="You are a helpful assistant. 你是一个乐于助人的助手。",
))
register(Template(
    name="mistral",
    notes="mistralai/Mistral-7B-Instruct [INST] format (no system block).",
    user_format="[INST] {query} [/INST]",
    answer_suffix="{eos}",
    add_bos=True,
))
register(Template(
    name="internlm",
    notes="internlm/internlm-chat-7b: <|User|>/<|Bot|> with <eoh>/<eoa>; <eoa> ends a reply.",
    user_format="<|User|>:{query}<eoh>\n<|Bot|>:",
    answer_suffix="<eoa>",
    turn_separator="\n",
    add_bos=True,
    stop_words=("<eoa>",),
))
register(replace(
    TEMPLATES["qwen"],
    name="internlm2",
    notes="internlm/internlm2-chat-7b / internlm2_5-7b-chat: <s> then ChatML <|im_start|>/<|im_end|>.",
    default_system=None,
    add_bos=True,
))
register(Template(
    name="alpaca",
    notes="Stanford Alpaca instruction format, for base models without a chat format.",
    default_system="Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.",
    system_format="{system}\n\n",
    user_format="### Instruction:\n{query}\n\n### Response:\n",
    answer_suffix="{eos}",
    turn_separator="\n\n",
    add_bos=True,
))


# Which template a model's `config.json` model_type implies, for `--template auto`.
MODEL_TYPE_TEMPLATES = {
    "qwen": "qwen", "qwen2": "qwen", "qwen2_moe": "qwen", "qwen3": "qwen3", "qwen3_moe": "qwen3",
    "chatglm": "chatglm2", "glm": "glm4", "glm4": "glm4", "baichuan": "baichuan2",
    "internlm": "internlm", "internlm2": "internlm2", "llama": "llama2", "mistral": "mistral",
}


def guess_template(model_type: str | None, model_path: str) -> str:
    """The registry template name for a model type, or a UserError asking for --template."""
    if model_type in MODEL_TYPE_TEMPLATES:
        return MODEL_TYPE_TEMPLATES[model_type]
    raise UserError(
        f"cannot tell which chat template {model_path} (model type {model_type!r}) uses: its tokenizer "
        f"has no chat_template; pass --template, one of: {', '.join(sorted(TEMPLATES))} "
        "(alpaca for a base model)"
    )


def has_usable_chat_template(tokenizer) -> bool:
    """A chat template of its own, on a fast tokenizer (whose character offsets locate the answers)."""
    return bool(getattr(tokenizer, "chat_template", None)) and getattr(tokenizer, "is_fast", False)


def auto_template(tokenizer, model_type: str | None, model_path: str) -> str:
    """`--template auto`: the tokenizer's own chat template when it has a usable one, else the
    registry template of the model type."""
    return NATIVE if has_usable_chat_template(tokenizer) else guess_template(model_type, model_path)


def resolve_template(requested: str | None, tokenizer, model_path: str, trust_remote_code: bool = False,
                     run_dir: str | None = None, enable_thinking: bool = False) -> AnyTemplate:
    """The one answer to "which chat template?", for training, inference and RLHF alike.

    `requested` (a --template value) wins unless it is None or "auto"; then the template recorded
    in the run config of `run_dir` (default `model_path`: an adapter or a model trained here),
    else `auto_template`. An unknown name fails here, before any work. `enable_thinking` lets a
    reasoning model (Qwen3, native or registry) think before it answers at inference."""
    name = requested if requested not in (None, "auto") else run_settings(run_dir or model_path).template
    if not name:  # the model type is read only when the tokenizer has no usable template of its own
        name = NATIVE if has_usable_chat_template(tokenizer) else guess_template(
            read_model_type(model_path, trust_remote_code), model_path)
    return get_template(name).with_thinking(enable_thinking)


def describe_template(tokenizer, template: AnyTemplate) -> str:
    """One line: which template, where it comes from, and what it can render."""
    if isinstance(template, NativeTemplate):
        traits = traits_of(tokenizer)
        can = ", ".join(f"{what} {'yes' if able else 'no'}" for what, able in (
            ("reasoning", traits.renders_reasoning), ("tool calls", traits.renders_tool_calls),
            ("tool definitions", traits.renders_tools)))
        return (f"template native: the tokenizer's own chat_template (sha256 {chat_template_hash(tokenizer)}), "
                f"end of turn {template.end_of_turn(tokenizer)!r}; renders {can}")
    return f"template {template.name}: registry ({template.notes})"


def template_source(tokenizer, name: str) -> dict:
    """What metadata.json and llm_tuning.json record about the template."""
    return get_template(name).source(tokenizer)
