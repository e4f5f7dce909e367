"""scripts/reproduce_figures.py: its cells, and that it reads the tables the scripts print as they print them."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from conftest import REPO_ROOT
from llm_tuning.rlhf.grpo import PolicyScores, format_table as grpo_table


def load(path, name):
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))  # RLHF/evaluate.py imports its folder's modules
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


figures = load(REPO_ROOT / "scripts" / "reproduce_figures.py", "reproduce_figures")


@pytest.mark.parametrize("values, digits, signed, expected", [
    ([0.5], 2, False, "0.50"),
    ([1.0, 2.0, 3.0], 2, False, "2.00 ± 1.00"),          # mean ± sample std
    ([0.579, 0.619, 0.673], 3, True, "+0.624 ± 0.047"),
    ([-3.70, -2.61, -4.51], 2, False, "-3.61 ± 0.95"),
])
def test_a_cell_is_the_value_or_the_mean_and_sample_std(values, digits, signed, expected):
    assert figures.cell(values, digits, signed) == expected


def test_the_rlhf_tables_are_read_as_evaluate_py_and_grpo_py_print_them():
    evaluate = load(REPO_ROOT / "RLHF" / "evaluate.py", "rlhf_evaluate")
    rows = [evaluate.Row("SFT", -3.7, 0.0, 0.1, 0, -5.55, 0.0, "30 + 4 = 30。"),
            evaluate.Row("PPO", 2.1, 6.59, 0.27, 1, -5.79, -0.02, "it's 4！😊")]
    printed = "==> 7/7\n" + evaluate.format_table(rows, 1.0) + "\nchat with a policy: ..."
    assert figures.rows_of_text_table(printed, "logp-margin") == {
        "SFT": ([-3.7, 0.0, 0.1, 0.0, -5.55, 0.0], "'30 + 4 = 30。'"),
        "PPO": ([2.1, 6.59, 0.27, 1.0, -5.79, -0.02], '"it\'s 4！😊"')}

    scores = {"SFT": PolicyScores(0.42, 0.22, 0.75, 0.22, 0.0, 12.54, ["35 + 47 = 81。"]),
              "GRPO": PolicyScores(0.46, 0.34, 0.5, 0.34, 4.29, 11.96, ["35 + 47 = 65。"])}
    both = printed + "\n" + grpo_table(scores, 8, 0.7)
    assert figures.rows_of_text_table(both, "pass@1") == {
        "SFT": ([0.42, 0.22, 0.75, 0.22, 0.0, 12.54], "'35 + 47 = 81。'"),
        "GRPO": ([0.46, 0.34, 0.5, 0.34, 4.29, 11.96], "'35 + 47 = 65。'")}
    assert list(figures.rows_of_text_table(both, "logp-margin")) == ["SFT", "PPO"]


def test_a_printed_table_is_cut_from_the_lines_around_it():
    output = "Compressing: 600 lines\nsource  lines\nzh  560\nen  360\nwrote data/x\n"
    assert figures.printed_table(output, stop="wrote") == "source  lines\nzh  560\nen  360"


def test_the_header_names_the_command_seeds_versions_and_machine():
    line = figures.header_line("rlhf", [0, 1, 2])
    assert line.startswith("`python scripts/reproduce_figures.py --only rlhf`: seeds 0, 1, 2 (mean ± sample std")
    assert all(f"{package} " in line for package in figures.PACKAGES) and line.endswith(" cores")
    assert "--only sde --seeds 3 4 5`" in figures.header_line("sde", [3, 4, 5])
    assert figures.header_line("mixture", None).split(": ", 1)[1].startswith("deterministic;")


def test_the_rlhf_figure_averages_the_seeds_logs(tmp_path):
    """With --reuse, the figure is assembled from each seed's log: every cell the mean ± std over the
    seeds, the sample reply the first seed's."""
    evaluate = load(REPO_ROOT / "RLHF" / "evaluate.py", "rlhf_evaluate")
    for seed, (reward, accuracy, pass_at_1) in {0: (2.0, 1.0, 0.40), 1: (4.0, 0.95, 0.50)}.items():
        rows = [evaluate.Row("SFT", -3.0, 0.0, 0.1, 0, -5.5, 0.0, f"reply {seed}"),
                evaluate.Row("PPO", reward, 6.0, 0.3, 1, -5.7, -0.02, f"ppo {seed}")]
        scores = {"SFT": PolicyScores(pass_at_1, 0.2, 0.75, 0.2, 0.0, 12.0, [f"greedy {seed}"])}
        log = tmp_path / "rlhf" / f"seed{seed}" / "log.txt"
        log.parent.mkdir(parents=True)
        log.write_text(f"reward model held-out pairwise accuracy: {accuracy}\n"
                       f"{evaluate.format_table(rows, 1.0)}\n{grpo_table(scores, 8, 0.7)}\n")

    figure = figures.rlhf([0, 1], tmp_path, reuse=True)

    assert "reward model held-out pairwise accuracy: 0.975 ± 0.035" in figure
    assert "| PPO | 3.00 ± 1.41 | 6.00 ± 0.00 |" in figure and "`'ppo 0'`" in figure and "ppo 1" not in figure
    assert "| SFT | 0.45 ± 0.07 |" in figure and "first greedy reply (seed 0)" in figure


def test_the_real_model_figure_scores_each_seeds_replies(tmp_path):
    """The real-model table from logs (--reuse): exact match and general answers from eval.py's replies,
    training time and peak memory from each seed's trainer_log.jsonl summary."""
    import json

    from llm_tuning.real_model import HELD_OUT_ROWS

    general = [json.loads(line) for line in (REPO_ROOT / "data/eval/general_questions.jsonl").read_text().splitlines()]

    def write_replies(folder, right, known):
        rows = [{"q": "q", "reference": "1 + 1 = 2", "prediction": "1 + 1 = 2" if i < right else "2"}
                for i in range(HELD_OUT_ROWS)]
        rows += [{"q": g["q"], "reference": g["a"], "prediction": g["a"] if i < known else "?"}
                 for i, g in enumerate(general)]
        folder.mkdir(parents=True)
        (folder / "log.txt").write_text("eval.py's output\n")
        (folder / "replies.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))

    write_replies(tmp_path / "real" / "base", 0, 10)
    for seed, (right, known, runtime, memory) in {0: (20, 9, 100.0, 2000), 1: (25, 10, 120.0, 2100)}.items():
        demo = tmp_path / "real" / f"seed{seed}" / "demo"
        demo.mkdir(parents=True)
        (demo / "log.txt").write_text("demo.sh's output\n")
        (demo / "trainer_log.jsonl").write_text(json.dumps({"step": 6, "loss": 0.3}) + "\n" + json.dumps(
            {"step": 12, "train_runtime": runtime, "peak_memory_mib": memory}) + "\n")
        write_replies(tmp_path / "real" / f"seed{seed}" / "eval", right, known)

    figure = figures.real([0, 1], tmp_path, reuse=True)

    assert "| SmolLM2-135M-Instruct (Q4_1-rounded) | 0.00 | 10 |  |  |" in figure
    assert "| 0.45 ± 0.07 | 9.5 ± 0.7 | 110 ± 14 s | 2050 ± 71 MiB |" in figure
