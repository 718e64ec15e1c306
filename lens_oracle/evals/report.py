"""Evaluation results and reports: typed records, markdown tables and deterministic JSON.

A *condition* is one (task, read layer, position policy); a sweep has several per task. For each
condition the report gives every method's score and the oracle's **margin over the best
control** (the best of untrained oracle, the three ablations, black box and logit lens). The
linear probe is a supervised *reference*, reported as ``margin_over_probe`` and never counted as
a control: it is trained on labelled activations, so beating it is not what shows that the oracle
reads the vector; beating the controls is.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lens_oracle.errors import EvalError
from lens_oracle.evals.methods import METHOD_KINDS, method_order
from lens_oracle.evals.metrics import Score
from lens_oracle.evals.results import Condition, EvalResult, Margin
from lens_oracle.io import atomic_write_text

REPORT_VERSION = 1

@dataclass(frozen=True)
class EvalReport:
    """All results of a run, plus methods skipped as not applicable (and why)."""

    results: tuple[EvalResult, ...]
    seed: int = 0
    skipped: tuple[tuple[str, str, str], ...] = ()
    """(task, method, reason)."""

    def conditions(self) -> list[Condition]:
        return list(dict.fromkeys(r.condition for r in self.results))

    def get(
        self, task: str, method: str, layer: int | None = None, positions: str | None = None
    ) -> EvalResult:
        """The result of ``method`` on ``task`` (the condition must be unique or specified)."""
        found = [
            r
            for r in self.results
            if r.task == task
            and r.method == method
            and (layer is None or r.layer == layer)
            and (positions is None or r.positions == positions)
        ]
        if len(found) != 1:
            raise EvalError(
                f"{len(found)} results match task {task!r}, method {method!r}, layer {layer}, "
                f"positions {positions}; give layer/positions to pick one of {self.conditions()}"
            )
        return found[0]

    def scores(self, condition: Condition) -> dict[str, Score]:
        ordered = sorted(
            (r for r in self.results if r.condition == condition),
            key=lambda r: method_order(r.method),
        )
        return {r.method: r.score for r in ordered}

    def margin(self, condition: Condition) -> Margin | None:
        """Oracle minus best control on ``condition`` (``None`` without an oracle result)."""
        scores = self.scores(condition)
        if "oracle" not in scores:
            return None
        oracle = scores["oracle"].mean
        controls = {m: s.mean for m, s in scores.items() if METHOD_KINDS.get(m) == "control"}
        best = max(controls, key=lambda m: (controls[m], -method_order(m))) if controls else None
        probe = scores.get("linear_probe")
        return Margin(
            condition,
            oracle,
            best,
            None if best is None else controls[best],
            None if best is None else oracle - controls[best],
            None if probe is None else oracle - probe.mean,
        )

    def margins(self) -> list[Margin]:
        return [m for c in self.conditions() if (m := self.margin(c)) is not None]

    # ------------------------------------------------------------ serialisation

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": REPORT_VERSION,
            "seed": self.seed,
            "results": [r.to_dict() for r in self.results],
            "margins": [m.to_dict() for m in self.margins()],
            "skipped": [{"task": t, "method": m, "reason": why} for t, m, why in self.skipped],
        }

    def to_json(self) -> str:
        """Deterministic JSON: sorted keys, fixed indentation, nothing time-dependent."""
        return (
            json.dumps(
                self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False
            )
            + "\n"
        )

    @classmethod
    def from_json(cls, text: str) -> EvalReport:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise EvalError(f"report JSON is invalid: {exc.msg} at line {exc.lineno}") from None
        if not isinstance(data, dict) or data.get("version") != REPORT_VERSION:
            raise EvalError(f"not a lens_oracle report of version {REPORT_VERSION}")
        return cls(
            results=tuple(EvalResult.from_dict(r) for r in data.get("results", [])),
            seed=int(data.get("seed", 0)),
            skipped=tuple((s["task"], s["method"], s["reason"]) for s in data.get("skipped", [])),
        )

    # ------------------------------------------------------------ tables

    def to_markdown(self) -> str:
        """One table per condition (method, kind, score with 95% CI, best paraphrase, n)."""
        from lens_oracle.evals.markdown import report_markdown

        return report_markdown(self)

    def sweep_rows(
        self, task: str, by: str = "layer", at: int | str | None = None
    ) -> list[EvalResult]:
        """Results of ``task`` varying along ``by`` ("layer" or "positions") with the other held.

        ``at`` is the held value (a position label when ``by="layer"``, a layer otherwise);
        default: the one seen with the most distinct ``by`` values (the sweep's home condition).
        """
        if by not in ("layer", "positions"):
            raise EvalError(f"sweeps go by 'layer' or 'positions', not {by!r}")
        rows = [r for r in self.results if r.task == task]
        if not rows:
            raise EvalError(f"the report has no results for task {task!r}")
        other = "positions" if by == "layer" else "layer"
        if at is None:
            seen: dict[int | str, set[int | str]] = {}
            for r in rows:
                seen.setdefault(getattr(r, other), set()).add(getattr(r, by))
            at = max(seen, key=lambda k: len(seen[k]))  # first maximum: insertion order
        return [r for r in rows if getattr(r, other) == at]

    def sweep_table(self, task: str, by: str = "layer", at: int | str | None = None) -> str:
        """Markdown: rows = read layers (``by="layer"``) or position policies, columns = methods."""
        from lens_oracle.evals.markdown import sweep_markdown

        return sweep_markdown(self.sweep_rows(task, by, at), by)

    # ------------------------------------------------------------ files

    def save(self, folder: str | os.PathLike[str], *, plots: bool = True) -> list[Path]:
        """Write ``results.json``, ``results.md`` and, if matplotlib is installed, PNG plots."""
        folder = Path(folder)
        written = [
            atomic_write_text(folder / "results.json", self.to_json()),
            atomic_write_text(folder / "results.md", self.to_markdown()),
        ]
        if plots:
            from lens_oracle.evals.plots import PlotsUnavailableError, save_plots

            try:
                written += save_plots(self, folder)
            except PlotsUnavailableError as exc:
                import logging

                logging.getLogger(__name__).warning("%s; skipping plots", exc)
        return written


def merge_reports(reports: Iterable[EvalReport]) -> EvalReport:
    """One report holding every result (the first report's seed)."""
    reports = list(reports)
    if not reports:
        raise EvalError("no reports to merge")
    return EvalReport(
        results=tuple(r for rep in reports for r in rep.results),
        seed=reports[0].seed,
        skipped=tuple(s for rep in reports for s in rep.skipped),
    )
