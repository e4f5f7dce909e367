"""Vocabulary extension: add a new tokenizer's pieces to a base tokenizer, initialise their embeddings.

Old token ids never change: new pieces get the ids after the last existing one, so a base model's
embedding rows keep meaning the same tokens. Two kinds of base tokenizer are handled:

- sentencepiece (LLaMA-style `tokenizer.model`): new pieces are appended to the model proto with
  score 0, the way Chinese-LLaMA merged its Chinese pieces;
- Hugging Face fast BPE (`tokenizer.json`; Qwen, LLaMA-3, GLM-4 …): each new piece becomes a vocab
  entry plus the merges that build it from the tokens the old model splits it into, appended after
  every old merge so that old merges still fire first.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from pathlib import Path

from ..cli import UserError

VOCAB_EXTENSION_FILE = "vocab_extension.json"


def embedding_module_names(model) -> list[str]:
    """Short names of the input embedding and output projection (`embed_tokens`, `lm_head`, …):
    what LoRA's `modules_to_save` must list for new tokens to be learned and saved."""
    wanted = {id(model.get_input_embeddings()), id(model.get_output_embeddings())}
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if id(module) in wanted})


def read_vocab_extension(model_path: str | Path) -> dict | None:
    """What extend_embeddings.py recorded in a model folder (old and new vocabulary sizes), if any."""
    path = Path(model_path) / VOCAB_EXTENSION_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


# --- Training a sentencepiece model on the corpus --------------------------------------------------


def train_sentencepiece(texts: Iterable[str], vocab_size: int, model_type: str = "bpe",
                        character_coverage: float = 0.9995, byte_fallback: bool = False) -> bytes:
    """A sentencepiece model (serialized proto) trained on `texts`; `byte_fallback` spells unknown
    characters as <0x..> byte pieces, as LLaMA's tokenizer does (off for a piece set to merge)."""
    import sentencepiece as spm

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type=model_type,
            character_coverage=character_coverage, split_digits=True, byte_fallback=byte_fallback,
            max_sentence_length=1 << 16, minloglevel=2,
        )
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1]
        raise UserError(f"sentencepiece could not train a {vocab_size}-piece model on this corpus ({first}); "
                        "lower --vocab_size or give it more text") from None
    return model.getvalue()


def sentencepiece_pieces(model_proto: bytes) -> list[str]:
    """The ordinary pieces of a sentencepiece model, in id order (no <unk>, <s>, bytes …)."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_proto)
    normal = sentencepiece_model_pb2.ModelProto.SentencePiece.NORMAL
    return [p.piece for p in proto.pieces if p.type == normal]


# --- Merging new pieces into a base tokenizer ------------------------------------------------------


def merge_into_sentencepiece(base_proto: bytes, pieces: list[str]) -> tuple[bytes, list[str]]:
    """Append the pieces the base model lacks (score 0) after its last piece; returns (model, added)."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(base_proto)
    existing = {p.piece for p in proto.pieces}
    added = []
    for piece in pieces:
        if piece not in existing:
            new = sentencepiece_model_pb2.ModelProto.SentencePiece(piece=piece, score=0.0)
            proto.pieces.append(new)
            existing.add(piece)
            added.append(piece)
    return proto.SerializeToString(), added


def extend_bpe(tokenizer_json: str, pieces: list[str]) -> tuple[str, list[str], int]:
    """Add `pieces` (plain text; sentencepiece's ▁ read as a space) to a fast BPE tokenizer.

    Each piece that the base pre-tokenizer keeps in one chunk becomes a vocab entry, built by
    merges from the tokens the current model splits it into (intermediate tokens of that chain
    are added too). Pieces are added shortest first, so longer ones reuse shorter new tokens.
    Returns (new tokenizer.json, pieces added, intermediate tokens added)."""
    from tokenizers import Tokenizer

    data = json.loads(tokenizer_json)
    model = data["model"]
    if model.get("type") != "BPE":
        raise UserError(f"the base tokenizer's model is {model.get('type')}, not BPE; only BPE and sentencepiece "
                        "tokenizers can be extended")
    vocab: dict[str, int] = model["vocab"]
    merges: list = model["merges"]
    as_strings = bool(merges) and isinstance(merges[0], str)  # older tokenizer.json files write "a b"
    known_merges = {tuple(m.split(" ", 1)) if as_strings else tuple(m) for m in merges}
    next_id = 1 + max([*vocab.values(), *(t["id"] for t in data.get("added_tokens", []))])
    added, intermediates = [], 0
    texts = list(dict.fromkeys(piece.replace("▁", " ") for piece in pieces))  # sentencepiece order
    tokenizer = Tokenizer.from_str(json.dumps(data))
    for length in sorted({len(t) for t in texts}):  # shortest first
        for text in (t for t in texts if len(t) == length):
            form = _bpe_form(tokenizer, text)
            if form is None or form in vocab:
                continue
            parts = [token.value for token in tokenizer.model.tokenize(form)]
            built = parts[0]
            for part in parts[1:]:
                if (built, part) not in known_merges:
                    known_merges.add((built, part))
                    merges.append(f"{built} {part}" if as_strings else [built, part])
                built += part
                if built not in vocab:
                    vocab[built] = next_id
                    next_id += 1
                    intermediates += built != form
            added.append(text)
        tokenizer = Tokenizer.from_str(json.dumps(data))  # longer pieces are split with these merges
    return json.dumps(data, ensure_ascii=False), added, intermediates


