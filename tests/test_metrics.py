"""Metrics against hand-computed values (and rouge-chinese as an independent implementation)."""

from __future__ import annotations

import math

import pytest
import torch

from llm_tuning.metrics import (
    best_option,
    choice_accuracy,
    continuation_log_probs,
    corpus_bleu,
    generation_scores,
    lcs_length,
    perplexity,
    rouge_l,
    rouge_n,
    segment,
)


def test_segment_cuts_chinese_into_words_and_keeps_english_words():
    assert segment("我爱北京天安门") == ["我", "爱", "北京", "天安门"]
    assert segment("The cat sat") == ["the", "cat", "sat"]


def test_rouge_n_is_f1_of_clipped_ngram_overlap():
    # unigrams: overlap 2, P = 2/4, R = 2/3 -> F1 = 4/7; bigrams: overlap 1, P = 1/3, R = 1/2 -> 0.4
    assert rouge_n("a b c d".split(), "a b e".split(), 1) == pytest.approx(4 / 7)
    assert rouge_n("a b c d".split(), "a b e".split(), 2) == pytest.approx(0.4)
    # "a" predicted three times but present once in the reference counts once: P = 1/3, R = 1/2
    assert rouge_n("a a a".split(), "a b".split(), 1) == pytest.approx(0.4)
    assert rouge_n([], "a b".split(), 1) == 0.0


def test_rouge_l_is_f1_of_the_longest_common_subsequence():
    assert lcs_length("a b c d".split(), "a c d e".split()) == 3
    assert rouge_l("a b c d".split(), "a c d e".split()) == pytest.approx(0.75)
    assert rouge_l("a b".split(), "a b c d e f".split()) == pytest.approx(2 * (1 * 1 / 3) / (1 + 1 / 3))


def test_corpus_bleu_matches_the_hand_computed_value():
    pred, ref = "the cat sat on the mat".split(), "the cat sat on a mat".split()
    # clipped precisions 5/6, 3/5, 2/4, 1/3; equal lengths so no brevity penalty
    assert corpus_bleu([pred], [ref]) == pytest.approx((5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)
    # all precisions 1, prediction 4 words vs reference 6: brevity penalty exp(1 - 6/4)
    assert corpus_bleu(["a b c d".split()], ["a b c d e f".split()]) == pytest.approx(math.exp(-0.5))
    assert corpus_bleu([["a", "b", "c"]], [["a", "b", "c"]]) == 0.0  # no 4-grams at all


def test_generation_scores_on_chinese_and_english():
    same = generation_scores(["北京是中国的首都。", "The capital of France is Paris."],
                             ["北京是中国的首都。", "The capital of France is Paris."])
    assert same == {"rouge-1": 100.0, "rouge-2": 100.0, "rouge-l": 100.0, "bleu-4": 100.0, "exact_match": 1.0}
    partial = generation_scores(["3 + 94 = 97"], ["3 + 94 = 98"])
    words = segment("3 + 94 = 97")
    assert words == ["3", "+", "94", "=", "97"]
    assert partial["rouge-1"] == pytest.approx(80.0)  # 4 of 5 words
    assert partial["rouge-2"] == pytest.approx(75.0)  # 3 of 4 bigrams
    assert partial["exact_match"] == 0.0


# rouge-chinese counts each distinct n-gram once, official ROUGE (and we) clip repeated ones;
# on texts without repeated words the two must agree.
@pytest.mark.parametrize("prediction, reference", [
    ("法国的首都是巴黎，最大城市也在那里。", "巴黎是法国的首都。"),
    ("Paris is the capital of France, and its largest city.", "The capital of France is Paris."),
])
def test_rouge_agrees_with_rouge_chinese(prediction, reference):
    from rouge_chinese import Rouge

    expected = Rouge().get_scores(" ".join(segment(prediction)), " ".join(segment(reference)))[0]
    ours = generation_scores([prediction], [reference])
    for key in ("rouge-1", "rouge-2", "rouge-l"):
        assert ours[key] == pytest.approx(100 * expected[key]["f"], abs=1e-6)


def test_perplexity_is_exp_of_mean_token_nll():
    assert perplexity([(-2.0, 2), (-1.0, 2)]) == pytest.approx(math.exp(3 / 4))
    with pytest.raises(ValueError):
        perplexity([(0.0, 0)])


def test_continuation_log_probs_batched_equal_one_by_one(tiny_qwen2):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2).eval()
    prompts, continuations = [[5, 6, 7], [8, 9], [10, 11, 12, 13]], [[20, 21], [22], [23, 24, 25]]
    batched = continuation_log_probs(model, prompts, continuations, pad_id=0, batch_size=3)
    for (prompt, continuation), (log_prob, count) in zip(zip(prompts, continuations), batched):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + continuation])).logits[0].log_softmax(-1)
        expected = sum(float(logits[len(prompt) - 1 + i, token]) for i, token in enumerate(continuation))
        assert count == len(continuation)
        assert log_prob == pytest.approx(expected, abs=1e-4)


def test_choice_picks_the_most_likely_letter():
    assert best_option([-3.0, -0.5, -2.0, -0.5], "ABCD") == "B"  # first of a tie
    assert choice_accuracy(["A", "B", "C", "D"], ["A", "B", "D", "C"]) == 0.5
