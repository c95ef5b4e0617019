"""Metric code against hand-computed values (the promotion rule: test_promotion.py)."""

import math

import evaluate
import pytest

from stages import metrics
from stages.metrics import exact_match, normalise_answer, perplexity, rouge_l


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
