"""Tests for lens_oracle.evals.metrics against hand-computed values and properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lens_oracle.errors import EvalError
from lens_oracle.evals.metrics import (
    Score,
    auroc,
    bootstrap_ci,
    exact_match,
    expected_calibration_error,
    normalize_answer,
    rouge_l,
    summarize,
    token_f1,
    yes_no_accuracy,
    yes_no_label,
    yes_no_probability,
)

# ---------------------------------------------------------------------------------------------
# normalize_answer / exact_match
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The  Cat's hat!", "cats hat"),
        ("An apple, a day.", "apple day"),
        ("  THEORY of   Anything ", "theory of anything"),  # articles only as whole words
        ("A", ""),
        ("", ""),
        ("yes-no", "yesno"),
        ("“Quoted” answer…", "quoted answer"),  # Unicode punctuation goes too
        ("\tline\nbreak ", "line break"),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    ("prediction", "references", "expected"),
    [
        ("The Cat.", "cat", 1.0),  # case, article, punctuation
        ("cats", "cat", 0.0),
        ("dog", ["bird", "a dog!"], 1.0),  # any reference
        ("", "", 1.0),  # empty vs empty
        ("", "cat", 0.0),  # empty prediction
        ("?!", ["the", "cat"], 1.0),  # both normalise to ""
        ("cat", "", 0.0),
    ],
)
def test_exact_match(prediction: str, references: str | list[str], expected: float) -> None:
    assert exact_match(prediction, references) == expected


def test_exact_match_synonyms_both_directions() -> None:
    synonyms = {"USA": ["United States", "U.S."]}
    # reference is the canonical answer, prediction an alternative
    assert exact_match("the united states", "usa", synonyms) == 1.0
    # reference is an alternative, prediction the canonical answer or another alternative
    assert exact_match("USA", "U.S.", synonyms) == 1.0
    assert exact_match("United States", "us", synonyms) == 1.0
    # synonyms of an unrelated group do not leak in
    assert exact_match("united states", "canada", synonyms) == 0.0
    assert exact_match("america", "usa", synonyms) == 0.0
    # without synonyms the alternative is not accepted
    assert exact_match("the united states", "usa") == 0.0


def test_exact_match_empty_synonym_does_not_accept_empty_prediction() -> None:
    assert exact_match("", "usa", {"usa": ["the"]}) == 0.0


# ---------------------------------------------------------------------------------------------
# yes/no
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes.", True),
        (" no, it is not", False),
        ("NO!", False),
        ("yes", True),
        ("maybe", None),
        ("", None),
        ("The answer is yes", None),  # first word decides
        ("yesterday", None),
        ("nothing", None),
    ],
)
def test_yes_no_label(text: str, expected: bool | None) -> None:
    assert yes_no_label(text) is expected


def test_yes_no_accuracy_unparseable_is_wrong() -> None:
    # right, right, unparseable (wrong), wrong  ->  2 / 4
    preds = ["Yes.", "no", "maybe", "NO!"]
    labels = [True, False, False, True]
    assert yes_no_accuracy(preds, labels) == 0.5


def test_yes_no_probability_matches_manual_softmax() -> None:
    logits = torch.tensor([[0.5, 2.0, -1.0, 1.0, 3.0], [-2.0, 0.0, 4.0, -1.0, 0.5]])
    probs = yes_no_probability(logits, yes_ids=[1, 3], no_ids=[0])
    # p_yes = (e^l1 + e^l3) / (e^l0 + e^l1 + e^l3), row by row
    expected = []
    for row in logits.tolist():
        yes = math.exp(row[1]) + math.exp(row[3])
        expected.append(yes / (yes + math.exp(row[0])))
    assert probs.shape == (2,)
    torch.testing.assert_close(probs, torch.tensor(expected), rtol=1e-6, atol=1e-7)
    # a duplicated id counts once
    torch.testing.assert_close(yes_no_probability(logits, [1, 3, 1], [0, 0]), probs)


def test_yes_no_probability_equal_logits_is_one_half_per_token() -> None:
    logits = torch.zeros(3, 6)
    # two yes ids against one no id, all equal logits  ->  2/3
    torch.testing.assert_close(
        yes_no_probability(logits, [0, 1], [2]), torch.full((3,), 2.0 / 3.0)
    )


# ---------------------------------------------------------------------------------------------
# token_f1 / rouge_l
# ---------------------------------------------------------------------------------------------


def test_token_f1_partial_overlap() -> None:
    # pred "the cat sat" -> [cat, sat]; ref "cat sat down" -> [cat, sat, down]
    # shared = 2; P = 2/2 = 1; R = 2/3; F1 = 2 * 1 * (2/3) / (1 + 2/3) = (4/3) / (5/3) = 4/5
    assert token_f1("the cat sat", "cat sat down") == pytest.approx(0.8)


def test_token_f1_counts_repeats_as_multiset() -> None:
    # pred [cat, cat, cat]; ref [cat, dog]; shared = min(3, 1) = 1
    # P = 1/3; R = 1/2; F1 = 2 * (1/6) / (1/3 + 1/2) = (1/3) / (5/6) = 2/5
    assert token_f1("cat cat cat", "cat dog") == pytest.approx(0.4)


def test_token_f1_max_over_references_and_edges() -> None:
    assert token_f1("the cat sat", ["dog", "cat sat down", "The cat, sat!"]) == 1.0
    assert token_f1("", "") == 1.0
    assert token_f1("the", "an") == 1.0  # both normalise to empty
    assert token_f1("", "cat") == 0.0
    assert token_f1("cat", "") == 0.0
    assert token_f1("cat", "dog") == 0.0


def test_rouge_l_uses_order_unlike_token_f1() -> None:
    # ref "police killed the gunman" -> [police, killed, gunman]
    # pred "the gunman police killed" -> [gunman, police, killed]
    # LCS = [police, killed] = 2; P = 2/3; R = 2/3; F = 2/3  (token F1 sees all 3 shared: 1.0)
    pred, ref = "the gunman police killed", "police killed the gunman"
    assert rouge_l(pred, ref) == pytest.approx(2.0 / 3.0)
    assert token_f1(pred, ref) == pytest.approx(1.0)


def test_rouge_l_unequal_lengths() -> None:
    # pred [one, two, three, four, five]; ref [two, four, six]; LCS = [two, four] = 2
    # P = 2/5; R = 2/3; F = 2 * (4/15) / (6/15 + 10/15) = (8/15) / (16/15) = 1/2
    assert rouge_l("one two three four five", "two four six") == pytest.approx(0.5)
    assert rouge_l("one two three four five", ["six", "two four six"]) == pytest.approx(0.5)


def test_rouge_l_edges() -> None:
    assert rouge_l("", "") == 1.0
    assert rouge_l("", "cat") == 0.0
    assert rouge_l("cat", "a") == 0.0
    assert rouge_l("cat dog", "bird") == 0.0
    assert rouge_l("A cat, sat.", "cat sat") == 1.0


# ---------------------------------------------------------------------------------------------
# calibration and ranking
# ---------------------------------------------------------------------------------------------


def test_expected_calibration_error_hand_example() -> None:
    probs = [0.95, 0.85, 0.25, 0.65]
    labels = [True, True, False, False]
    # predicted: yes, yes, no, yes; confidence: 0.95, 0.85, 0.75, 0.65; correct: 1, 1, 1, 0
    # 10 bins -> one example per bin: (0.05 + 0.15 + 0.25 + 0.65) / 4 = 1.1 / 4 = 0.275
    assert expected_calibration_error(probs, labels) == pytest.approx(0.275)
    # 2 bins -> all in (0.5, 1]: accuracy 3/4, mean confidence 3.2/4 = 0.8 -> |0.75 - 0.8| = 0.05
    assert expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(0.05)


def test_expected_calibration_error_tie_predicts_yes() -> None:
    # p = 0.5 predicts yes with confidence 0.5; label no -> accuracy 0 -> ECE 0.5
    assert expected_calibration_error([0.5], [False]) == pytest.approx(0.5)
    # perfectly confident and right
    assert expected_calibration_error([1.0, 0.0], [True, False]) == 0.0


def test_auroc_hand_example_with_tie() -> None:
    # positives {0.9, 0.4}, negatives {0.4, 0.2}
    # pairs: 0.9>0.4: 1, 0.9>0.2: 1, 0.4=0.4: 0.5, 0.4>0.2: 1  ->  3.5 / 4 = 0.875
    assert auroc([0.9, 0.4, 0.4, 0.2], [True, True, False, False]) == pytest.approx(0.875)
    assert auroc([0.1, 0.9], [True, False]) == 0.0
    assert auroc([0.3, 0.3, 0.3], [True, False, True]) == 0.5


# ---------------------------------------------------------------------------------------------
# bootstrap / summarize
# ---------------------------------------------------------------------------------------------

SCORES = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.5, 0.25]


def test_bootstrap_is_deterministic_and_contains_mean() -> None:
    first = bootstrap_ci(SCORES, seed=3)
    assert first == bootstrap_ci(SCORES, seed=3)
    mean, low, high = first
    assert mean == pytest.approx(7.75 / 12)  # 7 ones + 0.5 + 0.25
    assert low < mean < high
    assert 0.0 <= low and high <= 1.0
    assert bootstrap_ci(SCORES, seed=4) != first


def test_bootstrap_wider_at_higher_confidence() -> None:
    _, low_90, high_90 = bootstrap_ci(SCORES, confidence=0.90)
    _, low_99, high_99 = bootstrap_ci(SCORES, confidence=0.99)
    assert low_99 <= low_90 and high_90 <= high_99
    assert high_99 - low_99 > high_90 - low_90


def test_bootstrap_constant_scores_have_zero_width() -> None:
    assert bootstrap_ci([0.7]) == (0.7, 0.7, 0.7)
    assert bootstrap_ci([2.0, 2.0, 2.0], n_resamples=10) == (2.0, 2.0, 2.0)


def test_summarize_matches_bootstrap() -> None:
    score = summarize(SCORES, seed=5)
    assert isinstance(score, Score)
    assert (score.mean, score.low, score.high) == bootstrap_ci(SCORES, seed=5)
    assert score.n == len(SCORES)
    assert score.to_dict() == {"mean": score.mean, "low": score.low, "high": score.high, "n": 12}
    with pytest.raises(AttributeError):
        score.mean = 0.0  # type: ignore[misc]  # frozen: assignment must fail


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------


def test_errors_text_metrics() -> None:
    with pytest.raises(EvalError, match="references is empty"):
        exact_match("cat", [])
    with pytest.raises(EvalError, match="references is empty"):
        token_f1("cat", [])
    with pytest.raises(EvalError, match="references is empty"):
        rouge_l("cat", [])
    with pytest.raises(EvalError, match=r"synonyms\['usa'\] is the string"):
        exact_match("us", "usa", {"usa": "us"})


def test_errors_yes_no() -> None:
    with pytest.raises(EvalError, match="predictions has 2 items but labels has 1"):
        yes_no_accuracy(["yes", "no"], [True])
    with pytest.raises(EvalError, match="empty"):
        yes_no_accuracy([], [])
    logits = torch.zeros(2, 4)
    with pytest.raises(EvalError, match="yes_ids is empty"):
        yes_no_probability(logits, [], [1])
    with pytest.raises(EvalError, match=r"no_ids has ids \[4\] outside \[0, 4\)"):
        yes_no_probability(logits, [0], [1, 4])
    with pytest.raises(EvalError, match=r"yes_ids has ids \[-1\]"):
        yes_no_probability(logits, [-1], [1])
    with pytest.raises(EvalError, match=r"token ids \[2\] are in both"):
        yes_no_probability(logits, [0, 2], [2, 3])


@pytest.mark.parametrize("metric", [expected_calibration_error, auroc])
def test_errors_probability_inputs(metric) -> None:  # noqa: ANN001 - either metric
    with pytest.raises(EvalError, match="probs_yes has 3 items but labels has 2"):
        metric([0.1, 0.2, 0.9], [True, False])
    with pytest.raises(EvalError, match="are empty"):
        metric([], [])
    with pytest.raises(EvalError, match=r"1\.5, outside \[0, 1\]"):
        metric([0.2, 1.5], [True, False])
    with pytest.raises(EvalError, match=r"-0\.1, outside \[0, 1\]"):
        metric([-0.1, 0.5], [True, False])
    with pytest.raises(EvalError, match="NaN or inf"):
        metric([float("nan"), 0.5], [True, False])
    with pytest.raises(EvalError, match="NaN or inf"):
        metric([float("inf"), 0.5], [True, False])


def test_errors_calibration_and_auroc_specific() -> None:
    with pytest.raises(EvalError, match="n_bins is 0"):
        expected_calibration_error([0.5], [True], n_bins=0)
    with pytest.raises(EvalError, match=r"both classes.*every label is True"):
        auroc([0.2, 0.8], [True, True])
    with pytest.raises(EvalError, match=r"both classes.*every label is False"):
        auroc([0.2, 0.8], [False, False])


def test_errors_bootstrap() -> None:
    with pytest.raises(EvalError, match="scores is empty"):
        bootstrap_ci([])
    with pytest.raises(EvalError, match="scores is empty"):
        summarize([])
    for bad in (0.0, 1.0, 1.5, -0.2):
        with pytest.raises(EvalError, match=f"confidence is {bad}"):
            bootstrap_ci([1.0], confidence=bad)
    with pytest.raises(EvalError, match="n_resamples is 0"):
        bootstrap_ci([1.0], n_resamples=0)
    with pytest.raises(EvalError, match="NaN or inf"):
        bootstrap_ci([1.0, float("nan")])


# ---------------------------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------------------------

WORDS = st.sampled_from(["the", "A", "an", "cat", "Cat,", "sat", "mat.", "dog!", "on", "?", ""])
ANSWERS = st.one_of(st.lists(WORDS, max_size=8).map(" ".join), st.text(max_size=20))
GRID_PROBS = st.integers(0, 20).map(lambda k: k / 20)  # a grid keeps 1 - p free of rounding ties
PROB_LABELS = st.lists(st.tuples(GRID_PROBS, st.booleans()), min_size=2, max_size=30).filter(
    lambda pairs: len({label for _, label in pairs}) == 2
)


@given(ANSWERS)
def test_normalize_is_idempotent(text: str) -> None:
    once = normalize_answer(text)
    assert normalize_answer(once) == once
    assert exact_match(text, text) == 1.0


@given(ANSWERS, ANSWERS)
def test_text_scores_bounded_symmetric_and_ordered(a: str, b: str) -> None:
    f1, rl = token_f1(a, b), rouge_l(a, b)
    assert 0.0 <= rl <= f1 + 1e-12 <= 1.0 + 1e-12  # LCS never beats the multiset overlap
    assert f1 == pytest.approx(token_f1(b, a))
    assert rl == pytest.approx(rouge_l(b, a))
    if exact_match(a, b) == 1.0:
        assert f1 == 1.0 and rl == 1.0


@given(ANSWERS)
def test_identical_answers_score_one(text: str) -> None:
    assert token_f1(text, text) == 1.0
    assert rouge_l(text, text) == 1.0


@given(PROB_LABELS)
def test_auroc_matches_pairwise_definition_and_complement(pairs: list[tuple[float, bool]]) -> None:
    probs = [p for p, _ in pairs]
    labels = [y for _, y in pairs]
    pos = [p for p, y in pairs if y]
    neg = [p for p, y in pairs if not y]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    assert auroc(probs, labels) == pytest.approx(wins / (len(pos) * len(neg)))
    assert auroc(probs, labels) == pytest.approx(1.0 - auroc([1.0 - p for p in probs], labels))


@given(PROB_LABELS, st.integers(1, 15))
def test_ece_is_bounded(pairs: list[tuple[float, bool]], n_bins: int) -> None:
    ece = expected_calibration_error([p for p, _ in pairs], [y for _, y in pairs], n_bins)
    assert 0.0 <= ece <= 1.0


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-5.0, 5.0), min_size=1, max_size=20), st.integers(0, 2**32 - 1))
def test_bootstrap_interval_ordered_within_range(scores: list[float], seed: int) -> None:
    mean, low, high = bootstrap_ci(scores, n_resamples=50, seed=seed)
    assert min(scores) - 1e-9 <= low <= high <= max(scores) + 1e-9
    assert mean == pytest.approx(sum(scores) / len(scores))


def test_chrf_on_hand_computed_cases() -> None:
    from lens_oracle.evals.metrics import chrf

    assert chrf("The Cat!", "cat") == 1.0  # normalised: articles, case and punctuation go
    assert chrf("xyz", "abc") == 0.0
    assert chrf("", "") == 1.0 and chrf("", "abc") == 0.0
    # "ab" vs "abc": 1-grams P 2/2, R 2/3 -> F2 = 5 * (2/3) / (4 + 2/3) = 5/7; 2-grams P 1/1,
    # R 1/2 -> F2 = 2.5 / 4.5 = 5/9; no 3-grams in "ab": the mean of the two orders.
    assert chrf("ab", "abc") == pytest.approx((5 / 7 + 5 / 9) / 2)
    assert chrf("ab", ["zz", "abc"]) == pytest.approx((5 / 7 + 5 / 9) / 2)  # best reference
    assert chrf("x y", "xy") == 1.0  # whitespace is removed
    with pytest.raises(EvalError, match="order"):
        chrf("a", "a", order=0)


def test_chrf_is_a_task_scorer() -> None:
    from lens_oracle.evals.scoring import score_answer

    assert score_answer("chrf", "ab", ["abc"]) == pytest.approx((5 / 7 + 5 / 9) / 2)
