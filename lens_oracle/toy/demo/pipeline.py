"""``lens-oracle demo``: the whole Activation Oracles story on the toy world, on a CPU.

1. Pretrain (or reuse) the toy base model, :func:`~lens_oracle.toy.world.model.load_or_pretrain`.
2. Fine-tune (or reuse) the model organisms, :func:`~lens_oracle.toy.organisms.build_organisms`:
   the three the oracle's mixture was built around and the held-out kinds
   (:mod:`lens_oracle.toy.organisms.held_out`); check that each learned what it hides.
3. Train (or reuse) the oracle: a LoRA on the *base* model, trained on the base mixture of
   :mod:`lens_oracle.toy.demo.mixture` only -- it never sees an organism.
4. Audit every organism with :mod:`lens_oracle.evals` (the oracle against the untrained oracle,
   zero and shuffled activations, the organism asked in text and the logit lens), plus one
   more control: the same oracle reading the *base* model on the same prompts, which shows that
   its answers come from the fine-tune and not from the prompt text.
5. Write ``results.json`` (deterministic: the same seed gives the same bytes), ``timings.json``,
   ``report.json`` (every prediction), ``results.md``, ``oracle_training.json`` (the oracle's
   training: steps, losses, and the held-out loss of each audited QA task over the steps) and
   ``demo.png`` to ``--out``.

Every artifact is cached under the toy cache root (``$LENS_ORACLE_CACHE`` or
``~/.cache/lens_oracle``) with a JSON stamp of the settings it was built with; a second run
reuses them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from lens_oracle.acceleration import torch_threads
from lens_oracle.config import TrainConfig
from lens_oracle.data.layers import layers_from_fractions
from lens_oracle.errors import ConfigError
from lens_oracle.evals.metrics import Score
from lens_oracle.evals.report import EvalReport, merge_reports
from lens_oracle.evals.runner import run_tasks
from lens_oracle.evals.tasks import TargetSpec
from lens_oracle.io import atomic_write_json, timed_stage
from lens_oracle.io import check_run_arguments as check_arguments
from lens_oracle.oracle import ActivationOracle
from lens_oracle.runner import train_oracle
from lens_oracle.toy.demo import audit
from lens_oracle.toy.demo.mixture import ORACLE_WORDS, build_toy_mixture, mixture_group
from lens_oracle.toy.demo.qa_components import held_out_qa
from lens_oracle.toy.demo.records import METHODS, DemoConfig, DemoResult, demo_config
from lens_oracle.toy.demo.report import write_outputs
from lens_oracle.toy.organisms import Organism, build_organisms, learned
from lens_oracle.toy.world.language import make_world
from lens_oracle.toy.world.model import digest, load_or_pretrain, read_stamp
from lens_oracle.toy.world.tokenizer import cache_root, load_tokenizer
from lens_oracle.train import task_losses

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
"""Bumped when the oracle's training changes, so cached oracles are not reused."""
ORACLE_STAMP = "toy_oracle.stamp.json"
MIXTURE_SAMPLE = 240
"""Examples of the mixture sample hashed into the oracle's stamp (:func:`mixture_digest`)."""
CURVE_ITEMS = 40
"""Held-out examples per audited QA component scored while the oracle trains (:func:`~.qa_components.held_out_qa`)."""
CURVE_POINTS = 10
"""How many times during training they are scored (and once more at the end)."""


def oracle_settings(
    base: Path, config: DemoConfig, seed: int, layers: tuple[int, ...]
) -> dict[str, Any]:
    """What a cached oracle must have been trained with to be reused."""
    stamp = read_stamp(base) or {}
    return {
        "format_version": FORMAT_VERSION, "seed": seed, "base": digest(stamp.get("settings")),
        "config": config.to_dict(), "layers": list(layers),
        "data": mixture_digest(base, config, seed, layers),
    }


