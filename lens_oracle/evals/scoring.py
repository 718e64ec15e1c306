"""Score one predicted answer against an item's references with a task's scorer.

* ``exact``: :func:`~lens_oracle.evals.metrics.exact_match` (with the task's synonyms);
* ``contains``: 1.0 if an accepted answer (a reference or a synonym of one) appears in the
  prediction as a whole-word run after normalisation (``"it is red."`` contains ``red``);
* ``token_f1`` / ``rouge_l`` / ``chrf``: SQuAD token F1, ROUGE-L F-measure and chrF (character
  n-grams), best over references;
* ``yes_no``: 1.0 if the prediction's first word parses to the reference's yes/no label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from lens_oracle.errors import EvalError
from lens_oracle.evals.metrics import (
    chrf,
    exact_match,
    normalize_answer,
    rouge_l,
    token_f1,
    yes_no_label,
)
from lens_oracle.evals.tasks import Scorer


def accepted_answers(references: Sequence[str], synonyms: Mapping[str, Sequence[str]]) -> set[str]:
    """Normalised references plus every member of a synonym group that meets one of them."""
    refs = {normalize_answer(r) for r in references}
    accepted = set(refs)
    for canonical, alternatives in synonyms.items():
        group = {normalize_answer(canonical)} | {normalize_answer(a) for a in alternatives}
        if group & refs:
            accepted |= group
    accepted.discard("")
    return accepted


def contains_answer(
    prediction: str, references: Sequence[str], synonyms: Mapping[str, Sequence[str]]
) -> float:
    """1.0 if an accepted answer occurs in ``prediction`` on word boundaries, else 0.0."""
    padded = f" {normalize_answer(prediction)} "
    return float(any(f" {answer} " in padded for answer in accepted_answers(references, synonyms)))


def score_answer(
    scorer: Scorer,
    prediction: str,
    references: Sequence[str],
    synonyms: Mapping[str, Sequence[str]] | None = None,
) -> float:
    """The score in [0, 1] of ``prediction`` under ``scorer``."""
    synonyms = synonyms or {}
    if scorer == "exact":
        return exact_match(prediction, list(references), synonyms)
    if scorer == "contains":
        return contains_answer(prediction, references, synonyms)
    if scorer == "token_f1":
        return token_f1(prediction, list(references))
    if scorer == "rouge_l":
        return rouge_l(prediction, list(references))
    if scorer == "chrf":
        return chrf(prediction, list(references))
    if scorer == "yes_no":
        gold = yes_no_label(references[0])
        if gold is None:
            raise EvalError(
                f"a yes/no task has the reference {references[0]!r}; its first word must be yes or no"
            )
        return float(yes_no_label(prediction) is gold)
    raise EvalError(f"unknown scorer {scorer!r}")
