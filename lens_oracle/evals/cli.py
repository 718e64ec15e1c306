"""``lens-oracle eval``: evaluate a saved oracle on a task file against its controls.

The lead attaches it as a subcommand::

    sub = subparsers.add_parser("eval", help="evaluate an oracle")
    add_eval_arguments(sub)
    sub.set_defaults(func=run_eval)

Writes ``results.json``, ``results.md`` and (if matplotlib is installed) PNG plots to ``--out``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from lens_oracle.errors import EvalError, LensOracleError

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_USER_ERROR = 2


def _methods(text: str) -> list[str]:
    from lens_oracle.evals.methods import METHODS

    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown methods {unknown}; choose from {', '.join(METHODS)}"
        )
    return names


def _layers(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--sweep-layers takes comma-separated integers, got {text!r}"
        ) from None


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``eval`` options to ``parser`` (imports nothing heavy, so ``--help`` is fast)."""
    parser.add_argument(
        "--oracle", required=True, type=Path, help="folder of a saved oracle (or PEFT adapter)"
    )
    parser.add_argument(
        "--tasks", required=True, type=Path, help="task file (JSON, see lens_oracle.evals.taskfile)"
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="output folder for results.json/.md and plots"
    )
    parser.add_argument(
        "--source",
        default=None,
        help="local folder of the oracle's base model (overrides the saved name)",
    )
    parser.add_argument(
        "--methods",
        type=_methods,
        default=None,
        help="comma-separated methods (default: all): oracle, untrained_oracle, ablated_zero, "
        "ablated_shuffle, ablated_random, black_box, logit_lens, patchscope, linear_probe",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for ablations, probe and bootstrap (default 0)"
    )
    parser.add_argument(
        "--sweep-layers",
        type=_layers,
        default=None,
        help="also score each task at these read layers, e.g. 4,8,12",
    )
    parser.add_argument(
        "--batch-size", type=int, default=16, help="items per forward pass (default 16)"
    )
    parser.add_argument(
        "--resamples", type=int, default=1000, help="bootstrap resamples for the CIs (default 1000)"
    )
    parser.add_argument(
        "--device", default=None, help="torch device, e.g. cuda (default: where the model loads)"
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="weights dtype of the oracle and the targets (default float32)",
    )
    parser.add_argument("--no-plots", action="store_true", help="do not write PNG plots")
    return parser


def build_parser() -> argparse.ArgumentParser:
    """A standalone parser (what ``eval_main`` uses)."""
    parser = argparse.ArgumentParser(prog="lens-oracle eval", description=__doc__.splitlines()[0])
    return add_eval_arguments(parser)


def run_eval(args: argparse.Namespace) -> int:
    """Run the evaluation described by parsed ``args``; 0 on success, 2 on a user error."""
    from lens_oracle.evals.methods import METHODS
    from lens_oracle.evals.report import merge_reports
    from lens_oracle.evals.runner import check_methods, run_task, sweep
    from lens_oracle.evals.targets import resolve_target
    from lens_oracle.evals.taskfile import load_tasks
    from lens_oracle.oracle import ActivationOracle

    try:
        methods = check_methods(args.methods or METHODS)
        if args.batch_size < 1 or args.resamples < 1:
            raise EvalError("--batch-size and --resamples must be positive integers")
        tasks = load_tasks(args.tasks)  # checked before the oracle loads
        import torch

        dtype = getattr(torch, args.dtype)
        oracle = ActivationOracle.load(
            args.oracle, source=args.source, device=args.device, dtype=dtype
        )
        common = {
            "methods": methods,
            "seed": args.seed,
            "batch_size": args.batch_size,
            "n_resamples": args.resamples,
        }
        cache: dict = {}  # each target folder is loaded once
        reports = []
        for task in tasks:
            target = resolve_target(oracle, task.target, cache=cache)
            if args.sweep_layers:
                reports.append(
                    sweep(oracle, task, layers=args.sweep_layers, target=target, **common)
                )
            else:
                reports.append(run_task(oracle, task, target=target, **common))
        report = merge_reports(reports)
        written = report.save(args.out, plots=not args.no_plots)
    except LensOracleError as exc:
        log.error("lens-oracle eval: %s", exc)
        return EXIT_USER_ERROR
    for margin in report.margins():
        log.info(
            "%s: oracle %.3f, margin over best control %s",
            margin.condition,
            margin.oracle,
            margin.margin,
        )
    log.info("wrote %s", ", ".join(str(p) for p in written))
    return EXIT_OK


def eval_main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run; for ``python -m lens_oracle.evals.cli`` and tests."""
    return run_eval(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(eval_main())
