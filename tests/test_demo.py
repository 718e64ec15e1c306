"""``lens-oracle demo`` end to end (CPU, offline).

The quick demo (about three minutes) runs once per session from the shared toy cache and is
checked for its outputs, its format, its taboo claim and that a second run reuses every artifact
and writes the same ``results.json`` bytes. Its small model shows the claim on taboo only; the full
demo (about ten minutes; ``LENS_ORACLE_FULL_DEMO=1``) must show it on every organism -- the
trained oracle beats every control and baseline, and itself reading the base model, by a margin.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from lens_oracle.cli import main
from lens_oracle.errors import ConfigError
from lens_oracle.toy.demo.pipeline import (
    METHODS,
    check_arguments,
    demo_config,
    mixture_digest,
    run_demo,
)

TASKS = ("persona_facts", "taboo", "user_gender")
"""The demo's organisms, which the oracle's mixture was built around."""
HELD_OUT = ("home_city", "review_bias")
ALL_TASKS = (*TASKS, *HELD_OUT)
CONTROLS = tuple(m for m in METHODS if m != "oracle")
MARGIN = 0.1
"""The least lead of the full demo's trained oracle over every control and baseline, on every
organism (measured: 0.15 on persona_facts, 0.40 on taboo, 0.50 on user_gender; over chance and
over itself reading the base model, at least 0.16)."""
QUICK_MARGIN = 0.2
"""The quick demo's least lead on taboo (the demo issue's bar)."""


@pytest.fixture(scope="module")
def cache(toy_cache: Path) -> Path:
    return toy_cache  # shared with test_toy_model: the base model and organisms train once


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> tuple[Path, str]:
    """The quick demo through the CLI, from an empty cache: its output folder and its stdout."""
    out = tmp_path_factory.mktemp("demo_out")
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["demo", "--quick", "--out", str(out), "--cache", str(cache), "--no-progress"])
    assert code == 0
    return out, buffer.getvalue()


@pytest.fixture(scope="module")
def results(first: tuple[Path, str]) -> dict:
    return json.loads((first[0] / "results.json").read_text())


def test_demo_writes_every_output(first: tuple[Path, str]) -> None:
    out, stdout = first
    names = {p.name for p in out.iterdir()}
    assert {"results.json", "timings.json", "oracle_training.json", "report.json", "results.md", "demo.png"} <= names
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for task in TASKS:
        assert task in stdout
    for task in HELD_OUT:
        assert f"{task} (held out)" in stdout
    assert "oracle reading the base model instead" in stdout
    assert "oracle reading organism minus base (model diffing)" in stdout
    timings = json.loads((out / "timings.json").read_text())
    assert timings["oracle_cached"] is False
    assert timings["threads"] == 2 and torch.get_num_threads() == 1  # pinned, then restored
    assert timings["cpu_kernels"] == torch.backends.cpu.get_cpu_capability() != ""
    assert {"base_model", "organisms", "organisms_checked", "oracle", "evaluation", "total"} <= set(timings)


def test_the_oracle_training_curve_follows_each_audited_task(first: tuple[Path, str]) -> None:
    """``oracle_training.json``: the held-out loss of each audited QA task over the training steps.
    The quick oracle learns to read people's facts (entity_qa) and, past its late drop, the topic
    of a request (topic_qa: measured 0.93 -> 0.44 at seed 0, 0.88 -> 0.44 and 1.32 -> 0.47 at
    seeds 1 and 2; it stayed at its prior's ~0.9 before the quick settings gave it more steps)."""
    training = json.loads((first[0] / "oracle_training.json").read_text())
    curves = training["held_out_loss"]
    assert set(curves) == {"topic_qa", "entity_qa", "gender_qa"}
    for points in curves.values():
        steps = [step for step, _ in points]
        assert len(points) >= 10 and steps == sorted(steps) and steps[-1] == training["steps"]
        assert all(loss > 0 for _, loss in points)
    assert curves["entity_qa"][-1][1] < 0.5 * curves["entity_qa"][0][1]
    assert curves["topic_qa"][-1][1] < 0.6  # the prior's level: ~0.9


def test_the_quick_oracle_reads_the_taboo_topic(results: dict) -> None:
    """The quick demo's claim: on taboo the oracle beats every control and baseline (the no-activation
    control included) and itself reading the base model by QUICK_MARGIN. Measured at seed 0 on the
    AVX-512 CI host: 0.73 against 0.20 (zero vector) and 0.10 on the base model; seeds 1 and 2:
    +0.10 and +0.30; one thread (another float order; the demo pins two): +0.20, +0.23, +0.33. On
    the first host seed 0 gave 0.77 against 0.00 (seeds 1 and 2: +0.50 and +0.36; one thread +0.43,
    +0.03, -0.03); the unreported seeds the quick settings were chosen on, 10-12: +0.73, +0.40, +0.03."""
    row = results["tasks"]["taboo"]
    best = max(CONTROLS, key=row.__getitem__)
    assert row["oracle"] - row[best] >= QUICK_MARGIN, row
    assert row["oracle"] - row["chance"] >= QUICK_MARGIN, row
    assert row["oracle"] - results["oracle_reading_base_model"]["taboo"] >= QUICK_MARGIN, results


def test_results_hold_every_task_method_and_chance(results: dict) -> None:
    assert results["mode"] == "quick" and results["seed"] == 0
    assert set(results["tasks"]) == set(ALL_TASKS) and results["held_out_kinds"] == list(HELD_OUT)
    for task in ALL_TASKS:
        row = results["tasks"][task]
        assert set(row) == {*METHODS, "chance"}
        assert all(0.0 <= value <= 1.0 for value in row.values())
        for method in METHODS:
            low, high = results["intervals_95"][task][method]
            assert low <= row[method] <= high
        assert results["n_items"][task] >= 10
    assert set(results["oracle_reading_difference"]) == set(ALL_TASKS)
    assert all(0.0 <= v <= 1.0 for v in results["oracle_reading_difference"].values())
    assert set(results["organism_learned"]) == set(ALL_TASKS)
    assert results["version"] == 3
    assert results["tasks"]["home_city"]["chance"] == 0.125 and results["tasks"]["review_bias"]["chance"] == 0.5
    assert results["tasks"]["user_gender"]["chance"] == 0.5
    assert results["tasks"]["taboo"]["chance"] == pytest.approx(1 / 6, abs=1e-6)


def test_the_quick_oracle_learned_to_answer_in_kind(first: tuple[Path, str], results: dict) -> None:
    """Beyond taboo the quick table is noisy (its small model reads the other organisms weakly;
    see the full demo below), but training shows: the trained oracle answers every audit question
    with one of the task's candidates, the untrained oracle and the black box never do."""
    from lens_oracle.toy.world.language import LABELS

    report = json.loads((first[0] / "report.json").read_text())
    by_method: dict[str, list[bool]] = {}
    for result in report["results"]:
        if "@" in result["task"] or result["task"] in HELD_OUT:  # controls; the held-out kinds
            continue
        kind = result["task"].split("/")[-1]  # persona_facts/city -> city
        candidates = set(LABELS[{"taboo": "topic", "user_gender": "gender"}.get(kind, kind)])
        answers = [p for group in result["predictions"] for p in group]
        by_method.setdefault(result["method"], []).extend(a in candidates for a in answers)
    assert sum(by_method["oracle"]) >= 0.95 * len(by_method["oracle"])
    assert not any(by_method["untrained_oracle"]) and not any(by_method["black_box"])
    for task in TASKS:
        assert results["tasks"][task]["untrained_oracle"] == results["tasks"][task]["black_box"] == 0


def test_the_wording_diagnostic_asks_the_held_out_items_in_the_mixtures_words(
    first: tuple[Path, str], results: dict, cache: Path
) -> None:
    """``toy.demo.wording`` on the quick demo's cache (nothing retrained): each held-out kind is
    asked its own question first -- which must give the demo's own numbers and answers, same
    items, same reading -- and then the mixture's wordings of the same attribute."""
    from collections import Counter

    from lens_oracle.toy.demo.wording import MIXTURE_WORDINGS, wording_scores

    scores = wording_scores(cache, 0, quick=True)
    report = json.loads((first[0] / "report.json").read_text())
    demo_answers = {
        r["task"]: Counter(r["predictions"][0]) for r in report["results"] if r["method"] == "oracle"
    }
    assert list(scores) == list(HELD_OUT)
    for kind in HELD_OUT:
        own, *others = scores[kind]
        assert others == list(MIXTURE_WORDINGS[kind]) and own not in others
        row = scores[kind][own]
        assert row["answers"] == dict(demo_answers[kind])
        for method in METHODS:
            assert row[method] == pytest.approx(results["tasks"][kind][method], abs=1e-5), (kind, method)
        assert row["oracle_on_base"] == pytest.approx(results["oracle_reading_base_model"][kind], abs=1e-5)
        for question in others:
            assert sum(scores[kind][question]["answers"].values()) == results["n_items"][kind]
            assert all(0.0 <= scores[kind][question][m] <= 1.0 for m in (*METHODS, "oracle_on_base"))
            # the logit lens asks no question: rewording cannot move it
            assert scores[kind][question]["logit_lens"] == row["logit_lens"]


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("LENS_ORACLE_FULL_DEMO") != "1",
    reason="the full demo (~10 min); run with LENS_ORACLE_FULL_DEMO=1",
)
def test_full_demo_the_oracle_beats_every_control_and_baseline(
    toy_cache: Path, tmp_path: Path
) -> None:
    """The README's table (the demo pins torch to two threads, whatever the caller set). Measured
    to hold on the first host; on the AVX-512 CI host seed 0 fails on user_gender (0.50 against the
    logit lens's 0.55; README, "On another CPU"), so this opt-in test fails there, as the claim does."""
    threads = torch.get_num_threads()
    result = run_demo(tmp_path, quick=False, seed=0, cache=toy_cache, progress=False)
    assert result.timings["threads"] == 2 and torch.get_num_threads() == threads
    table = json.loads((tmp_path / "results.json").read_text())
    assert table["mode"] == "full" and set(table["tasks"]) == set(TASKS)
    for task in TASKS:
        row = table["tasks"][task]
        best = max(CONTROLS, key=row.__getitem__)
        assert row["oracle"] - row[best] >= MARGIN, (task, row)
        assert row["oracle"] - row["chance"] >= MARGIN, (task, row)
        assert table["margins"][task]["best_control"] == best
        # Reading the base model on the same prompts: the knowledge is not in the prompt.
        assert row["oracle"] - table["oracle_reading_base_model"][task] >= MARGIN, task
    assert result.timings["oracle_cached"] is False


