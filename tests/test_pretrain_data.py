"""Pretraining data: shards round-trip, bad lines are refused, mixtures sample as computed."""

from __future__ import annotations

import collections
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from llm_tuning.cli import UserError
from llm_tuning.pretrain.blocks import (
    ResumableStream,
    block_stream,
    mean_tokens_per_text,
    mixed_text_stream,
    pack_sourced_texts,
    pack_texts,
    proportional_quotas,
    realised_token_shares,
)
from llm_tuning.pretrain.mixture import (
    format_table,
    mixture_probabilities,
    mixture_table,
    parse_weights,
    text_probabilities,
)
from llm_tuning.pretrain.shards import iter_corpus, load_manifest, read_texts, write_shards

REPO_ROOT = Path(__file__).resolve().parent.parent
CORPUS_FILES = sorted((REPO_ROOT / "pretrain" / "data").glob("*.jsonl"))


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"content": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    return path


def test_shipped_corpus_is_what_its_script_makes(tmp_path):
    script = REPO_ROOT / "pretrain" / "data" / "make_corpus.py"
    copy = tmp_path / "make_corpus.py"
    copy.write_text(script.read_text(encoding="utf-8"), encoding="utf-8")  # writes next to itself
    subprocess.run([sys.executable, str(copy)], check=True, capture_output=True)
    assert [p.name for p in CORPUS_FILES] == ["en_general.jsonl", "zh_general.jsonl", "zh_medical.jsonl"]
    for shipped in CORPUS_FILES:
        assert (tmp_path / shipped.name).read_bytes() == shipped.read_bytes()


def test_shards_round_trip_every_line_once_in_order(tmp_path):
    zh = [f"第{i}行：中文文本，含\"引号\"和\\反斜杠\n换行" for i in range(23)]
    en = [f"line {i} of English" for i in range(7)]
    inputs = [write_jsonl(tmp_path / "zh.jsonl", zh), write_jsonl(tmp_path / "en.jsonl", en)]
    manifest = write_shards(inputs, tmp_path / "corpus", lines_per_shard=5, heldout_lines=3, text_key="content")

    assert {name: (s["lines"], len(s["shards"]), s["heldout_lines"]) for name, s in manifest["sources"].items()} == {
        "zh": (20, 4, 3), "en": (4, 1, 3)}
    assert load_manifest(tmp_path / "corpus") == manifest
    shard_texts = [list(read_texts(tmp_path / "corpus" / shard)) for shard in manifest["sources"]["zh"]["shards"]]
    assert [len(t) for t in shard_texts] == [5, 5, 5, 5]
    assert list(read_texts(tmp_path / "corpus" / "zh" / "heldout.jsonl.zst")) == zh[:3]
    assert list(iter_corpus(tmp_path / "corpus", include_heldout=True)) == zh + en
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_compress_data_cli_prints_counts_and_refuses_a_bad_line(tmp_path, run):
    good = run("pretrain/compress_data.py", "--inputs", *CORPUS_FILES, "--output_dir", tmp_path / "corpus",
               "--lines_per_shard", "250", "--heldout_lines", "40")
    assert good.returncode == 0, good.stderr
    rows = {line.split()[0]: line.split()[1:] for line in good.stdout.splitlines()[1:4]}
    assert rows == {"en_general": ["360", "2", "40"], "zh_general": ["560", "3", "40"],
                    "zh_medical": ["260", "2", "40"]}

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "also fine"}\n{"body": "no text"}\n', encoding="utf-8")
    result = run("pretrain/compress_data.py", "--inputs", bad, "--output_dir", tmp_path / "bad_corpus")
    assert result.returncode == 2
    assert (result.stderr.strip().splitlines()[-1]
            == f"error: {bad}:3: no key 'text' (found: body); pass --text_key <key>")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "bad_corpus").exists() and not list(tmp_path.glob(".bad_corpus*"))


@pytest.mark.parametrize("content, message", [
    ('{"text": "ok"}\n{"text": \n', "2: not valid JSON"),
    ('["a list"]\n', "1: expected a JSON object, got list"),
    ('{"text": ""}\n', "1: 'text' must be a non-empty string"),
])
def test_bad_lines_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "in.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=f"^{path}:{message}"):
        list(read_texts(path))


def test_mixture_probabilities_match_hand_computed_values():
    sizes = {"zh": 600, "med": 200, "en": 200}
    assert mixture_probabilities(sizes) == pytest.approx({"zh": 0.6, "med": 0.2, "en": 0.2})
    # med weight 3: scores 600, 600, 200 of 1400
    weights = parse_weights("med=3", list(sizes))
    assert weights == {"zh": 1.0, "med": 3.0, "en": 1.0}
    assert mixture_probabilities(sizes, weights) == pytest.approx({"zh": 3 / 7, "med": 3 / 7, "en": 1 / 7})
    # alpha 0.5: sqrt sizes 24.49, 14.14, 14.14
    root = {k: math.sqrt(v) for k, v in sizes.items()}
    assert mixture_probabilities(sizes, alpha=0.5) == pytest.approx({k: v / sum(root.values())
                                                                    for k, v in root.items()})
    assert mixture_probabilities(sizes, alpha=0.0) == pytest.approx(dict.fromkeys(sizes, 1 / 3))
    rows = mixture_table(sizes, weights, mixture_probabilities(sizes, weights), total_draws=1400)
    assert [round(r.epochs, 6) for r in rows] == [1.0, 3.0, 1.0]  # 600/600, 600/200, 200/200
    assert "med" in format_table(rows) and "42.86%" in format_table(rows)


