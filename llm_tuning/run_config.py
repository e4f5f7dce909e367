"""The run config: `llm_tuning.json`, written beside every trained adapter or model.

It records what later steps need to use the run as it was trained: the base model, the chat
template, trust_remote_code, RoPE scaling, the training stage. Every trainer writes it with
`save_run_config`. Whatever loads a run again (chat.py, the web demo, the API server, eval.py,
merge_lora.py, the RLHF scripts) reads it through `run_settings`, which also applies the flags a
user gave on the command line, so one rule decides what a flag overrides and what the defaults are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

RUN_CONFIG_FILE = "llm_tuning.json"
DEFAULT_ROPE_FACTOR = 2.0


def save_run_config(output_dir: str | Path, **config) -> None:
    """Record what chat.py / merge_lora.py need to use the adapter: template, base model, data."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / RUN_CONFIG_FILE).write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n",
                                                    encoding="utf-8")


def read_run_config(run_dir: str | Path) -> dict:
    """The recorded run config of an adapter or model directory; {} when there is none (a hub model)."""
    path = Path(run_dir) / RUN_CONFIG_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


@dataclass(frozen=True)
class RunSettings:
    """How to load a trained run again: what it recorded, with the user's flags winning."""

    recorded: dict  # the whole llm_tuning.json ({} for a model not trained here)
    trust_remote_code: bool
    rope_scaling: str | None
    rope_factor: float

    @property
    def template(self) -> str | None:
        """The chat template the run was trained with (None when it records none)."""
        return self.recorded.get("template")

    @property
    def rope(self) -> dict:
        """The RoPE keyword arguments of `llm_tuning.modeling.load_model`."""
        return {"rope_scaling": self.rope_scaling, "rope_factor": self.rope_factor}


def run_settings(run_dir: str | Path, *, trust_remote_code: bool | None = None, rope_scaling: str | None = None,
                 rope_factor: float | None = None) -> RunSettings:
    """The settings to load the run in `run_dir` with: each argument that is given (not None)
    wins over the record; remote code stays off unless the run or the user turned it on."""
    recorded = read_run_config(run_dir)
    return RunSettings(
        recorded=recorded,
        trust_remote_code=bool(recorded.get("trust_remote_code", False)) if trust_remote_code is None
        else trust_remote_code,
        rope_scaling=rope_scaling or recorded.get("rope_scaling"),
        rope_factor=rope_factor or recorded.get("rope_factor", DEFAULT_ROPE_FACTOR),
    )