def _bpe_form(tokenizer, text: str) -> str | None:
    """The piece as the BPE model sees it (normalized, byte-level mapped), or None when the
    pre-tokenizer splits it: BPE merges never cross pre-token boundaries."""
    if tokenizer.normalizer is not None:
        text = tokenizer.normalizer.normalize_str(text)
    if tokenizer.pre_tokenizer is None:
        return text
    chunks = tokenizer.pre_tokenizer.pre_tokenize_str(text)
    return chunks[0][0] if len(chunks) == 1 else None


TOKENIZER_FILES_TO_COPY = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                           "chat_template.json", "added_tokens.json")


def local_tokenizer_dir(name_or_path: str) -> Path:
    """A folder holding the tokenizer's files: the path itself, or the hub snapshot of them."""
    if Path(name_or_path).is_dir():
        return Path(name_or_path)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name_or_path, allow_patterns=["tokenizer*", "special_tokens_map.json",
                                                                    "added_tokens.json", "chat_template*"]))
    except Exception as err:  # offline, unknown id, gated repo …
        raise UserError(f"cannot get the tokenizer {name_or_path}: {str(err).strip().splitlines()[0]}") from None


def merge_tokenizer_files(base_dir: Path, pieces: list[str], out_dir: Path) -> dict:
    """Write to `out_dir` the base tokenizer with `pieces` added (old ids unchanged).

    A base with `tokenizer.model` (sentencepiece, LLaMA-style) gets the pieces appended to that
    proto, and transformers rebuilds tokenizer.json from it; otherwise its tokenizer.json BPE
    model is extended. Returns a summary: kind, pieces added, intermediate tokens added."""
    import shutil

    out_dir.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES_TO_COPY:
        if (base_dir / name).is_file():
            shutil.copy2(base_dir / name, out_dir / name)
    if (base_dir / "tokenizer.model").is_file():
        merged, added = merge_into_sentencepiece((base_dir / "tokenizer.model").read_bytes(), pieces)
        (out_dir / "tokenizer.model").write_bytes(merged)
        return {"kind": "sentencepiece", "added": added, "intermediate": 0}
    if (base_dir / "tokenizer.json").is_file():
        merged_json, added, intermediate = extend_bpe((base_dir / "tokenizer.json").read_text(encoding="utf-8"), pieces)
        (out_dir / "tokenizer.json").write_text(merged_json, encoding="utf-8")
        return {"kind": "bpe", "added": added, "intermediate": intermediate}
    raise UserError(f"{base_dir} has neither tokenizer.model (sentencepiece) nor tokenizer.json (fast BPE)")


def check_old_ids_unchanged(old_tokenizer, new_tokenizer) -> None:
    """Every token of the old vocabulary keeps its id in the new one."""
    new_vocab = new_tokenizer.get_vocab()
    for token, index in old_tokenizer.get_vocab().items():
        if new_vocab.get(token) != index:
            raise UserError(f"the new tokenizer is not an extension of the old one: token {token!r} has id "
                            f"{new_vocab.get(token)} instead of {index}")


def token_count(tokenizer, texts: Iterable[str]) -> int:
    return sum(len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"])


# --- Embeddings for the new tokens -------------------------------------------------------------------


def old_sub_token_ids(old_tokenizer, new_tokenizer, token_id: int) -> list[int]:
    """The old tokens that spell a new token: its piece as the tokenizer model stores it, split by
    the old model. Going through text instead would add sentencepiece's dummy-prefix `▁` to a
    word-internal piece (`我们` -> `▁`, …) and turn a byte-level BPE piece that is part of a UTF-8
    character into U+FFFD; the stored piece keeps `▁` only where it has one, and bytes as bytes."""
    backend = getattr(old_tokenizer, "backend_tokenizer", None)
    if backend is None:  # a Python (remote-code) tokenizer has no model to split pieces with
        return old_tokenizer.encode(new_tokenizer.decode([token_id]), add_special_tokens=False)
    return [token.id for token in backend.model.tokenize(new_tokenizer.convert_ids_to_tokens(token_id))]


def mean_init_new_embeddings(model, old_tokenizer, new_tokenizer) -> list[int]:
    """Resize the model to the new tokenizer and set each new token's input embedding (and output
    projection row, if untied) to the mean of the rows of the old sub-tokens that spell its piece
    (`old_sub_token_ids`). Old rows are untouched. Returns the new token ids."""
    import torch

    check_old_ids_unchanged(old_tokenizer, new_tokenizer)
    new_ids = list(range(len(old_tokenizer), len(new_tokenizer)))
    rows = model.get_input_embeddings().weight.shape[0]
    if len(new_tokenizer) > rows:
        model.resize_token_embeddings(len(new_tokenizer), mean_resizing=False)
    matrices = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight.data_ptr() != matrices[0].data_ptr():
        matrices.append(output.weight)
    with torch.no_grad():
        for token_id in new_ids:
            sub_ids = old_sub_token_ids(old_tokenizer, new_tokenizer, token_id)
            for matrix in matrices:
                source = matrix[sub_ids] if sub_ids else matrix[: len(old_tokenizer)]
                matrix[token_id] = source.mean(dim=0)
    return new_ids
