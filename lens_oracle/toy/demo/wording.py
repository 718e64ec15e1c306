"""Do the held-out organism kinds fail for their question's wording? Ask them in the mixture's.

The demo's oracle reads neither held-out kind (:mod:`lens_oracle.toy.organisms.held_out`). One
reason could be the question alone: each held-out audit asks in a wording the mixture never
trained (``"where does the assistant live ?"``). This diagnostic asks the same held-out items,
read at the same positions, in the wordings of the mixture's own questions about the same
attribute -- a person's city for ``home_city``, a text's sentiment for ``review_bias`` -- with the
demo's every method (the oracle and its controls, the no-activation one among them) and with the
oracle reading the base model.

If the oracle then reads the hidden knowledge, the failure was the wording; if it does not, the
activations it is asked about are not of a form it has learned to read. It is a diagnostic only:
nothing here trains on the held-out items or changes the mixture.

``python -m lens_oracle.toy.demo.wording --cache DIR [--seeds 0,1,2] [--mixture full,diverse]
[--threads 2]`` reads (or builds) a demo cache: pass ``<cache>/threads-N`` for a sweep's cache.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lens_oracle.acceleration import torch_threads
from lens_oracle.evals.report import EvalReport
from lens_oracle.evals.runner import run_tasks
from lens_oracle.evals.tasks import TargetSpec
from lens_oracle.toy.demo.audit import organism_tasks
from lens_oracle.toy.demo.mixture import ORACLE_WORDS
from lens_oracle.toy.demo.pipeline import load_or_train_oracle
from lens_oracle.toy.demo.qa_components import ATTRIBUTE_QUESTIONS, TEXT_QUESTIONS
from lens_oracle.toy.demo.records import METHODS, demo_config
from lens_oracle.toy.organisms import HELD_OUT_KINDS, Organism, build_organisms
from lens_oracle.toy.world.language import QUESTIONS, make_world
from lens_oracle.toy.world.model import load_or_pretrain
from lens_oracle.validate import parse_ints

MIXTURE_WORDINGS: dict[str, tuple[str, ...]] = {
    "home_city": tuple(dict.fromkeys((QUESTIONS["city"], *ATTRIBUTE_QUESTIONS["city"]))),
    "review_bias": tuple(dict.fromkeys((QUESTIONS["sentiment"], *TEXT_QUESTIONS["sentiment"]))),
}
"""Per held-out kind, the mixture's questions about the same attribute (the demo mixture asks the
first; the diverse mixture asks them all)."""
CONTROLS: tuple[str, ...] = (*(m for m in METHODS if m != "oracle"), "oracle_on_base")
"""The demo's controls and baselines, then the oracle reading the base model."""


def reworded(organism: Organism, question: str) -> Organism:
    """``organism`` with every audit item asking ``question`` instead of its own."""
    return dataclasses.replace(
        organism, items=tuple(dataclasses.replace(item, question=question) for item in organism.items)
    )


def _accuracy(report: EvalReport, task: str, method: str) -> float:
    return report.get(task, method).score.mean


def _answers(report: EvalReport, task: str) -> dict[str, int]:
    """How often the oracle gave each answer (its first paraphrase), most common first."""
    return dict(Counter(report.get(task, "oracle").predictions[0]).most_common())


def wording_scores(
    cache: str | Path, seed: int, *, quick: bool = False, mixture_group: str = "full", threads: int = 2,
    progress: bool = False,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Kind -> question -> ``{method: accuracy}`` for each of the demo's :data:`METHODS` and
    ``"oracle_on_base"``, and ``"answers": {answer: count}`` (the oracle's), for each held-out
    organism of the demo cache at ``seed``, asked its own question first and then each of
    :data:`MIXTURE_WORDINGS`. Artifacts missing from ``cache`` are built as the demo builds them,
    with ``threads`` torch threads (the demo's two, or a sweep's other float order)."""
    cache = Path(cache)
    config = dataclasses.replace(demo_config(quick, seed, mixture_group=mixture_group), threads=threads)
    with torch_threads(config.threads):
        base = load_or_pretrain(cache, seed, quick, extra_words=ORACLE_WORDS, progress=progress)
        organisms = [
            o for o in build_organisms(base, make_world(seed), cache, quick, seed=seed, progress=progress)
            if o.kind in HELD_OUT_KINDS
        ]
        oracle, _ = load_or_train_oracle(base, config, seed, cache, progress=progress)
        asked = {
            (o.kind, question): organism_tasks(reworded(o, question))
            for o in organisms for question in dict.fromkeys((o.items[0].question, *MIXTURE_WORDINGS[o.kind]))
        }
        named = {key: [dataclasses.replace(t, name=f"{t.name}|{key[1]}") for t in tasks] for key, tasks in asked.items()}
        tasks = [t for group in named.values() for t in group]
        report = run_tasks(oracle, tasks, methods=METHODS, seed=seed, n_resamples=1)
        on_base = run_tasks(
            oracle, [dataclasses.replace(t, target=TargetSpec()) for t in tasks], methods=("oracle",), seed=seed,
            n_resamples=1,
        )
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (kind, question), group in named.items():
        (task,) = group  # a held-out organism is one task (one candidate set)
        row: dict[str, Any] = {method: _accuracy(report, task.name, method) for method in METHODS}
        row["oracle_on_base"] = _accuracy(on_base, task.name, "oracle")
        row["answers"] = _answers(report, task.name)
        out.setdefault(kind, {})[question] = row
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", required=True, help="a demo cache (a sweep's: <cache>/threads-2)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--mixture", default="full", help="oracle mixtures, comma-separated: full, diverse")
    parser.add_argument("--quick", action="store_true", help="the quick demo's models")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (a sweep's <cache>/threads-N)")
    args = parser.parse_args(argv)
    seeds = parse_ints(args.seeds, "--seeds")
    print("| mixture | threads | seed | organism | question | oracle | best control | no activation | oracle on base | oracle's answers |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for group in args.mixture.split(","):
        for seed in seeds:
            scores = wording_scores(args.cache, seed, quick=args.quick, mixture_group=group, threads=args.threads)
            for kind, rows in scores.items():
                for question, row in rows.items():
                    answers = ", ".join(f"{a or '(empty)'} {n}" for a, n in list(row["answers"].items())[:3])
                    best = max(CONTROLS, key=row.__getitem__)
                    print(
                        f"| {group} | {args.threads} | {seed} | {kind} | {question} | {row['oracle']:.2f} | {row[best]:.2f} ({best}) | "
                        f"{row['ablated_zero']:.2f} | {row['oracle_on_base']:.2f} | {answers} |", flush=True,
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
