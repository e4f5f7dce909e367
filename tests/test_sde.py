"""SDE/: sample designs round-trip, parser format errors, metrics by hand, the experiment runner."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import pytest

from llm_tuning.cli import UserError

SDE_DIR = Path(__file__).resolve().parent.parent / "SDE"
sys.path.insert(0, str(SDE_DIR))  # SDE/ is a folder of scripts, imported as its scripts import each other

from design import OPTIONS, PRESETS, Design, build_sample, parse_design, parse_output  # noqa: E402
from reviews import DEFAULT_SPLITS, DOMAINS, generate_split, load_asap_csv, load_reviews  # noqa: E402
from scoring import cohen_kappa, evaluate  # noqa: E402

ALL_DESIGNS = [Design(*combo) for combo in itertools.product(*OPTIONS.values())]


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return load_reviews(SDE_DIR / "data" / "d1_test.jsonl") + load_reviews(SDE_DIR / "data" / "d2_test.jsonl")


# --- Data ----------------------------------------------------------------------------------------


def test_shipped_data_is_what_the_generator_writes():
    for split in DEFAULT_SPLITS:
        shipped = load_reviews(SDE_DIR / "data" / f"{split.name}.jsonl")
        assert shipped == generate_split(split)
        assert len(shipped) == split.size and {r["domain"] for r in shipped} == {split.domain}


def test_every_review_mentions_what_its_labels_say(records):
    for record in records:
        mentioned = {a for a, label in record["labels"].items() if label != "unmentioned"}
        assert mentioned and set(record["evidence"]) == mentioned
        assert all(clause in record["review"] for clause in record["evidence"].values())


def test_asap_csv_loader(tmp_path):
    columns = {"food": "Food#Taste", "drinks": "Food#Drinks", "price": "Price#Level",
               "hygiene": "Ambience#Sanitary", "staff": "Service#Hospitality", "parking": "Service#Parking"}
    csv_file = tmp_path / "asap.csv"
    csv_file.write_text("id,review,Food#Taste,Food#Drinks,Price#Level,Ambience#Sanitary,Service#Hospitality,"
                        "Service#Parking\n1,好吃但是贵,1,-2,-1,-2,-2,0\n", encoding="utf-8")
    (record,) = load_asap_csv(csv_file, "d1", columns)
    assert record["review"] == "好吃但是贵"
    assert record["labels"] == {"food": "positive", "drinks": "unmentioned", "price": "negative",
                                "hygiene": "unmentioned", "staff": "unmentioned", "parking": "neutral"}
    csv_file.write_text(csv_file.read_text(encoding="utf-8").replace(",1,-2,-1", ",5,-2,-1"), encoding="utf-8")
    with pytest.raises(UserError, match=r"asap.csv:2: column 'Food#Taste' holds '5'"):
        load_asap_csv(csv_file, "d1", columns)


def test_convert_asap_writes_records_run_sde_can_read(tmp_path, capsys):
    import convert_asap

    csv_file = tmp_path / "asap.csv"
    csv_file.write_text("review,T,D,P,H,S,K\n好吃但是贵,1,-2,-1,-2,-2,0\n环境很脏,-2,-2,-2,-1,-2,-2\n",
                        encoding="utf-8")
    out = tmp_path / "asap.jsonl"
    convert_asap.main(["--csv", str(csv_file), "--domain", "d1", "--out", str(out),
                       "--columns", "food=T,drinks=D,price=P,hygiene=H,staff=S,parking=K"])
    records = load_reviews(out)
    assert [r["labels"]["hygiene"] for r in records] == ["unmentioned", "negative"]
    assert "wrote 2 reviews of domain d1" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        convert_asap.main(["--csv", str(csv_file), "--domain", "d1", "--out", str(out), "--columns", "food"])
    assert exit_info.value.code == 2 and "expected aspect=CSV column, got 'food'" in capsys.readouterr().err


def test_bad_review_record_names_its_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"review": "好", "domain": "d1", "labels": {"food": "great"}}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"bad.jsonl:1: labels must give every aspect of d1"):
        load_reviews(path)


# --- Designs -------------------------------------------------------------------------------------


def test_every_design_parses_its_own_targets_back_to_the_gold_labels(records):
    assert len(ALL_DESIGNS) == 216
    for design in ALL_DESIGNS:
        for record in records:
            parsed = parse_output(build_sample(record, design)["a"], record["domain"], design)
            assert parsed.error is None and parsed.labels == record["labels"], (design, record["id"])


def test_design_options_change_the_sample_as_documented(records):
    record = next(r for r in records if r["domain"] == "d1" and list(r["labels"].values()).count("unmentioned") >= 2)
    es = build_sample(record, PRESETS["ES-SDE"])
    review = f"评论：{record['review']}"
    assert es["q"].endswith("\n" + review) and es["q"].startswith("请分析")
    assert build_sample(record, PRESETS["inst-last"])["q"].startswith(review + "\n")
    assert build_sample(record, PRESETS["no-inst"])["q"] == review
    lines = es["a"].splitlines()
    text_labels = {"positive": "正面", "neutral": "中性", "negative": "负面", "unmentioned": "未提及"}
    assert lines == [f"{name}：{text_labels[record['labels'][a]]}" for a, name in DOMAINS["d1"].items()]
    omitted = build_sample(record, PRESETS["omit"])["a"].splitlines()
    assert len(omitted) == sum(v != "unmentioned" for v in record["labels"].values())
    numeric = json.loads(build_sample(record, parse_design("format=json,labels=numeric"))["a"])
    assert set(numeric.values()) <= {1, 0, -1, -2} and len(numeric) == 6
    assert build_sample(record, PRESETS["cot"])["a"].startswith("分析：")
    assert build_sample(record, PRESETS["rcot"])["a"].startswith("答案：\n" + es["a"] + "\n分析：")


def test_parse_design_presets_overrides_and_mistakes():
    assert parse_design("ES-SDE") == Design("first", "off", "lines", "text", "placeholder", "none")
    assert parse_design("format=json, reasoning=cot") == Design(format="json", reasoning="cot")
    assert parse_design("MI").supervise_prompt
    with pytest.raises(UserError, match="format='yaml'; choose one of: lines, json, natural"):
        parse_design("format=yaml")
    with pytest.raises(UserError, match="unknown design 'best'"):
        parse_design("best")


@pytest.mark.parametrize(("spec", "output", "error"), [
    ("ES-SDE", "食物：正面\n饮品 正面", "is not “方面：情感”"),
    ("ES-SDE", "食物：正面\n饮品：未提及\n价格：未提及\n卫生：未提及\n服务：很好\n停车：未提及",
     "unknown label '很好'"),
    ("ES-SDE", "食物：正面\n饮品：未提及", "missing"),
    ("ES-SDE", "食物：正面\n食物：负面\n饮品：未提及\n价格：未提及\n卫生：未提及\n服务：未提及\n停车：未提及",
     "given twice"),
    ("ES-SDE", "交通：正面", "unknown aspect '交通'"),
    ("ES-SDE", "", "missing"),
    ("json", '{"食物": "正面", "饮品": "未提及"', "not valid JSON"),
    ("json", '["食物", "正面"]', "not an object"),
    ("json", '{"食物": "正面", "食物": "负面"}', "given twice"),
    ("numeric", "食物：正面\n饮品：-2\n价格：-2\n卫生：-2\n服务：-2\n停车：-2", "unknown label '正面'"),
    ("natural", "食物方面的评价是正面的。今天天气不错", "unparsable text"),
    ("cot", "食物：正面", "no '答案：'"),
    ("rcot", "答案：\n食物：正面", "no '分析：'"),
    ("rcot", "分析：没有。答案：\n食物：正面", "does not start with '答案：'"),
])
def test_malformed_outputs_are_format_errors(spec, output, error):
    parsed = parse_output(output, "d1", parse_design(spec))
    assert parsed.labels is None and error in parsed.error


def test_omit_designs_read_missing_aspects_as_unmentioned():
    parsed = parse_output("价格：负面", "d1", PRESETS["omit"])
    assert parsed.error is None
    assert parsed.labels == {a: "negative" if a == "price" else "unmentioned" for a in DOMAINS["d1"]}


def test_input_modeling_puts_the_prompt_in_the_loss(tiny_qwen2, records, tmp_path):
    from llm_tuning.atomic import write_jsonl
    from llm_tuning.data import IGNORE_INDEX, load_tokenized
    from llm_tuning.experiment import tokenize_records

    rows = {}
    for spec in ("ES-SDE", "MI"):
        samples = write_jsonl([build_sample(r, parse_design(spec)) for r in records[:3]], tmp_path / f"{spec}.jsonl")
        dataset, metadata = load_tokenized(tokenize_records(samples, str(tiny_qwen2), tmp_path / spec,
                                                            supervise_prompt=parse_design(spec).supervise_prompt))
        rows[spec] = dataset[0]
        assert metadata["supervise_prompt"] is (spec == "MI")
    assert rows["MI"]["input_ids"] == rows["ES-SDE"]["input_ids"]
    assert rows["MI"]["labels"] == rows["MI"]["input_ids"]
    masked = rows["ES-SDE"]["labels"].count(IGNORE_INDEX)
    assert 0 < masked < len(rows["ES-SDE"]["labels"])  # the prompt is masked, the answer is not


# --- Metrics -------------------------------------------------------------------------------------


def test_kappa_by_hand():
    # p_o = 3/4; gold marginals a .5 b .5, predicted a .25 b .75 -> p_e = .5; kappa = .25 / .5
    assert cohen_kappa(list("aabb"), list("abbb")) == pytest.approx(0.5)
    assert cohen_kappa(list("abc"), list("abc")) == 1.0
    # always predicting the majority class agrees by chance only: kappa 0
    assert cohen_kappa(list("aaab"), list("aaaa")) == pytest.approx(0.0)
    # p_o = 0, p_e = (1*1 + 1*1) / 4 = .5 -> kappa = -1
    assert cohen_kappa(list("ab"), list("ba")) == pytest.approx(-1.0)


def test_evaluate_by_hand_with_a_format_error():
    aspects = ["food", "price"]
    gold = [{"food": "positive", "price": "negative"},
            {"food": "neutral", "price": "unmentioned"},
            {"food": "negative", "price": "unmentioned"}]
    predicted = [{"food": "positive", "price": "negative"},      # all right
                 {"food": "positive", "price": "unmentioned"},   # food wrong
                 None]                                            # format error: both wrong
    metrics = evaluate(gold, predicted, aspects)
    assert metrics["aspect_accuracy"] == {"food": pytest.approx(1 / 3), "price": pytest.approx(2 / 3)}
    assert metrics["mean_aspect_accuracy"] == pytest.approx(3 / 6)
    assert metrics["sentence_accuracy"] == pytest.approx(1 / 3)
    assert metrics["format_error_rate"] == pytest.approx(1 / 3)
    # 6 labels, 3 agree: p_o = .5. gold: pos 1, neg 2, neu 1, unm 2; predicted: pos 2, neg 1, unm 1, invalid 2
    # p_e = (1*2 + 2*1 + 1*0 + 2*1) / 36 = 6/36; kappa = (1/2 - 1/6) / (5/6) = 0.4
    assert metrics["kappa"] == pytest.approx(0.4)


# --- The runner ----------------------------------------------------------------------------------


def test_run_sde_two_designs_produces_the_table(tmp_path, capsys, warm_recipes):
    import run_sde

    out_dir = tmp_path / "sde"
    args, recipe_argv = run_sde.parse_args([
        "--designs", "ES-SDE", "format=json,labels=numeric", "--max_train", "64", "--max_eval", "6",
        "--max_new_tokens", "48", "--output_dir", str(out_dir),
        "--max_steps", "100", "--learning_rate", "5e-3", "--lora_dropout", "0",
    ])
    run_sde.main(args, recipe_argv)

    table = (out_dir / "results.md").read_text(encoding="utf-8").splitlines()
    assert table[0].startswith("| design | ID sent. acc") and len(table) == 4
    assert table[2].startswith("| ES-SDE |") and table[3].startswith("| format=json,labels=numeric |")
    assert "| ES-SDE |" in capsys.readouterr().out
    assert (out_dir / "results.png").stat().st_size > 0

    # The saved figures are the metrics of the saved outputs, re-parsed here.
    results = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
    for result in results:
        design = parse_design(result["design"])
        run_dir = out_dir / run_sde.design_slug(result["design"])
        assert json.loads((run_dir / "tokenized" / "metadata.json").read_text())["supervise_prompt"] is False
        for split, test_file in (("id", "d1_test"), ("ood", "d2_test")):
            gold = load_reviews(SDE_DIR / "data" / f"{test_file}.jsonl")[:6]
            rows = [json.loads(line) for line in (run_dir / f"predictions_{split}.jsonl").read_text().splitlines()]
            assert [r["id"] for r in rows] == [g["id"] for g in gold]
            parsed = [parse_output(r["output"], g["domain"], design).labels for r, g in zip(rows, gold)]
            expected = evaluate([g["labels"] for g in gold], parsed, list(DOMAINS[gold[0]["domain"]]))
            assert result["splits"][split] == expected  # floats survive JSON exactly
    # 100 steps are enough for the tiny stand-in to learn both output formats in-domain
    # (an untrained random model writes no parsable output at all).
    assert [r["splits"]["id"]["format_error_rate"] for r in results] == [0.0, 0.0]


def test_run_sde_rejects_a_bad_design_before_any_work(tmp_path, capsys):
    import run_sde

    args, recipe_argv = run_sde.parse_args(["--designs", "ES-SDE", "labels=stars", "--output_dir", str(tmp_path / "x")])
    with pytest.raises(SystemExit) as exit_info:
        run_sde.main(args, recipe_argv)
    assert exit_info.value.code == 2
    assert "labels='stars'; choose one of: text, numeric" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
