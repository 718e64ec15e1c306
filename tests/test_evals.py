"""Evaluation end to end on the tiny colour task: the oracle against its controls.

Two oracles are trained once per module: one on the real task (the activation at the colour
token tells the colour) and one whose training vectors were shuffled across examples, so its
input carries no information about the answer. The controls must separate the two.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from pathlib import Path

import pytest
import torch
from helpers import COLOURS, build_llama, build_tokenizer, colour_task

from lens_oracle.activations import AllTokens, Indices, LastToken, read_vectors
from lens_oracle.config import AdapterConfig, InjectionConfig, TrainConfig
from lens_oracle.data.example import OracleExample
from lens_oracle.errors import EvalError
from lens_oracle.evals.cli import eval_main
from lens_oracle.evals.controls import oracle_p_yes
from lens_oracle.evals.methods import CONTROLS, METHODS, MethodContext
from lens_oracle.evals.metrics import auroc, expected_calibration_error
from lens_oracle.evals.report import EvalReport
from lens_oracle.evals.runner import run_method, run_pooled, run_task, run_tasks, sweep
from lens_oracle.evals.targets import Target, prepare, resolve_target
from lens_oracle.evals.taskfile import save_tasks
from lens_oracle.evals.tasks import EvalItem, EvalTask, TargetSpec
from lens_oracle.models import load_model
from lens_oracle.oracle import ActivationOracle
from lens_oracle.runner import train_oracle

QUESTIONS = ("what colour is here ?", "what is the colour ?")
READ_LAYER = 0


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models are overhead-bound: one thread is as fast, and immune to a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory):
    """The tests' tiny tokenizer plus the words yes / no (for yes/no probabilities)."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("eval_tok")
    base = build_tokenizer(folder / "base")
    base.add_tokens(["yes", "no"])
    base.save_pretrained(str(folder / "tok"))
    return AutoTokenizer.from_pretrained(str(folder / "tok"), local_files_only=True)


def _new_oracle(tok) -> ActivationOracle:
    return ActivationOracle.create(
        build_llama(tok),
        tok,
        adapter=AdapterConfig(rank=8, alpha=16, dropout=0.0),
        injection=InjectionConfig(layer=1),
    )


def _examples(data, answers=None) -> list[OracleExample]:
    answers = answers or [c for _, _, c in data]
    return [
        OracleExample(tuple(ids), (p,), READ_LAYER, QUESTIONS[i % 2], a)
        for i, ((ids, p, _), a) in enumerate(zip(data, answers, strict=True))
    ]


def _items(data) -> tuple[EvalItem, ...]:
    return tuple(EvalItem(tuple(ids), (c,), positions=Indices((p,))) for ids, p, c in data)


@pytest.fixture(scope="module")
def oracle(tok) -> ActivationOracle:
    torch.manual_seed(0)
    oracle = _new_oracle(tok)
    train_oracle(
        oracle,
        _examples(colour_task(tok, 400, 0)),
        TrainConfig(learning_rate=3e-3, epochs=3, progress=False),
    )
    return oracle


@pytest.fixture(scope="module")
def blind_oracle(tok) -> ActivationOracle:
    """Trained on vectors shuffled across examples: it can only learn the answers' prior."""
    torch.manual_seed(0)
    data = colour_task(tok, 240, 0)
    shuffled = [c for _, _, c in data]
    random.Random(0).shuffle(shuffled)
    oracle = _new_oracle(tok)
    train_oracle(
        oracle, _examples(data, shuffled), TrainConfig(learning_rate=2e-3, epochs=2, progress=False)
    )
    return oracle


@pytest.fixture(scope="module")
def task(tok) -> EvalTask:
    return EvalTask(
        name="colour",
        items=_items(colour_task(tok, 48, 1)),
        questions=QUESTIONS,
        layer=READ_LAYER,
        candidates=tuple(COLOURS),
        max_new_tokens=3,
        train_items=_items(colour_task(tok, 160, 2)),
    )


@pytest.fixture(scope="module")
def report(oracle, task) -> EvalReport:
    return run_task(oracle, task, seed=0, n_resamples=200)