def mixture_digest(base: Path, config: DemoConfig, seed: int, layers: tuple[int, ...]) -> str:
    """Hash of a small sample of the oracle's mixture (same seed and weights), so that a change
    in how the examples are built shows in the stamp even when no setting changed."""
    # Built corpus-side only: on-policy answers need the model, and the option is in the stamp's config.
    sample = dataclasses.replace(config.mixture, total=MIXTURE_SAMPLE, on_policy_context=False)
    examples = build_toy_mixture(make_world(seed), load_tokenizer(base), layers, sample)
    return digest([
        [list(e.context_ids), list(e.positions), e.layer, e.question, e.answer] for e in examples
    ])


def oracle_folder(cache: Path, config: DemoConfig, seed: int) -> Path:
    """Where the demo caches the oracle of ``config`` and ``seed`` (one folder per mixture)."""
    group = mixture_group(config.mixture)
    variant = ("-on-policy" if config.mixture.on_policy_context else "") + {
        "full": "", "diverse": "-diverse"
    }.get(group, f"-{group}-only")
    return cache / f"oracle-{'quick' if config.quick else 'full'}-seed{seed}{variant}"


def load_or_train_oracle(
    base: Path, config: DemoConfig, seed: int, cache: Path, *, progress: bool = True
) -> tuple[ActivationOracle, bool]:
    """The oracle for ``base`` from ``cache`` if its stamp matches, else trained and saved.

    Returns the oracle and whether it came from the cache.
    """
    world = make_world(seed)
    folder = oracle_folder(cache, config, seed)
    oracle_layers = layers_from_fractions(_n_layers(base), config.read_fractions)
    settings = oracle_settings(base, config, seed, oracle_layers)
    stamp = read_stamp(folder, ORACLE_STAMP)
    if stamp is not None and stamp.get("settings") == settings:
        log.info("reusing the cached oracle in %s", folder)
        return ActivationOracle.load(folder, str(base)), True
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # the LoRA initialisation
        oracle = ActivationOracle.create(
            str(base), adapter=config.adapter, injection=config.injection, name=str(base)
        )
    examples = build_toy_mixture(world, oracle.model.tokenizer, oracle_layers, config.mixture, model=oracle.model)
    held_out = held_out_qa(world, oracle.model.tokenizer, oracle_layers, CURVE_ITEMS, seed)
    steps = config.epochs * -(-len(examples) // config.batch_size)
    train = TrainConfig(
        learning_rate=config.learning_rate, batch_size=config.batch_size, epochs=config.epochs,
        seed=seed, progress=progress, eval_every=max(1, steps // CURVE_POINTS),
    )
    start = time.perf_counter()
    with torch.random.fork_rng():  # the curve's scoring draws no random numbers: training is unchanged
        result = train_oracle(oracle, examples, train, on_eval=task_losses(oracle, held_out))
    tail = result.losses[-20:]
    metrics = {
        "steps": result.steps, "train_seconds": round(time.perf_counter() - start, 2),
        "final_loss": sum(tail) / len(tail), "examples": len(examples),
        "held_out_loss": learning_curves(result.evals),
    }
    log.info("trained the toy oracle: %s", metrics)
    oracle.save(folder, overwrite=True)
    atomic_write_json(folder / ORACLE_STAMP, {"settings": settings, "metrics": metrics})
    return oracle, False


def learning_curves(evals: list[tuple[int, dict[str, float]]]) -> dict[str, list[tuple[int, float]]]:
    """``[(step, {"loss/<task>": loss})]`` from :func:`~lens_oracle.train.task_losses` as
    task -> ``[(step, loss), ...]`` (losses rounded to 4 places)."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for step, metrics in evals:
        for name, loss in metrics.items():
            curves.setdefault(name.removeprefix("loss/"), []).append((step, round(loss, 4)))
    return curves


def oracle_metrics(cache: Path, config: DemoConfig, seed: int) -> dict[str, Any]:
    """What the cached oracle's training measured (steps, seconds, losses, held-out curves)."""
    stamp = read_stamp(oracle_folder(cache, config, seed), ORACLE_STAMP) or {}
    return dict(stamp.get("metrics", {}))


def _n_layers(base: Path) -> int:
    config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    return int(config["num_hidden_layers"])


def audit_organisms(
    oracle: ActivationOracle, organisms: list[Organism], config: DemoConfig, seed: int
) -> tuple[EvalReport, dict[str, dict[str, Score]], dict[str, Score], dict[str, Score]]:
    """Run every method on every organism's tasks; then the oracle on the base-model control and
    on the difference reading (organism minus base). Returns the merged report and the three
    per-kind score tables."""
    tasks = [t for o in organisms for t in audit.organism_tasks(o)]
    report = run_tasks(oracle, tasks, methods=METHODS, seed=seed, n_resamples=config.n_resamples)
    control_tasks = [
        dataclasses.replace(t, name=f"{t.name}@base", target=TargetSpec()) for t in tasks
    ]
    diff_tasks = [  # model diffing: the organism's activations minus the base model's
        dataclasses.replace(t, name=f"{t.name}@diff", target=TargetSpec(model=t.target.model, base=oracle.config.base_model))
        for t in tasks
    ]
    control = run_tasks(
        oracle, [*control_tasks, *diff_tasks], methods=("oracle",), seed=seed, n_resamples=config.n_resamples
    )
    by_kind: dict[str, list[Organism]] = {}
    for o in organisms:
        by_kind.setdefault(o.kind, []).append(o)
    scores = {
        kind: audit.organism_scores(report, group, METHODS, seed=seed, n_resamples=config.n_resamples)
        for kind, group in by_kind.items()
    }
    base_control = {
        kind: audit.organism_scores(
            control, group, ("oracle",), seed=seed, n_resamples=config.n_resamples, suffix="@base"
        )["oracle"]
        for kind, group in by_kind.items()
    }
    diff_reading = {
        kind: audit.organism_scores(
            control, group, ("oracle",), seed=seed, n_resamples=config.n_resamples, suffix="@diff"
        )["oracle"]
        for kind, group in by_kind.items()
    }
    return merge_reports([report, control]), scores, base_control, diff_reading


def run_demo(
    out: str | os.PathLike[str],
    *,
    quick: bool = False,
    seed: int = 0,
    cache: str | os.PathLike[str] | None = None,
    progress: bool = True,
    config: DemoConfig | None = None,
) -> DemoResult:
    """Build or reuse every artifact, audit the organisms and write the results to ``out``.

    ``cache`` defaults to the toy cache root; ``config`` to :func:`demo_config`.
    """
    cache = Path(cache) if cache is not None else cache_root()
    check_arguments(out, seed, cache)
    config = config or demo_config(quick, seed)
    if config.quick != quick:
        raise ConfigError(f"config.quick is {config.quick} but quick={quick}; make them agree")
    with torch_threads(config.threads):
        result = _run_stages(cache, quick, seed, progress, config)
    write_outputs(result, Path(out))
    return result


def _run_stages(
    cache: Path, quick: bool, seed: int, progress: bool, config: DemoConfig
) -> DemoResult:
    # the float order is the thread count and the CPU's kernel level: two CPUs give two tables
    timings: dict[str, Any] = {"threads": torch.get_num_threads(), "cpu_kernels": torch.backends.cpu.get_cpu_capability()}
    start = time.perf_counter()
    world = make_world(seed)
    base = timed_stage(timings, "base_model", lambda: load_or_pretrain(
        cache, seed, quick, extra_words=ORACLE_WORDS, progress=progress
    ))
    organisms = timed_stage(timings, "organisms", lambda: build_organisms(
        base, world, cache, quick, seed=seed, progress=progress
    ))
    learned_shares = timed_stage(timings, "organisms_checked", lambda: {
        o.kind: learned(o, world, quick) for o in organisms
    })
    oracle, cached = timed_stage(timings, "oracle", lambda: load_or_train_oracle(
        base, config, seed, cache, progress=progress
    ))
    timings["oracle_cached"] = cached
    training = oracle_metrics(cache, config, seed)
    report, scores, base_control, diff_reading = timed_stage(
        timings, "evaluation", lambda: audit_organisms(oracle, organisms, config, seed)
    )
    timings["total"] = round(time.perf_counter() - start, 2)
    return DemoResult(
        seed, config, tuple(organisms), scores, base_control, report, diff_reading, learned_shares, timings,
        training,
    )
