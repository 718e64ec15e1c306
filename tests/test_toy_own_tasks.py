"""The oracle on its own training tasks (``lens_oracle.toy.demo.own_tasks``): the tasks it builds,
and the check on the quick demo's oracle (the shared toy cache; reused after test_demo)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lens_oracle.errors import ConfigError
from lens_oracle.positions import Indices
from lens_oracle.toy.demo.mixture import ORACLE_WORDS
from lens_oracle.toy.demo.own_tasks import METHODS, markdown, own_tasks, run_check
from lens_oracle.toy.demo.qa_components import AUDITED_QA, TOPIC_QUESTIONS
from lens_oracle.toy.world.language import make_world
from lens_oracle.toy.world.model import organism_vocabulary
from lens_oracle.toy.world.tokenizer import build_tokenizer

WORLD = make_world(0)


@pytest.fixture(scope="module")
def toy_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    words = (*organism_vocabulary(WORLD), *ORACLE_WORDS)
    return build_tokenizer(WORLD, tmp_path_factory.mktemp("toy_tok"), extra_words=words)


def test_each_component_becomes_tasks_read_at_the_given_layer_with_probe_items(toy_tokenizer) -> None:
    tasks = own_tasks(WORLD, toy_tokenizer, layer=2, n=40, seed=0)
    assert list(tasks) == list(AUDITED_QA) == ["topic_qa", "entity_qa", "gender_qa"]
    assert [len(ts) for ts in tasks.values()] == [1, len(WORLD.attribute_names), 1]
    for component, ts in tasks.items():
        assert sum(len(t.items) for t in ts) == 40, component
        assert sum(len(t.train_items) for t in ts) > 0, component
        for task in ts:
            assert task.layer == 2 and task.candidates
            for item in task.items:
                assert isinstance(item.positions, Indices)
                assert item.references[0] in task.candidates
    topic = tasks["topic_qa"][0]
    assert {q for item in topic.items for q in item.questions} <= set(TOPIC_QUESTIONS)
    assert topic.candidates == tuple(WORLD.values("topic"))
    assert tasks["gender_qa"][0].candidates == ("female", "male")


def test_the_draws_differ_by_seed_and_from_the_probe_items(toy_tokenizer) -> None:
    a = own_tasks(WORLD, toy_tokenizer, layer=2, n=30, seed=0)["entity_qa"]
    b = own_tasks(WORLD, toy_tokenizer, layer=2, n=30, seed=1)["entity_qa"]
    pairs = lambda ts, field: [(i.context, i.references) for t in ts for i in getattr(t, field)]  # noqa: E731
    assert pairs(a, "items") != pairs(b, "items")
    assert pairs(a, "items") != pairs(a, "train_items")


def test_too_few_examples_is_our_error(toy_tokenizer) -> None:
    with pytest.raises(ConfigError, match="at least 2"):
        own_tasks(WORLD, toy_tokenizer, layer=2, n=1, seed=0)


def test_the_check_scores_every_component_and_method_on_the_quick_oracle(toy_cache: Path) -> None:
    scores = run_check(toy_cache, seed=0, quick=True, n=60)
    assert list(scores) == list(AUDITED_QA)
    for component, by_method in scores.items():
        assert list(by_method) == list(METHODS)
        for method, score in by_method.items():
            assert 0.0 <= score.low <= score.mean <= score.high <= 1.0, (component, method)
            assert score.n == 60, (component, method)
    # the probe reads the topic, which the question alone cannot give (chance 1/6)
    assert scores["topic_qa"]["linear_probe"].mean > scores["topic_qa"]["ablated_zero"].mean + 0.2
    table = markdown([(0, scores)], quick=True)
    assert "| 0 | topic_qa (taboo) |" in table and table.count("\n") == 4 + len(AUDITED_QA)
