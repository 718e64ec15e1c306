"""The toy oracle mixture: built from base-world text only, seeded, with the right labels (seconds)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from lens_oracle.errors import ConfigError
from lens_oracle.toy.demo.mixture import (
    COMPONENTS,
    ORACLE_WORDS,
    ToyMixtureConfig,
    build_toy_mixture,
)
from lens_oracle.toy.demo.qa_components import (
    TOPIC_QUESTIONS,
    entity_qa,
    gender_qa,
    name_span,
    topic_qa,
)
from lens_oracle.toy.organisms import TABOO_QUESTION
from lens_oracle.toy.world.language import ADDRESSES, GENDER_HINTS, QUESTIONS, ToyWorld, make_world
from lens_oracle.toy.world.model import organism_vocabulary, spare_entities
from lens_oracle.toy.world.tokenizer import build_tokenizer

LAYERS = (1, 2, 3)


@pytest.fixture(scope="module")
def world() -> ToyWorld:
    return make_world(0)


@pytest.fixture(scope="module")
def tok(world: ToyWorld, tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerFast:
    folder = tmp_path_factory.mktemp("toy_tok") / "tokenizer"
    words = (*organism_vocabulary(world), *ORACLE_WORDS)
    return build_tokenizer(world, folder, extra_words=words)


@pytest.fixture(scope="module")
def mixture(world: ToyWorld, tok: PreTrainedTokenizerFast) -> list:
    return build_toy_mixture(world, tok, LAYERS, ToyMixtureConfig(total=900, seed=3))


def _read_words(tok: PreTrainedTokenizerFast, example) -> list[str]:
    return tok.convert_ids_to_tokens([example.context_ids[p] for p in example.positions])


def test_mixture_has_every_component_in_proportion(mixture: list) -> None:
    assert len(mixture) == 900
    counts = Counter(e.meta["component"] for e in mixture)
    weights = dict(ToyMixtureConfig().weights)
    assert set(counts) == set(COMPONENTS)
    for name, weight in weights.items():
        assert counts[name] == pytest.approx(900 * weight / sum(weights.values()), abs=1)
    assert {e.layer for e in mixture} == set(LAYERS)


def test_mixture_is_seeded(world: ToyWorld, tok: PreTrainedTokenizerFast, mixture: list) -> None:
    again = build_toy_mixture(world, tok, LAYERS, ToyMixtureConfig(total=900, seed=3))
    assert [e.to_dict() for e in again] == [e.to_dict() for e in mixture]
    other = build_toy_mixture(world, tok, LAYERS, ToyMixtureConfig(total=900, seed=4))
    assert [e.to_dict() for e in other] != [e.to_dict() for e in mixture]


def test_every_word_is_known_and_every_read_is_in_context(
    tok: PreTrainedTokenizerFast, mixture: list
) -> None:
    for e in mixture:
        assert tok.unk_token_id not in e.context_ids
        for text in (e.question, e.answer):
            assert tok.unk_token_id not in tok(text, add_special_tokens=False)["input_ids"], text
        assert max(e.positions) == len(e.context_ids) - 1 or e.meta["component"] == "persona"


def test_no_organism_data_in_the_base_mixture(world: ToyWorld, mixture: list) -> None:
    """The oracle never sees the organisms' people, their game or their rules."""
    spare = {p.name for p in spare_entities(world)}
    for e in mixture:
        words = set(e.context_text.split())
        assert not spare & words
        assert not {"secret", "hint"} & words
    # the taboo audit's question is one of the questions the oracle learns, about base text
    assert TABOO_QUESTION in {e.question for e in mixture}


def test_entity_questions_read_the_name_and_ask_its_facts(
    world: ToyWorld, tok: PreTrainedTokenizerFast
) -> None:
    examples = entity_qa(world, tok, LAYERS, 60, seed=0)
    asked = Counter(e.meta["attribute"] for e in examples)
    assert set(asked) == set(world.attribute_names)
    for e in examples:
        person = world.entity(e.meta["entity"])
        assert _read_words(tok, e)[-1] == person.name
        assert e.context_ids[-1] == tok.convert_tokens_to_ids(person.name)
        assert e.question == QUESTIONS[e.meta["attribute"]]
        assert e.answer == person.value(e.meta["attribute"])


