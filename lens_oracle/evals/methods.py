"""The oracle, its controls and the reference readouts, each run on the same prepared items.

Methods and what each one asks or reads:

* ``oracle``: the trained adapter with the item's vectors injected (the method under test).
* ``untrained_oracle``: the same injection with the adapter switched off (Patchscopes/SelfIE).
* ``ablated_zero``: the oracle asked with *no* vector. Norm-matched addition refuses a zero
  vector (it has no direction), and ``h + 0 = h``, so "inject zeros" is exactly asking with
  ``inject=False``: the placeholders stay in the prompt and the residual is left alone.
* ``ablated_shuffle``: every item gets another item's vectors (a seeded permutation that is a
  derangement, repaired so that no item keeps vectors from an item with the same label
  whenever that is possible; the count of items it could not fix is reported).
* ``ablated_random``: seeded Gaussian vectors rescaled to the norms of the original vectors.
* ``black_box``: the target itself is asked in text: its context, then the question as a user
  turn (chat template when the tokenizer has one), greedy decoding.
* ``logit_lens``: the target's final norm + unembedding applied to the vectors the oracle reads;
  the candidate whose first token has the highest mean log-probability wins (the top token when
  the task has no candidates).
* ``patchscope``: each read vector replaces the placeholder of the token-identity prompt
  (``"cat -> cat; 135 -> 135; hello -> hello; ? ->"``) at the same layer of the unmodified target
  (:mod:`.patchscope`); the next-token log-probabilities, averaged over the read positions, pick
  the answer as the logit lens does. A training-free readout: no adapter, no question.
* ``linear_probe``: logistic regression trained on the task's labelled ``train_items``
  (a supervised *reference*, see :mod:`.probe`; not counted as a control).

The controls (every method above except ``oracle`` and ``linear_probe``) answer the question
"could this score be reached without the oracle reading the vector?".

This module is the registry and the records methods share; the oracle family and the vector
ablations live in :mod:`.controls`, the black box, logit lens and probe in :mod:`.baselines`,
and :func:`lens_oracle.evals.runner.run_method` dispatches by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from lens_oracle.errors import EvalError
from lens_oracle.evals.probe import ProbeConfig
from lens_oracle.evals.targets import Prepared, Target
from lens_oracle.evals.tasks import EvalTask
from lens_oracle.oracle import ActivationOracle

MethodName = Literal[
    "oracle",
    "untrained_oracle",
    "ablated_zero",
    "ablated_shuffle",
    "ablated_random",
    "black_box",
    "logit_lens",
    "patchscope",
    "linear_probe",
]
METHODS: tuple[str, ...] = get_args(MethodName)
MethodKind = Literal["oracle", "control", "reference"]
METHOD_KINDS: dict[str, MethodKind] = {
    m: "oracle" if m == "oracle" else "reference" if m == "linear_probe" else "control"
    for m in METHODS
}
CONTROLS: tuple[str, ...] = tuple(m for m in METHODS if METHOD_KINDS[m] == "control")
NO_QUESTION = "(no question: reads the vectors directly)"


@dataclass(frozen=True)
class MethodContext:
    """Everything a method may use; every method sees the same prepared items."""

    oracle: ActivationOracle
    target: Target
    prepared: Prepared
    train: Prepared | None = None
    """Prepared ``train_items`` (linear probe only)."""
    seed: int = 0
    batch_size: int = 16
    probe: ProbeConfig = field(default_factory=ProbeConfig)


@dataclass(frozen=True)
class MethodOutput:
    """Predictions ``[paraphrase][item]`` of one method, with optional yes-probabilities."""

    predictions: tuple[tuple[str, ...], ...]
    questions: tuple[str, ...]
    p_yes: tuple[tuple[float, ...], ...] = ()
    extras: dict[str, Any] = field(default_factory=dict)
    samples: tuple[tuple[tuple[str, ...], ...], ...] = ()
    """Each item's answers ``[paraphrase][item][answer]`` when it has several: sampled ones (tasks
    with ``samples``) and/or one per read position (``granularity="each"``); ``predictions`` then
    holds each item's most common answer."""


def unavailable_reason(method: str, task: EvalTask) -> str | None:
    """Why ``method`` cannot run on ``task`` (``None`` when it can)."""
    if method not in METHODS:
        raise EvalError(f"unknown method {method!r}; choose from {list(METHODS)}")
    if method == "patchscope":
        if task.extra_layers:
            return "a multi-layer query has no single layer to patch its vectors into"
        if task.target.difference:
            return "a difference of two models' activations is not a residual state to patch in"
    if method == "linear_probe":
        if not task.label_set:
            return "the task has no candidates (finite label set)"
        if len(task.train_items) < 2:
            return "the task has no train_items to fit the probe on"
    return None


def question_labels(task: EvalTask) -> tuple[str, ...]:
    """Report labels of the paraphrases: the task's questions, or per-item question slots."""
    return task.questions or tuple(f"per-item question {k}" for k in range(task.n_questions))


def method_order(method: str) -> int:
    """Position of ``method`` in :data:`METHODS` (report order; unknown names last)."""
    return METHODS.index(method) if method in METHODS else len(METHODS)
