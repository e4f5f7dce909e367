"""Packing: bin packing by hand, packed rows and their padding, and the same per-sample loss as unpacked."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm_tuning.batching import PaddingCollator, make_collator, pack_dataset, pack_indices
from llm_tuning.cli import UserError
from llm_tuning.data import IGNORE_INDEX, TokenizeConfig, tokenize_file

REPO_ROOT = Path(__file__).resolve().parent.parent
LONG_TAIL = REPO_ROOT / "bench" / "data" / "long_tail.jsonl"
MAX_SEQ_LENGTH = 256
PACK_LENGTH = 1024  # packed rows may be longer than the tokenized ones


def test_best_fit_decreasing_by_hand():
    # Longest first: 6 opens row A (2 left), 5 opens B (3 left), 4 opens C (4 left);
    # 3 fits best into B (3 left -> full), 2 into A (2 left -> full).
    assert pack_indices([5, 3, 4, 2, 6], max_length=8) == [[0, 1], [2], [3, 4]]
    assert pack_indices([4, 4, 4], max_length=8) == [[0, 1], [2]]
    assert pack_indices([], max_length=8) == []


def test_a_row_longer_than_the_packing_length_is_a_user_error():
    with pytest.raises(UserError, match="row 1 has 9 tokens, more than --packing_max_length 8"):
        pack_indices([3, 9], max_length=8)


def test_packed_rows_restart_positions_and_mask_each_first_label():
    from datasets import Dataset

    rows = Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5], [6, 7, 8, 9]],
                              "labels": [[1, 2, 3], [-100, 5], [6, 7, 8, 9]]})
    packed = pack_dataset(rows, max_length=5)
    # best fit: [6..9] opens a row (1 left), [1,2,3] opens another (2 left), [4,5] joins it
    assert packed["input_ids"] == [[1, 2, 3, 4, 5], [6, 7, 8, 9]]
    assert packed["position_ids"] == [[0, 1, 2, 0, 1], [0, 1, 2, 3]]
    assert packed["labels"] == [[-100, 2, 3, -100, 5], [-100, 7, 8, 9]]


def test_collator_pads_packed_rows_as_a_separate_sequence_without_a_mask():
    collate = PaddingCollator(pad_token_id=0)
    batch = collate([{"input_ids": [5, 6, 7, 8], "labels": [-100, 6, -100, 8], "position_ids": [0, 1, 0, 1]},
                     {"input_ids": [9, 10], "labels": [-100, 10], "position_ids": [0, 1], "length": 2}])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, -100, 8], [-100, 10, -100, -100]]
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1], [0, 1, 0, 1]]
    assert "attention_mask" not in batch and "length" not in batch
    assert batch["use_cache"] is False


def test_collator_pads_to_max_length_and_to_the_left():
    rows = [{"input_ids": [5, 6], "labels": [-100, 6]}]
    batch = PaddingCollator(pad_token_id=0, max_length=4)(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 0, 0]]
    assert "attention_mask" not in batch  # right padding: the causal mask already hides it
    masked = PaddingCollator(pad_token_id=0, max_length=4, attention_mask=True)(rows)
    assert masked["attention_mask"].tolist() == [[1, 1, 0, 0]]
    left = PaddingCollator(pad_token_id=0, padding_side="left", pad_to_multiple_of=3)(rows)
    assert left["input_ids"].tolist() == [[0, 5, 6]]
    assert left["labels"].tolist() == [[-100, -100, 6]]
    assert left["attention_mask"].tolist() == [[0, 1, 1]]


@pytest.fixture(scope="module")
def tokenized(tiny_model):
    """Long-tailed rows (up to 256 tokens) tokenized with the tiny Qwen2's tokenizer."""
    path = tiny_model("qwen2")
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = TokenizeConfig(str(path), "qwen", MAX_SEQ_LENGTH, skip_overlength=False, last_turn_only=False,
                            max_samples=24)
    dataset, _ = tokenize_file(LONG_TAIL, tokenizer, config)
    return path, tokenizer, dataset


def per_sample_losses(logits: torch.Tensor, labels: torch.Tensor, sample_ids: torch.Tensor) -> dict[int, float]:
    """Mean next-token loss of every sample (by id) in a batch: label t is predicted at t - 1."""
    logits, labels, sample_ids = logits[:, :-1], labels[:, 1:], sample_ids[:, 1:]
    token_loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    ).view(labels.shape)
    supervised = labels != IGNORE_INDEX
    return {int(s): float(token_loss[(sample_ids == s) & supervised].mean())
            for s in sample_ids[supervised].unique()}


def test_packed_and_unpacked_give_the_same_per_sample_loss(tokenized):
    path, tokenizer, dataset = tokenized
    model = AutoModelForCausalLM.from_pretrained(path).train()  # train mode: the path the Trainer takes
    # Tag every token with its sample id (the id as a fake token) to find samples in packed rows.
    tagged = dataset.map(lambda row, i: {"tag": [i] * len(row["input_ids"])}, with_indices=True)

    unpacked = {}
    collate = make_collator(tokenizer)
    masked = PaddingCollator(tokenizer.pad_token_id, attention_mask=True)  # the reference: padding masked
    for start in range(0, len(dataset), 8):
        rows = [dataset[i] for i in range(start, min(start + 8, len(dataset)))]
        batch = masked(rows)
        tags = collate([{"input_ids": [i] * len(r["input_ids"]), "labels": r["labels"]}
                        for i, r in zip(range(start, start + 8), rows)])["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        unpacked.update(per_sample_losses(logits, batch["labels"], tags))

    packed_rows = pack_dataset(dataset, PACK_LENGTH)
    packed_tags = pack_dataset(tagged.remove_columns("input_ids").rename_column("tag", "input_ids"), PACK_LENGTH)
    assert packed_rows["position_ids"] == packed_tags["position_ids"]
    assert len(packed_rows) < len(dataset) / 2  # rows were really combined
    batch = collate([packed_rows[i] for i in range(len(packed_rows))])
    tags = collate([packed_tags[i] for i in range(len(packed_tags))])["input_ids"]
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    packed = per_sample_losses(logits, batch["labels"], tags)

    assert sorted(packed) == sorted(unpacked) == list(range(len(dataset)))
    for sample in unpacked:  # stated tolerance: 1e-5 absolute on fp32 losses of ~7.6
        assert packed[sample] == pytest.approx(unpacked[sample], abs=1e-5), sample