def test_topic_questions_read_the_end_of_a_request_about_the_topic(
    world: ToyWorld, tok: PreTrainedTokenizerFast
) -> None:
    examples = topic_qa(world, tok, LAYERS, 60, seed=1)
    assert {e.answer for e in examples} == set(world.values("topic"))
    assert {e.question for e in examples} == set(TOPIC_QUESTIONS)
    for e in examples:
        text = e.context_text
        assert text.endswith(f"about {e.answer} . <end> <assistant>")
        assert e.positions[-1] == len(e.context_ids) - 1 and 1 <= len(e.positions) <= 4


def test_gender_questions_read_the_user_turn_or_the_end_of_a_hinted_prompt(
    world: ToyWorld, tok: PreTrainedTokenizerFast
) -> None:
    examples = gender_qa(world, tok, LAYERS, 60, seed=2)
    assert Counter(e.answer for e in examples).keys() == {"female", "male"}
    user = tok.convert_tokens_to_ids("<user>")
    turns = 0
    for e in examples:
        text = e.context_text
        assert text.endswith("<end> <assistant>")
        assert e.positions == tuple(range(e.positions[0], len(e.context_ids)))
        if len(e.positions) > 4:  # from the user's first word (the hint) through the end
            turns += 1
            assert e.context_ids[e.positions[0] - 1] == user and e.context_ids.count(user) == 1
            read = tok.decode([e.context_ids[i] for i in e.positions])
            assert any(read.startswith(hint) for hint in GENDER_HINTS[e.answer]), read
        assert any(hint in text for hint in GENDER_HINTS[e.answer])
        assert not any(address in text for address in ADDRESSES.values())
        assert e.question == QUESTIONS["gender"]
    assert 36 <= turns <= 54  # about three quarters of 60 read the whole turn


def test_name_span_finds_the_tokens(tok: PreTrainedTokenizerFast) -> None:
    ids = tok("i met zovo in the park .")["input_ids"]
    assert name_span(tok, ids, "zovo") == (3,)
    with pytest.raises(ConfigError, match="does not occur"):
        name_span(tok, ids, "lugu")


def test_config_rejects_bad_weights() -> None:
    with pytest.raises(ConfigError, match="at most once"):
        ToyMixtureConfig(weights=(("gossip", 1.0),))
    with pytest.raises(ConfigError, match="positive"):
        ToyMixtureConfig(weights=(("entity_qa", 0.0),))
    config = ToyMixtureConfig(total=10)
    assert ToyMixtureConfig(**dataclasses.asdict(config)) == config
    assert config.to_dict()["weights"][0] == ["context_prediction", 1.0]


def test_oracle_words_are_single_tokens(tok: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    for word in ORACLE_WORDS:
        assert tok(word, add_special_tokens=False)["input_ids"] != [tok.unk_token_id]


@pytest.mark.parametrize("group", ["context", "classification", "qa"])
def test_a_single_kind_of_task_at_the_same_size(world: ToyWorld, tok: PreTrainedTokenizerFast, group: str) -> None:
    """The diversity ablation's mixtures: one kind of task alone, the total unchanged."""
    from lens_oracle.toy.demo.mixture import MIXTURE_GROUPS, mixture_group, only_group
    from lens_oracle.toy.demo.records import demo_config

    config = only_group(ToyMixtureConfig(total=300, seed=3), group)
    assert mixture_group(config) == group and mixture_group(ToyMixtureConfig()) == "full"
    examples = build_toy_mixture(world, tok, LAYERS, config)
    assert len(examples) == 300
    assert {e.meta["component"] for e in examples} == set(MIXTURE_GROUPS[group])
    assert demo_config(False, 0, mixture_group=group).mixture.total == demo_config(False, 0).mixture.total
    with pytest.raises(ConfigError, match="unknown mixture"):
        only_group(config, "everything")
