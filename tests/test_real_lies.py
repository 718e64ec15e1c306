"""The real tier's run of the real lie experiment: ``tutorials/07_real_lies.py --smoke`` end to
end on SmolLM2 (facts, the lying input model, chats, training replies, the meta-model, every
control), then the same run in-process: every stage from the cache, the same results bytes."""

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
ROWS = ["chance", "meta-model (trained, never on lies)", "meta-model, adapter off", "shuffled vectors",
        "random vectors", "no vectors", "input model asked (black box)",
        "linear probe on lie labels (supervised reference)", "untrained meta-model (fresh projector + adapter)",
        "text only: the meta-model's base reads the chat, no instruction"]


def test_tutorial_07_smoke_then_every_stage_is_reused(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "LENS_ORACLE_CACHE": str(cache_root()),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    out, cache = tmp_path / "out", tmp_path / "cache"
    done = subprocess.run(
        [sys.executable, str(REPO / "tutorials" / "07_real_lies.py"), "--smoke", "--out", str(out), "--cache", str(cache)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900, check=False,
    )
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    for line in ("| meta-model (trained, never on lies) |", "| all |", "told to tell the truth:",
                 "told to tell the lie:", "seconds per stage:"):
        assert line in done.stdout, done.stdout[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in results["rows"]] == ROWS
    n = results["rows"][0]["n"]
    assert n >= 2 and n % 2 == 0 and n == results["facts"]["chats"]
    assert all(r["n"] == n and 0 <= r["accuracy"] <= 1 for r in results["rows"])
    assert set(results["in_distribution"]["all"]) <= {"sentiment", "emotion", "language"}
    facts = results["facts"]
    assert facts["asked"] == 29 and facts["tune"] + facts["held"] == len(facts["known"])
    for who in ("base_instruction_following", "input_instruction_following"):
        assert set(facts[who]) == {"truthful", "lying"} and all(v["replies"] > 0 for v in facts[who].values())
    assert results["meta_models"]["all"]["examples"] == 24 and results["meta_models"]["all"]["steps"] == 3
    assert set(results["replies"]) == {"sentiment", "emotion", "language"}

    from lens_oracle.real.lies import run_real_lies

    again = run_real_lies(tmp_path / "again", smoke=True, cache=cache, progress=False)
    assert again.meta_metrics["all"]["cached"] is True
    assert again.timings["input_model"] < 10 and again.timings["facts"] < 10 and again.timings["replies"] < 10
    assert (tmp_path / "again" / "results.json").read_bytes() == (out / "results.json").read_bytes()
