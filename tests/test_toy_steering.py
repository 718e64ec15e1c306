"""The toy steering experiment (lens_oracle.toy.demo.steering): its directions, controls and summary,
and a quick run on the quick demo's models (shared toy cache: reused after test_demo)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lens_oracle.errors import ConfigError
from lens_oracle.toy.demo.steering import (
    CONDITIONS,
    directions,
    random_answer,
    run_steering,
    steering_markdown,
    summarise,
)
from lens_oracle.toy.world.language import ADDRESSES, ATTRIBUTES, make_world


def test_directions_hold_out_their_evaluation_prompts() -> None:
    world = make_world(0)
    found = directions(world, 0)
    assert [d.experiment for d in found] == ["user_address"] * 2 + ["topic"] * 6
    assert [d.wanted for d in found[:2]] == ["female", "male"]
    for d in found:  # held out: no evaluation prompt is a training prompt
        assert not set(d.train_prompts) & set(d.eval_prompts)
        assert len(set(d.train_prompts)) == len(d.train_prompts)
    topic = found[2]
    assert len(topic.train_prompts) == 20 and len(topic.eval_prompts) == 10
    assert not set(topic.train_prompts) & set(topic.eval_prompts)
    assert all(topic.wanted not in p.split() for p in topic.train_prompts + topic.eval_prompts)
    address = found[0]
    assert len(address.train_prompts) == 24 and len(address.eval_prompts) == 40
    assert address.behaves(f"{ADDRESSES['female']} hello") and not address.behaves(f"{ADDRESSES['male']} hello")
    assert topic.behaves(f"dear friend , {'spoon' if topic.wanted == 'food' else 'x'} !") == (topic.wanted == "food")
    assert [d.train_prompts for d in directions(world, 0)] == [d.train_prompts for d in found]
    assert [d.train_prompts for d in directions(world, 1)] != [d.train_prompts for d in found]


def test_random_answer_is_of_another_kind_and_seeded() -> None:
    world = make_world(0)
    values = {v for vs in ATTRIBUTES.values() for v in vs}
    for d in directions(world, 0):
        answer = random_answer(d, 0)
        assert answer in values and answer != d.wanted
        assert random_answer(d, 0) == answer


def test_summary_and_table() -> None:
    def run(seed: int, wanted: str, steered: float) -> dict:
        results = {c: {"behaviour": 0.0, "oracle": 0.0} for c in CONDITIONS}
        results["steered"] = {"behaviour": steered, "oracle": 1.0}
        return {"seed": seed, "experiment": "topic", "wanted": wanted, "n_eval": 10, "results": results}

    runs = [run(1, "food", 0.2), run(1, "music", 0.4), run(2, "food", 0.0), run(2, "music", 0.2)]
    summary = summarise(runs)
    assert summary["topic"]["steered"]["behaviour"] == {"mean": 0.2, "min": 0.1, "max": 0.3}
    assert summary["topic"]["zero_loss"]["oracle"] == {"mean": 0.0, "min": 0.0, "max": 0.0}
    table = steering_markdown({"mode": "full", "seeds": [1, 2], "summary": summary})
    assert "| topic | steered | 0.20 [0.10, 0.30] | 1.00 [1.00, 1.00] |" in table


def test_bad_seeds_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="distinct seeds"):
        run_steering(tmp_path, seeds=(1, 1), cache=tmp_path / "cache")
    with pytest.raises(ConfigError, match="seed"):
        run_steering(tmp_path, seeds=(-1,), cache=tmp_path / "cache")


def test_quick_steering_run(toy_cache: Path, tmp_path: Path) -> None:
    data = run_steering(tmp_path, seeds=(0,), quick=True, cache=toy_cache, progress=False)
    assert json.loads((tmp_path / "steering.json").read_text()) == json.loads(json.dumps(data))
    assert (tmp_path / "steering.md").read_text().startswith("# Steering through the oracle, toy world (quick")
    assert [(r["experiment"], r["wanted"]) for r in data["runs"]] == [("user_address", "female"), ("topic", "food")]
    for run in data["runs"]:
        results = run["results"]
        assert set(results) == set(CONDITIONS)
        # The zero-loss control leaves the model as it was: the same replies and readings as before.
        assert results["zero_loss"] == results["before"]
        # The oracle, frozen, is convinced on held-out prompts by the steered model.
        assert results["steered"]["oracle"] > results["before"]["oracle"]
