"""Loading tokenizers and models, resolving LoRA targets, attaching adapters."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from .cli import UserError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def from_pretrained_dtype(dtype: str) -> str | torch.dtype:
    """What `from_pretrained(dtype=...)` gets for `--dtype`: one of DTYPES, or `auto_dtype()`.
    Every loader of a model for training or inference goes through here."""
    if dtype != "auto" and dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r} is unknown; choose auto, {', '.join(DTYPES)}")
    return auto_dtype() if dtype == "auto" else DTYPES[dtype]


def load_tokenizer(path: str, trust_remote_code: bool = False, padding_side: str | None = None):
    """A tokenizer with a pad token (LLaMA-style tokenizers ship none; we pad with unk, else eos)."""
    from transformers import AutoTokenizer

    require_local_path(path, "load a tokenizer from")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load a tokenizer from {path}: {load_failure(path, err)}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    if padding_side is not None:
        tokenizer.padding_side = padding_side
    return tokenizer


def read_model_type(path: str, trust_remote_code: bool = False) -> str | None:
    """The `model_type` in a model's config, without loading weights."""
    require_local_path(path, "read the model config of")
    config_file = Path(path) / "config.json"
    if config_file.is_file():
        return json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code).model_type
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read the model config of {path}: {load_failure(path, err)}") from None


ROPE_SCALINGS = ("linear", "dynamic", "yarn")
# The linear layers of every LLaMA-shaped decoder (LLaMA, Mistral, Qwen1.5+, InternLM, Baichuan's MLP).
LLAMA_PROJECTIONS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


def load_model(
    path: str,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    quantization_bit: int | None = None,
    device_map: str | dict | None = None,
    rope_scaling: str | None = None,
    rope_factor: float = 2.0,
    attn_implementation: str | None = None,
):
    """A causal LM as users load it: by hub id or local path, in the asked dtype, 4/8-bit if asked,
    with its RoPE stretched by `rope_factor` if `rope_scaling` is given, on `attn_implementation`
    (default: transformers' choice, sdpa)."""
    from transformers import AutoModelForCausalLM

    require_local_path(path, "load a model from")
    kwargs: dict = {"trust_remote_code": trust_remote_code, "dtype": from_pretrained_dtype(dtype)}
    if quantization_bit is not None:
        kwargs["quantization_config"] = quantization_config(quantization_bit, dtype)
    if device_map is not None:
        kwargs["device_map"] = device_map
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if rope_scaling is not None:
        kwargs["config"] = scaled_rope_config(path, rope_scaling, rope_factor, trust_remote_code)
    start_deepspeed_comm_for_zero3()
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load a model from {path}: {load_failure(path, err)}") from None


def auto_dtype() -> str | torch.dtype:
    """`--dtype auto`: the checkpoint's own dtype on a GPU, float32 on a CPU. Most checkpoints say
    bfloat16 (SmolLM2, Qwen2.5, Llama-3), and a CPU without bf16 instructions runs bf16 matmuls
    emulated: one forward + backward of SmolLM2-135M on 8 rows took 111 CPU-seconds in bf16 here,
    6.6 in float32.
    `--bf16 true --use_cpu true` still trains in bf16 (autocast over the float32 weights)."""
    return "auto" if torch.cuda.is_available() else torch.float32


