"""The records an evaluation produces, below the report and its renderers.

:class:`EvalResult` (one method on one condition) and :class:`Margin` (the oracle against the best
control) are what :mod:`.report` collects and what :mod:`.markdown` and :mod:`.plots` render;
:class:`ReportView` is the part of a report the renderers read, so they need not import the
report module (which imports them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from lens_oracle.errors import EvalError
from lens_oracle.evals.methods import MethodKind
from lens_oracle.evals.metrics import Score

Condition = tuple[str, int, str]
"""(task name, read layer, position policy label)."""


@dataclass(frozen=True)
class EvalResult:
    """One method's result on one condition, with per-item predictions and scores."""

    task: str
    method: str
    kind: MethodKind
    layer: int
    positions: str
    """Position policy label (``per_item`` when items carry their own positions)."""
    score: Score
    """Mean over items (each item averaged over paraphrases) with a bootstrap CI."""
    questions: tuple[str, ...]
    predictions: tuple[tuple[str, ...], ...]
    """``[paraphrase][item]`` answers."""
    item_scores: tuple[float, ...]
    extras: Mapping[str, Any] = field(default_factory=dict)
    """JSON values: ``question_means``, ``best_question``, ``calibration`` (yes/no), ..."""

    @property
    def condition(self) -> Condition:
        return (self.task, self.layer, self.positions)

    @property
    def best_question_mean(self) -> float:
        """Mean score of the best paraphrase (optimistic: chosen on the evaluated items)."""
        means = self.extras.get("question_means") or [self.score.mean]
        return float(max(means))

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "method": self.method,
            "kind": self.kind,
            "layer": self.layer,
            "positions": self.positions,
            "score": self.score.to_dict(),
            "questions": list(self.questions),
            "predictions": [list(p) for p in self.predictions],
            "item_scores": list(self.item_scores),
            "extras": dict(self.extras),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalResult:
        try:
            return cls(
                task=data["task"],
                method=data["method"],
                kind=data["kind"],
                layer=data["layer"],
                positions=data["positions"],
                score=Score(**data["score"]),
                questions=tuple(data["questions"]),
                predictions=tuple(tuple(p) for p in data["predictions"]),
                item_scores=tuple(float(s) for s in data["item_scores"]),
                extras=dict(data.get("extras", {})),
            )
        except (KeyError, TypeError) as exc:
            raise EvalError(f"a result record is malformed ({type(exc).__name__}: {exc})") from None


@dataclass(frozen=True)
class Margin:
    """The oracle against the best control (and the probe) on one condition."""

    condition: Condition
    oracle: float
    best_control: str | None
    best_control_score: float | None
    margin: float | None
    """Oracle mean minus best control mean."""
    margin_over_probe: float | None

    def to_dict(self) -> dict[str, Any]:
        task, layer, positions = self.condition
        return {
            "task": task,
            "layer": layer,
            "positions": positions,
            "oracle": self.oracle,
            "best_control": self.best_control,
            "best_control_score": self.best_control_score,
            "margin": self.margin,
            "margin_over_probe": self.margin_over_probe,
        }


class ReportView(Protocol):
    """What the renderers read from an :class:`~lens_oracle.evals.report.EvalReport`."""

    results: tuple[EvalResult, ...]
    skipped: tuple[tuple[str, str, str], ...]

    def conditions(self) -> list[Condition]: ...

    def margin(self, condition: Condition) -> Margin | None: ...

    def scores(self, condition: Condition) -> dict[str, Score]: ...

    def sweep_rows(self, task: str, by: str = "layer", at: int | str | None = None) -> Sequence[EvalResult]: ...
