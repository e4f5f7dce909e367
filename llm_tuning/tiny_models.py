"""Tiny random models of real architectures, with a tokenizer trained on the shipped data.

The demo, the benchmarks and the test suite run offline on these: the same model classes, configs
and chat special tokens as the real checkpoints, a few hundred thousand parameters, built in
about a second. A user never needs this module to train a real model. From the command line:

    python -m llm_tuning.testing --arch qwen2 --out models/tiny-qwen2

`ARCHS` holds one stand-in per family (a native architecture with the family's special tokens);
`save_tiny_model` builds and saves one, `save_model_for_tokenizer` one around a real tokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, PreTrainedTokenizerFast

# The checkout this package sits in: its data/ trains the tiny tokenizers.
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
