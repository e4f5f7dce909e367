"""The run config: `llm_tuning.json`, written beside every trained adapter or model.

It records what later steps need to use the run as it was trained: the base model, the chat
template, trust_remote_code, RoPE scaling, the training stage. chat.py, merge_lora.py, the RLHF
scripts and the API server read it through `read_run_config`; every trainer writes it with
`save_run_config`.
"""

from __future__ import annotations

import json
from pathlib import Path

RUN_CONFIG_FILE = "llm_tuning.json"


def save_run_config(output_dir: str | Path, **config) -> None:
    """Record what chat.py / merge_lora.py need to use the adapter: template, base model, data."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / RUN_CONFIG_FILE).write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def read_run_config(run_dir: str | Path) -> dict:
    """The recorded run config of an adapter or model directory; {} when there is none (a hub model)."""
    path = Path(run_dir) / RUN_CONFIG_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