def _scores(report: EvalReport) -> dict[str, float]:
    return {r.method: round(r.score.mean, 3) for r in report.results}


def test_trained_oracle_beats_every_control(report: EvalReport) -> None:
    scores = _scores(report)
    assert set(scores) == set(METHODS)
    margin = report.margins()[0]
    assert margin.best_control in CONTROLS
    for control in CONTROLS:
        assert scores["oracle"] > scores[control] + 0.2, (control, scores)
    assert margin.margin == pytest.approx(
        scores["oracle"] - max(scores[c] for c in CONTROLS), abs=1e-3
    )
    oracle = report.get("colour", "oracle")
    best = report.get("colour", margin.best_control)
    assert oracle.score.low > best.score.high  # the CIs do not overlap


def test_linear_probe_is_a_reference_not_a_control(report: EvalReport) -> None:
    # The colour is decodable from the residual by a supervised readout trained on labelled
    # activations: the probe does about as well as the oracle, far above every control. That is
    # why it is a reference, reported as margin_over_probe, and not a control.
    probe = report.get("colour", "linear_probe")
    assert probe.kind == "reference" and "linear_probe" not in CONTROLS
    controls = [report.get("colour", c).score.mean for c in CONTROLS]
    assert probe.score.mean > max(controls) + 0.2
    assert probe.extras["probe_train_accuracy"] >= 0.9
    margin = report.margins()[0]
    oracle = report.get("colour", "oracle").score.mean
    assert margin.margin_over_probe == pytest.approx(oracle - probe.score.mean)
    assert margin.best_control_score == pytest.approx(max(controls))


def test_controls_catch_an_oracle_without_information(blind_oracle, task) -> None:
    methods = [m for m in METHODS if m != "linear_probe"]
    report = run_task(blind_oracle, task, methods=methods, seed=0, n_resamples=200)
    scores = _scores(report)
    margin = report.margins()[0]
    assert margin.margin < 0.1, scores
    assert report.get("colour", "oracle").score.low <= margin.best_control_score
    # it still answers with colour words: it learned the format, just not the content
    answers = report.get("colour", "oracle").predictions[0]
    assert sum(a in COLOURS for a in answers) >= 0.8 * len(answers)


def test_same_seed_gives_identical_json(oracle, task) -> None:
    small = EvalTask(
        name="small",
        items=task.items[:12],
        questions=QUESTIONS[:1],
        layer=READ_LAYER,
        candidates=tuple(COLOURS),
        max_new_tokens=3,
        train_items=task.train_items[:40],
    )
    first = run_task(oracle, small, seed=3, n_resamples=100).to_json()
    second = run_task(oracle, small, seed=3, n_resamples=100).to_json()
    assert first == second
    assert EvalReport.from_json(first).to_json() == first
    assert {r["method"] for r in json.loads(first)["results"]} == set(METHODS)


def test_report_round_trip_and_markdown(report: EvalReport) -> None:
    again = EvalReport.from_json(report.to_json())
    assert again == report
    md = report.to_markdown()
    for method in METHODS:
        assert f"| {method} |" in md
    assert "margin over the best control" in md


