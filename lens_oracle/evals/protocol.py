"""The generative QA protocol: free-text answers from one last-token activation, scored three ways.

The benchmark the Activation Oracles paper is ranked on asks an oracle, greedily and with up to 128
new tokens, about one activation (the text's last token) in three kinds of question:

* ``classification``: comprehension questions about labelled text (theme, tone, intent), where the
  label is not written in the text;
* ``fact_retrieval``: questions the text's facts answer;
* ``gist``: a one-sentence summary, asked with one of many phrasings.

Answers are scored with SQuAD token-F1, ROUGE-L and chrF against the references. Here it is a set
of ordinary :class:`~lens_oracle.evals.tasks.EvalTask` s (``kind`` names the question kind; in a task
file, ``"kind": "gist"``), run with every control like any task, then summarised by
:func:`protocol_table` per kind and overall, each metric with a bootstrap interval.

Published numbers, for context only (other models and data, so not a like-for-like comparison):
token-F1 31.1 / 26.2 / 29.3 for AO on classification / fact retrieval / gist (ROUGE-L overall 27.3);
the benchmark's own method 30.9 / 29.4 / 30.1 (overall 28.6). See ``PUBLISHED``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import fmean
from typing import Any

from lens_oracle.activations import LastToken
from lens_oracle.errors import EvalError
from lens_oracle.evals.metrics import Score, summarize
from lens_oracle.evals.report import EvalReport
from lens_oracle.evals.scoring import score_answer
from lens_oracle.evals.tasks import EvalItem, EvalTask, TargetSpec

QA_KINDS = ("classification", "fact_retrieval", "gist")
QA_METRICS = ("token_f1", "rouge_l", "chrf")
MAX_NEW_TOKENS = 128
OVERALL = "overall"
PUBLISHED = {
    "activation_oracle": {"token_f1": {"classification": 31.1, "fact_retrieval": 26.2, "gist": 29.3},
                          "rouge_l": {"overall": 27.3}},
    "benchmark_method": {"token_f1": {"classification": 30.9, "fact_retrieval": 29.4, "gist": 30.1},
                         "rouge_l": {"overall": 28.6}},
}
"""The published figures (percent), cited beside our tables for context only."""


def qa_task(
    name: str,
    kind: str,
    items: Sequence[EvalItem],
    questions: Sequence[str],
    *,
    layer: int | None = None,
    target: TargetSpec | None = None,
) -> EvalTask:
    """One protocol task: the last token read, greedy answers of up to 128 tokens, token-F1 as the
    task's own score (:func:`protocol_table` adds ROUGE-L and chrF)."""
    if kind not in QA_KINDS:
        raise EvalError(f"QA kind {kind!r} is unknown; choose one of {list(QA_KINDS)}")
    return EvalTask(
        name=name, items=tuple(items), questions=tuple(questions), layer=layer, positions=LastToken(),
        scorer="token_f1", max_new_tokens=MAX_NEW_TOKENS, target=target or TargetSpec(), kind=kind,
    )


@dataclass(frozen=True)
class ProtocolTable:
    """``scores[method][kind or "overall"][metric]``, and the number of items per kind."""

    scores: dict[str, dict[str, dict[str, Score]]]
    n_items: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_items": dict(self.n_items),
            "scores": {
                method: {
                    kind: {m: {"mean": round(s.mean, 6), "low": round(s.low, 6), "high": round(s.high, 6)}
                           for m, s in metrics.items()}
                    for kind, metrics in by_kind.items()
                }
                for method, by_kind in self.scores.items()
            },
        }

    def to_markdown(self, metric: str = "token_f1") -> str:
        """One row per method, one column per kind and overall: ``metric`` x 100 with its interval."""
        if metric not in QA_METRICS:
            raise EvalError(f"metric {metric!r} is unknown; choose one of {list(QA_METRICS)}")
        kinds = [k for k in (*QA_KINDS, OVERALL) if k in self.n_items]
        lines = [
            f"| method ({metric} × 100) | " + " | ".join(f"{k} (n={self.n_items[k]})" for k in kinds) + " |",
            "|---" * (len(kinds) + 1) + "|",
        ]
        for method, by_kind in self.scores.items():
            cells = [
                f"{100 * by_kind[k][metric].mean:.1f} [{100 * by_kind[k][metric].low:.1f}, "
                f"{100 * by_kind[k][metric].high:.1f}]"
                for k in kinds
            ]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


def protocol_table(
    report: EvalReport, tasks: Sequence[EvalTask], *, seed: int = 0, n_resamples: int = 1000
) -> ProtocolTable:
    """Every method of ``report`` on the protocol's ``tasks``, per kind and pooled: each item's
    token-F1, ROUGE-L and chrF (mean over its question paraphrases), with bootstrap intervals."""
    tasks = [t for t in tasks if t.kind in QA_KINDS]
    if not tasks:
        raise EvalError(f"no task has a QA kind ({list(QA_KINDS)}); build them with qa_task")
    methods = list(dict.fromkeys(r.method for r in report.results if r.task in {t.name for t in tasks}))
    if not methods:
        raise EvalError("the report holds no result for the protocol's tasks; run them first")
    per_item: dict[str, dict[str, dict[str, list[float]]]] = {}
    for method in methods:
        pooled: dict[str, dict[str, list[float]]] = {}
        for task in tasks:
            result = report.get(task.name, method)
            for column, item in enumerate(task.items):
                answers = [row[column] for row in result.predictions]
                for metric in QA_METRICS:
                    value = fmean(score_answer(metric, a, item.references) for a in answers)
                    for kind in (task.kind, OVERALL):
                        pooled.setdefault(kind, {}).setdefault(metric, []).append(value)
        per_item[method] = pooled
    scores = {
        method: {
            kind: {metric: summarize(values, seed, n_resamples=n_resamples) for metric, values in metrics.items()}
            for kind, metrics in pooled.items()
        }
        for method, pooled in per_item.items()
    }
    n_items = {kind: len(metrics["token_f1"]) for kind, metrics in per_item[methods[0]].items()}
    return ProtocolTable(scores, n_items)
