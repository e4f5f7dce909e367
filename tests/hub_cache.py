"""A stand-in Hugging Face hub cache, so that a documented command naming a hub id runs offline."""

from __future__ import annotations

import hashlib
from pathlib import Path

from llm_tuning.tiny_models import save_tiny_model


def save_hub_cache(cache_dir: str | Path, stand_ins: dict[str, str]) -> Path:
    """A Hugging Face hub cache holding a tiny model of `arch` under each hub id of `stand_ins`.

    With `HF_HUB_CACHE=cache_dir HF_HUB_OFFLINE=1`, `from_pretrained("Qwen/Qwen2.5-7B-Instruct")`
    then loads the tiny stand-in, so a documented command runs offline as it is written."""
    cache_dir = Path(cache_dir)
    for repo_id, arch in stand_ins.items():
        repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
        revision = hashlib.sha1(repo_id.encode()).hexdigest()  # any 40-hex commit id names the snapshot
        save_tiny_model(arch, repo / "snapshots" / revision)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(revision)
    return cache_dir
