"""PNG plots of evaluation reports (optional extra: ``pip install lens-oracle[plots]``).

matplotlib is imported lazily, on the first plot, with the non-interactive Agg backend.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lens_oracle.errors import EvalError

if TYPE_CHECKING:
    from lens_oracle.evals.results import ReportView

PLOTS_HINT = "plots need matplotlib: pip install 'lens-oracle[plots]'"


class PlotsUnavailableError(EvalError, ImportError):
    """matplotlib is not installed (catch it as ``ImportError`` or ``EvalError``)."""


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise PlotsUnavailableError(PLOTS_HINT) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_") or "task"


def plot_scores(
    report: ReportView, path: str | os.PathLike[str], condition: tuple[str, int, str] | None = None
) -> Path:
    """Bar chart of every method's score with its 95% CI on one condition (default: the first)."""
    plt = _pyplot()
    conditions = report.conditions()
    if not conditions:
        raise EvalError("the report is empty; nothing to plot")
    condition = condition or conditions[0]
    scores = report.scores(condition)
    names = list(scores)
    means = [scores[m].mean for m in names]
    errors = [[s.mean - s.low for s in scores.values()], [s.high - s.mean for s in scores.values()]]
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2, 3.5))
    try:
        colours = [
            "tab:blue" if m == "oracle" else "tab:green" if m == "linear_probe" else "tab:gray"
            for m in names
        ]
        ax.bar(range(len(names)), means, yerr=errors, color=colours, capsize=3)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_ylabel("score")
        ax.set_ylim(0, 1.05)
        task, layer, positions = condition
        ax.set_title(f"{task} (layer {layer}, {positions})")
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


def plot_sweep(
    report: ReportView, path: str | os.PathLike[str], task: str, by: str = "layer"
) -> Path:
    """One line per method: score against read layer (``by="layer"``) or position policy."""
    rows = report.sweep_rows(task, by)
    plt = _pyplot()
    keys = list(dict.fromkeys(getattr(r, by) for r in rows))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    try:
        for method in dict.fromkeys(r.method for r in rows):
            points = [
                (keys.index(getattr(r, by)), r.score.mean) for r in rows if r.method == method
            ]
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                marker="o",
                label=method,
                linewidth=2.5 if method == "oracle" else 1.0,
            )
        ax.set_xticks(range(len(keys)), [str(k) for k in keys])
        ax.set_xlabel("read layer" if by == "layer" else "read positions")
        ax.set_ylabel("score")
        ax.set_ylim(0, 1.05)
        held = f"positions {rows[0].positions}" if by == "layer" else f"layer {rows[0].layer}"
        ax.set_title(f"{task}: score by {by} ({held})")
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


def save_plots(report: ReportView, folder: str | os.PathLike[str]) -> list[Path]:
    """A score chart per condition, plus sweep plots for tasks evaluated under several conditions."""
    folder = Path(folder)
    written = []
    for condition in report.conditions():
        task, layer, positions = condition
        written.append(
            plot_scores(
                report, folder / f"scores_{_slug(task)}_L{layer}_{_slug(positions)}.png", condition
            )
        )
    for task in dict.fromkeys(r.task for r in report.results):
        for by in ("layer", "positions"):
            if len({getattr(r, by) for r in report.sweep_rows(task, by)}) > 1:
                written.append(
                    plot_sweep(report, folder / f"sweep_{_slug(task)}_{by}.png", task, by)
                )
    return written
