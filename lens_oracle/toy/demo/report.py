"""The demo's outputs: the results table (text, markdown, JSON), the timings and the plot.

``results.json`` holds only what the seed determines, with sorted keys, so two runs with the
same seed write the same bytes; wall-clock times go to ``timings.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from lens_oracle.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from lens_oracle.toy.demo.records import DemoResult

log = logging.getLogger(__name__)

RESULTS_VERSION = 3
"""2: ``oracle_reading_difference`` (model diffing) added; 3: the held-out organism kinds
(``held_out_kinds``) and ``organism_learned``."""
SHORT_NAMES = {
    "oracle": "oracle", "untrained_oracle": "untrained", "ablated_zero": "zero",
    "ablated_shuffle": "shuffle", "black_box": "black box", "logit_lens": "logit lens",
}


def results_dict(result: DemoResult) -> dict[str, Any]:
    """The JSON table: ``tasks.<task>.<method>`` mean scores and ``tasks.<task>.chance``, plus
    intervals, margins, the base-model control, item counts, the hidden facts and the config."""
    tasks, intervals, margins, counts = {}, {}, {}, {}
    for kind, scores in result.scores.items():
        tasks[kind] = {m: round(s.mean, 6) for m, s in scores.items()}
        tasks[kind]["chance"] = round(result.chance(kind), 6)
        intervals[kind] = {m: [round(s.low, 6), round(s.high, 6)] for m, s in scores.items()}
        best, margin = result.margin(kind)
        margins[kind] = {"best_control": best, "margin": round(margin, 6)}
        counts[kind] = scores["oracle"].n
    return {
        "version": RESULTS_VERSION,
        "seed": result.seed,
        "mode": "quick" if result.config.quick else "full",
        "tasks": tasks,
        "intervals_95": intervals,
        "margins": margins,
        "oracle_reading_base_model": {
            kind: round(s.mean, 6) for kind, s in result.base_control.items()
        },
        "oracle_reading_difference": {
            kind: round(s.mean, 6) for kind, s in result.diff_reading.items()
        },
        "n_items": counts,
        "held_out_kinds": [kind for kind in result.scores if result.held_out(kind)],
        "organism_learned": {kind: round(share, 6) for kind, share in result.learned.items()},
        "organisms": {
            o.name: {"kind": o.kind, "hidden": dict(o.hidden), "prompts": len(o.prompts)}
            for o in result.organisms
        },
        "config": result.config.to_dict(),
    }


def results_json(result: DemoResult) -> str:
    """:func:`results_dict` as deterministic JSON text."""
    return json.dumps(results_dict(result), indent=2, sort_keys=True, allow_nan=False) + "\n"


def row_label(result: DemoResult, kind: str) -> str:
    """``kind``, marked when the oracle's mixture was not built around it."""
    return f"{kind} (held out)" if result.held_out(kind) else kind


