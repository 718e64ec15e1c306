"""The real tier's run of the real-model pipeline: ``tutorials/05_real_model.py --smoke`` end to
end on SmolLM2 (organisms, oracle, audit, then a question of one's own), then the same run again
in-process: every stage comes from the cache and the results are the same bytes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lens_oracle.fetch import fetched_model
from lens_oracle.io import cache_root

pytestmark = pytest.mark.real
if fetched_model("smollm2") is None:
    pytest.skip("SmolLM2 has not been fetched; run `make real-model` (or `lens-oracle fetch smollm2`)",
                allow_module_level=True)

REPO = Path(__file__).resolve().parents[1]
METHODS = {"oracle", "untrained_oracle", "ablated_zero", "ablated_shuffle", "ablated_random", "black_box",
           "logit_lens", "linear_probe"}


def test_tutorial_05_smoke_then_every_stage_is_reused(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "LENS_ORACLE_CACHE": str(cache_root()),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    out, cache = tmp_path / "out", tmp_path / "cache"
    done = subprocess.run(
        [sys.executable, str(REPO / "tutorials" / "05_real_model.py"), "--smoke", "--out", str(out), "--cache", str(cache)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900, check=False,
    )
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    for line in ("| taboo | 6 |", "| user_gender | 6 |", "oracle reading the organism (taboo-moon):",
                 "oracle reading the base model (taboo-moon):", "seconds per stage:"):
        assert line in done.stdout, done.stdout[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["scores"]) == {"taboo", "user_gender", "persona_job", "persona_mood"}
    for kind in ("taboo", "user_gender"):
        scores = results["scores"][kind]
        assert set(scores) == METHODS and all(s["n"] == 6 and 0 <= s["mean"] <= 1 for s in scores.values())
        assert results["chance"][kind] == 0.5 and 0 <= results["base_reading"][kind]["mean"] <= 1
        assert 0 <= results["answers"][kind]["organisms"]["in_kind"] <= 1
    for check in ("persona_job", "persona_mood"):  # 3 personas x 3 held-out prompts
        assert set(results["scores"][check]) == {"oracle", "ablated_zero", "ablated_shuffle"}
        assert all(s["n"] == 9 for s in results["scores"][check].values())
    assert set(results["organisms"]) == {"taboo-moon", "taboo-gold", "user_gender-male", "user_gender-female"}
    assert all(v["replies"] > 0 and v["final_loss"] > 0 and ("leaks" in v or "own_address" in v) for v in results["organisms"].values())
    assert results["oracle"]["examples"] > 30 and set(results["oracle"]["layers"]) == {7, 15, 22}

    from lens_oracle.real.demo import run_real_demo

    again = run_real_demo(tmp_path / "again", smoke=True, cache=cache, progress=False)
    assert again.oracle_metrics["cached"] is True
    assert again.timings["organisms"] < 10 and again.timings["generations"] < 10
    assert (tmp_path / "again" / "results.json").read_bytes() == (out / "results.json").read_bytes()
