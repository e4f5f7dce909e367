"""Chat templates, one registry for every family.

One function, `encode_turns`, turns a dialogue into token ids for training AND inference, so the
prompt a model sees when chatting is token-for-token the prompt it was trained on. Each turn is
encoded on its own (prompt text, then answer text), which also gives the exact label boundaries.

Texts may contain the tokenizer's special tokens as strings (`<|im_start|>`); `{eos}` in an answer
suffix and `{bos}` in a turn separator stand for the tokenizer's own EOS / BOS tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from .cli import UserError

EOS_PLACEHOLDER = "{eos}"
BOS_PLACEHOLDER = "{bos}"


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
            answer_text = "" if answer is None else self.answer_prefix + answer + self.answer_suffix
            rendered.append((prompt, answer_text))
        return rendered


TEMPLATES: dict[str, Template] = {}


def register(template: Template) -> Template:
    TEMPLATES[template.name] = template
    return template


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise UserError(
            f"unknown template {name!r}; choose one of: {', '.join(sorted(TEMPLATES))}"
        ) from None


def encode_turns(
    tokenizer,
    template: Template,
    turns: Sequence[tuple[str, str | None]],
    system: str | None = None,
) -> list[tuple[list[int], list[int]]]:
    """Token ids of each turn as (prompt_ids, answer_ids); the answer ids end with the stop token."""
    encoded = []
    for index, (prompt, answer) in enumerate(template.render_turns(turns, system)):
        prompt = prompt.replace(BOS_PLACEHOLDER, tokenizer.bos_token or "")
        prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
        if index == 0 and template.add_bos and tokenizer.bos_token_id is not None:
            prompt_ids = [tokenizer.bos_token_id] + prompt_ids
        answer = answer.replace(EOS_PLACEHOLDER, tokenizer.eos_token or "")
        answer_ids = tokenizer.encode(answer, add_special_tokens=False) if answer else []
        encoded.append((prompt_ids, answer_ids))
    return encoded


def encode_prompt(
    tokenizer,
    template: Template,
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


def stop_token_ids(tokenizer, template: Template) -> list[int]:
    """Token ids that end a reply: the template's stop words that are single tokens, and EOS."""
    ids = []
    for word in template.stop_words:
        word_ids = tokenizer.encode(word, add_special_tokens=False)
        if len(word_ids) == 1:
            ids.append(word_ids[0])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return list(dict.fromkeys(ids))


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
    name="qwen3",
    notes="ChatML as in Qwen3 (no default system prompt; thinking disabled in training samples).",
    default_system=None,
    user_format="<|im_start|>user\n{query}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
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
    notes="meta-llama/Llama-2-*-chat: <s>[INST] q [/INST] a </s> per turn, <<SYS>> inside the first [INST].",
    system_format="<<SYS>>\n{system}\n<</SYS>>\n\n",
    user_format="[INST] {system}{query} [/INST]",
    answer_prefix=" ",
    answer_suffix=" {eos}",
    turn_separator="{bos}",
    add_bos=True,
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
    """The template name for a model type, or a UserError asking for --template."""
    if model_type in MODEL_TYPE_TEMPLATES:
        return MODEL_TYPE_TEMPLATES[model_type]
    raise UserError(
        f"cannot tell which chat template {model_path} (model type {model_type!r}) uses; "
        f"pass --template, one of: {', '.join(sorted(TEMPLATES))}"
    )
