"""Chat templates: the tokenizer's own `chat_template` where the model ships one, else the registry.

One function, `encode_turns`, turns a dialogue into token ids for training AND inference, so the
prompt a model sees when chatting is token-for-token the prompt it was trained on. Two kinds of
template share that interface:
- `NativeTemplate` ("native"): the tokenizer's own Jinja `chat_template`, rendered with
  `apply_chat_template`. The whole conversation is rendered once and tokenized once; each
  assistant answer is then located in the rendering, and the answer plus the end-of-turn token the
  template writes after it (`<|eot_id|>`, `<|im_end|>`, ...) becomes the supervised span.
- `Template`: the hand-written registry below, for models without a chat template (ChatGLM,
  Baichuan, InternLM v1, `alpaca` for base models) and as an explicit choice. Each turn is encoded
  on its own (prompt text, then answer text), which gives the label boundaries.

Texts may contain the tokenizer's special tokens as strings (`<|im_start|>`); `{eos}` in an answer
suffix and `{bos}` in a turn separator stand for the tokenizer's own EOS / BOS tokens.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from .cli import UserError
from .modeling import read_model_type
from .run_config import read_run_config

EOS_PLACEHOLDER = "{eos}"
BOS_PLACEHOLDER = "{bos}"
NATIVE = "native"  # the template name that means "the tokenizer's own chat_template"
# Stands for the question where a rendering is cut at it; no real text contains it.
SENTINEL = "\ue000\ue001"


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
    # Put after the last turn's prompt only (Qwen3's empty think block: its own template writes it
    # for the answer after the last user message, never in the history).
    last_prompt_suffix: str = ""
    notes: str = field(default="", compare=False)

    def render_turns(
        self, turns: Sequence[tuple[str, str | None]], system: str | None = None
    ) -> list[tuple[str, str]]:
        """Render (query, answer) turns to (prompt_text, answer_text) pairs; a None answer renders as ""."""
        system = self.default_system if system is None else system
        rendered = []
        system_block = self.system_format.format(system=system) if system else ""
        inline_system = "{system}" in self.user_format
        for index, (query, answer) in enumerate(turns):
            prompt = ""
            if index == 0:
                prompt += self.prefix + ("" if inline_system else system_block)
            else:
                prompt += self.turn_separator
            prompt += self.user_format.format(query=query, round=index + self.round_offset,
                                              system=system_block if index == 0 else "")
            if index == len(turns) - 1:
                prompt += self.last_prompt_suffix
            answer_text = "" if answer is None else self.answer_prefix + answer + self.answer_suffix
            rendered.append((prompt, answer_text))
        return rendered

    def encode_turns(self, tokenizer, turns: Sequence[tuple[str, str | None]],
                     system: str | None = None) -> list[tuple[list[int], list[int]]]:
        """Each turn's prompt and answer encoded on its own (see the module function)."""
        encoded = []
        for index, (prompt, answer) in enumerate(self.render_turns(turns, system)):
            prompt = prompt.replace(BOS_PLACEHOLDER, tokenizer.bos_token or "")
            prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
            if index == 0 and self.add_bos and tokenizer.bos_token_id is not None:
                prompt_ids = [tokenizer.bos_token_id] + prompt_ids
            answer = answer.replace(EOS_PLACEHOLDER, tokenizer.eos_token or "")
            answer_ids = tokenizer.encode(answer, add_special_tokens=False) if answer else []
            encoded.append((prompt_ids, answer_ids))
        return encoded

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
        head_text = self.render_turns([(SENTINEL, None)], system)[0][0].split(SENTINEL)[0]
        head_text = head_text.replace(BOS_PLACEHOLDER, tokenizer.bos_token or "")
        bos = int(self.add_bos and tokenizer.bos_token_id is not None)
        return bos + len(tokenizer.encode(head_text, add_special_tokens=False))

    def source(self, tokenizer) -> dict:
        """Where the format comes from, as metadata.json records it."""
        return {"kind": "registry", "name": self.name}


# --- The tokenizer's own chat template ---------------------------------------------------------


