"""Metric code against hand-computed values, and the promotion rule."""

import math

import evaluate
import pytest

from stages import metrics
from stages.metrics import exact_match, normalise_answer, perplexity, rouge_l
from stages.promotion import decide


def test_rouge_l_matches_hand_computation():
    # LCS("the cat sat on the mat", "the cat lay on a mat") = the cat on mat = 4 words
    p, r = 4 / 6, 4 / 6
    assert rouge_l("the cat lay on a mat", "the cat sat on the mat") == pytest.approx(2 * p * r / (p + r))
    assert rouge_l("", "anything") == 0.0


def test_exact_match_normalises_case_punctuation_articles():
    assert normalise_answer("The  Answer, is: 42!") == "answer is 42"
    assert exact_match("the answer is 42.", "Answer is 42") == 1.0
    assert exact_match("answer is 43", "answer is 42") == 0.0


def test_metrics_are_local_evaluate_modules_with_the_standard_api():
    predictions = ["the cat lay on a mat", "Answer is 42", "nothing alike"]
    references = ["the cat sat on the mat", "the answer is 42.", "completely different words"]
    rouge = metrics.load("rouge_l")
    assert isinstance(rouge, evaluate.Metric) and rouge.name == "rouge_l"
    expected = sum(rouge_l(p, r) for p, r in zip(predictions, references, strict=True)) / 3
    assert rouge.compute(predictions=predictions, references=references) == {
        "rouge_l": pytest.approx(expected)
    }
    # As a user loads them: evaluate.load on the project's file (no hub), and evaluate.combine.
    exact = evaluate.load(str(metrics.MODULES / "exact_match.py"))
    assert exact.compute(predictions=predictions, references=references) == {
        "exact_match": pytest.approx(1 / 3)
    }
    both = evaluate.combine([rouge, exact]).compute(predictions=predictions, references=references)
    assert both == {"rouge_l": pytest.approx(expected), "exact_match": pytest.approx(1 / 3)}
    assert math.isnan(exact.compute(predictions=[], references=[])["exact_match"])


def test_perplexity_is_exp_of_mean_nll():
    assert perplexity(math.log(7.0)) == pytest.approx(7.0)


def test_promotion_needs_to_beat_champion_and_baselines_by_margin():
    base = {"base_zero_shot": {"perplexity": 20.0}}
    ok, reason = decide({"perplexity": 10.0}, None, base, "perplexity", 0.05)
    assert ok and "no champion yet" in reason
    ok, reason = decide({"perplexity": 9.8}, {"perplexity": 10.0}, base, "perplexity", 0.05)
    assert not ok and "champion" in reason and "margin 5.00%" in reason
    ok, _ = decide({"rouge_l": 0.5}, {"rouge_l": 0.4}, {"b": {"rouge_l": 0.1}}, "rouge_l", 0.1)
    assert ok
