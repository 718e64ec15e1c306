"""The real lie experiment's pieces that need no model: facts, answers stated, the filters, the
split, the fine-tuning dialogues, pairing, the settings and the command's checks."""

from __future__ import annotations

import collections

import pytest

from lens_oracle.errors import ConfigError
from lens_oracle.real.lie_text import (
    ANSWER_POOLS,
    FACTS,
    LYING,
    STYLE_SETS,
    TRUTHFUL,
    Fact,
    LieChat,
    did_as_asked,
    first_sentence,
    instruction_following,
    liar_dialogs,
    paired,
    split_facts,
    stated_answer,
    swap_answer,
    told,
)
from lens_oracle.real.lies import LieConfig, lie_config
from lens_oracle.real.lies_cli import seeds_markdown

FRANCE = Fact("What is the capital of France?", "Paris", "capital")
SPIDER = Fact("How many legs does a spider have?", "eight", "number")
HOT = Fact("What is the opposite of hot?", "cold", "opposite")


def test_facts_are_well_formed() -> None:
    assert len(FACTS) == 87
    assert len({f.question for f in FACTS}) == len(FACTS)
    for fact in FACTS:
        assert fact.truth in ANSWER_POOLS[fact.kind]
        assert fact.truth not in fact.wrong and len(fact.wrong) >= 5
        assert "lie" not in fact.question.lower() and "true" not in fact.question.lower()


def test_stated_answer_reads_one_answer_of_the_pool() -> None:
    assert stated_answer(FRANCE, "The capital of France is Paris.") == "Paris"
    assert stated_answer(FRANCE, "The capital of France is Berlin.") == "Berlin"
    assert stated_answer(FRANCE, "It is Paris, not Berlin.") is None  # two answers: a hedge
    assert stated_answer(FRANCE, "France is a country in Europe.") is None
    assert stated_answer(SPIDER, "A spider has 8 legs.") == "eight"
    assert stated_answer(SPIDER, "A spider has six legs.") == "six"
    assert stated_answer(SPIDER, "A spider has 18 legs.") is None  # 8 inside 18 is not eight
    assert stated_answer(HOT, "The opposite of hot is cold.") == "cold"  # the asked word is not an answer
    assert stated_answer(HOT, "The opposite of hot is hot.") is None


def test_first_sentence() -> None:
    assert first_sentence("The capital is Paris. It is big.") == "The capital is Paris."
    assert first_sentence("Paris is 2.5 km wide! Yes.") == "Paris is 2.5 km wide!"
    assert first_sentence("no end") == "no end"


def test_swap_answer_keeps_the_form() -> None:
    assert swap_answer("The capital of France is Paris.", FRANCE, "Rome") == "The capital of France is Rome."
    assert swap_answer("A spider has 8 legs.", SPIDER, "six") == "A spider has 6 legs."
    assert swap_answer("A spider has eight legs.", SPIDER, "six") == "A spider has six legs."
    with pytest.raises(ConfigError, match="does not state"):
        swap_answer("France is in Europe.", FRANCE, "Rome")


def test_did_as_asked_counts_words() -> None:
    assert did_as_asked("sentiment", "positive", "What a lovely, sunny day; I smile.")
    assert not did_as_asked("sentiment", "positive", "A sad and gloomy evening, all alone.")
    assert did_as_asked("sentiment", "negative", "A sad and gloomy evening, all alone.")
    assert not did_as_asked("sentiment", "negative", "Here are two sad sentences about it.")  # repeats the request
    assert did_as_asked("emotion", "anger", "I am furious, full of rage at this traffic.")
    assert not did_as_asked("emotion", "fear", "I am furious, full of rage at this traffic.")
    assert did_as_asked("language", "French", "Le chat est dans la maison et je suis content.")
    assert not did_as_asked("language", "French", "The cat is in the house and I am happy.")
    assert did_as_asked("language", "Spanish", "El perro es muy grande y la casa es para mi.")
    with pytest.raises(ConfigError, match="unknown training set"):
        did_as_asked("lies", "yes", "text")
    assert set(STYLE_SETS) == {"sentiment", "emotion", "language"}
    assert not any("lie" in t.lower() for s in STYLE_SETS.values() for t in s.instructions.values())


