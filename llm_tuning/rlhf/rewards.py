"""Reward functions for GRPO, called the way TRL's GRPOTrainer calls them.

Each takes the keyword arguments `prompts`, `completions` (the decoded replies), `completion_ids`
and every other dataset column (here `answer`, the reference reply), and returns one float per
completion. `build_reward_functions` turns the names given on the command line into them:

- `exact_answer`  1.0 when the reply's final number equals the final number of the reference
                  answer, else 0.0 (`final_number` reads Arabic digits, half- or full-width, with
                  sign, thousands separators and decimals, and Chinese numerals such as 八十二)
- `format`        1.0 when the reply matches a regular expression (`re.search`); the default asks
                  for an equation that ends with its result: `... = 82`, then only punctuation
- `reward_model`  the score of a reward model trained by RLHF/reward_model.py on prompt + reply
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from fractions import Fraction

from ..cli import UserError

REWARD_NAMES = ("exact_answer", "format", "reward_model")
# One line: something, "=", a number, then nothing but punctuation, spaces or emoji.
DEFAULT_FORMAT_PATTERN = r"^[^=\n]*\S[ \t]*=[ \t]*-?\d+(?:\.\d+)?[^\w\n]*$"

# A number in Arabic digits: an optional sign, thousands separators or plain digits, decimals.
ARABIC_NUMBER = r"[-−负]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
CHINESE_DIGITS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7,
                  "八": 8, "九": 9}
CHINESE_UNITS = {"十": 10, "百": 100, "千": 1000}
CHINESE_SECTIONS = {"万": 10**4, "亿": 10**8}
CHINESE_NUMBER = "负?[" + "".join([*CHINESE_DIGITS, *CHINESE_UNITS, *CHINESE_SECTIONS]) + "]+"
# Not the tail of a word or of another number ("Qwen2", "v1.5"); CJK text right before is fine.
NUMBER = re.compile(f"(?<![A-Za-z0-9_.]){ARABIC_NUMBER}|{CHINESE_NUMBER}")


def chinese_numeral_value(text: str) -> int | None:
    """八十二 -> 82, 一百零五 -> 105, 两万三千 -> 23000, 十五 -> 15; None for a bare unit such as 万."""
    if not any(ch in CHINESE_DIGITS or ch == "十" for ch in text):
        return None
    total = section = digit = 0
    previous_was_digit = False
    for ch in text:
        if ch in CHINESE_DIGITS:
            # Digits read one by one (一二三 = 123) append; after a unit a digit starts afresh.
            digit = digit * 10 + CHINESE_DIGITS[ch] if previous_was_digit else CHINESE_DIGITS[ch]
            previous_was_digit = True
            continue
        previous_was_digit = False
        if ch in CHINESE_UNITS:
            section += (digit or 1) * CHINESE_UNITS[ch]
        else:
            total += (section + digit) * CHINESE_SECTIONS[ch]
            section = 0
        digit = 0
    return total + section + digit


def number_value(token: str) -> Fraction | None:
    negative = token[0] in "-−负"
    body = token[1:] if negative else token
    if body[0].isdigit():
        value = Fraction(body.replace(",", ""))
    else:
        integer = chinese_numeral_value(body)
        if integer is None:
            return None
        value = Fraction(integer)
    return -value if negative else value


def final_number(text: str) -> Fraction | None:
    """The last number written in `text` (exactly, as a fraction), or None when there is none."""
    # NFKC turns full-width digits and signs (８２, －３) into ASCII.
    text = unicodedata.normalize("NFKC", text or "")
    values = [number_value(match.group()) for match in NUMBER.finditer(text)]
    values = [v for v in values if v is not None]
    return values[-1] if values else None


def completion_text(completion) -> str:
    """A completion as text: a string, or (conversational data) the content of its last message."""
    if isinstance(completion, list):
        return completion[-1]["content"] if completion else ""
    return completion


def exact_answer(completions: Sequence, answer: Sequence[str], **kwargs) -> list[float]:
    """1.0 where the reply's final number equals the reference answer's final number."""
    rewards = []
    for completion, reference in zip(completions, answer, strict=True):
        got = final_number(completion_text(completion))
        rewards.append(float(got is not None and got == final_number(reference)))
    if "log_metric" in kwargs:  # TRL passes it: the share of exact answers is the run's accuracy
        kwargs["log_metric"]("accuracy", sum(rewards) / max(len(rewards), 1))
    return rewards


class FormatReward:
    """1.0 where `re.search(pattern, reply.strip())` finds a match (^ and $ anchor the whole reply)."""

    __name__ = "format"

    def __init__(self, pattern: str = DEFAULT_FORMAT_PATTERN):
        try:
            self.pattern = re.compile(pattern)
        except re.error as err:
            raise UserError(f"--format_pattern {pattern!r} is not a valid regular expression ({err})") from None

    def __call__(self, completions: Sequence, **kwargs) -> list[float]:
        return [float(self.pattern.search(completion_text(c).strip()) is not None) for c in completions]


class RewardModelReward:
    """The reward model's score of prompt + reply, on token ids as the reward model was trained:
    the reply with its stop token (TRL's own reward-model path scores re-tokenized text without it)."""

    __name__ = "reward_model"

    def __init__(self, reward_model, tokenizer):
        self.reward_model = reward_model
        self.tokenizer = tokenizer

    def __call__(self, prompts: Sequence[str], completion_ids: Sequence[Sequence[int]], **kwargs) -> list[float]:
        from .reward_model import reward_scores

        prompt_ids = self.tokenizer(text=list(prompts))["input_ids"]
        sequences = [list(p) + list(c) for p, c in zip(prompt_ids, completion_ids, strict=True)]
        return reward_scores(self.reward_model, sequences, self.tokenizer.pad_token_id).tolist()


def build_reward_functions(names: Sequence[str], tokenizer=None, format_pattern: str | None = None,
                           reward_model_path: str | None = None, trust_remote_code: bool = False,
                           dtype: str = "auto") -> list[Callable]:
    """The reward functions for `names`, in order (a reward model loaded in `dtype`); a UserError
    names an unknown one."""
    unknown = [name for name in names if name not in REWARD_NAMES]
    if unknown or not names:
        raise UserError(f"unknown reward function {unknown[0]!r}; choose from: {', '.join(REWARD_NAMES)}"
                        if unknown else f"pass --reward_funcs, one or more of: {', '.join(REWARD_NAMES)}")
    if len(set(names)) < len(names):
        raise UserError(f"--reward_funcs {' '.join(names)}: each reward function may appear once")
    functions = []
    for name in names:
        if name == "exact_answer":
            functions.append(exact_answer)
        elif name == "format":
            functions.append(FormatReward(format_pattern or DEFAULT_FORMAT_PATTERN))
        else:
            if not reward_model_path:
                raise UserError("the reward_model reward needs --reward_model, the output directory of "
                                "RLHF/reward_model.py")
            from .reward_model import load_reward_model

            model = load_reward_model(reward_model_path, dtype, trust_remote_code)
            model.config.pad_token_id = tokenizer.pad_token_id
            functions.append(RewardModelReward(model, tokenizer))
    return functions
