"""Evaluation metrics: ROUGE-1/2/L and BLEU-4 on words (Chinese segmented with jieba), perplexity,
choice accuracy (C-Eval style, by option likelihood) and reward-model accuracy.

Text metrics are reported in percent, as papers and the ChatGLM/Qwen eval scripts do:
- ROUGE-N: F1 of clipped n-gram overlap between prediction and reference, averaged over samples
  (clipped counts, as the original ROUGE; rouge-chinese counts distinct n-grams instead, so the
  two differ on texts that repeat a word).
- ROUGE-L: F1 of the longest common subsequence (P = LCS/len(pred), R = LCS/len(ref)), averaged.
- BLEU-4: corpus BLEU (Papineni et al. 2002): geometric mean of clipped 1..4-gram precisions over
  the whole corpus times the brevity penalty exp(1 - r/c) when c < r; 0 if a precision is 0.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import torch


def segment(text: str) -> list[str]:
    """Words of a text: jieba cuts Chinese into words and keeps English words and numbers whole."""
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    return [word for word in jieba.lcut(text.strip().lower()) if word.strip()]


def ngrams(words: Sequence[str], n: int) -> Counter:
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def _f1(overlap: float, predicted: int, reference: int) -> float:
    if overlap == 0 or predicted == 0 or reference == 0:
        return 0.0
    precision, recall = overlap / predicted, overlap / reference
    return 2 * precision * recall / (precision + recall)


def rouge_n(prediction: Sequence[str], reference: Sequence[str], n: int) -> float:
    """ROUGE-N F1 of two word lists, in [0, 1]."""
    pred, ref = ngrams(prediction, n), ngrams(reference, n)
    return _f1(sum((pred & ref).values()), sum(pred.values()), sum(ref.values()))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: Sequence[str], reference: Sequence[str]) -> float:
    """ROUGE-L F1 of two word lists, in [0, 1]."""
    return _f1(lcs_length(prediction, reference), len(prediction), len(reference))


def corpus_bleu(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]], max_n: int = 4) -> float:
    """Corpus BLEU-`max_n` of word lists (one reference each), in [0, 1]."""
    matched, total = [0] * max_n, [0] * max_n
    for pred, ref in zip(predictions, references, strict=True):
        for n in range(1, max_n + 1):
            pred_ngrams = ngrams(pred, n)
            matched[n - 1] += sum((pred_ngrams & ngrams(ref, n)).values())
            total[n - 1] += sum(pred_ngrams.values())
    if min(matched) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matched, total)) / max_n
    pred_length = sum(len(p) for p in predictions)
    ref_length = sum(len(r) for r in references)
    brevity = 1.0 if pred_length > ref_length else math.exp(1 - ref_length / pred_length)
    return brevity * math.exp(log_precision)


def generation_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """rouge-1/2/l and bleu-4 (percent) and exact match (fraction) of predicted vs reference texts."""
    if len(predictions) != len(references) or not predictions:
        raise ValueError("need the same, non-zero number of predictions and references")
    preds, refs = [segment(p) for p in predictions], [segment(r) for r in references]
    mean = lambda values: 100 * sum(values) / len(values)  # noqa: E731
    return {
        "rouge-1": mean([rouge_n(p, r, 1) for p, r in zip(preds, refs)]),
        "rouge-2": mean([rouge_n(p, r, 2) for p, r in zip(preds, refs)]),
        "rouge-l": mean([rouge_l(p, r) for p, r in zip(preds, refs)]),
        "bleu-4": 100 * corpus_bleu(preds, refs),
        "exact_match": sum(p.strip() == r.strip() for p, r in zip(predictions, references)) / len(predictions),
    }


# --- Likelihood-based metrics -----------------------------------------------------------------


@torch.no_grad()
def continuation_log_probs(model, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
                           pad_id: int, batch_size: int = 16) -> list[tuple[float, int]]:
    """(sum of log p(token), token count) of each continuation given its prompt, in batches: the
    log-probability of a reply, for perplexity, choices, and RLHF's preference margins alike."""
    results = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(zip(prompts[start:start + batch_size], continuations[start:start + batch_size]))
        rows = [list(p) + list(c) for p, c in chunk]
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows], device=model.device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=model.device)
        logits = model(input_ids=ids, attention_mask=mask).logits
        for i, (prompt, continuation) in enumerate(chunk):
            # the token at position t is predicted by the logits at t - 1; only those rows go through
            # the float32 softmax (a whole batch's would be rows x width x vocabulary floats)
            positions = torch.arange(len(prompt) - 1, len(prompt) + len(continuation) - 1, device=model.device)
            targets = torch.tensor(list(continuation), device=model.device)
            log_probs = logits[i, positions].float().log_softmax(-1)
            results.append((float(log_probs.gather(-1, targets[:, None]).sum()), len(continuation)))
    return results


def perplexity(log_probs: Sequence[tuple[float, int]]) -> float:
    """exp of the mean negative log-likelihood per token over all (sum log p, count) pairs."""
    total, count = sum(lp for lp, _ in log_probs), sum(n for _, n in log_probs)
    if count == 0:
        raise ValueError("perplexity of zero tokens")
    return math.exp(-total / count)


def best_option(log_probs: Sequence[float], letters: Sequence[str]) -> str:
    """The letter of the most likely option (the first one on a tie)."""
    return letters[max(range(len(log_probs)), key=log_probs.__getitem__)]


def choice_accuracy(predicted: Sequence[str], answers: Sequence[str]) -> float:
    """Share of questions whose predicted letter is the answer."""
    if len(predicted) != len(answers) or not answers:
        raise ValueError("need the same, non-zero number of predictions and answers")
    return sum(p == a for p, a in zip(predicted, answers)) / len(answers)