@dataclass(frozen=True)
class NativeTemplate:
    """The tokenizer's own `chat_template`, with label spans derived from its rendering.

    Rendering the whole conversation at once keeps templates that are not prefix-preserving exact
    (Qwen3 writes its empty think block only after the last user message). Each answer is found
    verbatim in the rendering, after the messages before it; the end-of-turn text is whatever the
    template writes right after the answer up to and including the first special token (optionally
    after whitespace: LLaMA-2 writes ` </s>`). Token spans come from the tokenizer's character
    offsets, and a row whose tokens straddle an answer's edge is refused."""

    name: str = NATIVE
    # Qwen3 and other hybrid reasoners: at inference, let the model think first. Training renders
    # full conversations, where the template decides (Qwen3: an empty think block on the last answer).
    enable_thinking: bool = False

    def render(self, tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
        if not getattr(tokenizer, "chat_template", None):
            raise UserError("--template native needs a tokenizer with a chat_template, and this one has "
                            f"none; pass --template with one of: {', '.join(sorted(TEMPLATES))}")
        if not getattr(tokenizer, "is_fast", False):
            raise unsplittable("a slow tokenizer gives no character offsets to locate the answers")
        from jinja2 import TemplateError

        try:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                                 enable_thinking=self.enable_thinking)
        except TemplateError as err:  # e.g. raise_exception('...roles must alternate...'), no system role
            raise unsplittable(f"it refuses the conversation: {err}") from None

    def encode_turns(self, tokenizer, turns: Sequence[tuple[str, str | None]],
                     system: str | None = None) -> list[tuple[list[int], list[int]]]:
        """(prompt_ids, answer_ids) per turn, cut out of the one tokenized rendering. What the
        template writes after the last end-of-turn (a newline; an unasked generation prompt) is left out."""
        messages = conversation_messages(turns, system)
        open_ended = turns[-1][1] is None
        text = self.render(tokenizer, messages, add_generation_prompt=open_ended)
        spans = answer_spans(text, messages, end_of_turn_pattern(tokenizer))
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
        pieces, cursor = [], 0
        for start, end in spans:
            first, stop = token_span(text, offsets, start, end)
            pieces.append((ids[cursor:first], ids[first:stop]))
            cursor = stop
        if open_ended:
            pieces.append((ids[cursor:], []))
        return pieces

    def end_of_turn(self, tokenizer) -> str:
        """The text the template writes after an answer (e.g. `<|im_end|>`), from a probe rendering."""
        messages = conversation_messages([("Hi", SENTINEL)], None)
        text = self.render(tokenizer, messages, add_generation_prompt=False)
        start, end = answer_spans(text, messages, end_of_turn_pattern(tokenizer))[0]
        return text[start + len(SENTINEL):end]

    def stop_token_ids(self, tokenizer) -> list[int]:
        """The end-of-turn special token, then EOS (a model may still end on either)."""
        end_of_turn = self.end_of_turn(tokenizer).strip()
        ids = [tokenizer.convert_tokens_to_ids(end_of_turn)]
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
        return list(dict.fromkeys(ids))

    def prompt_head_length(self, tokenizer, system: str | None) -> int:
        """Tokens before the question in a first-turn prompt."""
        text = self.render(tokenizer, conversation_messages([(SENTINEL, None)], system), add_generation_prompt=True)
        cut = text.index(SENTINEL)
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        return sum(1 for _, end in offsets if end <= cut)

    def source(self, tokenizer) -> dict:
        return {"kind": "native", "chat_template_sha256": chat_template_hash(tokenizer)}


