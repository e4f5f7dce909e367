"""Loading tokenizers and models, resolving LoRA targets, attaching adapters."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .cli import UserError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def load_tokenizer(path: str, trust_remote_code: bool = False, padding_side: str | None = None):
    """A tokenizer with a pad token (LLaMA-style tokenizers ship none; we pad with unk, else eos)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load a tokenizer from {path}: {first_line(err)}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    if padding_side is not None:
        tokenizer.padding_side = padding_side
    return tokenizer


def read_model_type(path: str, trust_remote_code: bool = False) -> str | None:
    """The `model_type` in a model's config, without loading weights."""
    config_file = Path(path) / "config.json"
    if config_file.is_file():
        return json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code).model_type
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read the model config of {path}: {first_line(err)}") from None


def load_model(
    path: str,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    quantization_bit: int | None = None,
    device_map: str | dict | None = None,
):
    """A causal LM as users load it: by hub id or local path, in the asked dtype, 4/8-bit if asked."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs: dict = {"trust_remote_code": trust_remote_code}
    kwargs["dtype"] = "auto" if dtype == "auto" else DTYPES[dtype]
    if quantization_bit is not None:
        if quantization_bit == 4:
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16 if dtype in {"bf16", "bfloat16"} else torch.float32,
            )
        elif quantization_bit == 8:
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        else:
            raise UserError(f"--quantization_bit must be 4 or 8, got {quantization_bit}")
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load a model from {path}: {first_line(err)}") from None


def linear_module_names(model) -> list[str]:
    """Short names (last path component) of the linear layers LoRA can target, lm_head excluded."""
    names = set()
    for full_name, module in model.named_modules():
        is_linear = isinstance(module, torch.nn.Linear) or type(module).__name__ in {"Linear4bit", "Linear8bitLt", "Conv1D"}
        if is_linear and not full_name.endswith("lm_head"):
            names.add(full_name.rsplit(".", 1)[-1])
    return sorted(names)


def resolve_lora_targets(model, targets: str | list[str]) -> str | list[str]:
    """Check every requested target names a linear layer (peft silently skips a partly wrong list).

    `targets` is `all-linear` or comma-separated short module names such as `q_proj,v_proj`."""
    if isinstance(targets, str):
        if targets.strip() == "all-linear":
            return "all-linear"
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    available = linear_module_names(model)
    unknown = [t for t in targets if t not in available]
    if unknown or not targets:
        raise UserError(
            f"LoRA target(s) {', '.join(unknown) or '(none)'} match no linear layer of this model; "
            f"its linear layers are: {', '.join(available)} (or use all-linear)"
        )
    return targets


def load_adapters(model, adapter_paths: list[str], weights: list[float] | None = None):
    """Attach one adapter, or several combined with peft's weighted adapter merge."""
    from peft import PeftModel

    if not adapter_paths:
        return model
    for path in adapter_paths:
        if not (Path(path) / "adapter_config.json").is_file():
            raise UserError(f"{path}: no adapter here (adapter_config.json is missing)")
    model = PeftModel.from_pretrained(model, adapter_paths[0], adapter_name="adapter0")
    for index, path in enumerate(adapter_paths[1:], start=1):
        model.load_adapter(path, adapter_name=f"adapter{index}")
    if len(adapter_paths) > 1:
        weights = weights or [1.0 / len(adapter_paths)] * len(adapter_paths)
        if len(weights) != len(adapter_paths):
            raise UserError(f"got {len(weights)} adapter weights for {len(adapter_paths)} adapters")
        names = [f"adapter{i}" for i in range(len(adapter_paths))]
        model.add_weighted_adapter(names, weights, adapter_name="mixed", combination_type="linear")
        model.set_adapter("mixed")
    model.eval()
    return model


def adapter_base_model(adapter_path: str) -> str:
    """The base model an adapter was trained on, as recorded in its adapter_config.json."""
    config_file = Path(adapter_path) / "adapter_config.json"
    if not config_file.is_file():
        raise UserError(f"{adapter_path}: no adapter here (adapter_config.json is missing)")
    base = json.loads(config_file.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise UserError(f"{adapter_path}: the adapter does not record its base model; pass --base")
    return base


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
