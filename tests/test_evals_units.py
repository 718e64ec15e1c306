"""Evaluation pieces that need no model: task files, scoring, ablations, probe, reports, CLI."""

from __future__ import annotations

import json
import logging
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lens_oracle.activations import AllTokens, Indices, LastK, LastToken, Segment, Substring
from lens_oracle.errors import EvalError
from lens_oracle.evals.cli import build_parser, eval_main
from lens_oracle.evals.controls import random_like, shuffle_permutation
from lens_oracle.evals.methods import CONTROLS, METHOD_KINDS, METHODS, MethodOutput
from lens_oracle.evals.metrics import Score, auroc, expected_calibration_error
from lens_oracle.evals.plots import PlotsUnavailableError, plot_scores
from lens_oracle.evals.probe import ProbeConfig, pool_vectors, train_probe
from lens_oracle.evals.report import EvalReport, EvalResult
from lens_oracle.evals.runner import check_methods, positions_label, score_output, sweep_variants
from lens_oracle.evals.scoring import score_answer
from lens_oracle.evals.targets import Prepared
from lens_oracle.evals.taskfile import load_tasks, save_tasks, tasks_from_json, tasks_to_json
from lens_oracle.evals.tasks import EvalItem, EvalTask, TargetSpec, describe_positions


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors: one thread avoids OpenMP barrier stalls on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _task(**kwargs) -> EvalTask:
    defaults = {
        "name": "t",
        "items": (
            EvalItem("w1 red w2", ("red",), positions=Indices((2,))),
            EvalItem((1, 5, 9), ("blue", "navy"), questions=("which colour ?", "what colour ?")),
            EvalItem("gold here", ("gold",), positions=Substring("gold")),
            EvalItem("a b c d", ("green",), positions=Segment(1, -1)),
        ),
        "questions": ("what colour is here ?", "what is the colour ?"),
        "layer": 1,
        "positions": LastK(3),
        "candidates": ("red", "blue", "green", "gold"),
        "synonyms": {"blue": ("navy", "azure")},
        "target": TargetSpec(model="models/ft", base="/abs/base"),
        "train_items": (
            EvalItem("red", ("red",)),
            EvalItem("blue", ("Blue",), positions=AllTokens()),
        ),
        "max_new_tokens": 4,
    }
    return EvalTask(**{**defaults, **kwargs})


# ---------------------------------------------------------------- task files


def test_task_json_round_trip() -> None:
    task = _task()
    other = _task(
        name="u", scorer="contains", layer=None, positions=LastToken(), target=TargetSpec()
    )
    third = _task(name="v", positions=Substring("gold", through_end=True))
    assert tasks_from_json(tasks_to_json([third])) == (third,)
    text = tasks_to_json([task, other])
    assert tasks_from_json(text) == (task, other)
    assert tasks_to_json(tasks_from_json(text)) == text
    assert json.loads(text)["version"] == 1


def test_load_tasks_resolves_relative_model_folders(tmp_path: Path) -> None:
    path = save_tasks([_task()], tmp_path / "sub" / "tasks.json")
    (loaded,) = load_tasks(path)
    assert loaded.target == TargetSpec(
        model=str((tmp_path / "sub" / "models" / "ft").resolve()), base="/abs/base"
    )
    assert loaded.items == _task().items


