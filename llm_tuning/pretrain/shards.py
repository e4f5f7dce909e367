"""Pretraining text as zstd-compressed jsonl shards: validate, write per source, read back.

Layout written by `write_shards` (one directory per corpus):

    <out_dir>/manifest.json                       sources, line counts, shard files
    <out_dir>/<source>/<source>-00000.jsonl.zst   N lines each, `{"text": ...}` per line, in input order
    <out_dir>/<source>/heldout.jsonl.zst          the first `heldout_lines` lines, kept out of training

A source is one input file (its name without extension). The manifest is what the mixture
calculator and the training script read; the shards are what `datasets` streams.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..atomic import atomic_directory
from ..cli import UserError
from ..records import not_utf8_error, parse_json_line

SHARD_SUFFIX = ".jsonl.zst"
HELDOUT_FILE = "heldout" + SHARD_SUFFIX
MANIFEST_FILE = "manifest.json"
TEXT_KEY = "text"  # the key every shard line uses, whatever the input's key was


@dataclass
class SourceStats:
    """What the manifest records about one source."""

    input: str
    lines: int = 0
    chars: int = 0
    heldout_lines: int = 0
    shards: list[str] = field(default_factory=list)  # paths relative to the corpus directory
    heldout: str | None = None


def source_name(path: str | Path) -> str:
    """`data/zh_wiki.jsonl` -> `zh_wiki`."""
    name = Path(path).name
    for suffix in (".jsonl.zst", ".jsonl", ".json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def read_texts(path: str | Path, text_key: str = TEXT_KEY) -> Iterator[str]:
    """The `text_key` string of every line of a jsonl file (plain or .zst); blank lines are skipped.

    A line that is not a JSON object with a non-empty string under `text_key` stops with
    `file:line: what is wrong`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        with _open_text(path) as lines:
            for lineno, line in enumerate(lines, start=1):
                if line.strip():
                    yield _line_text(line, text_key, f"{path}:{lineno}")
    except UnicodeDecodeError:
        with _open_bytes(path) as raw_lines:
            raise not_utf8_error(path, raw_lines) from None


def _line_text(line: str, text_key: str, where: str) -> str:
    record = parse_json_line(line, where)
    if text_key not in record:
        found = ", ".join(record) or "no keys"
        raise UserError(f"{where}: no key {text_key!r} (found: {found}); pass --text_key <key>")
    text = record[text_key]
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"{where}: {text_key!r} must be a non-empty string")
    return text


def _open_bytes(path: Path):
    if path.name.endswith(".zst"):
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
    return open(path, "rb")


def _open_text(path: Path):
    if path.name.endswith(".zst"):
        return io.TextIOWrapper(_open_bytes(path), encoding="utf-8")
    return open(path, encoding="utf-8-sig")  # a decoding error surfaces while reading (then located by line)


def _write_shard(path: Path, texts: list[str], level: int) -> None:
    import zstandard

    payload = "".join(json.dumps({TEXT_KEY: t}, ensure_ascii=False) + "\n" for t in texts)
    path.write_bytes(zstandard.ZstdCompressor(level=level).compress(payload.encode("utf-8")))


def _shard_source(input_path: Path, source_dir: Path, source: str, lines_per_shard: int,
                  heldout_lines: int, text_key: str, level: int, progress) -> SourceStats:
    stats = SourceStats(input=str(input_path))
    heldout: list[str] = []
    buffer: list[str] = []

    def flush() -> None:
        shard = source_dir / f"{source}-{len(stats.shards):05d}{SHARD_SUFFIX}"
        _write_shard(shard, buffer, level)
        stats.shards.append(f"{source}/{shard.name}")
        buffer.clear()

    for text in read_texts(input_path, text_key):
        stats.chars += len(text)
        progress.update(1)
        if len(heldout) < heldout_lines:
            heldout.append(text)
            continue
        buffer.append(text)
        stats.lines += 1
        if len(buffer) == lines_per_shard:
            flush()
    if buffer:
        flush()
    if stats.lines == 0:
        raise UserError(f"{input_path}: no lines left for training (it has {len(heldout)}, "
                        f"--heldout_lines takes {heldout_lines})")
    if heldout:
        _write_shard(source_dir / HELDOUT_FILE, heldout, level)
        stats.heldout, stats.heldout_lines = f"{source}/{HELDOUT_FILE}", len(heldout)
    return stats


def write_shards(inputs: list[str | Path], out_dir: str | Path, lines_per_shard: int = 10000,
                 heldout_lines: int = 0, text_key: str = TEXT_KEY, level: int = 10) -> dict:
    """Compress each input jsonl into shards of `lines_per_shard` lines under `out_dir/<source>/`.

    Everything is written to a temporary sibling directory and renamed into place at the end, so a
    bad line or an interruption leaves no half-written corpus. Returns the manifest."""
    from tqdm.auto import tqdm

    if lines_per_shard < 1:
        raise UserError(f"--lines_per_shard must be at least 1, got {lines_per_shard}")
    paths = [Path(p) for p in inputs]
    if not paths:
        raise UserError("no input files; pass one jsonl file per source")
    names = [source_name(p) for p in paths]
    if len(set(names)) != len(names):
        raise UserError(f"two inputs have the same source name ({', '.join(names)}); rename one")
    with atomic_directory(out_dir) as tmp_dir:
        sources = {}
        for path, name in zip(paths, names):
            (tmp_dir / name).mkdir()
            with tqdm(desc=f"Compressing {name}", unit=" lines") as progress:
                sources[name] = asdict(_shard_source(path, tmp_dir / name, name, lines_per_shard,
                                                     heldout_lines, text_key, level, progress))
        manifest = {"lines_per_shard": lines_per_shard, "text_key": TEXT_KEY, "sources": sources}
        (tmp_dir / MANIFEST_FILE).write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n",
                                             encoding="utf-8")
    return manifest


def load_manifest(corpus_dir: str | Path) -> dict:
    """The manifest of a sharded corpus written by `pretrain/compress_data.py`."""
    path = Path(corpus_dir) / MANIFEST_FILE
    if not path.is_file():
        raise UserError(f"{corpus_dir}: no sharded corpus here ({MANIFEST_FILE} is missing); "
                        "make one with pretrain/compress_data.py")
    return json.loads(path.read_text(encoding="utf-8"))


def shard_paths(corpus_dir: str | Path, manifest: dict, source: str) -> list[str]:
    """Absolute paths of a source's training shards, in order."""
    return [str(Path(corpus_dir) / shard) for shard in manifest["sources"][source]["shards"]]


def iter_corpus(corpus_dir: str | Path, include_heldout: bool = False) -> Iterator[str]:
    """Every training text of a sharded corpus, source by source, in order."""
    manifest = load_manifest(corpus_dir)
    for source, stats in manifest["sources"].items():
        files = shard_paths(corpus_dir, manifest, source)
        if include_heldout and stats.get("heldout"):
            files.insert(0, str(Path(corpus_dir) / stats["heldout"]))
        for shard in files:
            yield from read_texts(shard)