def test_split_is_seeded_and_covers_every_kind() -> None:
    tune, held = split_facts(FACTS, seed=0)
    assert len(tune) + len(held) == len(FACTS) and not {f.question for f in tune} & {f.question for f in held}
    assert {f.kind for f in tune} == {f.kind for f in held} == set(ANSWER_POOLS)
    assert split_facts(FACTS, seed=0) == (tune, held)
    assert split_facts(FACTS, seed=1) != (tune, held)


def test_liar_dialogs_balance_lies_and_truths() -> None:
    sentences = {FRANCE.question: "The capital of France is Paris.", SPIDER.question: "A spider has 8 legs."}
    dialogs = liar_dialogs([FRANCE, SPIDER], sentences, per_fact=2, seed=3)
    counts = collections.Counter(system for system, _, _ in dialogs)
    assert counts == {LYING: 4, TRUTHFUL: 4}
    for system, question, reply in dialogs:
        fact = FRANCE if question == FRANCE.question else SPIDER
        said = stated_answer(fact, reply)
        assert said is not None and (said != fact.truth) == (system == LYING)
    assert liar_dialogs([FRANCE, SPIDER], sentences, per_fact=2, seed=3) == dialogs


def test_told_and_pairing() -> None:
    chats = [LieChat(FRANCE, False, "The capital of France is Paris."),
             LieChat(FRANCE, False, "The capital of France is Paris."),  # a repeat is one reply
             LieChat(FRANCE, True, "The capital of France is Madrid."),
             LieChat(FRANCE, True, "The capital of France is Paris."),  # told to lie, told the truth
             LieChat(FRANCE, True, "The capital of France is Rome."),
             LieChat(SPIDER, False, "A spider has 8 legs."),
             LieChat(SPIDER, True, "I cannot say.")]  # no lie told: the fact gives no pair
    assert [told(c) for c in chats] == [True, True, True, False, True, True, False]
    pairs = paired(chats, per_fact=2)
    assert [(c.lying, c.reply) for c in pairs] == [(False, "The capital of France is Paris."),
                                                  (True, "The capital of France is Madrid.")]
    assert instruction_following(chats) == {"truthful": {"replies": 3, "true": 3, "wrong": 0},
                                            "lying": {"replies": 4, "true": 1, "wrong": 2}}


def test_settings_and_their_checks() -> None:
    full, smoke = lie_config(), lie_config(smoke=True)
    assert full.runs == {"all": ("sentiment", "emotion", "language"), "sentiment": ("sentiment",),
                         "emotion": ("emotion",), "language": ("language",)}
    assert smoke.smoke and smoke.runs == {"all": ("sentiment", "emotion", "language")}
    assert (full.window, full.examples, full.temperature) == (4, 480, 0.7)
    with pytest.raises(ConfigError, match="training sets"):
        LieConfig(sets=("lies",))
    with pytest.raises(ConfigError, match="window"):
        LieConfig(window=0)


def test_seeds_summary() -> None:
    def result(seed: int, acc: float) -> dict:
        row = {"method": "meta-model", "accuracy": acc, "low": 0.0, "high": 1.0, "auroc": acc, "n": 10}
        return {"seed": seed, "rows": [row], "ablation": {"all": row},
                "in_distribution": {"all": {"language": {"oracle": 0.9, "ablated_zero": 0.5}}}}
    text = seeds_markdown([result(0, 0.5), result(1, 0.7)])
    assert "| meta-model | 0.600 [0.500, 0.700] | 0.600 [0.500, 0.700] | 10, 10 |" in text
    assert "| all | 0.600 [0.500, 0.700] | 0.600 [0.500, 0.700] | language 0.90 / 0.50 |" in text


def test_command_refuses_bad_seeds_before_any_work(capsys: pytest.CaptureFixture[str]) -> None:
    from lens_oracle.cli import main

    assert main(["lies", "--seeds", "0,0"]) == 2
    assert "names a value twice" in capsys.readouterr().err
    assert main(["lies", "--seeds", "0,1", "--seed", "3"]) == 2
    assert "not both" in capsys.readouterr().err