MALFORMED = [
    ("{not json", "not valid JSON"),
    ('{"version": 1}', "missing ['tasks']"),
    ('{"tasks": []}', "non-empty list"),
    ('{"version": 9, "tasks": [{}]}', "version 9"),
    ('{"tasks": [{"name": "x"}]}', "tasks[0] is missing ['items']"),
    ('{"tasks": [{"name": "x", "items": [], "scorr": "exact"}]}', "unknown fields ['scorr']"),
    (
        '{"tasks": [{"name": "x", "questions": ["q"], "scorer": "bleu", "items": [{"context": "a", "references": ["b"]}]}]}',
        "scorer 'bleu' is unknown",
    ),
    (
        '{"tasks": [{"name": "x", "questions": ["q"], "items": [{"context": "a"}]}]}',
        "tasks[0].items[0] is missing ['references']",
    ),
    (
        '{"tasks": [{"name": "x", "questions": ["q"], "items": [{"context": "a", "references": [1]}]}]}',
        "items[0].references must be a string or a list of strings",
    ),
    (
        '{"tasks": [{"name": "x", "questions": ["q"], "items": [{"context": 3, "references": "b"}]}]}',
        "items[0].context must be text or a list of token ids",
    ),
    (
        '{"tasks": [{"name": "x", "items": [{"context": "a", "references": "b"}]}]}',
        "give questions for the task or for every item",
    ),
    (
        '{"tasks": [{"name": "x", "questions": ["q"], "positions": {"kind": "middle"}, "items": [{"context": "a", "references": "b"}]}]}',
        "tasks[0].positions.kind is 'middle'",
    ),
    (
        '{"tasks": [{"name": "x", "questions": ["q"], "items": [{"context": "a", "references": "b", "positions": {"kind": "last_k", "n": 2}}]}]}',
        "bad fields for kind 'last_k'",
    ),
    (
        '{"tasks": [{"name": "x", "questions": ["q"], "target": {"model": 3}, "items": [{"context": "a", "references": "b"}]}]}',
        "must be folder paths",
    ),
    (
        (
            '{"tasks": [{"name": "x", "questions": ["q"], "items": [{"context": "a", "references": "b"}]}, '
            '{"name": "x", "questions": ["q"], "items": [{"context": "a", "references": "b"}]}]}'
        ),
        "repeated: ['x']",
    ),
    (
        (
            '{"tasks": [{"name": "x", "questions": ["q"], "candidates": ["red"], '
            '"items": [{"context": "a", "references": "red"}], '
            '"train_items": [{"context": "a", "references": "blue"}]}]}'
        ),
        "not among the candidates",
    ),
    (
        '{"tasks": [{"name": "x", "questions": ["q"], "layer": "1", "items": [{"context": "a", "references": "b"}]}]}',
        "layer must be an integer or null",
    ),
    (
        '{"tasks": [{"name": "x", "questions": ["q"], "items": [{"context": [1, "a"], "references": "b"}]}]}',
        "context must be text or a list of token ids",
    ),
]


@pytest.mark.parametrize(("text", "message"), MALFORMED)
def test_malformed_task_files_raise_clear_errors(text: str, message: str) -> None:
    with pytest.raises(EvalError) as info:
        tasks_from_json(text)
    assert message in str(info.value)


def test_missing_task_file(tmp_path: Path) -> None:
    with pytest.raises(EvalError, match="does not exist"):
        load_tasks(tmp_path / "nope.json")


def test_task_helpers() -> None:
    task = _task()
    assert task.n_questions == 2 and task.label_set == ("red", "blue", "green", "gold")
    assert _task(scorer="yes_no", candidates=(), train_items=()).label_set == ("yes", "no")
    moved = task.variant(layer=3, positions=LastToken())
    assert moved.layer == 3 and all(i.positions is None for i in moved.items + moved.train_items)
    assert task.variant(layer=2).items == task.items
    labels = [
        describe_positions(p)
        for p in (LastToken(), LastK(3), Segment(2, None), AllTokens(), Indices((1, 2)), None)
    ]
    assert labels == [
        "last_token",
        "last_k=3",
        "segment=2:",
        "all_tokens",
        "indices=[1, 2]",
        "per_item",
    ]
    variants = sweep_variants(task, layers=[0, 1], positions=[LastToken(), LastK(3)])
    assert [(v.layer, positions_label(v)) for v in variants] == [
        (0, "per_item"),
        (1, "per_item"),
        (1, "last_token"),
        (1, "last_k=3"),
    ]
    assert len(sweep_variants(task, layers=[1, 1])) == 1
    with pytest.raises(EvalError, match="different numbers of question paraphrases"):
        _task(items=(EvalItem("a", ("b",)), EvalItem("c", ("d",), questions=("q",))))


# ---------------------------------------------------------------- scoring


def test_scorers() -> None:
    syn = {"usa": ("united states",)}
    assert score_answer("exact", "The United States.", ["USA"], syn) == 1.0
    assert score_answer("exact", "united", ["USA"], syn) == 0.0
    assert score_answer("contains", "it is the united states, surely", ["usa"], syn) == 1.0
    assert score_answer("contains", "reddish", ["red"]) == 0.0
    assert score_answer("contains", "Red!", ["red"]) == 1.0
    assert score_answer("yes_no", "Yes, it is.", ["yes"]) == 1.0
    assert score_answer("yes_no", "maybe", ["no"]) == 0.0
    assert score_answer("token_f1", "red car", ["red"]) == pytest.approx(2 / 3)
    assert score_answer("rouge_l", "a red fast car", ["red car"]) == pytest.approx(0.8)
    with pytest.raises(EvalError, match="first word must be yes or no"):
        score_answer("yes_no", "yes", ["perhaps"])


