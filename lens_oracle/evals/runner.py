"""Run evaluation tasks: prepare items once, run every method on them, score, report.

Everything is seeded by one ``seed``: the shuffle permutation, the random vectors, the probe's
initialisation and the bootstrap. Generation is greedy, so the same seed gives the same report
(and the same JSON text) twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import replace
from statistics import fmean
from typing import Any

from lens_oracle.activations import Positions
from lens_oracle.errors import EvalError
from lens_oracle.evals.baselines import black_box, linear_probe, logit_lens, patchscope_readout
from lens_oracle.evals.controls import ablated_shuffle, ask_oracle, random_like
from lens_oracle.evals.methods import (
    METHOD_KINDS,
    METHODS,
    MethodContext,
    MethodOutput,
    unavailable_reason,
)
from lens_oracle.evals.metrics import auroc, expected_calibration_error, summarize, yes_no_label
from lens_oracle.evals.probe import ProbeConfig
from lens_oracle.evals.report import EvalReport, EvalResult, merge_reports
from lens_oracle.evals.scoring import score_answer
from lens_oracle.evals.targets import ModelLoader, Prepared, Target, prepare, resolve_target
from lens_oracle.evals.tasks import EvalItem, EvalTask, describe_positions
from lens_oracle.models import LoadedModel
from lens_oracle.oracle import ActivationOracle

log = logging.getLogger(__name__)


def run_method(method: str, ctx: MethodContext) -> MethodOutput:
    """Run one method by name on ``ctx.prepared``."""
    vectors = ctx.prepared.vectors
    if method == "oracle":
        return ask_oracle(ctx, vectors)
    if method == "untrained_oracle":
        return ask_oracle(ctx, vectors, adapter=False)
    if method == "ablated_zero":
        return ask_oracle(ctx, vectors, inject=False)
    if method == "ablated_shuffle":
        return ablated_shuffle(ctx)
    if method == "ablated_random":
        return ask_oracle(ctx, random_like(vectors, ctx.seed))
    if method == "black_box":
        return black_box(ctx)
    if method == "logit_lens":
        return logit_lens(ctx)
    if method == "patchscope":
        return patchscope_readout(ctx)
    if method == "linear_probe":
        return linear_probe(ctx)
    raise EvalError(f"unknown method {method!r}; choose from {list(METHODS)}")


def check_methods(methods: Sequence[str]) -> tuple[str, ...]:
    """Validate method names (before any work starts); keeps the given order, drops repeats."""
    if isinstance(methods, str):
        methods = [methods]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise EvalError(f"unknown methods {unknown}; choose from {list(METHODS)}")
    if not methods:
        raise EvalError(f"no methods given; choose from {list(METHODS)}")
    return tuple(dict.fromkeys(methods))


def positions_label(task: EvalTask) -> str:
    """``per_item`` when items carry their own positions, else the task's policy; ``each:``
    in front when every position is asked alone."""
    label = "per_item" if any(item.positions is not None for item in task.items) else describe_positions(task.positions)
    return f"each:{label}" if task.granularity == "each" else label


def _calibration(p_yes: Sequence[Sequence[float]], items: Sequence[EvalItem]) -> dict[str, Any]:
    """ECE and AUROC of each paraphrase's P(yes), and their means (AUROC None with one class)."""
    labels = [bool(yes_no_label(item.references[0])) for item in items]
    eces = [expected_calibration_error(list(p), labels) for p in p_yes]
    aucs = [auroc(list(p), labels) for p in p_yes] if len(set(labels)) == 2 else []
    return {
        "ece": fmean(eces),
        "auroc": fmean(aucs) if aucs else None,
        "per_question": [
            {"ece": e, "auroc": aucs[k] if aucs else None} for k, e in enumerate(eces)
        ],
        "p_yes": [list(p) for p in p_yes],
    }


def sample_score(how: str, answers: Sequence[str], score: Callable[[str], float]) -> float:
    """One item's score from its sampled ``answers``: ``any`` (the best sample), ``majority``
    (the most common answer's score) or ``mean`` (over samples)."""
    from lens_oracle.evals.controls import most_common

    if how == "any":
        return max(score(a) for a in answers)
    if how == "majority":
        return score(most_common(answers))
    if how == "mean":
        return fmean(score(a) for a in answers)
    raise EvalError(f"unknown sample score {how!r}; choose any, majority or mean")


def _answers_note(task: EvalTask, *, sampled: bool) -> str:
    """How a method's answers were drawn and made one score per item (recorded in extras)."""
    if not sampled:
        if task.granularity == "each":
            return "greedy, every position read at once (this method does not ask per position)"
        return "greedy (this method does not sample)"
    drawn = f"{task.samples} samples" if task.samples else "one greedy answer"
    if task.granularity == "each":
        return f"{drawn} per read position, each position asked alone, scored by {task.sample_score}"
    return f"{drawn} per item (temperature 0.7, top-p 0.9), scored by {task.sample_score}"


