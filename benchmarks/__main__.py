"""Run the benchmark suite and write its figures to a JSON file.

    python -m benchmarks --out results.json [--quick | --tiny] [--device cpu|cuda] [--threads N]
    python -m benchmarks --out smollm2.json --model smollm2 --only capture,train_step,generation,memory

Figures (top-level keys, plain floats; each a ratio of two things timed side by side):

* ``capture_over_floor`` -- :func:`lens_oracle.activations.capture` vs a bare ``stop_at_layer``
  forward on the same tokens (goal <= 1.05); ``capture_speedup_vs_full_cache`` -- a full
  ``run_with_cache`` vs our capture.
* ``train_step_over_floor`` -- one trainer step vs a plain PEFT LoRA step on the same oracle
  tokens plus a no-grad ``stop_at_layer`` target forward (goal <= 1.10).
* ``padding_efficiency`` -- real / processed tokens of both passes over an epoch of an AO-like
  mixture with the trainer's batching (goal >= 0.90).
* ``batched_generation_speedup`` -- answers one at a time vs batched (goal >= 5 at batch 16);
  ``generation_over_hf`` -- batched injected generation vs plain HF ``generate`` (goal <= 1.15);
  ``generation_over_peft_hook`` -- vs an unbridged PEFT copy with an injecting forward hook, the
  way one writes it without lens_oracle (goal <= 1.05).
* ``same_model_memory_ratio`` -- peak memory of a same-model step vs one with a separate
  target copy (goal <= 0.6).
* ``cache_read_over_recompute`` -- vectors read from the activation cache vs recomputed.

Raw timings, model sizes, goals and whether each was met are under ``details``. Progress goes
to stderr. Models are random (no download): a Llama of ``d_model`` 256-512.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks import KEYS
from benchmarks.common import SIZES, Workbench, make_workbench, progress, sizes_dict

BENCHMARKS = ("capture", "train_step", "padding", "generation", "memory", "cache")
GOALS = {
    "capture_over_floor": ("capture", "goal_met"),
    "train_step_over_floor": ("train_step", "goal_met"),
    "padding_efficiency": ("padding", "goal_met"),
    "batched_generation_speedup": ("generation", "speedup_goal_met"),
    "generation_over_hf": ("generation", "over_hf_goal_met"),
    "generation_over_peft_hook": ("generation", "over_peft_hook_goal_met"),
    "same_model_memory_ratio": ("memory", "goal_met"),
}
"""Which detail flag says whether each figure with a goal met it."""


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _runner(name: str) -> Callable[[Workbench], tuple[Any, dict[str, Any]]]:
    import importlib

    return importlib.import_module(f"benchmarks.{name}").run


def _figures(name: str, value: Any) -> dict[str, float]:
    if isinstance(value, dict):
        return {k: float(v) for k, v in value.items()}
    key = {
        "train_step": "train_step_over_floor",
        "padding": "padding_efficiency",
        "memory": "same_model_memory_ratio",
        "cache": "cache_read_over_recompute",
    }[name]
    return {key: float(value)}


def run_suite(mode: str, device: str, only: Sequence[str] = BENCHMARKS, model_folder: Path | None = None) -> dict[str, Any]:
    """Run the chosen benchmarks; the result dict as written to the JSON file."""
    import torch

    started, load_before = time.perf_counter(), _load()
    figures: dict[str, float] = {}
    details: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="lens_oracle_bench_") as tmp:
        bench = make_workbench(SIZES[mode], device, Path(tmp), model_folder)
        progress(f"mode {mode}, device {device}, torch threads {torch.get_num_threads()}, vocab {len(bench.tokenizer)}")
        for name in only:
            start = time.perf_counter()
            value, info = _runner(name)(bench)
            info["wall_s"] = round(time.perf_counter() - start, 2)
            figures.update(_figures(name, value))
            details[name] = info
    goals = {
        key: details[name][flag]
        for key, (name, flag) in GOALS.items()
        if name in details
    }
    details["environment"] = {
        "mode": mode,
        "device": device,
        "cuda_device": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min_before": load_before,
        "load_average_1min_after": _load(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "sizes": sizes_dict(SIZES[mode]),
        "wall_s": round(time.perf_counter() - started, 2),
    }
    details["goals_met"] = goals
    missing = [k for k in KEYS if k not in figures] if tuple(only) == BENCHMARKS else []
    if missing:
        raise RuntimeError(f"the suite did not produce {missing}")
    bad = {k: v for k, v in figures.items() if not math.isfinite(v)}
    if bad:
        raise RuntimeError(f"non-finite figures: {bad}")
    return {**{k: figures[k] for k in KEYS if k in figures}, "details": details}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller models and fewer rounds (a few minutes)")
    size.add_argument("--tiny", action="store_true", help="smoke run for tests (seconds; figures meaningless)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--model", choices=("smollm2",), default=None,
                        help="benchmark a fetched real model (make real-model) instead of random Llamas")
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    args = parser.parse_args(argv)
    only = tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = sorted(set(only) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; choose from {list(BENCHMARKS)}")
    if not args.device.startswith(("cpu", "cuda")):
        parser.error(f"--device must be cpu or cuda, got {args.device!r}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    torch.set_num_threads(args.threads)
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    model_folder = None
    if args.model is not None:
        from lens_oracle.fetch import fetched_model

        model_folder = fetched_model(args.model)
        if model_folder is None:
            parser.error(f"{args.model} has not been fetched; run `make real-model` first")
        if args.tiny or args.quick:
            parser.error("--model runs at the model's own size; drop --quick/--tiny")
        mode = args.model
    result = run_suite(mode, args.device, only, model_folder)

    from lens_oracle.io import atomic_write_json

    atomic_write_json(args.out, result)
    progress(f"wrote {args.out} in {result['details']['environment']['wall_s']:.0f} s")
    for key in KEYS:
        if key in result:
            print(f"{key:32s} {result[key]:.4f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
