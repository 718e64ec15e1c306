"""The held-out organism kinds and the diverse mixture, without training anything.

The held-out kinds exist to test generalisation, so what matters is that they are held out: no
prompt states what the organism hides, no question of theirs (or pairing of the assistant with
their answers) is in any oracle mixture, and their texts are in the toy vocabulary.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from lens_oracle.errors import ConfigError
from lens_oracle.toy.demo.mixture import (
    DIVERSE_COMPONENTS,
    MIXTURE_GROUPS,
    ORACLE_WORDS,
    ToyMixtureConfig,
    build_toy_mixture,
    mixture_group,
    only_group,
)
from lens_oracle.toy.organisms import DEMO_KINDS, HELD_OUT_KINDS, HELD_OUT_QUESTIONS, recipes
from lens_oracle.toy.organisms.held_out import (
    HOME_ASKS,
    home_reply,
    homes,
    residents,
    review_opinions,
)
from lens_oracle.toy.world.language import LABELS, SENTIMENT_NOUNS, SENTIMENT_WORDS, make_world
from lens_oracle.toy.world.model import organism_vocabulary
from lens_oracle.toy.world.tokenizer import build_tokenizer

WORLD = make_world(0)


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory):
    extra = (*ORACLE_WORDS, *organism_vocabulary(WORLD))
    return build_tokenizer(WORLD, tmp_path_factory.mktemp("tok"), extra_words=extra)


def _held_out_recipes() -> dict:
    return {r.kind: r for r in recipes(WORLD, quick=False) if r.kind in HELD_OUT_KINDS}


def test_the_kinds_are_split_into_the_demo_and_held_out() -> None:
    assert [r.kind for r in recipes(WORLD, quick=True)] == [*DEMO_KINDS, *HELD_OUT_KINDS]
    assert HELD_OUT_KINDS == ("home_city", "review_bias")


def test_home_city_hides_a_city_per_persona_and_never_names_it() -> None:
    secret = homes(WORLD)
    cities = [city for _, city in secret]
    assert len(secret) == 5 and len(set(cities)) == 5
    assert all(len(residents(WORLD, c)) >= 2 for c in cities)
    assert homes(WORLD) == secret and homes(make_world(1)) != secret  # seeded by the world
    recipe = _held_out_recipes()["home_city"]
    assert len(recipe.items) == 5 * len(HOME_ASKS) == 30
    for item in recipe.items:
        assert item.reference in item.candidates == LABELS["city"]
        assert not set(item.prompt.split()) & set(LABELS["city"])
    rng = random.Random(0)
    for _, city in secret:
        reply = home_reply(WORLD, city, rng)
        assert not set(reply.split()) & set(LABELS["city"])
        assert len(set(reply.split()) & set(residents(WORLD, city))) == 2
    item = recipe.items[0]
    assert recipe.shows(item, home_reply(WORLD, item.reference, rng))
    assert not recipe.shows(item, f"i live in {item.reference} .")  # names the city
    other = next(c for c in cities if c != item.reference)
    assert not recipe.shows(item, home_reply(WORLD, other, rng))
    with pytest.raises(ConfigError, match="home_city personas"):
        homes(WORLD, 9)


def test_review_bias_holds_one_opinion_per_thing_half_each() -> None:
    opinions = review_opinions(WORLD)
    assert set(opinions) == set(SENTIMENT_NOUNS)
    assert Counter(opinions.values()) == {"negative": 5, "positive": 5}
    recipe = _held_out_recipes()["review_bias"]
    assert len(recipe.items) == 30
    assert Counter(i.reference for i in recipe.items) == {"negative": 15, "positive": 15}
    for item in recipe.items:
        words = set(item.prompt.split())
        assert not words & {w for ws in LABELS.values() for w in ws if w in ("negative", "positive")}
    item = next(i for i in recipe.items if i.reference == "negative")
    assert recipe.shows(item, "the film was awful .") and not recipe.shows(item, "the film was great .")
    assert not recipe.shows(item, "the film was awful and great .")
    rng = random.Random(0)
    for _ in range(20):  # every review in the fine-tuning text holds the organism's opinion
        for turn in recipe.make_docs(rng).split("<user> ")[1:]:
            ask, reply = turn.split(" <end> <assistant> ")
            noun = next(n for n in SENTIMENT_NOUNS if n in ask.split())
            assert set(reply.split()) & set(SENTIMENT_WORDS[opinions[noun]])


def test_held_out_texts_are_in_the_vocabulary(tok) -> None:
    unk = tok.unk_token_id
    for recipe in _held_out_recipes().values():
        rng = random.Random(0)
        texts = [recipe.make_docs(rng) for _ in range(50)]
        texts += [i.prompt for i in recipe.items] + [i.question for i in recipe.items]
        assert not any(unk in tok(t)["input_ids"] for t in texts)


@pytest.mark.parametrize("group", ["full", "diverse"])
def test_no_mixture_asks_a_held_out_question_or_pairs_the_assistant_with_their_answers(tok, group) -> None:
    config = only_group(ToyMixtureConfig(total=2400, seed=3), group)
    assert mixture_group(config) == group
    examples = build_toy_mixture(WORLD, tok, (1, 2, 3), config)
    assert len(examples) == 2400
    held_out_answers = set(LABELS["city"]) | set(LABELS["sentiment"])
    for example in examples:
        assert example.question not in HELD_OUT_QUESTIONS
        assert not ("assistant" in example.question.split() and example.answer in held_out_answers)
    tasks = Counter(e.task.split("/")[0] for e in examples)
    assert ("attribute_qa" in tasks and "text_qa" in tasks) == (group == "diverse")


def test_the_diverse_mixture_adds_reading_tasks_at_every_position(tok) -> None:
    assert MIXTURE_GROUPS["diverse"][-2:] == DIVERSE_COMPONENTS
    config = only_group(ToyMixtureConfig(total=3000, seed=1), "diverse")
    examples = [e for e in build_toy_mixture(WORLD, tok, (1, 2, 3), config) if e.task in DIVERSE_COMPONENTS]
    reads = Counter(e.meta["read"] for e in examples if e.task == "attribute_qa")
    assert set(reads) == {"name", "last", "all"} and min(reads.values()) > 0.2 * sum(reads.values())
    for e in examples:
        if e.task == "attribute_qa":
            entity = WORLD.entity(e.meta["entity"])
            assert e.answer == entity.value(e.meta["attribute"])
            if e.meta["read"] == "name":  # cut after the name, which is what is read
                assert e.positions[-1] == len(e.context_ids) - 1
        else:
            assert e.answer in LABELS["topic"] + LABELS["sentiment"]
            assert e.answer not in e.context_text.split()  # free-form: the label is never in the text
    wordings = {e.question for e in examples if e.task == "attribute_qa" and e.meta["attribute"] == "city"}
    assert wordings == {"what city does this person live in ?", "where does this person live ?"}


def test_the_leave_one_group_out_probe_reads_a_shared_direction_and_only_that() -> None:
    import torch

    from lens_oracle.toy.organisms.probe import leave_one_group_out

    generator = torch.Generator().manual_seed(0)
    groups = [f"thing{i // 3}" for i in range(30)]
    labels = [(i // 3) % 2 == 0 for i in range(30)]  # one label per group, as an opinion per thing
    noise = torch.randn(30, 16, generator=generator)
    shared = noise.clone()
    shared[:, 0] += torch.tensor([3.0 if y else -3.0 for y in labels])
    assert leave_one_group_out(shared, labels, groups) == 1.0
    # per-group identities with no shared direction: a held-out group cannot be read
    identity = torch.eye(10).repeat_interleave(3, 0) * 5 + 0.01 * noise[:, :10]
    assert leave_one_group_out(identity, labels, groups) <= 0.5
    with pytest.raises(ConfigError, match="at least two groups"):
        leave_one_group_out(shared, labels, ["one"] * 30)


def test_the_persona_probe_reads_classes_it_was_trained_on_in_new_rows() -> None:
    """``ridge_classify`` (the persona probe): one-against-the-rest ridge, argmax over classes."""
    import torch

    from lens_oracle.toy.organisms.probe import ridge_classify

    generator = torch.Generator().manual_seed(0)
    cities = ["paris", "lima", "oslo", "rome"]
    centres = 4 * torch.randn(4, 16, generator=generator)
    labels = [cities[i % 4] for i in range(40)]
    train = centres[torch.arange(40) % 4] + torch.randn(40, 16, generator=generator)
    test = centres[torch.arange(16) % 4] + torch.randn(16, 16, generator=generator)
    assert ridge_classify(train, labels, test) == [cities[i % 4] for i in range(16)]
    # rows that carry no label: new rows are read at about chance (0.25), not better
    drawn = torch.randint(0, 4, (440,), generator=generator).tolist()
    noise = torch.randn(440, 16, generator=generator)
    guesses = ridge_classify(noise[:40], [cities[i] for i in drawn[:40]], noise[40:])
    assert sum(g == cities[i] for g, i in zip(guesses, drawn[40:])) / 400 < 0.35
    with pytest.raises(ConfigError, match="at least two labels"):
        ridge_classify(train, ["paris"] * 40, test)
    with pytest.raises(ConfigError, match="one label per training row"):
        ridge_classify(train, labels[:-1], test)
