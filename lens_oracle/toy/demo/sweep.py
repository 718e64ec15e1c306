"""``lens-oracle demo --seeds 0,1,2 --threads 1,2``: the demo's claim measured over seeds and float
orders, not one run.

Each (seed, threads) run is a whole demo (:func:`~lens_oracle.toy.demo.pipeline.run_demo`) with its own world,
base model, organisms and oracle. Thread counts get separate artifact caches (``<cache>/threads-N``):
float sums depend on the thread count, so a base model pretrained with two threads is not reused by a
one-thread run. The summary gives, per organism kind, the oracle's mean, min and max over the runs,
the same for the strongest control of each run (every control and baseline of the demo, and the
oracle reading the base model), the mean margin, and in how many runs the oracle beat every control.

Written to ``--out``: one folder per run (the demo's usual outputs), ``sweep.json`` (deterministic:
the same seeds and threads give the same bytes) and ``sweep.md``.

``--jobs N`` runs up to N runs at once, each in its own process, where the cores allow: a run of T
threads takes T of them (:func:`runs_at_once`). A run's results depend on its thread count, not on
what runs beside it, so the summary is the same bytes either way; on 2 cores two one-thread runs
side by side take as long as one alone (603-623 s each for the full demo on the AVX-512 host).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import statistics
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from lens_oracle.errors import ConfigError
from lens_oracle.io import atomic_write_text
from lens_oracle.toy.demo.pipeline import check_arguments, run_demo
from lens_oracle.toy.demo.records import DemoResult, demo_config
from lens_oracle.toy.demo.report import SHORT_NAMES
from lens_oracle.toy.world.tokenizer import cache_root

log = logging.getLogger(__name__)
T = TypeVar("T")

SWEEP_VERSION = 2
"""2: the held-out organism kinds (their own table) and how well each organism learned."""
BASE_CONTROL = "oracle_on_base"
"""The control of the oracle reading the base model on the same prompts."""


@dataclass(frozen=True)
class RunSummary:
    """One (seed, threads) run, per organism kind."""

    seed: int
    threads: int
    oracle: dict[str, float]
    best_control: dict[str, tuple[str, float]]
    """Kind -> (the strongest control's name, its score)."""
    diff: dict[str, float] = dataclasses.field(default_factory=dict)
    """Kind -> the oracle reading organism minus base (model diffing; not a control)."""
    learned: dict[str, float] = dataclasses.field(default_factory=dict)
    """Kind -> share of the organism's audit prompts whose reply shows what it hides."""
    held_out: tuple[str, ...] = ()
    """The kinds the oracle's mixture was not built around."""

    def margin(self, kind: str) -> float:
        return self.oracle[kind] - self.best_control[kind][1]


def summarise_run(result: DemoResult, threads: int) -> RunSummary:
    """The oracle's score and the strongest control per kind (every demo control and baseline,
    and the oracle reading the base model)."""
    oracle, best = {}, {}
    for kind, scores in result.scores.items():
        controls = {m: s.mean for m, s in scores.items() if m != "oracle"}
        controls[BASE_CONTROL] = result.base_control[kind].mean
        name = max(sorted(controls), key=lambda m: controls[m])
        oracle[kind] = scores["oracle"].mean
        best[kind] = (name, controls[name])
    diff = {kind: score.mean for kind, score in result.diff_reading.items()}
    held_out = tuple(kind for kind in result.scores if result.held_out(kind))
    return RunSummary(result.seed, threads, oracle, best, diff, dict(result.learned), held_out)


def sweep_dict(
    runs: Sequence[RunSummary], quick: bool, on_policy: bool = False, mixture_group: str = "full"
) -> dict[str, Any]:
    """Per kind: the oracle's and the best control's mean / min / max over the runs, the mean
    margin, and the number of runs where the oracle beat every control; then every run."""
    kinds = list(runs[0].oracle)
    summary = {}
    for kind in kinds:
        oracle = [r.oracle[kind] for r in runs]
        control = [r.best_control[kind][1] for r in runs]
        margins = [r.margin(kind) for r in runs]
        summary[kind] = {
            "oracle": spread(oracle),
            "best_control": spread(control),
            "margin_mean": round(statistics.fmean(margins), 6),
            "oracle_beats_every_control": sum(m > 0 for m in margins),
            "runs": len(runs),
        }
        if all(kind in r.diff for r in runs):
            summary[kind]["oracle_on_difference"] = spread([r.diff[kind] for r in runs])
        if all(kind in r.learned for r in runs):
            summary[kind]["organism_learned"] = spread([r.learned[kind] for r in runs])
        summary[kind]["held_out"] = kind in runs[0].held_out
    return {
        "version": SWEEP_VERSION,
        "mode": ("quick" if quick else "full") + (", on-policy context prediction" if on_policy else "")
        + {"full": "", "diverse": ", diverse mixture"}.get(mixture_group, f", {mixture_group} tasks only"),
        "seeds": sorted({r.seed for r in runs}),
        "threads": sorted({r.threads for r in runs}),
        "summary": summary,
        "runs": [
            {
                "seed": r.seed, "threads": r.threads,
                "oracle": {k: round(v, 6) for k, v in r.oracle.items()},
                "best_control": {k: [name, round(v, 6)] for k, (name, v) in r.best_control.items()},
                "oracle_on_difference": {k: round(v, 6) for k, v in r.diff.items()},
                "organism_learned": {k: round(v, 6) for k, v in r.learned.items()},
            }
            for r in runs
        ],
    }


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, min and max of ``values``, rounded to six places (the summaries' number format)."""
    return {
        "mean": round(statistics.fmean(values), 6), "min": round(min(values), 6), "max": round(max(values), 6)
    }


def sweep_markdown(data: dict[str, Any]) -> str:
    """The summary table of the demo's organisms, the same for the held-out kinds, then one line
    per run."""
    lines = [f"# lens-oracle demo sweep ({data['mode']}; seeds {data['seeds']}, threads {data['threads']})"]
    demo = [k for k, row in data["summary"].items() if not row.get("held_out")]
    held_out = [k for k, row in data["summary"].items() if row.get("held_out")]
    for title, kinds in (("The demo's organisms", demo), ("Held-out organism kinds", held_out)):
        if kinds:
            lines += ["", f"## {title}", "", *_summary_table(data["summary"], kinds)]
    kinds = [*demo, *held_out]
    lines += ["", "## Every run", "", "| seed | threads | " + " | ".join(kinds) + " |", "|---|---|" + "---|" * len(kinds)]
    for run in data["runs"]:
        cells = [
            f"{run['oracle'][k]:.2f} vs {run['best_control'][k][1]:.2f} "
            f"({SHORT_NAMES.get(run['best_control'][k][0], run['best_control'][k][0])})"
            for k in kinds
        ]
        lines.append(f"| {run['seed']} | {run['threads']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _summary_table(summary: dict[str, Any], kinds: Sequence[str]) -> list[str]:
    lines = [
        "| organism | oracle mean [min, max] | best control mean [min, max] | mean margin | oracle beats every control "
        "| oracle on organism − base | organism learned |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in kinds:
        row = summary[kind]
        o, c = row["oracle"], row["best_control"]
        lines.append(
            f"| {kind} | {_spread_cell(o)} | {_spread_cell(c)} | {row['margin_mean']:+.2f} | "
            f"{row['oracle_beats_every_control']} of {row['runs']} | {_spread_cell(row.get('oracle_on_difference'))} | "
            f"{_spread_cell(row.get('organism_learned'))} |"
        )
    return lines


def _spread_cell(values: dict[str, float] | None) -> str:
    if values is None:
        return "n/a"
    return f"{values['mean']:.2f} [{values['min']:.2f}, {values['max']:.2f}]"


@dataclass(frozen=True)
class SweepRun:
    """What one process needs to run one (seed, threads) demo of a sweep."""

    out: Path
    cache: Path
    seed: int
    threads: int
    quick: bool
    progress: bool
    on_policy: bool
    mixture_group: str


def run_one(run: SweepRun) -> RunSummary:
    """One whole demo at ``run.threads`` torch threads, in its own folder and thread-count cache."""
    config = demo_config(run.quick, run.seed, on_policy=run.on_policy, mixture_group=run.mixture_group)
    result = run_demo(
        run.out / f"seed{run.seed}-threads{run.threads}", quick=run.quick, seed=run.seed,
        cache=run.cache / f"threads-{run.threads}", progress=run.progress,
        config=dataclasses.replace(config, threads=run.threads),
    )
    return summarise_run(result, run.threads)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def runs_at_once(jobs: int, threads: int, cores: int) -> int:
    """How many runs of ``threads`` threads go side by side: at most ``jobs``, and only as many as
    ``cores`` hold (never fewer than one)."""
    return max(1, min(jobs, cores // threads))


def _quiet_worker() -> None:
    """A spawned run's process shows no Hugging Face bar per checkpoint load, as the CLI does."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def run_all(runs: Sequence[SweepRun], jobs: int, run: Callable[[SweepRun], T]) -> list[T]:
    """``run`` over ``runs``, results in their order. ``jobs`` 1: one after another, here. Else each
    thread count's runs go :func:`runs_at_once` at a time, in spawned processes (without progress
    bars) when more than one."""
    if jobs == 1:
        return [run(r) for r in runs]
    results: dict[int, T] = {}
    cores = available_cores()
    for threads in dict.fromkeys(r.threads for r in runs):
        group = [i for i, r in enumerate(runs) if r.threads == threads]
        width = runs_at_once(jobs, threads, cores)
        if width == 1:
            for i in group:
                results[i] = run(runs[i])
            continue
        log.info("%d runs of %d thread(s), %d at a time", len(group), threads, width)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=width, mp_context=context, initializer=_quiet_worker) as pool:
            futures = {i: pool.submit(run, dataclasses.replace(runs[i], progress=False)) for i in group}
            try:
                for i, future in futures.items():
                    results[i] = future.result()
                    log.info("finished seed %d with %d thread(s)", runs[i].seed, threads)
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise
    return [results[i] for i in range(len(runs))]


def run_sweep(
    out: str | os.PathLike[str],
    seeds: Sequence[int],
    threads: Sequence[int],
    *,
    quick: bool = False,
    cache: str | os.PathLike[str] | None = None,
    progress: bool = True,
    on_policy: bool = False,
    mixture_group: str = "full",
    jobs: int = 1,
) -> dict[str, Any]:
    """Run the demo for every seed and thread count and write the summary (see the module);
    ``on_policy``: the oracles train with on-policy context prediction; ``mixture_group``: on the
    whole mixture or one kind of task alone (the diversity ablation); ``jobs``: runs at once."""
    out = Path(out)
    root = Path(cache) if cache is not None else cache_root()
    if not seeds or not threads:
        raise ConfigError("give at least one seed and one thread count")
    for n in threads:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= (os.cpu_count() or 1) * 4:
            raise ConfigError(f"thread count {n!r} is not a positive integer this machine can run")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs must be a positive integer (runs at once); got {jobs!r}")
    for seed in seeds:
        check_arguments(out, seed, root)
    plan = [
        SweepRun(out, root, seed, n, quick, progress, on_policy, mixture_group) for seed in seeds for n in threads
    ]
    data = sweep_dict(run_all(plan, jobs, run_one), quick, on_policy, mixture_group)
    atomic_write_text(out / "sweep.json", json.dumps(data, indent=2, sort_keys=True) + "\n")
    atomic_write_text(out / "sweep.md", sweep_markdown(data))
    return data