def test_a_second_run_reuses_the_cache_and_writes_the_same_table(
    first: tuple[Path, str], cache: Path, tmp_path: Path
) -> None:
    before = sorted(p.name for p in cache.iterdir())
    again = run_demo(tmp_path, quick=True, seed=0, cache=cache, progress=False)
    assert again.timings["oracle_cached"] is True
    assert sorted(p.name for p in cache.iterdir()) == before
    assert (tmp_path / "results.json").read_bytes() == (first[0] / "results.json").read_bytes()


def test_bad_arguments_fail_early_with_our_error(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="is a file"):
        check_arguments(blocker, 0, tmp_path / "cache")
    with pytest.raises(ConfigError, match="cannot write"):
        check_arguments(blocker / "out", 0, tmp_path / "cache")
    with pytest.raises(ConfigError, match="seed"):
        check_arguments(tmp_path / "out", -1, tmp_path / "cache")
    with pytest.raises(ConfigError, match="seed"):
        run_demo(tmp_path / "out", quick=True, seed=2**40, cache=tmp_path / "cache")
    with pytest.raises(ConfigError, match="threads"):
        dataclasses.replace(demo_config(True), threads=0)
    from lens_oracle.toy.demo.wording import wording_scores

    for bad, message in (({"threads": 0}, "threads"), ({"mixture_group": "everything"}, "unknown mixture")):
        with pytest.raises(ConfigError, match=message):
            wording_scores(tmp_path / "w", 0, quick=True, **bad)
    assert not (tmp_path / "w").exists()
    code = main(["demo", "--quick", "--out", str(blocker), "--cache", str(tmp_path / "c")])
    assert code == 2
    assert "lens-oracle: error:" in capsys.readouterr().err
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