def chat_template_hash(tokenizer) -> str | None:
    """A short hash of the tokenizer's chat_template text (None without one)."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return None
    text = template if isinstance(template, str) else json.dumps(template, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def conversation_messages(turns: Sequence[tuple[str, str | None]], system: str | None) -> list[dict]:
    """(query, answer) turns as chat messages; a None answer is left out."""
    messages = [{"role": "system", "content": system}] if system else []
    for query, answer in turns:
        messages.append({"role": "user", "content": query})
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
    return messages


_END_OF_TURN_PATTERNS: dict[int, tuple[object, re.Pattern]] = {}  # id(tokenizer) -> (tokenizer, pattern)


def end_of_turn_pattern(tokenizer) -> re.Pattern:
    """Whitespace, then one of the tokenizer's special or added tokens: what ends an answer.
    Built once per tokenizer (it is needed for every row)."""
    cached = _END_OF_TURN_PATTERNS.get(id(tokenizer))
    if cached is not None and cached[0] is tokenizer:
        return cached[1]
    specials = set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())
    alternatives = "|".join(re.escape(token) for token in sorted(specials, key=len, reverse=True) if token)
    pattern = re.compile(rf"\s*(?:{alternatives})")
    _END_OF_TURN_PATTERNS[id(tokenizer)] = (tokenizer, pattern)
    return pattern


def unsplittable(reason: str) -> UserError:
    return UserError(f"the tokenizer's chat template cannot be split into prompts and answers ({reason}); "
                     f"pass --template with a registry template, one of: {', '.join(sorted(TEMPLATES))}")


def answer_spans(text: str, messages: list[dict], end_of_turn: re.Pattern) -> list[tuple[int, int]]:
    """Character spans (start, end) of each assistant answer plus its end-of-turn text in `text`."""
    spans, cursor = [], 0
    for message in messages:
        content = message["content"]
        position = text.find(content, cursor)
        if position < 0 and content.strip():  # templates often strip messages
            content = content.strip()
            position = text.find(content, cursor)
        if message["role"] != "assistant":
            cursor = position + len(content) if position >= 0 else cursor
            continue
        if position < 0:
            raise unsplittable(f"it does not write the answer {short(message['content'])} as given")
        match = end_of_turn.match(text, position + len(content))
        if match is None:
            raise unsplittable(f"no end-of-turn token follows the answer {short(content)}")
        spans.append((position, match.end()))
        cursor = match.end()
    return spans


def token_span(text: str, offsets: Sequence[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    """[first, stop) token indices covering characters [start, end); refused when a token straddles
    an edge with text other than whitespace outside the span."""
    first = next(i for i, (_, token_end) in enumerate(offsets) if token_end > start)
    stop = next((i for i, (token_start, _) in enumerate(offsets) if token_start >= end), len(offsets))
    if text[offsets[first][0]:start].strip() or offsets[stop - 1][1] != end:
        raise unsplittable(f"a token crosses the edge of the answer {short(text[start:end])}")
    return first, stop


def short(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")

TEMPLATES: dict[str, Template] = {}


def register(template: Template) -> Template:
    TEMPLATES[template.name] = template
    return template


def get_template(name: str) -> Template | NativeTemplate:
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


def encode_turns(
    tokenizer,
    template: Template | NativeTemplate,
    turns: Sequence[tuple[str, str | None]],
    system: str | None = None,
) -> list[tuple[list[int], list[int]]]:
    """Token ids of each turn as (prompt_ids, answer_ids); the answer ids end with the end-of-turn
    token(s). A last turn whose answer is None ends with the prompt the model answers."""
    return template.encode_turns(tokenizer, turns, system)


def encode_prompt(
    tokenizer,
    template: Template | NativeTemplate,
    query: str,
    history: Sequence[tuple[str, str]] = (),
    system: str | None = None,
) -> list[int]:
    """The ids a model is given to answer `query` after `history`: exactly the training prompt."""
    turns = [*history, (query, None)]
    ids: list[int] = []
    for prompt_ids, answer_ids in encode_turns(tokenizer, template, turns, system):
        ids += prompt_ids + answer_ids
    return ids


def stop_token_ids(tokenizer, template: Template | NativeTemplate) -> list[int]:
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
                     run_dir: str | None = None, enable_thinking: bool = False) -> Template | NativeTemplate:
    """The one answer to "which chat template?", for training, inference and RLHF alike.

    `requested` (a --template value) wins unless it is None or "auto"; then the template recorded
    in the run config of `run_dir` (default `model_path`: an adapter or a model trained here),
    else `auto_template`. An unknown name fails here, before any work. `enable_thinking` applies
    to the tokenizer's own template (Qwen3)."""
    name = requested if requested not in (None, "auto") else read_run_config(run_dir or model_path).get("template")
    if not name:  # the model type is read only when the tokenizer has no usable template of its own
        name = NATIVE if has_usable_chat_template(tokenizer) else guess_template(
            read_model_type(model_path, trust_remote_code), model_path)
    template = get_template(name)
    return NativeTemplate(enable_thinking=enable_thinking) if isinstance(template, NativeTemplate) else template


def describe_template(tokenizer, template: Template | NativeTemplate) -> str:
    """One line: which template, and where it comes from."""
    if isinstance(template, NativeTemplate):
        return (f"template native: the tokenizer's own chat_template (sha256 {chat_template_hash(tokenizer)}), "
                f"end of turn {template.end_of_turn(tokenizer)!r}")
    return f"template {template.name}: registry ({template.notes})"


def template_source(tokenizer, name: str) -> dict:
    """What metadata.json and llm_tuning.json record about the template."""
    return get_template(name).source(tokenizer)