# ---------------------------------------------------------------- ablations


@settings(max_examples=60, deadline=None)
@given(keys=st.lists(st.sampled_from("abcd"), min_size=2, max_size=40), seed=st.integers(0, 10**6))
def test_shuffle_is_a_derangement_avoiding_equal_labels(keys: list[str], seed: int) -> None:
    perm, clashes = shuffle_permutation(keys, seed)
    assert sorted(perm) == list(range(len(keys)))
    assert all(perm[i] != i for i in range(len(keys)))
    assert clashes == sum(keys[perm[i]] == keys[i] for i in range(len(keys)))
    if max(Counter(keys).values()) <= len(keys) / 2:
        assert clashes == 0
    assert shuffle_permutation(keys, seed) == (perm, clashes)


def test_random_vectors_match_norms_and_are_seeded() -> None:
    vectors = [torch.randn(2, 8) * 5, torch.randn(1, 8)]
    noise = random_like(vectors, seed=1)
    for v, r in zip(vectors, noise, strict=True):
        assert r.shape == v.shape
        torch.testing.assert_close(r.norm(dim=-1), v.norm(dim=-1))
        assert not torch.allclose(r, v)
    assert all(torch.equal(a, b) for a, b in zip(noise, random_like(vectors, seed=1), strict=True))
    assert not torch.equal(noise[0], random_like(vectors, seed=2)[0])


# ---------------------------------------------------------------- probe


def test_probe_fits_separable_data_deterministically() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=g) * 4
    labels = torch.arange(90) % 3
    x = centres[labels] + torch.randn(90, 16, generator=g)
    probe = train_probe(x[:60], labels[:60], 3, ProbeConfig(steps=100))
    assert (probe.predict(x[60:]) == labels[60:]).float().mean() == 1.0
    again = train_probe(x[:60], labels[:60], 3, ProbeConfig(steps=100))
    assert torch.equal(probe.weight, again.weight)
    torch.testing.assert_close(pool_vectors([x[:2], x[2:3]]), torch.stack([x[:2].mean(0), x[2]]))
    with pytest.raises(EvalError, match="labels must lie in"):
        train_probe(x[:4], torch.tensor([0, 1, 2, 3]), 3)


# ---------------------------------------------------------------- reports


def _result(
    method: str, mean: float, task: str = "t", layer: int = 1, positions: str = "last_token"
) -> EvalResult:
    return EvalResult(
        task=task,
        method=method,
        kind=METHOD_KINDS[method],
        layer=layer,
        positions=positions,
        score=Score(mean, max(0.0, mean - 0.1), min(1.0, mean + 0.1), 4),
        questions=("q",),
        predictions=(("red", "blue", "x", "y"),),
        item_scores=(1.0, 0.0, 1.0, 0.0),
        extras={"question_means": [mean], "best_question": 0},
    )


SCORES = {
    "oracle": 0.7,
    "untrained_oracle": 0.1,
    "ablated_zero": 0.25,
    "ablated_shuffle": 0.3,
    "ablated_random": 0.2,
    "black_box": 0.05,
    "logit_lens": 0.15,
    "patchscope": 0.12,
    "linear_probe": 0.9,
}


def test_margin_is_over_the_best_control_not_the_probe() -> None:
    report = EvalReport(tuple(_result(m, s) for m, s in SCORES.items()), seed=0)
    (margin,) = report.margins()
    assert margin.best_control == "ablated_shuffle" and set(CONTROLS) == set(METHODS) - {
        "oracle",
        "linear_probe",
    }
    assert margin.margin == pytest.approx(0.4) and margin.margin_over_probe == pytest.approx(-0.2)