def test_yes_no_probabilities_and_calibration(oracle, tok) -> None:
    data = colour_task(tok, 16, 3)
    items = []
    for i, (ids, p, colour) in enumerate(data):
        asked = colour if i % 2 == 0 else COLOURS[(COLOURS.index(colour) + 1) % 4]
        items.append(
            EvalItem(
                tuple(ids),
                ("yes" if i % 2 == 0 else "no",),
                Indices((p,)),
                (f"is the colour {asked} ?",),
            )
        )
    yn = EvalTask(
        name="yes-no", items=tuple(items), layer=READ_LAYER, scorer="yes_no", max_new_tokens=2
    )
    report = run_task(oracle, yn, methods=["oracle"], n_resamples=50)
    result = report.get("yes-no", "oracle")
    cal = result.extras["calibration"]
    p_yes = cal["p_yes"][0]
    labels = [i % 2 == 0 for i in range(16)]
    assert all(0.0 < p < 1.0 for p in p_yes)
    assert cal["ece"] == pytest.approx(expected_calibration_error(p_yes, labels))
    assert cal["auroc"] == pytest.approx(auroc(p_yes, labels))
    # reference: softmax over the yes/no logits of one right-padded item, by hand
    with oracle.adapter_disabled() as base:
        vec = read_vectors(base, [data[5][0]], [[data[5][1]]], [READ_LAYER])
    with torch.no_grad():
        logits = oracle.logits(oracle.encode(vec, [READ_LAYER], [items[5].questions[0]]))[0, -1]
    yes, no = (tok.convert_tokens_to_ids(w) for w in ("yes", "no"))
    manual = torch.softmax(logits[[yes, no]].float(), dim=0)[0]
    assert p_yes[5] == pytest.approx(float(manual), abs=1e-5)
    assert oracle_p_yes(oracle, vec, READ_LAYER, [items[5].questions[0]]) == pytest.approx(
        [p_yes[5]], abs=1e-6
    )
    assert f"| ↳ oracle P(yes) | calibration | ECE {cal['ece']:.3f} |" in report.to_markdown()


def test_logit_lens_matches_the_model_at_the_last_layer(oracle, tok) -> None:
    data = colour_task(tok, 6, 4)
    last = oracle.config.n_layers - 1
    task = EvalTask(
        name="lens", items=_items(data), questions=QUESTIONS[:1], layer=last, positions=LastToken()
    )
    task = task.variant(positions=LastToken())
    prepared = prepare(task, Target(oracle.model))
    out = run_method("logit_lens", MethodContext(oracle, Target(oracle.model), prepared))
    with oracle.adapter_disabled():
        for (ids, _, _), predicted in zip(data, out.predictions[0], strict=True):
            logits = oracle.model.logits(torch.tensor([ids]))[0, -1]
            assert predicted == tok.decode([int(logits.argmax())]).strip()


def test_patchscope_reads_each_vector_through_the_identity_prompt(oracle, tok, task) -> None:
    """The eval method: read vectors patched into the identity prompt of the target (adapter off),
    log-probabilities averaged over positions, best candidate; unavailable where nothing can be patched."""
    from dataclasses import replace

    from lens_oracle.evals.baselines import candidate_token_ids
    from lens_oracle.evals.methods import unavailable_reason
    from lens_oracle.evals.patchscope import patched_logprobs

    small = replace(task, items=tuple(replace(i, positions=Indices((1, i.positions.indices[0]))) for i in task.items[:6]))
    prepared = prepare(small, Target(oracle.model))
    out = run_method("patchscope", MethodContext(oracle, Target(oracle.model), prepared))
    ids = [candidate_token_ids(tok, c) for c in small.candidates]
    with oracle.adapter_disabled() as base:
        for vectors, predicted in zip(prepared.vectors, out.predictions[0], strict=True):
            mean = patched_logprobs(base, vectors, READ_LAYER).mean(dim=0)
            best = max(range(len(ids)), key=lambda k: float(mean[ids[k]].max()))
            assert predicted == small.candidates[best]
    assert unavailable_reason("patchscope", replace(small, extra_layers=(1,))) == (
        "a multi-layer query has no single layer to patch its vectors into"
    )
    assert "not a residual state" in unavailable_reason("patchscope", replace(small, target=TargetSpec("a", "b")))


