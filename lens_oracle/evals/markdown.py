"""Markdown rendering of evaluation reports (tables for people; the JSON is for programs)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from lens_oracle.evals.methods import method_order

if TYPE_CHECKING:
    from lens_oracle.evals.results import EvalResult, ReportView


def report_markdown(report: ReportView) -> str:
    """One table per condition (method, kind, score with 95% CI, best paraphrase, n), with the
    oracle's margin over the best control, calibration rows for yes/no tasks and skipped methods."""
    lines: list[str] = []
    for condition in report.conditions():
        task, layer, positions = condition
        lines += [f"### {task} (layer {layer}, positions {positions})", ""]
        lines += [
            "| method | kind | score | 95% CI | best question | n |",
            "|---|---|---|---|---|---|",
        ]
        for r in sorted(
            (r for r in report.results if r.condition == condition),
            key=lambda r: method_order(r.method),
        ):
            s = r.score
            lines.append(
                f"| {r.method} | {r.kind} | {s.mean:.3f} | [{s.low:.3f}, {s.high:.3f}] | "
                f"{r.best_question_mean:.3f} | {s.n} |"
            )
            cal = r.extras.get("calibration")
            if cal:
                auc = "n/a" if cal.get("auroc") is None else f"{cal['auroc']:.3f}"
                lines.append(
                    f"| ↳ {r.method} P(yes) | calibration | ECE {cal['ece']:.3f} | AUROC {auc} | | |"
                )
        margin = report.margin(condition)
        if margin is not None and margin.margin is not None:
            lines += [
                "",
                f"Oracle margin over the best control ({margin.best_control}): **{margin.margin:+.3f}**",
            ]
            if margin.margin_over_probe is not None:
                lines.append(
                    f"Oracle minus linear probe (supervised reference): {margin.margin_over_probe:+.3f}"
                )
        lines.append("")
    for task, method, reason in report.skipped:
        lines.append(f"- skipped {method} on {task}: {reason}")
    return "\n".join(lines).rstrip() + "\n"


def sweep_markdown(rows: Sequence[EvalResult], by: str) -> str:
    """Markdown of one sweep (see ``EvalReport.sweep_rows``): rows = values of ``by``, columns =
    methods, cells = mean scores."""
    methods = sorted({r.method for r in rows}, key=method_order)
    held = f"positions {rows[0].positions}" if by == "layer" else f"layer {rows[0].layer}"
    lines = [
        f"| {by} ({held}) | " + " | ".join(methods) + " |",
        "|---" * (len(methods) + 1) + "|",
    ]
    for key in dict.fromkeys(getattr(r, by) for r in rows):
        scores = {r.method: r.score.mean for r in rows if getattr(r, by) == key}
        lines.append(
            f"| {key} | "
            + " | ".join(f"{scores[m]:.3f}" if m in scores else "-" for m in methods)
            + " |"
        )
    return "\n".join(lines) + "\n"
