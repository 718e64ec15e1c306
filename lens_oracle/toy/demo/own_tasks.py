"""Does the demo's oracle read its own training tasks? Held-out examples of the mixture's
question-answer components, on the base model.

An audit that fails can fail in two places: the oracle never learned to read (it answers its
own training questions no better without the activation), or it learned to read base text and
the reading does not carry over to the organism. This check tells them apart. For each QA
component that an audit leans on (``topic_qa`` for taboo, ``entity_qa`` for persona facts,
``gender_qa`` for user gender) it draws fresh examples with the mixture's own builder and
another seed, reads them on the base model at half depth (the audit's depth) and scores

* the oracle,
* the oracle asked with no activation (``ablated_zero``): what its question alone gets, and
* a linear probe trained on another fresh draw: whether the answer is linearly there to read.

``python -m lens_oracle.toy.demo.own_tasks --seeds 0 [--quick] [--cache DIR] [--n 60]`` builds or
reuses the demo's base model and oracle for each seed (the same cache and stamps as
``lens-oracle demo``) and prints one table.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lens_oracle.acceleration import torch_threads
from lens_oracle.data.example import OracleExample
from lens_oracle.errors import ConfigError
from lens_oracle.evals.metrics import Score, summarize
from lens_oracle.evals.runner import run_tasks
from lens_oracle.evals.tasks import EvalItem, EvalTask
from lens_oracle.oracle import ActivationOracle
from lens_oracle.positions import Indices
from lens_oracle.toy.demo.mixture import ORACLE_WORDS
from lens_oracle.toy.demo.pipeline import load_or_train_oracle
from lens_oracle.toy.demo.qa_components import AUDITED_QA
from lens_oracle.toy.demo.records import demo_config
from lens_oracle.toy.world.language import ToyWorld, make_world
from lens_oracle.toy.world.model import load_or_pretrain
from lens_oracle.toy.world.tokenizer import cache_root
from lens_oracle.validate import parse_ints

METHODS: tuple[str, ...] = ("oracle", "ablated_zero", "linear_probe")
SEED_OFFSET = 77_777
"""Fresh draws: the check's examples use seeds the oracle's mixture never does."""


def _answer_sets(world: ToyWorld, component: str, examples: Sequence[OracleExample]) -> dict[str, tuple[str, ...]]:
    """Task name -> candidate answers (entity_qa: one task per attribute)."""
    if component == "entity_qa":
        return {f"{component}/{a}": tuple(world.values(a)) for a in world.attribute_names}
    if component == "topic_qa":
        return {component: tuple(world.values("topic"))}
    return {component: tuple(sorted({e.answer for e in examples}))}


def _task_of(component: str, example: OracleExample) -> str:
    return f"{component}/{example.meta['attribute']}" if component == "entity_qa" else component


def _items(examples: Sequence[OracleExample]) -> tuple[EvalItem, ...]:
    return tuple(
        EvalItem(context=e.context_ids, references=(e.answer,), positions=Indices(e.positions), questions=(e.question,))
        for e in examples
    )


def own_tasks(world: ToyWorld, tokenizer: Any, layer: int, n: int, seed: int) -> dict[str, list[EvalTask]]:
    """Component -> eval tasks of ``n`` fresh examples read at ``layer`` on the base model, each
    with ``n`` more fresh examples as the probe's training items."""
    if n < 2:
        raise ConfigError(f"--n {n}: give at least 2 examples per component")
    out = {}
    for i, (component, (build, _)) in enumerate(AUDITED_QA.items()):
        test = build(world, tokenizer, (layer,), n, seed + SEED_OFFSET + 2 * i)
        train = build(world, tokenizer, (layer,), n, seed + SEED_OFFSET + 2 * i + 1)
        out[component] = [
            EvalTask(
                name=name, items=_items([e for e in test if _task_of(component, e) == name]),
                layer=layer, scorer="exact", candidates=candidates,
                train_items=_items([e for e in train if _task_of(component, e) == name]), max_new_tokens=4,
            )
            for name, candidates in _answer_sets(world, component, test).items()
            if any(_task_of(component, e) == name for e in test)
        ]
    return out


def check_own_tasks(
    oracle: ActivationOracle, world: ToyWorld, layer: int, *, n: int = 60, seed: int = 0, n_resamples: int = 1000
) -> dict[str, dict[str, Score]]:
    """Component -> method -> pooled score of the oracle, its no-activation control and a linear
    probe on fresh examples of the component (see the module docstring)."""
    tasks = own_tasks(world, oracle.model.tokenizer, layer, n, seed)
    report = run_tasks(oracle, [t for ts in tasks.values() for t in ts], methods=METHODS, seed=seed, n_resamples=n_resamples)
    return {
        component: {
            method: summarize([s for t in ts for s in report.get(t.name, method).item_scores], seed, n_resamples=n_resamples)
            for method in METHODS
        }
        for component, ts in tasks.items()
    }


def run_check(cache: Path, seed: int, quick: bool, n: int) -> dict[str, dict[str, Score]]:
    """Build or reuse the demo's base model and oracle for ``seed`` and check them."""
    config = demo_config(quick, seed)
    with torch_threads(config.threads):
        base = load_or_pretrain(cache, seed, quick, extra_words=ORACLE_WORDS)
        oracle, _ = load_or_train_oracle(base, config, seed, cache)
        layer = oracle.model.n_layers // 2  # the audits' depth (an eval task's default)
        return check_own_tasks(oracle, make_world(seed), layer, n=n, seed=seed, n_resamples=config.n_resamples)


def markdown(rows: Sequence[tuple[int, dict[str, dict[str, Score]]]], quick: bool) -> str:
    lines = [
        f"# The {'quick' if quick else 'full'} demo's oracle on its own training tasks (fresh examples, base model, half depth)",
        "",
        "| seed | component (audit) | oracle | no activation | linear probe |",
        "|---|---|---|---|---|",
    ]
    for seed, scores in rows:
        for component, by_method in scores.items():
            cells = " | ".join(
                f"{s.mean:.2f} [{s.low:.2f}, {s.high:.2f}]" for s in (by_method[m] for m in METHODS)
            )
            lines.append(f"| {seed} | {component} ({AUDITED_QA[component][1]}) | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--quick", action="store_true", help="the quick demo's models")
    parser.add_argument("--cache", type=Path, default=None, help="the demo's cache (default: the toy cache root)")
    parser.add_argument("--n", type=int, default=60, help="fresh examples per component (and as many for the probe)")
    args = parser.parse_args(argv)
    seeds = parse_ints(args.seeds, "--seeds")
    cache = args.cache or cache_root()
    rows = [(seed, run_check(cache, seed, args.quick, args.n)) for seed in seeds]
    print(markdown(rows, args.quick), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