def start_deepspeed_comm_for_zero3() -> None:
    """Under ZeRO-3, `from_pretrained` shards the weights while loading them (`deepspeed.zero.Init`),
    and zero.Init counts the processes through DeepSpeed's own comm layer before starting it. With
    `--use_cpu` the Trainer starts only torch.distributed (gloo), so zero.Init would count one process
    and reject the batch size the Trainer filled for all of them. Wrap the running process group first
    (what `deepspeed.initialize` does later anyway; on GPUs it is already wrapped, and this is a no-op)."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled() and torch.distributed.is_initialized():
        import deepspeed

        deepspeed.init_distributed()


def quantization_config(bits: int, dtype: str = "auto"):
    """bitsandbytes settings for QLoRA: NF4 with double quantization, or LLM.int8()."""
    import importlib.util

    from transformers import BitsAndBytesConfig

    if bits not in (4, 8):
        raise UserError(f"--quantization_bit must be 4 or 8, got {bits}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(f"--quantization_bit {bits} needs bitsandbytes (pip install 'bitsandbytes>=0.45'; "
                        "0.45+ also runs on CPU)")
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=qlora_compute_dtype(dtype),
    )


def qlora_compute_dtype(dtype: str) -> torch.dtype:
    """The dtype 4-bit layers compute in: the one asked for, else bfloat16 on a GPU that has it
    (float32 there would double the activation memory for nothing), else float32 (CPU)."""
    if dtype in DTYPES:
        return DTYPES[dtype]
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def scaled_rope_config(path: str, kind: str, factor: float, trust_remote_code: bool = False):
    """The model's config with RoPE scaled for a context `factor` times its trained length.

    linear: positions divided by factor (needs some fine-tuning at the new length);
    dynamic: NTK-aware base stretch that grows only past the trained length (works without training);
    yarn: NTK-by-parts interpolation plus attention temperature."""
    from transformers import AutoConfig

    if kind not in ROPE_SCALINGS:
        raise UserError(f"--rope_scaling {kind!r} is unknown; choose one of: {', '.join(ROPE_SCALINGS)}")
    if factor <= 1:
        raise UserError(f"--rope_factor must be above 1 (how many times longer the context gets), got {factor}")
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read the model config of {path}: {load_failure(path, err)}") from None
    rope = getattr(config, "rope_parameters", None)
    if not isinstance(rope, dict) or "rope_theta" not in rope:
        raise UserError(f"--rope_scaling works on models with standard RoPE settings; {path} "
                        f"({config.model_type}) has none (remote-code models configure RoPE their own way)")
    config.rope_parameters = {**rope, "rope_type": kind, "factor": float(factor),
                              "original_max_position_embeddings": config.max_position_embeddings}
    return config


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
    """Attach one adapter, or several combined with peft's weighted adapter merge.

    Several adapters stay loaded as adapter0, adapter1, … next to "mixed" (the active one);
    `model.set_adapter("adapter1")` switches to one of them, `set_adapter("mixed")` back."""
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
        # "cat" stacks the low-rank factors, so the mixed update is exactly sum(w_i * delta_W_i)
        # ("linear" would mix A and B separately and add cross terms); any ranks may be mixed.
        model.add_weighted_adapter(names, weights, adapter_name="mixed", combination_type="cat")
        model.set_adapter("mixed")
    model.eval()
    return model


class AdapterMenu:
    """The choices a person switches between in a chat: each loaded adapter (by its directory
    name), their weighted mix when there are several, and the base model with adapters off."""

    BASE = "base"
    MIXED = "mixed"

    def __init__(self, model, adapter_paths: list[str]):
        self.model = model
        self.names: dict[str, str] = {}  # shown name -> peft adapter name (see load_adapters)
        for index, path in enumerate(adapter_paths):
            shown = Path(path).name
            self.names[shown if shown not in self.names else str(path)] = f"adapter{index}"
        if len(adapter_paths) > 1:
            self.names[self.MIXED] = "mixed"
        self.current = self.MIXED if len(adapter_paths) > 1 else next(iter(self.names), self.BASE)

    def choices(self) -> list[str]:
        return [*self.names, self.BASE] if self.names else []

    def check(self, choice: str) -> str:
        if choice not in self.choices():
            raise UserError(f"no adapter {choice!r}; choose one of: {', '.join(self.choices()) or '(none loaded)'}")
        return choice

    def select(self, choice: str) -> None:
        self.current = self.check(choice)

    @contextlib.contextmanager
    def active(self, choice: str | None = None):
        """Run the body with `choice` (default: the selected one) switched on."""
        choice = choice or self.current
        if not self.names:
            yield
        elif choice == self.BASE:
            with self.model.disable_adapter():
                yield
        else:
            self.model.set_adapter(self.names[self.check(choice)])
            yield


def adapter_base_model(adapter_path: str) -> str:
    """The base model an adapter was trained on, as recorded in its adapter_config.json."""
    config_file = Path(adapter_path) / "adapter_config.json"
    if not config_file.is_file():
        raise UserError(f"{adapter_path}: no adapter here (adapter_config.json is missing)")
    base = json.loads(config_file.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise UserError(f"{adapter_path}: the adapter does not record its base model; pass --base")
    return base


def require_single_tokens(tokenizer, words: list[str], why: str) -> None:
    """Stop if the tokenizer splits a marker the template relies on being one (special) token."""
    split = [word for word in words if len(tokenizer.encode(word, add_special_tokens=False)) != 1]
    if split:
        raise UserError(f"this tokenizer splits {', '.join(split)} into several tokens, but {why}; "
                        "is it the family's own tokenizer?")


def looks_local(path: str) -> bool:
    """Whether `path` names a local directory rather than a hub id (`org/name` or `name`): it starts
    with ./, ../, / or ~, has more parts than a hub id, or its first part is a local directory
    (weights/my_run)."""
    if path.startswith((".", "~")) or Path(path).is_absolute():
        return True
    parts = Path(path).parts
    return len(parts) > 2 or (len(parts) == 2 and Path(parts[0]).is_dir())


def require_local_path(path: str, action: str) -> None:
    """A local path that is not there fails at once (`cannot <action> <path>: …`), instead of after
    a minute of hub retries."""
    if looks_local(path) and not Path(path).expanduser().exists():
        raise UserError(f"cannot {action} {path}: no such local directory (a hub id looks like org/name)")


def load_failure(path: str, err: BaseException) -> str:
    """Why `from_pretrained(path)` failed, said plainly when the path is simply not there."""
    if not Path(path).exists():
        return "no such local directory, and it could not be fetched as a hub id (offline, or no such repo)"
    return first_line(err)


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