def test_sweep_by_layer_and_positions(oracle, task, tmp_path: Path) -> None:
    small = EvalTask(
        name="sweep",
        items=task.items[:8],
        questions=QUESTIONS[:1],
        layer=READ_LAYER,
        candidates=tuple(COLOURS),
        max_new_tokens=3,
    )
    report = sweep(
        oracle,
        small,
        layers=[0, 1],
        positions=[LastToken(), AllTokens()],
        methods=["oracle", "ablated_zero"],
        n_resamples=50,
    )
    conditions = report.conditions()
    assert [(c[1], c[2]) for c in conditions] == [
        (0, "per_item"),
        (1, "per_item"),
        (READ_LAYER, "last_token"),
        (READ_LAYER, "all_tokens"),
    ]
    table = report.sweep_table("sweep", by="layer")
    assert table.splitlines()[0] == "| layer (positions per_item) | oracle | ablated_zero |"
    assert [line.split(" | ")[0] for line in table.splitlines()[2:]] == ["| 0", "| 1"]
    by_positions = report.sweep_table("sweep", by="positions")
    assert by_positions.splitlines()[0].startswith(f"| positions (layer {READ_LAYER}) |")
    assert [line.split(" | ")[0] for line in by_positions.splitlines()[2:]] == [
        "| per_item",
        "| last_token",
        "| all_tokens",
    ]
    written = report.save(tmp_path)
    names = {p.name for p in written}
    assert {
        "results.json",
        "results.md",
        "sweep_sweep_layer.png",
        "sweep_sweep_positions.png",
    } <= names
    assert all(p.stat().st_size > 0 for p in written)


# ---------------------------------------------------------------- difference mode


