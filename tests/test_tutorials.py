"""Smoke tier for the tutorials: each runs top to bottom with ``--smoke``, offline, in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TUTORIALS = REPO / "tutorials"


def run_tutorial(name: str, *args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TMPDIR": str(tmp_path),
        "LENS_ORACLE_CACHE": str(tmp_path / "cache"),  # the toy caches stay in the test's folder
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.run(
        [sys.executable, str(TUTORIALS / name), "--smoke", *args],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600, check=False,
    )


def check(done: subprocess.CompletedProcess[str], name: str, key_lines: list[str]) -> None:
    assert done.returncode == 0, f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    for line in key_lines:
        assert line in done.stdout, f"{name} printed no {line!r}:\n{done.stdout[-3000:]}"


def test_quickstart_smoke(tmp_path: Path) -> None:
    done = run_tutorial("01_quickstart.py", tmp_path=tmp_path)
    check(done, "01_quickstart.py", ["trained ", "held-out accuracy:", "reloaded oracle answers:"])


def test_training_mixture_smoke(tmp_path: Path) -> None:
    data = tmp_path / "data"
    done = run_tutorial("02_training_mixture.py", "--data-dir", str(data), tmp_path=tmp_path)
    check(done, "02_training_mixture.py", [
        "mixture: 32 examples:", "padding efficiency:", "trained ",
        "yes/no questions answered with yes or no:", "done.",
    ])
    # It wrote its local data files where asked and printed the preview with marked positions.
    assert sorted(p.name for p in data.iterdir()) == [
        "corpus.txt", "personas.jsonl", "sentiment.csv", "spqa_tiny.jsonl", "topic.jsonl",
    ]
    assert "⟦" in done.stdout and "⟧" in done.stdout and "  Q: " in done.stdout


def test_evaluate_smoke(tmp_path: Path) -> None:
    done = run_tutorial("03_evaluate.py", "--out", str(tmp_path / "eval"), tmp_path=tmp_path)
    check(done, "03_evaluate.py", ["oracle", "ablated_shuffle", "black_box", "logit_lens"])
    assert (tmp_path / "eval" / "results.json").is_file()


def test_cross_model_smoke(tmp_path: Path) -> None:
    done = run_tutorial("04_cross_model.py", "--out", str(tmp_path / "meta"), tmp_path=tmp_path)
    check(done, "04_cross_model.py", [
        "read at layers (0, 1)", "oracle prompt: 'Layer: 0\\n ? ? ? \\nLayer: 1\\n ? ? ? \\n", "trained ",
        "reloaded oracle answers:", "lie detection (statement lies)", "| ablated_shuffle |",
        "| text-only: the meta-model's base reads the chat |",
    ])
    assert sorted(p.name for p in (tmp_path / "meta").iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "oracle_config.json", "projector.safetensors",
    ]


def test_steering_smoke(tmp_path: Path) -> None:
    done = run_tutorial("06_steering.py", tmp_path=tmp_path)
    check(done, "06_steering.py", ["steered 6 steps at layer 2: oracle loss", "the oracle reads", "saved the steering adapter"])
