"""``lens-oracle lies``: the real lie experiment (:mod:`.lies`) from the command line, over one
seed or several (then a summary table across seeds: mean, min and max of every row)."""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lens_oracle.errors import ConfigError
from lens_oracle.io import atomic_write_text


def add_lies_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--out", type=Path, default=Path("lies_out"), help="folder for results.json/.md")
    parser.add_argument("--seed", type=int, default=0, help="split, fine-tuning, sampling and training seed")
    parser.add_argument("--seeds", default=None,
                        help="comma-separated seeds (e.g. 0,1,2): one run each under OUT/seed<N>, then a summary")
    parser.add_argument("--smoke", action="store_true", help="a few examples of every stage (about two minutes)")
    parser.add_argument("--no-ablation", action="store_true",
                        help="train only the meta-model on every set (not also one per set alone)")
    parser.add_argument("--examples", type=int, default=None,
                        help="training examples of every meta-model (default 480; the smoke run 24)")
    parser.add_argument("--cache", type=Path, default=None, help="cache folder (default: ~/.cache/lens_oracle)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def run_lies_command(args: argparse.Namespace) -> int:
    """Run the experiment (per seed), print its tables."""
    import dataclasses

    from lens_oracle.real.lies import lie_config, run_real_lies
    from lens_oracle.validate import parse_ints

    seeds = parse_ints(args.seeds, "--seeds") if args.seeds is not None else (args.seed,)
    if args.seeds is not None and args.seed != 0:
        raise ConfigError("give --seed or --seeds, not both")
    config = lie_config(args.smoke)
    if args.no_ablation:
        config = dataclasses.replace(config, ablation=False)
    if args.examples is not None:
        config = dataclasses.replace(config, examples=args.examples)
    if not args.no_progress:
        logging.getLogger("lens_oracle.real").setLevel(logging.INFO)
    results = []
    for seed in seeds:
        out = args.out if len(seeds) == 1 else args.out / f"seed{seed}"
        result = run_real_lies(out, seed=seed, smoke=args.smoke, cache=args.cache, progress=not args.no_progress,
                               config=config)
        print(result.markdown())
        print(f"took {result.timings['total']:.0f} s; wrote {out}/results.json and results.md")
        results.append(result.to_dict())
    if len(seeds) > 1:
        text = seeds_markdown(results)
        atomic_write_text(Path(args.out) / "seeds.md", text + "\n")
        print(text)
    sys.stdout.flush()
    return 0


def _spread(values: Sequence[float]) -> str:
    return f"{statistics.fmean(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def seeds_markdown(results: Sequence[dict[str, Any]]) -> str:
    """Every row of the lie table and of the ablation over seeds: mean [min, max]."""
    seeds = ", ".join(str(r["seed"]) for r in results)
    lines = [f"### Lie detection over seeds {seeds}: mean [min, max] across seeds", "",
             "| method | accuracy | AUROC P(yes) | items per seed |", "|---|---|---|---|"]
    for i, row in enumerate(results[0]["rows"]):
        rows = [r["rows"][i] for r in results]
        aucs = [x["auroc"] for x in rows if x["auroc"] is not None]
        auc = _spread(aucs) if len(aucs) == len(rows) else "-"
        lines.append(f"| {row['method']} | {_spread([x['accuracy'] for x in rows])} | {auc} | "
                     f"{', '.join(str(x['n']) for x in rows)} |")
    lines += ["", "| meta-model trained on | lie accuracy | lie AUROC | held-out accuracy, own sets (oracle / no vectors) |",
              "|---|---|---|---|"]
    for run in results[0]["ablation"]:
        rows = [r["ablation"][run] for r in results]
        aucs = [x["auroc"] for x in rows if x["auroc"] is not None]
        own = "; ".join(
            f"{s} {statistics.fmean(r['in_distribution'][run][s]['oracle'] for r in results):.2f} / "
            f"{statistics.fmean(r['in_distribution'][run][s]['ablated_zero'] for r in results):.2f}"
            for s in results[0]["in_distribution"][run])
        lines.append(f"| {run} | {_spread([x['accuracy'] for x in rows])} | "
                     f"{_spread(aucs) if len(aucs) == len(rows) else '-'} | {own} |")
    return "\n".join(lines)


__all__ = ["add_lies_arguments", "run_lies_command", "seeds_markdown"]