def test_markdown_and_json() -> None:
    report = EvalReport(
        tuple(_result(m, s) for m, s in SCORES.items()) + (_result("oracle", 0.5, layer=2),),
        seed=7,
        skipped=(("t", "linear_probe", "no labels"),),
    )
    md = report.to_markdown()
    for method in METHODS:
        assert f"| {method} | {METHOD_KINDS[method]} |" in md
    assert (
        "### t (layer 1, positions last_token)" in md
        and "**+0.400**" in md
        and "skipped linear_probe on t" in md
    )
    text = report.to_json()
    assert EvalReport.from_json(text) == report and EvalReport.from_json(text).to_json() == text
    assert list(json.loads(text)) == sorted(json.loads(text))
    table = report.sweep_table("t", by="layer")
    assert "| 2 | 0.500 | - |" in table and "| 1 | 0.700 | 0.100 |" in table
    with pytest.raises(EvalError, match="2 results match"):
        report.get("t", "oracle")
    assert report.get("t", "oracle", layer=2).score.mean == 0.5
    with pytest.raises(EvalError, match="not a lens_oracle report"):
        EvalReport.from_json('{"results": []}')


def test_yes_no_calibration_extras() -> None:
    items = tuple(EvalItem(f"w{i}", ("yes" if i % 2 else "no",)) for i in range(6))
    task = EvalTask(name="yn", items=items, questions=("q ?",), scorer="yes_no")
    prepared = Prepared(task, 1, items, ((1,),) * 6, ((0,),) * 6, (torch.ones(1, 4),) * 6)
    p = (0.2, 0.9, 0.4, 0.6, 0.1, 0.3)
    out = MethodOutput((("no", "yes", "no", "yes", "no", "no"),), ("q ?",), (p,))
    result = score_output("oracle", out, prepared, n_resamples=20)
    labels = [i % 2 == 1 for i in range(6)]
    assert result.score.mean == pytest.approx(5 / 6)
    cal = result.extras["calibration"]
    assert cal["ece"] == pytest.approx(expected_calibration_error(list(p), labels))
    assert cal["auroc"] == pytest.approx(auroc(list(p), labels))
    one_class = Prepared(task, 1, items[:1] * 2, ((1,),) * 2, ((0,),) * 2, (torch.ones(1, 4),) * 2)
    single = score_output(
        "oracle", MethodOutput((("no", "no"),), ("q ?",), ((0.1, 0.2),)), one_class, n_resamples=5
    )
    assert single.extras["calibration"]["auroc"] is None  # undefined with one class, not NaN
    json.dumps(single.extras, allow_nan=False)


def test_plots_are_optional(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog) -> None:
    report = EvalReport(tuple(_result(m, s) for m, s in SCORES.items()))
    pytest.importorskip("matplotlib")
    assert plot_scores(report, tmp_path / "a.png").stat().st_size > 0
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'lens-oracle\[plots\]'"):
        plot_scores(report, tmp_path / "b.png")
    with pytest.raises(EvalError):
        plot_scores(report, tmp_path / "b.png")
    with caplog.at_level(logging.WARNING):
        written = report.save(tmp_path / "out")
    assert [p.name for p in written] == [
        "results.json",
        "results.md",
    ] and "lens-oracle[plots]" in caplog.text
    assert issubclass(PlotsUnavailableError, ImportError)


# ---------------------------------------------------------------- CLI


def test_cli_parser_and_user_errors(tmp_path: Path, caplog) -> None:
    args = build_parser().parse_args(
        [
            "--oracle",
            "o",
            "--tasks",
            "t.json",
            "--out",
            "x",
            "--methods",
            "oracle,logit_lens",
            "--sweep-layers",
            "1,2",
        ]
    )
    assert (
        args.methods == ["oracle", "logit_lens"] and args.sweep_layers == [1, 2] and args.seed == 0
    )
    with pytest.raises(SystemExit):
        build_parser().parse_args(
            ["--oracle", "o", "--tasks", "t", "--out", "x", "--methods", "oracle,magic"]
        )
    with caplog.at_level(logging.ERROR):
        code = eval_main(
            [
                "--oracle",
                str(tmp_path),
                "--tasks",
                str(tmp_path / "none.json"),
                "--out",
                str(tmp_path),
            ]
        )
    assert code == 2
    assert "does not exist" in caplog.text
    assert check_methods(["oracle", "oracle", "black_box"]) == ("oracle", "black_box")
    with pytest.raises(EvalError, match="unknown methods"):
        check_methods(["oracle", "sae"])
