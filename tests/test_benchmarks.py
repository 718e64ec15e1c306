"""The benchmark suite runs and writes every figure (smoke mode; no timing is asserted)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the suite is a top-level package next to lens_oracle
    sys.path.insert(0, str(ROOT))

from benchmarks import KEYS
from benchmarks.__main__ import BENCHMARKS, GOALS, main


def test_tiny_run_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    assert main(["--tiny", "--out", str(out)]) == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    assert set(result) == {*KEYS, "details"}
    for key in KEYS:
        assert isinstance(result[key], float), key
        assert math.isfinite(result[key]) and result[key] > 0, key
    details = result["details"]
    assert set(details) >= {*BENCHMARKS, "environment", "goals_met"}
    assert set(details["goals_met"]) == set(GOALS)
    assert all(isinstance(v, bool) for v in details["goals_met"].values())
    environment = details["environment"]
    assert environment["mode"] == "tiny" and environment["device"] == "cpu"
    assert environment["torch_threads"] >= 1
    assert 0 < result["padding_efficiency"] <= 1
    # The separate copy holds a second set of base weights: it needs at least that much more.
    memory = details["memory"]["with_gradient_checkpointing"]
    assert memory["copy_minus_same_mib"] >= 0.9 * details["memory"]["base_weights_mib"]
    assert details["cache"]["max_abs_diff_cached_vs_recomputed"] < 1e-5


def test_cli_rejects_unknown_benchmarks_and_devices(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["--tiny", "--out", str(tmp_path / "x.json"), "--only", "capture,nonsense"])
    with pytest.raises(SystemExit):
        main(["--tiny", "--out", str(tmp_path / "x.json"), "--device", "tpu"])
    assert not (tmp_path / "x.json").exists()
