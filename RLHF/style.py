"""The style the RLHF tutorial's preference is about (a module of this folder, not a command).

A *lively* reply ends with an exclamation mark and an emoji ("3 + 4 = 7! 😊", "蜜蜂会酿蜂蜜！😊"),
a *flat* one with a full stop. make_rlhf_data.py writes the data in these styles; evaluate.py
measures how often a policy's replies are lively.
"""

from __future__ import annotations

import re

# One emoji: the tiny tokenizer splits it into 4 byte tokens, one fixed sequence is easy to learn.
EMOJI = "😊"
# A reply is lively when an exclamation mark (ASCII or full-width) is followed by the emoji.
LIVELY_PATTERN = re.compile(r"[!！]\s*" + EMOJI)


def is_lively(reply: str) -> bool:
    return LIVELY_PATTERN.search(reply) is not None


def styled(answer: str, chinese: bool, lively: bool) -> str:
    if lively:
        return f"{answer}！{EMOJI}" if chinese else f"{answer}! {EMOJI}"
    return f"{answer}。" if chinese else f"{answer}."
