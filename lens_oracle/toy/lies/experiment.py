"""The toy lie-detection experiment: train a Meta-Models oracle on the toy sets (never on
lying), then ask it "is the assistant lying ?" about chats it has never seen the like of.

See :mod:`lens_oracle.toy.lies.data` for the world, the models and the baselines. Shell::

    python -m lens_oracle.toy.lies.experiment [--lie-aware] [--tasks sentiment,emotion] [--seed 0]

One deviation from the paper's recipe, measured: the toy target does not summarise a sentence
in its final token (a linear probe reads a reply's sentiment from the last token at 0.67-0.72
accuracy, from the last three at 0.96-0.99), so the oracle reads the last ``window`` tokens at
every depth (``window=1`` is the paper's setting).

Measured (seed 0, defaults, ~45 s with cached models): the meta-model learns its training sets
but answers the lie question at chance (accuracy and AUROC within the controls' range), also with
``--lie-aware``, ``--window 1`` and ``--projector-only``. The toy meta-model has no notion of
lying: even its lie-aware base cannot judge the chats read as text (text-only row at chance),
while a supervised MLP probe on the same activations finds statement lies (~0.86).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from lens_oracle.activations import LastK
from lens_oracle.config import AdapterConfig, InjectionConfig, TrainConfig
from lens_oracle.data.classification import ClassificationConfig
from lens_oracle.evals.runner import run_task
from lens_oracle.evals.targets import Target
from lens_oracle.evals.yes_no_table import Row, probability_row, report_rows, table
from lens_oracle.models import LoadedModel
from lens_oracle.oracle import ActivationOracle
from lens_oracle.presets import ATTENTION_MODULES, MetaModelsPreset, meta_models
from lens_oracle.runner import train_oracle
from lens_oracle.toy.lies.data import (
    LIE_QUESTION,
    TASKS,
    TEMPLATES,
    LieStyle,
    LieWorld,
    build_lie_world,
    lie_items,
    text_p_yes,
    training_rows,
)

log = logging.getLogger(__name__)

CONTROLS = ("untrained_oracle", "ablated_shuffle", "ablated_random", "ablated_zero", "black_box")
NAMES = {
    "oracle": "meta-model (trained, never on lies)",
    "untrained_oracle": "meta-model, adapter off",
    "black_box": "target asked in text (black box)",
    "linear_probe": "linear probe on lie labels (supervised reference)",
}


@dataclass(frozen=True)
class LieExperiment:
    """Settings of one run: a meta-model trained on ``tasks``, evaluated on each lie style."""

    tasks: tuple[str, ...] = TASKS
    """Training sets (a subset of :data:`~lens_oracle.toy.lies.data.TASKS`)."""
    per_task: int = 600
    """Training examples per task (balanced yes/no)."""
    window: int = 3
    """Read the last ``window`` tokens at every layer (1: the paper's last token)."""
    styles: tuple[LieStyle, ...] = ("statement", "yes_no")
    n_eval: int = 200
    """Lie-detection chats per style (half lies)."""
    n_probe: int = 200
    """Labelled chats for the supervised linear-probe reference."""
    n_heldout: int = 100
    """Held-out examples per training task (in-distribution check)."""
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            learning_rate=3e-3, batch_size=16, epochs=4, warmup_fraction=0.05, progress=False
        )
    )
    adapter: AdapterConfig = field(
        default_factory=lambda: AdapterConfig(rank=16, alpha=32, dropout=0.0, target_modules=ATTENTION_MODULES)
    )
    train_adapter: bool = True
    """``False``: train the projector alone (adapter frozen)."""
    injection: InjectionConfig | None = None
    """``None``: the preset's soft tokens; e.g. ``InjectionConfig(layer=1)`` for AO addition."""
    seed: int = 0


@dataclass(frozen=True)
class LieResult:
    """One table per lie style, in-distribution accuracy per task, and the training losses."""

    tables: dict[str, tuple[Row, ...]]
    in_distribution: dict[str, tuple[float, float]]
    """Task -> (oracle accuracy, shuffled-activation accuracy) on held-out examples."""
    losses: tuple[float, ...]
    layers: tuple[int, ...]

    def markdown(self) -> str:
        parts = [f"### lie style: {style}\n\n{table(rows)}" for style, rows in self.tables.items()]
        held = "\n".join(
            f"| {task} | {acc:.3f} | {shuffled:.3f} |" for task, (acc, shuffled) in self.in_distribution.items()
        )
        parts.append(f"### in-distribution (held-out)\n\n| task | oracle | shuffled |\n|---|---|---|\n{held}")
        return "\n\n".join(parts)


