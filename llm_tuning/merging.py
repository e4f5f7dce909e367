"""Merging a LoRA adapter into its base model: merge_lora.py's work, callable from experiments too."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from .atomic import atomic_directory
from .cli import UserError
from .methods import MERGEABLE_PEFT_TYPES
from .modeling import adapter_base_model, load_adapters, load_model, load_tokenizer
from .run_config import run_settings, save_run_config
from .templates import encode_prompt, get_template, stop_token_ids

PROBE_QUERY = "你好！Please introduce yourself."


@torch.no_grad()
def probe_logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=input_ids).logits.float()


def check_mergeable(adapter: str | Path) -> None:
    """Only weight deltas can be added into the base; say why anything else cannot."""
    config_file = Path(adapter) / "adapter_config.json"
    if not config_file.is_file() and (Path(adapter) / "config.json").is_file():
        raise UserError(f"{adapter} is a whole model (freeze or full fine-tuning), not an adapter: "
                        "there is nothing to merge; use it directly (chat.py --base)")
    peft_type = json.loads(config_file.read_text(encoding="utf-8")).get("peft_type") if config_file.is_file() else None
    if peft_type is not None and peft_type not in MERGEABLE_PEFT_TYPES:
        raise UserError(f"{adapter} is a {peft_type} adapter: it adds learned virtual tokens, not weight "
                        "changes, so it cannot be merged into the base; use it with chat.py --adapter")


def merge_adapter(adapter: str | Path, output: str | Path, base: str | None = None, dtype: str = "float32",
                  trust_remote_code: bool | None = None, save_quantized: int | None = None) -> float:
    """Merge `adapter` into its base (default: the one it records) and save the result to `output`
    (written to a temporary directory, renamed when complete). Returns the largest |logit
    difference| between the adapter model and the merged model on a probe prompt."""
    adapter, output = str(adapter), Path(output)
    if output.exists() and any(output.iterdir()):
        raise UserError(f"{output} exists and is not empty; choose a new --output or remove it")
    check_mergeable(adapter)
    base = base or adapter_base_model(adapter)
    settings = run_settings(adapter, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(adapter, settings.trust_remote_code)
    base_model = load_model(base, dtype, settings.trust_remote_code, **settings.rope)
    model = load_adapters(base_model, [adapter])
    template_name = settings.template
    probe = (encode_prompt(tokenizer, get_template(template_name), PROBE_QUERY) if template_name
             else tokenizer.encode(PROBE_QUERY))
    input_ids = torch.tensor([probe], device=model.device)
    adapter_logits = probe_logits(model, input_ids)

    merged = model.merge_and_unload()
    max_diff = (probe_logits(merged, input_ids) - adapter_logits).abs().max().item()
    if template_name:  # so generate() stops where chat.py stops
        stops = stop_token_ids(tokenizer, get_template(template_name))
        merged.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]

    with atomic_directory(output) as tmp_dir:  # an empty `output` is replaced once all is written
        if save_quantized:  # bitsandbytes quantizes while loading: reload the merge through it
            float_dir = tmp_dir / "unquantized"
            merged.save_pretrained(float_dir)
            load_model(str(float_dir), "float32", settings.trust_remote_code,
                       quantization_bit=save_quantized).save_pretrained(tmp_dir)
            shutil.rmtree(float_dir)
        else:
            merged.save_pretrained(tmp_dir)
        tokenizer.save_pretrained(tmp_dir)
        if settings.recorded:
            save_run_config(tmp_dir, **{**settings.recorded, "merged_from": {"base": base, "adapter": adapter}})
    return max_diff
