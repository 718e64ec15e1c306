"""A detection table for yes/no questions ("Is the assistant lying?"): accuracy with a bootstrap
interval and the AUROC of P(yes), one row per method, from eval reports or from raw P(yes)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lens_oracle.evals.metrics import auroc, summarize
from lens_oracle.evals.report import EvalReport
from lens_oracle.evals.tasks import EvalItem


@dataclass(frozen=True)
class Row:
    """One line of a yes/no detection table."""

    method: str
    accuracy: float
    low: float
    high: float
    auroc: float | None
    n: int

    def markdown(self) -> str:
        auc = "-" if self.auroc is None else f"{self.auroc:.3f}"
        return f"| {self.method} | {self.accuracy:.3f} [{self.low:.3f}, {self.high:.3f}] | {auc} | {self.n} |"

    def to_dict(self) -> dict[str, float | int | str | None]:
        return dataclasses.asdict(self)


def probability_row(method: str, p_yes: Sequence[float], items: Sequence[EvalItem], seed: int = 0,
                    n_resamples: int = 1000) -> Row:
    """Accuracy (P(yes) >= 0.5 counts as yes) with a bootstrap CI, and AUROC."""
    labels = [item.label == "yes" for item in items]
    correct = [float((p >= 0.5) == label) for p, label in zip(p_yes, labels, strict=True)]
    score = summarize(correct, seed, n_resamples=n_resamples)
    return Row(method, score.mean, score.low, score.high, auroc(list(p_yes), labels), score.n)


def report_rows(report: EvalReport, names: Mapping[str, str] | None = None) -> list[Row]:
    """One row per method of ``report`` (AUROC where the method gave P(yes)), renamed by ``names``."""
    names = names or {}
    out = []
    for result in report.results:
        calibration, score = result.extras.get("calibration") or {}, result.score
        out.append(Row(names.get(result.method, result.method), score.mean, score.low, score.high,
                       calibration.get("auroc"), score.n))
    return out


def table(rows: Sequence[Row]) -> str:
    """The rows as a markdown table."""
    head = "| method | accuracy [95% CI] | AUROC P(yes) | n |\n|---|---|---|---|"
    return "\n".join([head, *(r.markdown() for r in rows)])


__all__ = ["Row", "probability_row", "report_rows", "table"]