@pytest.mark.parametrize("spec, message", [
    ("fr=2", "unknown source 'fr'; the sources are: zh, en"),
    ("zh", "'zh' is not source=weight"),
    ("zh=lots", "the weight of zh must be a number"),
    ("zh=-1", "must be >= 0"),
])
def test_bad_mixture_weights_are_refused(spec, message):
    with pytest.raises(UserError, match=message):
        parse_weights(spec, ["zh", "en"])


def test_interleaved_stream_draws_sources_with_the_mixture_probabilities(tmp_path):
    """Binomial standard error at 6000 draws is <= 0.0065; the tolerance 0.02 is 3 of them."""
    inputs = [write_jsonl(tmp_path / f"{name}.jsonl", [f"{name} {i}" for i in range(size)])
              for name, size in [("a", 50), ("b", 20), ("c", 10)]]
    write_shards(inputs, tmp_path / "corpus", lines_per_shard=8, text_key="content")
    probabilities = mixture_probabilities({"a": 50, "b": 20, "c": 10}, {"a": 1, "b": 1, "c": 5})  # 50:20:50
    draws = 6000
    texts = [row["text"]
             for row in itertools.islice(mixed_text_stream(tmp_path / "corpus", probabilities, seed=7), draws)]
    shares = collections.Counter(text.split()[0] for text in texts)
    for name, probability in probabilities.items():
        assert shares[name] / draws == pytest.approx(probability, abs=0.02)
    # each source is read in order and starts over when it ends (c, 10 lines, repeats ~250 times)
    assert [t for t in texts if t.startswith("c")][:12] == [f"c {i}" for i in range(10)] + ["c 0", "c 1"]
    again = [row["text"]
             for row in itertools.islice(mixed_text_stream(tmp_path / "corpus", probabilities, seed=7), 200)]
    other_seed = [row["text"]
                  for row in itertools.islice(mixed_text_stream(tmp_path / "corpus", probabilities, seed=8), 200)]
    assert again == texts[:200] and other_seed != texts[:200]


class CharTokenizer:
    """One id per character, EOS = 0: packing is checked by hand."""

    eos_token_id = 0

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[ord(ch) for ch in text] for text in texts]}


def test_pack_texts_joins_with_eos_and_drops_the_tail():
    blocks = pack_texts(["ab", "cde", "f"], CharTokenizer(), block_size=3)
    # a b EOS | c d e | EOS f EOS -> the stream is exactly 9 ids, three blocks
    assert blocks == [[97, 98, 0], [99, 100, 101], [0, 102, 0]]
    assert pack_texts(["ab", "cde", "fg"], CharTokenizer(), block_size=4) == [[97, 98, 0, 99], [100, 101, 0, 102]]


def test_pack_sourced_texts_counts_each_blocks_tokens_per_source():
    blocks, counts = pack_sourced_texts(["ab", "cde", "f"], [0, 1, 0], 2, CharTokenizer(), block_size=3)
    # a b EOS (source 0) | c d e (1) | EOS (1) f EOS (0)
    assert blocks == [[97, 98, 0], [99, 100, 101], [0, 102, 0]]
    assert counts == [[3, 0], [0, 3], [2, 1]]


def test_text_probabilities_turn_token_shares_into_draw_probabilities():
    # equal token shares from texts of 10 and 30 tokens: the short source is drawn 3 times as often
    assert text_probabilities({"a": 0.5, "b": 0.5}, {"a": 10, "b": 30}) == pytest.approx({"a": 0.75, "b": 0.25})


def test_proportional_quotas_split_the_held_out_budget_over_every_source():
    assert proportional_quotas({"zh": 60, "med": 30, "en": 10}, 20) == {"zh": 12, "med": 6, "en": 2}
    assert proportional_quotas({"zh": 179, "med": 21, "en": 3}, 10) == {"zh": 8, "med": 1, "en": 1}
    assert proportional_quotas({"zh": 5, "en": 3}, None) == {"zh": 5, "en": 3}
    assert proportional_quotas({"zh": 5, "en": 3}, 100) == {"zh": 5, "en": 3}


@pytest.mark.parametrize("mixture_by", ["texts", "tokens"])
def test_block_stream_counts_the_token_share_of_each_source(tmp_path, mixture_by):
    """Texts of 10 tokens (a) and 30 tokens (b), alpha 0 (equal shares): by texts each source is
    drawn half the time, so b gets 3/4 of the tokens; by tokens each gets half of the tokens."""
    inputs = [write_jsonl(tmp_path / "a.jsonl", ["a" * 9] * 50), write_jsonl(tmp_path / "b.jsonl", ["b" * 29] * 50)]
    write_shards(inputs, tmp_path / "corpus", lines_per_shard=20, text_key="content")
    tokenizer = CharTokenizer()
    per_text = mean_tokens_per_text(tmp_path / "corpus", tokenizer)
    assert per_text == {"a": 10, "b": 30}
    shares = mixture_probabilities({"a": 50 * 10, "b": 50 * 30} if mixture_by == "tokens" else {"a": 50, "b": 50},
                                   alpha=0.0)
    probabilities = text_probabilities(shares, per_text) if mixture_by == "tokens" else shares
    stream = ResumableStream(block_stream(tmp_path / "corpus", probabilities, tokenizer, block_size=16, seed=1))
    blocks = 2000  # ~1600 texts: the standard error of a share is ~0.012
    for _ in itertools.islice(stream, blocks):
        pass
    tokens = stream.state_after(blocks)["source_tokens"]
    assert sum(tokens) == blocks * 16  # every token of every block counted once
    realised = realised_token_shares(["a", "b"], tokens)
    expected = {"a": 0.5, "b": 0.5} if mixture_by == "tokens" else {"a": 0.25, "b": 0.75}
    assert realised == pytest.approx(expected, abs=0.04)