def score_output(
    method: str, out: MethodOutput, prepared: Prepared, *, seed: int = 0, n_resamples: int = 1000
) -> EvalResult:
    """Score a method's predictions: per item (mean over paraphrases) and per paraphrase."""
    task, items = prepared.task, prepared.items

    def score(pred: str, item: EvalItem) -> float:
        return score_answer(task.scorer, pred, item.references, task.synonyms)

    if out.samples:
        matrix = [
            [sample_score(task.sample_score, group, lambda a, item=item: score(a, item))
             for group, item in zip(groups, items, strict=True)]
            for groups in out.samples
        ]
    else:
        matrix = [[score(pred, item) for pred, item in zip(preds, items, strict=True)] for preds in out.predictions]
    item_scores = [fmean(col) for col in zip(*matrix, strict=True)]
    question_means = [fmean(row) for row in matrix]
    extras: dict[str, object] = {
        "question_means": question_means,
        "best_question": max(range(len(question_means)), key=question_means.__getitem__),
        **out.extras,
    }
    if prepared.extra_layers:
        extras["read_layers"] = [prepared.layer, *prepared.extra_layers]
    if task.samples or task.granularity == "each":
        extras["answers"] = _answers_note(task, sampled=bool(out.samples))
    if out.p_yes:
        extras["calibration"] = _calibration(out.p_yes, items)
    return EvalResult(
        task=task.name,
        method=method,
        kind=METHOD_KINDS[method],
        layer=prepared.layer,
        positions=positions_label(task),
        score=summarize(item_scores, seed, n_resamples=n_resamples),
        questions=out.questions,
        predictions=out.predictions,
        item_scores=tuple(item_scores),
        extras=extras,
    )


def run_task(
    oracle: ActivationOracle,
    task: EvalTask,
    *,
    methods: Sequence[str] = METHODS,
    target: Target | None = None,
    train_items: Sequence[EvalItem] | None = None,
    seed: int = 0,
    batch_size: int = 16,
    n_resamples: int = 1000,
    probe: ProbeConfig | None = None,
    cache: MutableMapping[str, LoadedModel] | None = None,
    loader: ModelLoader | None = None,
) -> EvalReport:
    """Evaluate ``oracle`` and the requested controls/references on ``task``'s items.

    ``target`` overrides the task's target spec (e.g. in-memory models); ``train_items``
    overrides the task's probe training items. Methods that cannot run on the task (a probe
    without labels) are listed in ``report.skipped`` with the reason.
    """
    methods = check_methods(methods)
    if train_items is not None:
        task = replace(task, train_items=tuple(train_items))
    if task.site != oracle.config.read_site:
        log.warning(
            "task %r reads %s but the oracle was trained on %s",
            task.name,
            task.site,
            oracle.config.read_site,
        )
    target = target or resolve_target(oracle, task.target, cache=cache, loader=loader)
    runnable = [m for m in methods if not unavailable_reason(m, task)]
    prepared = prepare(task, target, batch_size=batch_size)
    train = (
        prepare(task, target, items=task.train_items, batch_size=batch_size)
        if "linear_probe" in runnable
        else None
    )
    return _run_prepared(
        oracle, target, prepared, train, methods, seed=seed, batch_size=batch_size,
        n_resamples=n_resamples, probe=probe,
    )


def _run_prepared(
    oracle: ActivationOracle,
    target: Target,
    prepared: Prepared,
    train: Prepared | None,
    methods: Sequence[str],
    *,
    seed: int,
    batch_size: int,
    n_resamples: int,
    probe: ProbeConfig | None,
) -> EvalReport:
    task = prepared.task
    skipped = [(task.name, m, why) for m in methods if (why := unavailable_reason(m, task))]
    runnable = [m for m in methods if not unavailable_reason(m, task)]
    ctx = MethodContext(
        oracle,
        target,
        prepared,
        train,
        seed=seed,
        batch_size=batch_size,
        probe=replace(probe or ProbeConfig(), seed=seed),
    )
    results = []
    for method in runnable:
        log.info(
            "task %r, layer %d: running %s on %d items",
            task.name,
            prepared.layer,
            method,
            len(prepared),
        )
        results.append(
            score_output(
                method, run_method(method, ctx), prepared, seed=seed, n_resamples=n_resamples
            )
        )
    for name, method, why in skipped:
        log.info("task %r: skipping %s (%s)", name, method, why)
    return EvalReport(tuple(results), seed, tuple(skipped))


TARGET_METHODS = ("black_box", "logit_lens", "patchscope")
"""Methods that ask or run the target model itself: they need one target per task."""


