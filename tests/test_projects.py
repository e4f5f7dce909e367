"""projects/: the HC3 converter's counts by hand, ChatBaichuan-HC3 end to end, RulaiGPT's figures."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from llm_tuning.records import read_records

PROJECTS = Path(__file__).resolve().parent.parent / "projects"
HC3_DIR, RULAI_DIR = PROJECTS / "ChatBaichuan-HC3", PROJECTS / "RulaiGPT"
sys.path[:0] = [str(HC3_DIR), str(RULAI_DIR)]  # the project folders: their scripts and hc3.py

import convert_hc3  # noqa: E402
import hc3  # noqa: E402
import make_data  # noqa: E402
import make_sample  # noqa: E402
import run_hc3  # noqa: E402
import run_rulai  # noqa: E402

SAMPLE = HC3_DIR / "data" / "hc3_sample.jsonl"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_shipped_data_is_what_the_scripts_write(tmp_path):
    assert make_sample.write_sample(tmp_path).read_bytes() == SAMPLE.read_bytes()
    for written in make_data.write_data(tmp_path):
        assert written.read_bytes() == (RULAI_DIR / "data" / written.name).read_bytes()


# --- ChatBaichuan-HC3 ----------------------------------------------------------------------------


@pytest.mark.parametrize(("answers", "expected"), [
    # 12 records; one empty ChatGPT answer; "什么是人工智能？" appears twice -> 1 duplicate.
    ("chatgpt", dict(records=12, answers=12, dropped_empty=1, dropped_duplicate=1, pairs=10, questions=10,
                     train=8, test=2)),
    # 13 human answers; "睡前别玩手机。" twice in one record (whitespace aside) + the repeated record.
    ("human", dict(records=12, answers=13, dropped_empty=0, dropped_duplicate=2, pairs=11, questions=11,
                   train=8, test=3)),
    ("both", dict(records=12, answers=25, dropped_empty=1, dropped_duplicate=3, pairs=21, questions=11)),
])
def test_hc3_converter_counts(answers, expected, tmp_path, capsys):
    counts = convert_hc3.main(convert_hc3.parse_args([
        "--input_file", str(SAMPLE), "--answers", answers, "--test_ratio", "0.2", "--output_dir", str(tmp_path)]))
    assert {k: v for k, v in vars(counts).items() if k in expected} == expected
    train, test = read_jsonl(tmp_path / "train.jsonl"), read_jsonl(tmp_path / "test.jsonl")
    assert (len(train), len(test)) == (counts.train, counts.test)
    assert not {r["q"] for r in train} & {r["q"] for r in test}  # split by question
    assert all(r["a"] == r["a"].strip() and r["a"] for r in train + test)
    assert len({(r["q"], r["a"]) for r in train + test}) == counts.pairs


def test_hc3_split_is_deterministic_and_seeded(tmp_path):
    pairs, _ = hc3.to_pairs(read_records(SAMPLE), "both", 2)
    first = hc3.split_by_question(pairs, 0.3, seed=1)
    assert hc3.split_by_question(pairs, 0.3, seed=1) == first
    assert hc3.split_by_question(pairs, 0.3, seed=2) != first
    assert hc3.split_by_question(pairs, 0.0, seed=1) == (pairs, [])


def test_hc3_malformed_record_exits_2_with_its_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "你好", "chatgpt_answers": ["你好！"]}\n'
                   '{"question": "再见", "chatgpt_answers": "再见！"}\n', encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        convert_hc3.main(convert_hc3.parse_args(["--input_file", str(bad), "--output_dir", str(tmp_path / "o")]))
    assert exit_info.value.code == 2
    assert f"{bad}:2: 'chatgpt_answers' must be a list of strings" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_hc3_end_to_end_on_the_baichuan_stand_in(tmp_path, capsys, warm_recipes):
    args, recipe_argv = run_hc3.parse_args(["--output_dir", str(tmp_path)])
    results = run_hc3.main(args, recipe_argv)
    assert results["counts"]["train"] == 8 and results["train_exact_match"] == 1.0
    # Trained with the Baichuan prompt, as the real project is.
    metadata = json.loads((tmp_path / "tokenized" / "metadata.json").read_text(encoding="utf-8"))
    assert metadata["template"] == "baichuan"
    replies = read_jsonl(tmp_path / "replies.jsonl")
    assert ([r["reply"] for r in replies if r["split"] == "train"]
            == [r["reference"] for r in replies if r["split"] == "train"])
    out = capsys.readouterr().out  # the two lines projects/ChatBaichuan-HC3/README.md quotes
    assert ("records 12, answers 12, dropped_empty 1, dropped_duplicate 1, pairs 10, questions 10, "
            "train 8, test 2") in out
    assert "training answers reproduced exactly: 1.00 of 8" in out


# --- RulaiGPT ------------------------------------------------------------------------------------


def test_rulai_facts_are_new_and_held_out_questions_are_not_trained():
    facts = read_jsonl(RULAI_DIR / "data" / "facts.jsonl")
    for fact in facts:
        assert fact["key"] in fact["answer"]
        assert fact["held_out_question"] not in fact["train_questions"]
    general = read_jsonl(RULAI_DIR / "data" / "general.jsonl")
    assert {g["split"] for g in general} == {"replay", "control"}
    assert sum(g["split"] == "control" for g in general) == len(general) // 2


def test_rulai_learns_the_facts_and_replay_reduces_forgetting(tmp_path, capsys, warm_recipes):
    args, recipe_argv = run_rulai.parse_args(["--output_dir", str(tmp_path)])
    base, facts_only, replay = run_rulai.main(args, recipe_argv)

    # The base (a stand-in taught the general questions) knows none of the invented facts.
    assert (base["train_hit_rate"], base["held_out_hit_rate"]) == (0.0, 0.0)
    assert (base["control_kept"], base["control_loss_shift"]) == (1.0, 0.0)
    control = [g for g in read_jsonl(RULAI_DIR / "data" / "general.jsonl") if g["split"] == "control"]
    replies = read_jsonl(tmp_path / "replies.jsonl")
    assert [r["reply"] for r in replies if r["run"] == "base" and r["kind"] == "control"] == [g["a"] for g in control]

    # Injection works: every trained question is answered with its fact.
    assert facts_only["train_hit_rate"] == 1.0 and replay["train_hit_rate"] == 1.0
    # ... and costs: control answers change and their loss rises; replay cuts both.
    assert facts_only["control_kept"] < 1.0 and facts_only["control_loss_shift"] > 0.1
    assert replay["control_loss_shift"] < facts_only["control_loss_shift"]
    assert replay["control_kept"] >= facts_only["control_kept"]

    # The figures are what the saved replies say.
    facts = read_jsonl(RULAI_DIR / "data" / "facts.jsonl")
    keys = {q: f["key"] for f in facts for q in [*f["train_questions"], f["held_out_question"]]}
    for row in (base, facts_only, replay):
        held_out = [r for r in replies if r["run"] == row["run"] and r["kind"] == "held_out"]
        hits = [keys[r["question"]].lower() in r["reply"].lower() for r in held_out]
        assert row["held_out_hit_rate"] == pytest.approx(sum(hits) / len(hits))
    assert "| facts + replay |" in (tmp_path / "results.md").read_text(encoding="utf-8")
