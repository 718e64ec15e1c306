"""Kill-and-resume campaign: SIGKILL training at random moments, resume, compare with a clean run.

    .venv/bin/python scripts/kill_campaign.py --runs 20 --seed 0 --work /tmp/kills

Each run trains tests/train_script.py (24 steps, a checkpoint every 2) and is killed 1-4 times:
at a random moment (a uniform delay over a clean run's duration), or, one kill in four, inside
the write of a random checkpoint (after its tensors, before its JSON). Then it resumes to the
end. Printed per run: kills, where, the max |difference| of the final adapter against the
uninterrupted run, and any temporaries left in the checkpoint folder. Exit 1 if any run differs.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "train_script.py"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def command(work: Path, out: Path, ckpt: Path | None, *extra: str) -> list[str]:
    args = [sys.executable, str(SCRIPT), "--work", str(work), "--out", str(out), *extra]
    return args + (["--checkpoints", str(ckpt)] if ckpt else [])


def max_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    x, y = load_file(str(a)), load_file(str(b))
    assert sorted(x) == sorted(y)
    return max(float((x[k] - y[k]).abs().max()) for k in x)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    start = time.perf_counter()
    subprocess.run(command(args.work, args.work / "reference.safetensors", None), env=ENV, check=True,
                   capture_output=True)
    clean_seconds = time.perf_counter() - start
    worst, kills_total, failures = 0.0, 0, 0
    for run in range(args.runs):
        ckpt = args.work / f"run{run}" / "ckpt"
        out = args.work / f"run{run}" / "final.safetensors"
        ckpt.parent.mkdir()
        where = []
        for _ in range(rng.randint(1, 4)):
            resume = ["--resume"] if where else []
            if rng.random() < 0.25:
                step = rng.choice(range(2, 25, 2))
                proc = subprocess.run(command(args.work, out, ckpt, *resume, "--kill-in-checkpoint", str(step)),
                                      env=ENV, capture_output=True)
                where.append(f"write@{step}" if proc.returncode == -signal.SIGKILL else f"write@{step}(done)")
            else:
                delay = rng.uniform(0.0, clean_seconds)
                proc = subprocess.Popen(command(args.work, out, ckpt, *resume), env=ENV,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                where.append(f"{delay:.1f}s" if proc.returncode == -signal.SIGKILL else f"{delay:.1f}s(done)")
            kills_total += 1
        subprocess.run(command(args.work, out, ckpt, "--resume"), env=ENV, check=True, capture_output=True)
        diff = max_diff(args.work / "reference.safetensors", out)
        leftovers = sorted(p.name for p in ckpt.iterdir() if p.name.startswith("."))
        worst = max(worst, diff)
        failures += diff != 0.0 or bool(leftovers)
        print(f"run {run:2d}: kills {', '.join(where):40s} max diff {diff:.1e}  temporaries left {leftovers}",
              flush=True)
    print(f"{args.runs} runs, {kills_total} kill attempts, max diff {worst:.1e}, runs with a difference or "
          f"a temporary left: {failures} (clean run {clean_seconds:.1f} s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
