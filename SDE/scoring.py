"""Metrics for multi-aspect sentiment predictions, as the SDE paper reports them.

A prediction is a dict aspect -> label, or None when the output had a format error; a format
error counts as wrong on every aspect of that review (its labels are the class INVALID, which
never agrees with a gold label).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

INVALID = "invalid"


def cohen_kappa(gold: Sequence[str], predicted: Sequence[str]) -> float:
    """(p_o - p_e) / (1 - p_e): agreement beyond what the two label distributions give by chance."""
    if len(gold) != len(predicted) or not gold:
        raise ValueError("kappa needs two label lists of the same, non-zero length")
    n = len(gold)
    observed = sum(g == p for g, p in zip(gold, predicted)) / n
    gold_counts, predicted_counts = Counter(gold), Counter(predicted)
    expected = sum(gold_counts[label] * predicted_counts[label] for label in gold_counts) / (n * n)
    if expected == 1.0:  # one class only on both sides: agreement is total or nothing
        return 1.0 if observed == 1.0 else 0.0
    return (observed - expected) / (1 - expected)


def evaluate(gold: Sequence[dict[str, str]], predicted: Sequence[dict[str, str] | None],
             aspects: Sequence[str]) -> dict:
    """Per-aspect accuracy, sentence accuracy (all aspects right), kappa over every (review,
    aspect) label, and the format error rate."""
    if len(gold) != len(predicted) or not gold:
        raise ValueError("need one prediction per gold record, and at least one record")
    flat_gold, flat_predicted = [], []
    per_aspect = {aspect: 0 for aspect in aspects}
    sentences_right = 0
    for gold_labels, labels in zip(gold, predicted):
        labels = labels or {aspect: INVALID for aspect in aspects}
        right = [gold_labels[a] == labels[a] for a in aspects]
        for aspect, ok in zip(aspects, right):
            per_aspect[aspect] += ok
        sentences_right += all(right)
        flat_gold += [gold_labels[a] for a in aspects]
        flat_predicted += [labels[a] for a in aspects]
    n = len(gold)
    return {
        "n": n,
        "aspect_accuracy": {aspect: count / n for aspect, count in per_aspect.items()},
        "mean_aspect_accuracy": sum(per_aspect.values()) / (n * len(aspects)),
        "sentence_accuracy": sentences_right / n,
        "kappa": cohen_kappa(flat_gold, flat_predicted),
        "format_error_rate": sum(labels is None for labels in predicted) / n,
    }
