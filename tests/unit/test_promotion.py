"""The promotion rule on plain scores: the champion is a rival whenever one exists, also when it is
one of this run's candidates, and every decision says why in one line."""

import pytest

from stages.promotion import Candidate, choose

BASELINES = {"base_zero_shot": {"perplexity": 40.0}, "base_few_shot": {"perplexity": 30.0}, "doc_only": None}
MARGIN = 0.01


def test_a_dpo_model_under_the_margin_does_not_replace_the_fine_tuned_champion_it_was_trained_from():
    # The demo state: v1 is the fine-tune and the champion; DPO v2 is 0.4 % better, under the 1 % margin.
    candidates = {"fine_tuned": Candidate("1", {"perplexity": 13.20}),
                  "preference": Candidate("2", {"perplexity": 13.15})}  # fmt: skip
    decision = choose(candidates, "1", None, BASELINES, "perplexity", MARGIN)
    assert (decision.candidate, decision.version, decision.promoted) == ("preference", "2", False)
    assert (decision.alias, decision.champion_version) == ("challenger", "1")
    assert decision.reason == (
        "preference v2: perplexity 13.15 does not beat the champion v1 (13.2) by the promotion margin "
        "1.00% (gain 0.38%)"
    )


def test_a_candidate_that_beats_the_champion_among_the_candidates_by_the_margin_is_promoted():
    candidates = {"fine_tuned": Candidate("1", {"perplexity": 13.20}),
                  "preference": Candidate("2", {"perplexity": 12.50})}  # fmt: skip
    decision = choose(candidates, "1", None, BASELINES, "perplexity", MARGIN)
    assert (decision.candidate, decision.promoted, decision.alias, decision.champion_version) == (
        "preference", True, "champion", "2",
    )  # fmt: skip
    assert (
        decision.reason
        == "preference v2: perplexity 12.5 beats the champion v1 and the baselines by more than 1.00%"
    )


def test_the_champion_as_the_best_candidate_needs_only_to_beat_the_baselines_and_keeps_its_alias():
    candidates = {"fine_tuned": Candidate("1", {"perplexity": 13.20}),
                  "preference": Candidate("2", {"perplexity": 13.90})}  # fmt: skip
    decision = choose(candidates, "1", None, BASELINES, "perplexity", MARGIN)
    assert (decision.candidate, decision.promoted, decision.alias, decision.champion_version) == (
        "fine_tuned", True, None, "1",
    )  # fmt: skip
    assert decision.reason == (
        "fine_tuned v1 is the champion and the best candidate (perplexity 13.2); preference v2 does not beat "
        "it; it beats the baselines by more than 1.00%"
    )
    # Re-evaluated on a harder eval set, it no longer beats a baseline: a warning, but it stays champion.
    alone = choose(
        {"fine_tuned": Candidate("1", {"perplexity": 31.0})}, "1", None, BASELINES, "perplexity", MARGIN
    )
    assert (alone.promoted, alone.alias, alone.champion_version) == (False, None, "1")
    assert "does not beat base_few_shot (30)" in alone.reason and "stays champion" in alone.reason


def test_without_a_champion_the_best_candidate_must_beat_the_baselines():
    candidates = {"fine_tuned": Candidate("1", {"perplexity": 13.20})}
    decision = choose(candidates, None, None, BASELINES, "perplexity", MARGIN)
    assert (decision.promoted, decision.alias, decision.champion_version) == (True, "champion", "1")
    assert (
        decision.reason
        == "fine_tuned v1: perplexity 13.2 beats the baselines (no champion yet) by more than 1.00%"
    )
    worse = choose(
        {"fine_tuned": Candidate("1", {"perplexity": 29.9})}, None, None, BASELINES, "perplexity", MARGIN
    )
    assert (worse.promoted, worse.alias, worse.champion_version) == (False, "challenger", None)
    assert worse.reason.endswith(
        "does not beat base_few_shot (30) by the promotion margin 1.00% (gain 0.33%)"
    )


def test_an_older_champion_outside_the_candidates_is_a_rival_with_its_own_scores():
    candidates = {"fine_tuned": Candidate("3", {"rouge_l": 0.50})}
    baselines = {"base_zero_shot": {"rouge_l": 0.10}}
    kept = choose(candidates, "2", {"rouge_l": 0.55}, baselines, "rouge_l", 0.0)  # higher is better
    assert (kept.promoted, kept.alias, kept.champion_version) == (False, "challenger", "2")
    assert "does not beat the champion v2 (0.55)" in kept.reason
    beaten = choose(candidates, "2", {"rouge_l": 0.40}, baselines, "rouge_l", 0.0)
    assert (beaten.promoted, beaten.champion_version) == (True, "3")
    with pytest.raises(ValueError, match="champion v2 has no rouge_l score: evaluate it before deciding"):
        choose(candidates, "2", None, baselines, "rouge_l", 0.0)


def test_ties_go_to_the_champion_and_never_promote():
    # Two candidates with the same score: the champion among them stays, the other does not take over.
    tied = {
        "fine_tuned": Candidate("1", {"perplexity": 13.20}),
        "preference": Candidate("2", {"perplexity": 13.20}),
    }
    decision = choose(tied, "1", None, BASELINES, "perplexity", 0.0)
    assert (decision.candidate, decision.promoted, decision.alias, decision.champion_version) == (
        "fine_tuned", True, None, "1",
    )  # fmt: skip
    # Listed the other way round, the same: the tie is not decided by order when a champion is tied.
    swapped = choose(dict(reversed(tied.items())), "1", None, BASELINES, "perplexity", 0.0)
    assert (swapped.candidate, swapped.champion_version) == ("fine_tuned", "1")
    # Equal to an older champion outside the candidates, at margin 0: a tie is no gain.
    equal = choose({"fine_tuned": Candidate("3", {"perplexity": 13.20})}, "2", {"perplexity": 13.20},
                   BASELINES, "perplexity", 0.0)  # fmt: skip
    assert (equal.promoted, equal.champion_version) == (False, "2")
    assert equal.reason.endswith(
        "does not beat the champion v2 (13.2) by the promotion margin 0.00% (gain 0.00%)"
    )
    # Two new candidates tied, no champion: the first listed (the fine-tune) is put forward.
    fresh = {
        "fine_tuned": Candidate("4", {"perplexity": 13.0}),
        "preference": Candidate("5", {"perplexity": 13.0}),
    }
    assert choose(fresh, None, None, BASELINES, "perplexity", 0.0).candidate == "fine_tuned"