def format_table(result: DemoResult) -> str:
    """A plain-text table: one row per organism, one column per method, then chance and margin."""
    methods = list(next(iter(result.scores.values())))
    header = ["task", *(SHORT_NAMES.get(m, m) for m in methods), "chance", "margin"]
    rows = [header]
    for kind, scores in result.scores.items():
        best, margin = result.margin(kind)
        rows.append([
            row_label(result, kind), *(f"{scores[m].mean:.2f}" for m in methods), f"{result.chance(kind):.2f}",
            f"{margin:+.2f} vs {SHORT_NAMES.get(best, best)}",
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    base = ", ".join(f"{k} {s.mean:.2f}" for k, s in result.base_control.items())
    lines.append(f"oracle reading the base model instead (knowledge not in the prompt): {base}")
    if result.diff_reading:
        diff = ", ".join(f"{k} {s.mean:.2f}" for k, s in result.diff_reading.items())
        lines.append(f"oracle reading organism minus base (model diffing): {diff}")
    if result.learned:
        shares = ", ".join(f"{k} {v:.2f}" for k, v in result.learned.items())
        lines.append(f"organisms' replies that show what they hide (learned): {shares}")
    return "\n".join(lines)


def _diff_cell(result: DemoResult, kind: str) -> str:
    score = result.diff_reading.get(kind)
    return "n/a" if score is None else f"{score.mean:.2f} [{score.low:.2f}, {score.high:.2f}]"


def results_markdown(result: DemoResult) -> str:
    """The table as markdown, with 95% intervals, followed by the full evaluation report."""
    methods = list(next(iter(result.scores.values())))
    lines = [
        f"# lens-oracle demo ({'quick' if result.config.quick else 'full'}, seed {result.seed})",
        "",
        "| task | " + " | ".join(methods) + " | chance | oracle on base model | oracle on organism − base "
        "| organism learned |",
        "|---" * (len(methods) + 5) + "|",
    ]
    for kind, scores in result.scores.items():
        cells = [f"{s.mean:.2f} [{s.low:.2f}, {s.high:.2f}]" for s in scores.values()]
        learned = result.learned.get(kind)
        lines.append(
            f"| {row_label(result, kind)} | " + " | ".join(cells) + f" | {result.chance(kind):.2f} | "
            f"{result.base_control[kind].mean:.2f} | {_diff_cell(result, kind)} | "
            + ("n/a" if learned is None else f"{learned:.2f}") + " |"
        )
    return "\n".join(lines) + "\n\n## Every task\n\n" + result.report.to_markdown()


def plot_results(result: DemoResult, path: Path) -> Path | None:
    """Grouped bars (tasks x methods) with 95% intervals and chance marks; ``None`` without
    matplotlib."""
    try:
        import matplotlib
    except ImportError:
        log.warning("matplotlib is not installed; skipping the plot (pip install matplotlib)")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(result.scores)
    methods = list(result.scores[kinds[0]])
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(2.2 * len(kinds) + 2, 3.8))
    try:
        for j, method in enumerate(methods):
            xs = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(kinds))]
            scores = [result.scores[k][method] for k in kinds]
            errors = [[s.mean - s.low for s in scores], [s.high - s.mean for s in scores]]
            colour = "tab:blue" if method == "oracle" else f"C{j + 1}"
            ax.bar(xs, [s.mean for s in scores], width, yerr=errors, capsize=2, color=colour,
                   label=SHORT_NAMES.get(method, method))
        for i, kind in enumerate(kinds):
            ax.hlines(result.chance(kind), i - 0.45, i + 0.45, colors="black", linestyles="dashed",
                      label="chance" if i == 0 else None)
        ax.set_xticks(range(len(kinds)), [row_label(result, k).replace(" (", "\n(") for k in kinds])
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("accuracy")
        ax.set_title(f"toy-world audits ({'quick' if result.config.quick else 'full'}, "
                     f"seed {result.seed})")
        ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.12))
        fig.tight_layout()
        buffer = _png_bytes(fig)
    finally:
        plt.close(fig)
    return atomic_write_bytes(path, buffer)


def _png_bytes(fig: Any) -> bytes:
    import io

    handle = io.BytesIO()
    fig.savefig(handle, format="png", dpi=110, metadata={"Software": None})
    return handle.getvalue()


def write_outputs(result: DemoResult, out: Path) -> list[Path]:
    """Write ``results.json``, ``timings.json``, ``oracle_training.json``, ``report.json``,
    ``results.md`` and ``demo.png``."""
    written = [
        atomic_write_text(out / "results.json", results_json(result)),
        atomic_write_json(out / "timings.json", result.timings),
        atomic_write_json(out / "oracle_training.json", result.oracle_training),
        atomic_write_text(out / "report.json", result.report.to_json()),
        atomic_write_text(out / "results.md", results_markdown(result)),
    ]
    plot = plot_results(result, out / "demo.png")
    return written + ([plot] if plot else [])
