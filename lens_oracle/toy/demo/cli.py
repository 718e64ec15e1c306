"""``lens-oracle demo``: the toy-world demo from the command line (see :mod:`.demo`).

Only argparse is imported here, so ``lens-oracle --help`` stays fast; the demo's heavy modules
load when the command runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def add_demo_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``demo`` options to ``parser``."""
    parser.add_argument(
        "--quick", action="store_true",
        help="small models and data (about 3 minutes on 2 CPU cores; shows the claim on taboo); default: the full demo",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("demo_out"),
        help="folder for results.json, timings.json, oracle_training.json, report.json, results.md, demo.png "
        "(default: demo_out)",
    )
    parser.add_argument("--seed", type=int, default=0, help="world, training and evaluation seed")
    parser.add_argument(
        "--seeds", default=None, metavar="S,S,...",
        help="a sweep: one whole demo per seed (and per --threads), summarised in sweep.json / sweep.md",
    )
    parser.add_argument(
        "--threads", default=None, metavar="N,N,...",
        help="with --seeds: torch CPU thread counts to run each seed with (float orders; default 2)",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, metavar="N",
        help="with --seeds: up to N runs at once, each in its own process; a run of T threads takes T of "
        "the machine's cores, so on 2 cores --jobs 2 runs one-thread runs two at a time (as fast as one "
        "alone) and two-thread runs one at a time; the results are the same (default 1)",
    )
    parser.add_argument(
        "--cache", type=Path, default=None,
        help="artifact cache (default: $LENS_ORACLE_CACHE or ~/.cache/lens_oracle)",
    )
    parser.add_argument(
        "--on-policy", action="store_true",
        help="train the oracle with on-policy context prediction (the base model's own continuations "
        "as the 'next tokens' answers); cached apart from the standard oracle",
    )
    parser.add_argument(
        "--mixture", default="full", choices=("full", "context", "classification", "qa", "diverse"),
        help="the diversity ablation: the oracle trains on the whole mixture (default), on one kind "
        "of task alone, or on the whole mixture plus general reading tasks (diverse), at the same "
        "example count; cached apart",
    )
    parser.add_argument(
        "--real", action="store_true",
        help="the real-model pipeline instead of the toy world: SmolLM2-135M-Instruct organisms and oracle "
        "(needs `make real-model`; about 30 minutes on 2 CPU cores, cached and resumable)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="with --real: a few examples of every stage (about 2 minutes)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def run_demo_command(args: argparse.Namespace) -> int:
    """Run the demo and print its table."""
    from transformers.utils import logging as hf_logging

    from lens_oracle.toy.demo.pipeline import run_demo
    from lens_oracle.toy.demo.report import format_table

    hf_logging.disable_progress_bar()  # one bar per tiny checkpoint load is noise; ours stay
    if not args.no_progress:
        logging.getLogger("lens_oracle.toy").setLevel(logging.INFO)
    if args.real or args.smoke:
        return _run_real_command(args)
    if args.seeds is not None or args.threads is not None:
        return _run_sweep_command(args)
    if args.jobs != 1:
        from lens_oracle.errors import ConfigError

        raise ConfigError("--jobs runs the runs of a sweep side by side; give --seeds (and --threads)")
    from lens_oracle.toy.demo.records import demo_config

    result = run_demo(
        args.out, quick=args.quick, seed=args.seed, cache=args.cache, progress=not args.no_progress,
        config=demo_config(args.quick, args.seed, on_policy=args.on_policy, mixture_group=args.mixture),
    )
    print(format_table(result))
    times = result.timings
    stages = ", ".join(
        f"{k} {times[k]:.0f} s" for k in ("base_model", "organisms", "oracle", "evaluation")
    )
    print(f"took {times['total']:.0f} s ({stages}); wrote {args.out}/results.json and demo.png")
    sys.stdout.flush()
    return 0


def _run_real_command(args: argparse.Namespace) -> int:
    from lens_oracle.errors import ConfigError

    if not args.real:
        raise ConfigError("--smoke is the small version of --real; give --real --smoke")
    other = [flag for flag, on in (("--quick", args.quick), ("--seeds", args.seeds is not None),
                                   ("--threads", args.threads is not None), ("--jobs", args.jobs != 1),
                                   ("--on-policy", args.on_policy),
                                   ("--mixture", args.mixture != "full")) if on]
    if other:
        raise ConfigError(f"{', '.join(other)} belong to the toy demo; --real takes --smoke, --seed, --out, --cache")
    from lens_oracle.real.demo import format_table, run_real_demo

    if not args.no_progress:
        logging.getLogger("lens_oracle.real").setLevel(logging.INFO)
    result = run_real_demo(args.out, seed=args.seed, smoke=args.smoke, cache=args.cache,
                           progress=not args.no_progress)
    print(format_table(result))
    times = result.timings
    stages = ", ".join(f"{k} {times[k]:.0f} s" for k in ("generations", "organisms", "oracle", "audit"))
    print(f"took {times['total']:.0f} s ({stages}); wrote {args.out}/results.json and results.md")
    sys.stdout.flush()
    return 0


def _run_sweep_command(args: argparse.Namespace) -> int:
    from lens_oracle.toy.demo.sweep import run_sweep, sweep_markdown
    from lens_oracle.validate import parse_ints

    seeds = parse_ints(args.seeds, "--seeds") if args.seeds is not None else (args.seed,)
    threads = parse_ints(args.threads, "--threads") if args.threads is not None else (2,)
    data = run_sweep(
        args.out, seeds, threads, quick=args.quick, cache=args.cache, progress=not args.no_progress,
        on_policy=args.on_policy, mixture_group=args.mixture, jobs=args.jobs,
    )
    print(sweep_markdown(data))
    print(f"wrote {args.out}/sweep.json, sweep.md and one folder per run")
    sys.stdout.flush()
    return 0