@pytest.fixture(scope="module")
def model_folders(tok, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny Llamas of one shape (different seeds) saved with the tokenizer."""
    root = tmp_path_factory.mktemp("diff_models")
    for name, seed in (("base", 0), ("finetuned", 1)):
        build_llama(tok, seed=seed).save_pretrained(str(root / name))
        tok.save_pretrained(str(root / name))
    return root / "finetuned", root / "base"


def test_difference_mode_vectors_are_finetuned_minus_base(oracle, tok, task, model_folders) -> None:
    finetuned, base = (load_model(str(p), trainable=False) for p in model_folders)
    target = Target(finetuned, base)
    items = task.items[:6]
    prepared = prepare(task, target, items=items)
    contexts = [list(i.context) for i in items]
    positions = [list(i.positions.indices) for i in items]
    want_ft = read_vectors(finetuned, contexts, positions, [READ_LAYER] * 6)
    want_base = read_vectors(base, contexts, positions, [READ_LAYER] * 6)
    for got, ft, b in zip(prepared.vectors, want_ft, want_base, strict=True):
        torch.testing.assert_close(got, ft - b)
        assert float((ft - b).norm()) > 0


def test_difference_mode_from_a_task_file(oracle, task, model_folders, tmp_path: Path) -> None:
    finetuned, base = model_folders
    diff = EvalTask(
        name="diff",
        items=task.items[:6],
        questions=QUESTIONS[:1],
        layer=READ_LAYER,
        candidates=tuple(COLOURS),
        max_new_tokens=3,
        target=TargetSpec(model=str(finetuned), base=str(base)),
    )
    cache: dict = {}
    target = resolve_target(oracle, diff.target, cache=cache)
    assert target.base is not None and set(cache) == {str(finetuned), str(base)}
    report = run_task(
        oracle, diff, methods=["oracle", "logit_lens", "black_box"], cache=cache, n_resamples=50
    )
    assert [r.method for r in report.results] == ["oracle", "logit_lens", "black_box"]
    assert len(cache) == 2  # nothing loaded twice


# ---------------------------------------------------------------- CLI


def test_cli_writes_results(oracle, tok, task, model_folders, tmp_path: Path, caplog) -> None:
    saved = oracle.save(tmp_path / "oracle")
    _, base = model_folders  # the oracle's base weights (seed 0), saved with the tokenizer
    tasks_file = save_tasks(
        [
            EvalTask(
                name="cli",
                items=task.items[:6],
                questions=QUESTIONS[:1],
                layer=READ_LAYER,
                candidates=tuple(COLOURS),
                max_new_tokens=3,
            )
        ],
        tmp_path / "tasks.json",
    )
    out = tmp_path / "out"
    code = eval_main(
        [
            "--oracle",
            str(saved),
            "--tasks",
            str(tasks_file),
            "--out",
            str(out),
            "--source",
            str(base),
            "--methods",
            "oracle,ablated_zero,logit_lens",
            "--seed",
            "1",
            "--resamples",
            "50",
        ]
    )
    assert code == 0
    data = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in data["results"]] == ["oracle", "ablated_zero", "logit_lens"]
    assert data["seed"] == 1 and "| oracle |" in (out / "results.md").read_text()
    assert list(out.glob("scores_cli_*.png"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"tasks": [{"name": "x"}]}')
    with caplog.at_level(logging.ERROR):
        code = eval_main(["--oracle", str(saved), "--tasks", str(bad), "--out", str(out)])
    assert code == 2 and "missing ['items']" in caplog.text


def test_sampled_answers_are_scored_as_the_task_says(oracle, task) -> None:
    """samples=N: the oracle family samples (seeded), the black box stays greedy; 'any' >= 'mean'."""
    from dataclasses import replace

    small = replace(task, items=task.items[:16], questions=QUESTIONS[:1], samples=4)
    by_rule = {
        rule: run_task(oracle, replace(small, sample_score=rule), methods=["oracle", "black_box"],
                       seed=5, n_resamples=50)
        for rule in ("any", "majority", "mean")
    }
    results = {rule: {r.method: r for r in rep.results} for rule, rep in by_rule.items()}
    assert results["mean"]["oracle"].extras["answers"] == (
        "4 samples per item (temperature 0.7, top-p 0.9), scored by mean"
    )
    assert results["mean"]["black_box"].extras["answers"] == "greedy (this method does not sample)"
    assert results["any"]["oracle"].score.mean >= results["mean"]["oracle"].score.mean
    assert results["mean"]["black_box"].score.mean == results["any"]["black_box"].score.mean
    again = run_task(oracle, replace(small, sample_score="mean"), methods=["oracle"], seed=5, n_resamples=50)
    assert again.results[0].to_dict() == results["mean"]["oracle"].to_dict()
    assert 0.0 < results["mean"]["oracle"].score.mean <= 1.0


def test_sample_scores_and_the_most_common_answer() -> None:
    from lens_oracle.evals.controls import most_common
    from lens_oracle.evals.runner import sample_score

    answers = ["Red.", "blue", "red", "green"]
    right = {"red": 1.0}
    score = lambda a: right.get(a.strip(".").lower(), 0.0)  # noqa: E731 - a tiny scorer
    assert most_common(answers) == "Red." and most_common(["a b", "c", "c", "A B"]) == "a b"
    assert sample_score("any", answers, score) == 1.0
    assert sample_score("majority", answers, score) == 1.0
    assert sample_score("mean", answers, score) == 0.5
    assert sample_score("majority", ["blue", "blue", "red"], score) == 0.0


def test_task_files_carry_sampling_settings() -> None:
    from lens_oracle.evals.taskfile import tasks_from_json, tasks_to_json

    base = {"name": "t", "items": [{"context": "w1 red", "references": ["red"]}], "questions": ["what ?"]}
    (task,) = tasks_from_json(json.dumps({"tasks": [{**base, "samples": 10, "sample_score": "any"}]}))
    assert (task.samples, task.sample_score) == (10, "any")
    assert tasks_from_json(tasks_to_json([task])) == (task,)
    assert "samples" not in tasks_to_json(tasks_from_json(json.dumps({"tasks": [base]})))
    for bad in ({"samples": -1}, {"samples": True}, {"sample_score": "best"}):
        with pytest.raises(EvalError):
            tasks_from_json(json.dumps({"tasks": [{**base, **bad}]}))


def test_each_position_asked_alone_is_scored_over_its_positions(oracle, task) -> None:
    """granularity='each' (AO's token-level probe): one query per read position, the item's
    per-position answers scored by sample_score; with one position it equals the joint reading."""
    from dataclasses import replace

    from lens_oracle import capture
    from lens_oracle.evals.scoring import score_answer

    small = replace(task, items=task.items[:12], questions=QUESTIONS[:1])
    joint = run_task(oracle, small, methods=["oracle"], seed=0, n_resamples=50).results[0]
    each = run_task(oracle, replace(small, granularity="each"), methods=["oracle"], seed=0, n_resamples=50).results[0]
    assert each.item_scores == joint.item_scores and each.predictions == joint.predictions
    assert each.positions == "each:per_item" and joint.positions == "per_item"

    two = replace(small, items=tuple(replace(i, positions=Indices((i.positions.indices[0] - 1, i.positions.indices[0])))
                                     for i in small.items), granularity="each")
    result = run_task(oracle, two, methods=["oracle", "logit_lens"], seed=0, n_resamples=50)
    by_method = {r.method: r for r in result.results}
    assert by_method["oracle"].extras["answers"] == (
        "one greedy answer per read position, each position asked alone, scored by mean"
    )
    assert by_method["logit_lens"].extras["answers"].startswith("greedy, every position read at once")
    with oracle.adapter_disabled() as base:
        read = [capture(base, [list(i.context)], READ_LAYER, positions=i.positions).example(0) for i in two.items]
    singles = [v[k : k + 1] for v in read for k in range(2)]
    answers = oracle.ask_batch(singles, [QUESTIONS[0]] * len(singles), layers=[READ_LAYER] * len(singles), max_new_tokens=3)
    expected = [
        (score_answer("exact", answers[2 * n], item.references) + score_answer("exact", answers[2 * n + 1], item.references)) / 2
        for n, item in enumerate(two.items)
    ]
    assert list(by_method["oracle"].item_scores) == pytest.approx(expected)
    with pytest.raises(EvalError, match="granularity 'each' asks one position at a time"):
        replace(two, extra_layers=(1,))
    from lens_oracle.evals.taskfile import tasks_from_json, tasks_to_json

    assert tasks_from_json(tasks_to_json([two])) == (two,)
    with pytest.raises(EvalError, match="granularity must be one of"):  # a task file's typo
        tasks_from_json(tasks_to_json([two]).replace('"each"', '"tokens"'))


# ---------------------------------------------------------------- pooled tasks (one target per answer)


def _one_label_tasks(task: EvalTask, model_folders: tuple[Path, Path]) -> list[EvalTask]:
    """Two tasks, each reading its own folder and holding as many items of one colour only."""
    colours = sorted({i.label for i in task.items})[:2]
    n = min(sum(i.label == c for i in task.items) for c in colours)
    return [
        dataclasses.replace(
            task, name=f"only-{c}", items=tuple(i for i in task.items if i.label == c)[:n],
            train_items=tuple(i for i in task.train_items if i.label in colours), target=TargetSpec(model=str(folder)),
        )
        for c, folder in zip(colours, model_folders, strict=True)
    ]


def test_pooled_items_keep_their_own_targets_and_the_shuffle_crosses_them(oracle, task, model_folders) -> None:
    tasks = _one_label_tasks(task, model_folders)
    methods = ("oracle", "ablated_zero", "ablated_shuffle", "linear_probe")
    pooled = run_pooled(oracle, tasks, "both", methods=methods, seed=0, n_resamples=50)
    apart = run_tasks(oracle, tasks, methods=("oracle", "ablated_shuffle"), seed=0, n_resamples=50)
    want = [s for t in tasks for s in apart.get(t.name, "oracle").item_scores]
    assert list(pooled.get("both", "oracle").item_scores) == want  # each item read from its own folder
    assert len(want) == sum(len(t.items) for t in tasks) > 0
    # Within one task every item has the same answer: the shuffle cannot avoid it. Pooled, it can.
    assert all(apart.get(t.name, "ablated_shuffle").extras["shuffle_same_label_items"] == len(t.items) for t in tasks)
    assert pooled.get("both", "ablated_shuffle").extras["shuffle_same_label_items"] == 0
    assert {r.method for r in pooled.results} == set(methods)


def test_pooling_refuses_target_methods_and_tasks_read_differently(oracle, task, model_folders) -> None:
    tasks = _one_label_tasks(task, model_folders)
    with pytest.raises(EvalError, match="black_box"):
        run_pooled(oracle, tasks, "both", methods=("oracle", "black_box"))
    other = [tasks[0], dataclasses.replace(tasks[1], layer=READ_LAYER + 1)]
    with pytest.raises(EvalError, match="layer differ"):
        run_pooled(oracle, other, "both", methods=("oracle",))
    with pytest.raises(EvalError, match="no tasks"):
        run_pooled(oracle, [], "both")
