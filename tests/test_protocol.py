"""The generative QA protocol: per-kind and pooled token-F1 / ROUGE-L / chrF from a report, on
hand-computed cases, and its toy-world tasks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lens_oracle.errors import EvalError
from lens_oracle.evals.metrics import Score, chrf, rouge_l
from lens_oracle.evals.protocol import OVERALL, protocol_table, qa_task
from lens_oracle.evals.report import EvalReport
from lens_oracle.evals.results import EvalResult
from lens_oracle.evals.taskfile import tasks_from_json, tasks_to_json
from lens_oracle.evals.tasks import EvalItem
from lens_oracle.toy.demo.qa_protocol import GIST_QUESTIONS, toy_qa_tasks
from lens_oracle.toy.world.language import make_world


def _result(task: str, method: str, predictions: list[list[str]]) -> EvalResult:
    n = len(predictions[0])
    return EvalResult(task, method, "oracle", 1, "last_token", Score(0.0, 0.0, 0.0, n),
                      tuple(f"q{k}" for k in range(len(predictions))), tuple(tuple(p) for p in predictions),
                      (0.0,) * n)


def test_the_table_scores_each_kind_and_pools_them() -> None:
    cls = qa_task("qa/cls", "classification", [EvalItem("t1", ("music",)), EvalItem("t2", ("sport",))], ["what topic ?"])
    gist = qa_task("qa/gist", "gist", [EvalItem("t3", ("a cat sat down",))], ["gist ?", "summary ?"])
    report = EvalReport((
        _result("qa/cls", "oracle", [["music", "the sport news"]]),
        _result("qa/gist", "oracle", [["the cat sat"], ["cat sat down"]]),  # two paraphrases, one item
    ))
    table = protocol_table(report, [cls, gist], seed=0, n_resamples=50)
    scores = table.scores["oracle"]
    assert table.n_items == {"classification": 2, "gist": 1, OVERALL: 3}
    # SQuAD token-F1: "the sport news" vs "sport" -> P 1/2, R 1 -> 2/3 (articles dropped)
    assert scores["classification"]["token_f1"].mean == pytest.approx((1.0 + 2 / 3) / 2)
    # gist: "the cat sat" vs "a cat sat down" -> P 1, R 2/3 -> 0.8; the exact paraphrase -> 1.0
    assert scores["gist"]["token_f1"].mean == pytest.approx((0.8 + 1.0) / 2)
    assert scores[OVERALL]["token_f1"].mean == pytest.approx((1.0 + 2 / 3 + 0.9) / 3)
    assert scores["gist"]["rouge_l"].mean == pytest.approx(
        (rouge_l("the cat sat", ["a cat sat down"]) + 1.0) / 2)
    assert scores["classification"]["chrf"].mean == pytest.approx(
        (1.0 + chrf("the sport news", ["sport"])) / 2)
    text = table.to_markdown("token_f1")
    assert "| oracle | 83.3 [" in text and "classification (n=2)" in text and "overall (n=3)" in text
    assert json.loads(json.dumps(table.to_dict()))["n_items"]["overall"] == 3
    with pytest.raises(EvalError, match="metric 'bleu' is unknown"):
        table.to_markdown("bleu")
    with pytest.raises(EvalError, match="QA kind 'summary' is unknown"):
        qa_task("x", "summary", [EvalItem("t", ("a",))], ["q ?"])


def test_protocol_tasks_round_trip_through_a_task_file() -> None:
    task = qa_task("qa/facts", "fact_retrieval", [EvalItem("zorin lives in oslo .", ("oslo",))], ["where ?"])
    assert (task.kind, task.scorer, task.max_new_tokens) == ("fact_retrieval", "token_f1", 128)
    assert tasks_from_json(tasks_to_json([task])) == (task,)
    with pytest.raises(EvalError, match="kind must be text"):
        tasks_from_json(tasks_to_json([task]).replace('"fact_retrieval"', "3"))


def test_toy_protocol_tasks_hide_labels_and_use_toy_words(tokenizer_dir: Path) -> None:
    world = make_world(0)
    tasks = toy_qa_tasks(world, n_items=12, seed=1)
    assert [(t.name, t.kind, len(t.items)) for t in tasks] == [
        ("qa/classification", "classification", 12), ("qa/fact_retrieval", "fact_retrieval", 12), ("qa/gist", "gist", 12)]
    for item in tasks[0].items:
        assert item.references[0] not in str(item.context).split()
    for item in tasks[1].items:  # the fact's value is in the text: retrieval, not inference
        assert item.references[0] in str(item.context).split()
    assert all(item.questions == GIST_QUESTIONS for item in tasks[2].items)
    assert toy_qa_tasks(world, n_items=12, seed=1) == tasks and toy_qa_tasks(world, n_items=12, seed=2) != tasks