def _concat(task: EvalTask, parts: Sequence[Prepared]) -> Prepared:
    return Prepared(
        task, parts[0].layer, tuple(i for p in parts for i in p.items),
        tuple(c for p in parts for c in p.contexts), tuple(q for p in parts for q in p.positions),
        tuple(v for p in parts for v in p.vectors), parts[0].extra_layers,
    )


def run_pooled(
    oracle: ActivationOracle,
    tasks: Sequence[EvalTask],
    name: str,
    *,
    methods: Sequence[str] = ("oracle", "untrained_oracle", "ablated_zero", "ablated_shuffle",
                              "ablated_random", "linear_probe"),
    seed: int = 0,
    batch_size: int = 16,
    n_resamples: int = 1000,
    probe: ProbeConfig | None = None,
    cache: MutableMapping[str, LoadedModel] | None = None,
    loader: ModelLoader | None = None,
) -> EvalReport:
    """Evaluate the items of several tasks as one task ``name``, each item's vectors read from
    its own task's target.

    For targets that each hold one answer (one model organism per secret word): within one
    organism every item has the same answer, so shuffling vectors controls nothing; pooled, the
    shuffle control gives each item another organism's vectors, and the linear probe learns
    across organisms (its ``train_items`` pooled too). The tasks must read the same way (layer,
    site, positions, questions, scorer); candidates are pooled. Methods that ask or run the
    target itself (:data:`TARGET_METHODS`) need one target and are refused: run them per task.
    """
    methods = check_methods(methods)
    if not tasks:
        raise EvalError("no tasks to pool; give at least one")
    refused = sorted(set(methods) & set(TARGET_METHODS))
    if refused:
        raise EvalError(
            f"{refused} ask or run one target model and cannot pool items of several targets; "
            "run them per task with run_tasks"
        )
    first = tasks[0]
    for task in tasks[1:]:
        for field in ("layer", "site", "positions", "questions", "scorer", "extra_layers", "max_new_tokens"):
            if getattr(task, field) != getattr(first, field):
                raise EvalError(
                    f"cannot pool task {task.name!r} with {first.name!r}: their {field} differ "
                    f"({getattr(task, field)!r} vs {getattr(first, field)!r}); pool tasks read the same way"
                )
    pooled = replace(
        first, name=name, items=tuple(i for t in tasks for i in t.items),
        candidates=tuple(dict.fromkeys(c for t in tasks for c in t.candidates)),
        train_items=tuple(i for t in tasks for i in t.train_items),
    )
    cache = {} if cache is None else cache
    parts, train_parts, target = [], [], None
    probe_runs = "linear_probe" in methods and not unavailable_reason("linear_probe", pooled)
    for task in tasks:
        target = resolve_target(oracle, task.target, cache=cache, loader=loader)
        parts.append(prepare(task, target, batch_size=batch_size))
        if probe_runs and task.train_items:
            train_parts.append(prepare(task, target, items=task.train_items, batch_size=batch_size))
    if len({p.layer for p in parts}) != 1:
        raise EvalError(f"the pooled tasks resolve to different layers {sorted({p.layer for p in parts})}")
    assert target is not None
    train = _concat(pooled, train_parts) if train_parts else None
    return _run_prepared(
        oracle, target, _concat(pooled, parts), train, methods, seed=seed, batch_size=batch_size,
        n_resamples=n_resamples, probe=probe,
    )


def run_tasks(
    oracle: ActivationOracle,
    tasks: Sequence[EvalTask],
    *,
    loader: ModelLoader | None = None,
    **kwargs: Any,
) -> EvalReport:
    """:func:`run_task` on each task, loading each target folder once; one merged report."""
    if not tasks:
        raise EvalError("no tasks to run")
    cache: dict[str, LoadedModel] = {}
    return merge_reports(run_task(oracle, t, cache=cache, loader=loader, **kwargs) for t in tasks)


def sweep_variants(
    task: EvalTask, *, layers: Sequence[int] = (), positions: Sequence[Positions] = ()
) -> list[EvalTask]:
    """The task at each read layer (its own positions), then at each position policy (its own
    layer); conditions that repeat are kept once."""
    variants = [task.variant(layer=layer) for layer in layers]
    variants += [task.variant(positions=p) for p in positions]
    unique: dict[tuple[int | None, str], EvalTask] = {}
    for v in variants or [task]:
        unique.setdefault((v.layer, positions_label(v)), v)
    return list(unique.values())


def sweep(
    oracle: ActivationOracle,
    task: EvalTask,
    *,
    layers: Sequence[int] = (),
    positions: Sequence[Positions] = (),
    target: Target | None = None,
    **kwargs: Any,
) -> EvalReport:
    """Score by read layer and by position policy; see ``report.sweep_table`` and ``plots``."""
    target = target or resolve_target(oracle, task.target)
    reports = [
        run_task(oracle, v, target=target, **kwargs)
        for v in sweep_variants(task, layers=layers, positions=positions)
    ]
    return merge_reports(reports)