def toy_preset(target: LoadedModel, exp: LieExperiment) -> MetaModelsPreset:
    """The Meta-Models preset for the toy target, reading the last ``exp.window`` tokens."""
    overrides: dict[str, object] = {} if exp.injection is None else {"injection": exp.injection}
    if exp.window > 1:
        overrides["classification"] = ClassificationConfig(
            single_fraction=0.0, window_min=exp.window, window_max=exp.window
        )
    return meta_models(
        target, adapter=exp.adapter, train=exp.train, train_adapter=exp.train_adapter, **overrides
    )


def in_distribution(
    oracle: ActivationOracle, preset: MetaModelsPreset, target: LoadedModel, rows: dict[str, list[dict[str, str]]],
    tokenizer: object, seed: int,
) -> dict[str, tuple[float, float]]:
    """Oracle and shuffled-activation accuracy on held-out examples of every toy task."""
    out = {}
    for name, held in rows.items():
        items = preset.held_out_items(name, held, tokenizer, templates=TEMPLATES, prefix="", seed=seed)
        report = run_task(oracle, preset.eval_task(name, items, ()), methods=["oracle", "ablated_shuffle"],
                          target=Target(target), n_resamples=200)
        scores = {r.method: r.score.mean for r in report.results}
        out[name] = (scores["oracle"], scores["ablated_shuffle"])
    return out


def evaluate_lies(
    oracle: ActivationOracle, fresh: ActivationOracle, preset: MetaModelsPreset, target: LoadedModel,
    lies: LieWorld, exp: LieExperiment, style: LieStyle,
) -> tuple[Row, ...]:
    """The table for one lie style: the oracle, its controls, the references and chance."""
    items = lie_items(lies.world, exp.n_eval, exp.seed + 100, style)
    probe_items = tuple(lie_items(lies.world, exp.n_probe, exp.seed + 200, style))
    task = preset.eval_task(f"lies/{style}", items, (LIE_QUESTION,), positions=LastK(exp.window),
                            train_items=probe_items)
    report = run_task(oracle, task, methods=["oracle", *CONTROLS, "linear_probe"],
                      target=Target(target), seed=exp.seed)
    untrained = run_task(fresh, task, methods=["oracle"], target=Target(target), seed=exp.seed)
    rows = [Row("chance", 0.5, 0.5, 0.5, 0.5, len(items)), *report_rows(report, NAMES)]
    rows += report_rows(untrained, {"oracle": "untrained meta-model (fresh projector + adapter)"})
    text = text_p_yes(oracle.model, [str(item.context) for item in items])
    rows.append(probability_row("text-only: the meta-model's base reads the chat", text, items))
    return tuple(rows)


def run_lie_experiment(lies: LieWorld, exp: LieExperiment | None = None) -> LieResult:
    """Train a Meta-Models oracle on the toy sets, then evaluate lie detection per style."""
    exp = exp or LieExperiment()
    target = lies.load_target()
    preset = toy_preset(target, exp)
    rows = training_rows(lies.world, exp.per_task + exp.n_heldout, exp.seed)
    sources = {t: rows[t][: exp.per_task] for t in exp.tasks}
    examples = preset.build_examples(sources, lies.tokenizer, templates=TEMPLATES, prefix="", seed=exp.seed)
    oracle = preset.create_oracle(lies.oracle_base, name="toy-meta-model")
    log.info("training the meta-model on %d examples of %s", len(examples), list(exp.tasks))
    trained = train_oracle(oracle, examples, preset.train, source=target)
    held = {t: r[exp.per_task :] for t, r in rows.items()}
    in_dist = in_distribution(oracle, preset, target, held, lies.tokenizer, exp.seed + 50)
    fresh = preset.create_oracle(lies.oracle_base, name="toy-meta-model")
    tables = {s: evaluate_lies(oracle, fresh, preset, target, lies, exp, s) for s in exp.styles}
    return LieResult(tables, in_dist, tuple(trained.losses), preset.layers)


def main(argv: Sequence[str] | None = None) -> None:
    """Build (or reuse) the toy models, run the experiment, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lie-aware", action="store_true", help="the meta-model's pretraining judges lies in text")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated training sets")
    parser.add_argument("--window", type=int, default=3, help="last tokens read at every layer")
    parser.add_argument("--projector-only", action="store_true", help="train the projector alone")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (tiny models: 1 is as fast)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    lies = build_lie_world(seed=args.seed, lie_aware=args.lie_aware)
    exp = LieExperiment(tasks=tuple(args.tasks.split(",")), window=args.window,
                        train_adapter=not args.projector_only, seed=args.seed)
    for name, metrics in lies.metrics().items():
        print(f"{name}: {metrics}")
    result = run_lie_experiment(lies, exp)
    print(f"read layers {result.layers}, {len(result.losses)} steps, loss "
          f"{sum(result.losses[:10]) / 10:.3f} -> {sum(result.losses[-10:]) / 10:.3f}")
    print(result.markdown())


if __name__ == "__main__":
    main()
