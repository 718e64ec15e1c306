"""Metrics for scoring oracle answers: free text, yes/no, calibration and confidence intervals.

Text metrics follow the SQuAD conventions: answers are compared after :func:`normalize_answer`
(lower-case, no punctuation, no articles, single spaces), and a score against several references
is the best score over them. Every function checks its inputs first and raises
:class:`~lens_oracle.errors.EvalError` with a message saying what to fix.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from lens_oracle.errors import EvalError

__all__ = [
    "Score",
    "auroc",
    "bootstrap_ci",
    "chrf",
    "exact_match",
    "expected_calibration_error",
    "normalize_answer",
    "rouge_l",
    "summarize",
    "token_f1",
    "yes_no_accuracy",
    "yes_no_label",
    "yes_no_probability",
]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_ASCII_PUNCTUATION = frozenset(string.punctuation)


def _references(references: str | Sequence[str]) -> list[str]:
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise EvalError(
            "references is empty; pass at least one reference answer (a string or a list of them)."
        )
    return refs


def _same_length(a: Sequence[object], b: Sequence[object], a_name: str, b_name: str) -> None:
    if len(a) != len(b):
        raise EvalError(
            f"{a_name} has {len(a)} items but {b_name} has {len(b)}; "
            "pass exactly one entry in each per example, in the same order."
        )
    if len(a) == 0:
        raise EvalError(f"{a_name} and {b_name} are empty; a metric needs at least one example.")


def _probabilities(probs_yes: Sequence[float | int]) -> np.ndarray:
    probs = np.asarray(probs_yes, dtype=np.float64)
    if not np.all(np.isfinite(probs)):
        raise EvalError("probs_yes contains NaN or inf; pass finite probabilities in [0, 1].")
    if np.any((probs < 0.0) | (probs > 1.0)):
        bad = float(probs[(probs < 0.0) | (probs > 1.0)][0])
        raise EvalError(
            f"probs_yes contains {bad}, outside [0, 1]; pass probabilities, not logits "
            "(apply a softmax or sigmoid first, e.g. with yes_no_probability)."
        )
    return probs


def normalize_answer(text: str) -> str:
    """Normalise an answer SQuAD-style for comparison.

    Lower-cases, deletes punctuation (ASCII ``string.punctuation`` and any Unicode punctuation
    character, so ``"don't"`` becomes ``"dont"``), removes the articles *a*, *an* and *the*, and
    collapses runs of whitespace into single spaces with no leading or trailing space.
    """
    text = text.lower()
    text = "".join(
        ch
        for ch in text
        if ch not in _ASCII_PUNCTUATION and not unicodedata.category(ch).startswith("P")
    )
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(
    prediction: str,
    references: str | Sequence[str],
    synonyms: Mapping[str, Sequence[str]] | None = None,
) -> float:
    """Return 1.0 if the normalised prediction equals a normalised reference, else 0.0.

    ``synonyms`` maps a canonical answer to alternative spellings, e.g. ``{"usa": ["united
    states", "us"]}``. A canonical answer and its alternatives form one group; when any member of a
    group equals a reference (after normalisation), every member of the group is accepted. So with
    the mapping above, reference ``"USA"`` accepts ``"the United States"``, and reference ``"US"``
    accepts ``"usa"``. An empty prediction scores 1.0 only against an empty reference.
    """
    refs = {normalize_answer(ref) for ref in _references(references)}
    pred = normalize_answer(prediction)
    if not pred:
        return float("" in refs)
    accepted = set(refs)
    for canonical, alternatives in (synonyms or {}).items():
        if isinstance(alternatives, str):
            raise EvalError(
                f"synonyms[{canonical!r}] is the string {alternatives!r}; map each canonical "
                f"answer to a list of alternatives, e.g. {{{canonical!r}: [{alternatives!r}]}}."
            )
        group = {normalize_answer(canonical)} | {normalize_answer(alt) for alt in alternatives}
        group.discard("")
        if group & refs:
            accepted |= group
    return float(pred in accepted)


def _f_measure(overlap: int, n_pred: int, n_ref: int) -> float:
    """F1 from an overlap count; empty-vs-empty is 1.0 and empty-vs-anything-else is 0.0."""
    if n_pred == 0 or n_ref == 0:
        return float(n_pred == n_ref)
    if overlap == 0:
        return 0.0
    precision, recall = overlap / n_pred, overlap / n_ref
    return 2.0 * precision * recall / (precision + recall)


def token_f1(prediction: str, references: str | Sequence[str]) -> float:
    """SQuAD token F1 between the normalised prediction and the best-matching reference.

    Precision and recall count shared tokens as a multiset (a token repeated twice in both counts
    twice). Empty against empty scores 1.0; empty against non-empty scores 0.0.
    """
    pred = normalize_answer(prediction).split()
    best = 0.0
    for reference in _references(references):
        ref = normalize_answer(reference).split()
        overlap = sum((Counter(pred) & Counter(ref)).values())
        best = max(best, _f_measure(overlap, len(pred), len(ref)))
    return best


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (O(len(a) * len(b)))."""
    previous = [0] * (len(b) + 1)
    for token_a in a:
        current = [0]
        for j, token_b in enumerate(b):
            if token_a == token_b:
                current.append(previous[j] + 1)
            else:
                current.append(max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, references: str | Sequence[str]) -> float:
    """ROUGE-L F-measure (beta = 1) on normalised tokens, best over the references.

    With ``L`` the longest common subsequence of tokens, ``P = L / len(prediction)``,
    ``R = L / len(reference)`` and the score is ``2PR / (P + R)``. Empty strings follow
    :func:`token_f1`: empty against empty is 1.0, empty against non-empty is 0.0.
    """
    pred = normalize_answer(prediction).split()
    best = 0.0
    for reference in _references(references):
        ref = normalize_answer(reference).split()
        best = max(best, _f_measure(_lcs_length(pred, ref), len(pred), len(ref)))
    return best


def _char_ngrams(text: str, n: int) -> Counter[str]:
    return Counter(text[i : i + n] for i in range(len(text) - n + 1))


def chrf(prediction: str, references: str | Sequence[str], *, order: int = 6, beta: float = 2.0) -> float:
    """chrF (Popović, 2015): character n-gram F-score, best over the references, in [0, 1].

    On normalised answers with whitespace removed, for each n in 1..``order``: precision and
    recall of the (clipped) shared character n-grams and their F-beta (beta 2: recall weighs
    more); the score is the mean over the orders that both strings are long enough to have.
    Empty against empty is 1.0; a string too short for any order against another scores 0.0
    unless they are equal.
    """
    if order < 1 or beta <= 0:
        raise EvalError(f"chrF needs order >= 1 and beta > 0, got order {order} and beta {beta}")
    pred = "".join(normalize_answer(prediction).split())
    best = 0.0
    for reference in _references(references):
        ref = "".join(normalize_answer(reference).split())
        if pred == ref:
            return 1.0
        scores = []
        for n in range(1, order + 1):
            pred_grams, ref_grams = _char_ngrams(pred, n), _char_ngrams(ref, n)
            if not pred_grams or not ref_grams:
                continue
            matches = sum((pred_grams & ref_grams).values())
            precision, recall = matches / sum(pred_grams.values()), matches / sum(ref_grams.values())
            denominator = beta**2 * precision + recall
            scores.append((1 + beta**2) * precision * recall / denominator if denominator else 0.0)
        best = max(best, sum(scores) / len(scores) if scores else 0.0)
    return best


def yes_no_label(text: str) -> bool | None:
    """Parse an answer into True (yes), False (no) or None (neither) from its first word.

    The first word after :func:`normalize_answer` decides: ``"Yes."`` is True, ``" no, it is
    not"`` is False, ``"maybe"`` and ``""`` are None.
    """
    words = normalize_answer(text).split()
    if not words:
        return None
    return {"yes": True, "no": False}.get(words[0])


def yes_no_accuracy(predictions: Sequence[str], labels: Sequence[bool]) -> float:
    """Fraction of answers whose parsed yes/no label equals the gold label.

    An answer that :func:`yes_no_label` cannot parse counts as wrong.
    """
    _same_length(predictions, labels, "predictions", "labels")
    correct = sum(yes_no_label(pred) is bool(label) for pred, label in zip(predictions, labels))
    return correct / len(predictions)


def yes_no_probability(
    logits: Float[Tensor, "batch d_vocab"],
    yes_ids: Sequence[int],
    no_ids: Sequence[int],
) -> Float[Tensor, " batch"]:
    """Probability of *yes* from next-token logits, with the softmax restricted to yes/no tokens.

    Several ids per side (e.g. ``" Yes"``, ``"yes"``) pool their mass:
    ``p_yes = sigmoid(logsumexp(logits[yes_ids]) - logsumexp(logits[no_ids]))``, which equals
    the softmax over the union of the ids summed over the yes ids. Duplicate ids are counted once.
    """
    d_vocab = logits.shape[-1]
    sides: dict[str, list[int]] = {}
    for name, ids in (("yes_ids", yes_ids), ("no_ids", no_ids)):
        unique = sorted({int(i) for i in ids})
        if not unique:
            raise EvalError(f"{name} is empty; pass the token id(s) of the answer word.")
        out_of_range = [i for i in unique if not 0 <= i < d_vocab]
        if out_of_range:
            raise EvalError(
                f"{name} has ids {out_of_range} outside [0, {d_vocab}); pass token ids from the "
                "same tokenizer as the model that produced the logits."
            )
        sides[name] = unique
    shared = sorted(set(sides["yes_ids"]) & set(sides["no_ids"]))
    if shared:
        raise EvalError(
            f"token ids {shared} are in both yes_ids and no_ids; each id must count for one side."
        )
    yes_mass = torch.logsumexp(logits[:, sides["yes_ids"]], dim=-1)
    no_mass = torch.logsumexp(logits[:, sides["no_ids"]], dim=-1)
    return torch.sigmoid(yes_mass - no_mass)


def expected_calibration_error(
    probs_yes: Sequence[float | int], labels: Sequence[bool], n_bins: int = 10
) -> float:
    """Expected calibration error of yes/no probabilities (confidence of the predicted class).

    The predicted class is *yes* when ``p_yes >= 0.5``, and its confidence is
    ``max(p_yes, 1 - p_yes)``. Confidences fall into ``n_bins`` equal-width bins
    ``(0, 1/n], (1/n, 2/n], ..., ((n-1)/n, 1]`` over [0, 1] (for two classes the lower half stays
    empty). ECE is ``sum_b |B_b| / N * |accuracy(B_b) - mean confidence(B_b)|``.
    """
    if isinstance(n_bins, bool) or n_bins < 1:
        raise EvalError(f"n_bins is {n_bins}; pass a positive number of bins (10 is usual).")
    _same_length(probs_yes, labels, "probs_yes", "labels")
    probs = _probabilities(probs_yes)
    gold = np.asarray(labels, dtype=bool)
    predicted = probs >= 0.5
    confidence = np.where(predicted, probs, 1.0 - probs)
    correct = (predicted == gold).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    ece = 0.0
    for b in np.unique(bins):
        in_bin = bins == b
        gap = abs(correct[in_bin].mean() - confidence[in_bin].mean())
        ece += in_bin.mean() * gap
    return float(ece)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``; tied values share the average of their ranks."""
    order = np.argsort(values, kind="stable")
    _, starts, counts = np.unique(values[order], return_index=True, return_counts=True)
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(starts + (counts + 1) / 2.0, counts)
    return ranks


def auroc(probs_yes: Sequence[float | int], labels: Sequence[bool]) -> float:
    """Area under the ROC curve of ``probs_yes`` for the positive class *yes* (label True).

    Computed from ranks (Mann-Whitney U), so it equals the probability that a random *yes*
    example scores above a random *no* example, with ties counting one half.
    """
    _same_length(probs_yes, labels, "probs_yes", "labels")
    probs = _probabilities(probs_yes)
    gold = np.asarray(labels, dtype=bool)
    n_pos = int(gold.sum())
    n_neg = len(gold) - n_pos
    if n_pos == 0 or n_neg == 0:
        only = "True (yes)" if n_neg == 0 else "False (no)"
        raise EvalError(
            f"auroc needs both classes, but every label is {only}; "
            "evaluate on a set with both yes and no examples."
        )
    rank_sum = _average_ranks(probs)[gold].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def bootstrap_ci(
    scores: Sequence[float | int],
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean of ``scores`` with a percentile-bootstrap confidence interval: ``(mean, low, high)``.

    Draws ``n_resamples`` resamples with replacement from a ``numpy`` Generator seeded with
    ``seed``, so the same inputs and seed always give the same tuple.
    """
    if len(scores) == 0:
        raise EvalError("scores is empty; bootstrap_ci needs at least one score.")
    if isinstance(n_resamples, bool) or n_resamples < 1:
        raise EvalError(f"n_resamples is {n_resamples}; pass a positive number (1000 is usual).")
    if not 0.0 < confidence < 1.0:
        raise EvalError(
            f"confidence is {confidence}; pass a level strictly between 0 and 1, e.g. 0.95."
        )
    values = np.asarray(scores, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise EvalError("scores contains NaN or inf; drop or fix those examples first.")
    rng = np.random.default_rng(seed)
    n = len(values)
    means = np.array([values[rng.integers(0, n, size=n)].mean() for _ in range(n_resamples)])
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(values.mean()), float(low), float(high)


@dataclass(frozen=True)
class Score:
    """A metric's mean over examples with its bootstrap confidence interval."""

    mean: float
    """Mean score over the examples."""
    low: float
    """Lower end of the confidence interval."""
    high: float
    """Upper end of the confidence interval."""
    n: int
    """Number of examples scored."""

    def __post_init__(self) -> None:
        if not all(math.isfinite(v) for v in (self.mean, self.low, self.high)):
            raise EvalError(f"Score has non-finite fields {self}; build it from finite scores.")

    def to_dict(self) -> dict[str, float | int]:
        """Plain dict for JSON reports."""
        return asdict(self)


def summarize(
    scores: Sequence[float | int],
    seed: int = 0,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
) -> Score:
    """Summarise per-example scores as a :class:`Score` using :func:`bootstrap_ci`."""
    mean, low, high = bootstrap_ci(
        scores, n_resamples=n_resamples, confidence=confidence, seed=seed
    )
    return Score(mean=mean, low=low, high=high, n=len(scores))