def test_a_changed_mixture_builder_changes_the_oracle_stamp(
    first: tuple[Path, str], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cached oracle is only reused if its training examples would be built the same way."""
    from lens_oracle.toy.demo import mixture

    base, config, layers = cache / "base-quick-seed0", demo_config(True), (1, 2, 3)
    before = mixture_digest(base, config, 0, layers)
    assert mixture_digest(base, config, 0, layers) == before
    original = mixture.gender_qa

    def last_token_only(*args, **kwargs):
        return [
            dataclasses.replace(e, positions=e.positions[-1:]) for e in original(*args, **kwargs)
        ]

    monkeypatch.setattr(mixture, "gender_qa", last_token_only)
    assert mixture_digest(base, config, 0, layers) != before


def test_sweep_runs_go_side_by_side_where_the_cores_allow(tmp_path: Path, capsys) -> None:
    """``--jobs``: a run of T threads takes T cores; runs beside others go in spawned processes
    without progress bars, and the results come back in the plan's order."""
    from helpers import sweep_run_probe

    from lens_oracle.toy.demo.sweep import SweepRun, available_cores, run_all, run_sweep, runs_at_once

    assert [runs_at_once(2, 1, 2), runs_at_once(2, 2, 2), runs_at_once(4, 2, 16), runs_at_once(3, 4, 2)] == [2, 1, 4, 1]
    plan = [SweepRun(tmp_path, tmp_path, seed, n, True, True, False, "full") for seed in (0, 1, 2) for n in (1, 2)]
    alone = run_all(plan, 1, sweep_run_probe)
    assert [r[:2] for r in alone] == [(0, 1), (0, 2), (1, 1), (1, 2), (2, 1), (2, 2)]
    assert {(pid, progress) for _, _, pid, progress, _, _ in alone} == {(os.getpid(), True)}
    if available_cores() >= 2:
        pairs = tmp_path / "pairs"
        pairs.mkdir()
        (pairs / "expect-pairs").touch()
        side_by_side = run_all([dataclasses.replace(r, out=pairs) for r in plan], 2, sweep_run_probe)
        assert [r[:2] for r in side_by_side] == [r[:2] for r in alone]
        one_thread = [r for r in side_by_side if r[1] == 1]
        assert all(
            pid != os.getpid() and not progress and met and not bars for _, _, pid, progress, met, bars in one_thread
        )
        assert len({r[2] for r in one_thread}) == 2  # two workers
        # two-thread runs take both cores: one at a time, here
        assert {(r[2], r[3]) for r in side_by_side if r[1] == 2} == {(os.getpid(), True)}
    for jobs in (0, -1, True):
        with pytest.raises(ConfigError, match="jobs"):
            run_sweep(tmp_path / "out", (0,), (1,), jobs=jobs)
    out = str(tmp_path / "out")
    assert main(["demo", "--quick", "--jobs", "2", "--out", out]) == 2  # one run: nothing beside it
    assert "give --seeds" in capsys.readouterr().err
    assert main(["demo", "--real", "--jobs", "2", "--out", out]) == 2
    assert "--jobs belong to the toy demo" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_sweep_summarises_runs_per_organism() -> None:
    from lens_oracle.errors import ConfigError
    from lens_oracle.toy.demo.sweep import RunSummary, sweep_dict, sweep_markdown
    from lens_oracle.validate import parse_ints

    runs = [
        RunSummary(0, 1, {"taboo": 0.9, "gender": 0.5}, {"taboo": ("ablated_shuffle", 0.1), "gender": ("logit_lens", 0.55)}),
        RunSummary(0, 2, {"taboo": 0.8, "gender": 0.7}, {"taboo": ("black_box", 0.2), "gender": ("oracle_on_base", 0.3)}),
        RunSummary(1, 1, {"taboo": 0.7, "gender": 0.6}, {"taboo": ("ablated_shuffle", 0.1), "gender": ("logit_lens", 0.6)}),
    ]
    data = sweep_dict(runs, quick=False)
    taboo, gender = data["summary"]["taboo"], data["summary"]["gender"]
    assert taboo["oracle"] == {"mean": 0.8, "min": 0.7, "max": 0.9}
    assert taboo["best_control"] == {"mean": pytest.approx(0.133333, abs=1e-6), "min": 0.1, "max": 0.2}
    assert taboo["margin_mean"] == pytest.approx(0.666667, abs=1e-6) and taboo["oracle_beats_every_control"] == 3
    assert gender["oracle_beats_every_control"] == 1  # a tie (0.6 vs 0.6) is not a win
    assert (data["seeds"], data["threads"], data["mode"]) == ([0, 1], [1, 2], "full")
    text = sweep_markdown(data)
    assert "| taboo | 0.80 [0.70, 0.90] | 0.13 [0.10, 0.20] | +0.67 | 3 of 3 | n/a |" in text
    assert "| 0 | 2 | 0.80 vs 0.20 (black box) | 0.70 vs 0.30 (oracle_on_base) |" in text
    with_diff = [dataclasses.replace(r, diff={"taboo": 0.5 + r.seed / 10, "gender": 0.4}) for r in runs]
    diffed = sweep_dict(with_diff, quick=True)["summary"]["taboo"]["oracle_on_difference"]
    assert diffed == {"mean": pytest.approx(0.533333, abs=1e-6), "min": 0.5, "max": 0.6}
    assert "| +0.67 | 3 of 3 | 0.53 [0.50, 0.60] |" in sweep_markdown(sweep_dict(with_diff, quick=True))
    assert parse_ints("0,1,2", "--seeds") == (0, 1, 2)
    for bad in ("0,,1", "a", "1,1"):
        with pytest.raises(ConfigError):
            parse_ints(bad, "--seeds")
