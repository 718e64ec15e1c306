"""The toy mixture's question-answer components: each reads a base-model text where some
knowledge sits and asks about it in words (:mod:`lens_oracle.toy.demo.mixture` weighs them).

The three the demo's audits lean on (:data:`AUDITED_QA`):

* ``entity_qa``: the tokens of a person's name are read and the oracle is asked one of their
  attributes ("what city does this person live in ?") -- persona facts read from a name.
* ``topic_qa``: the end of a request about a topic, where the model is about to answer with one
  of the topic's words, asked "what is the secret word ?" (or "what topic is this text about ?").
* ``gender_qa``: a chat prompt whose user hinted their gender, read from the user's first word
  through the end (or, a quarter of the time, at its last tokens), asked "is the user male or
  female ?".

And the two of the ``diverse`` mixture, about no organism: ``attribute_qa`` (a person's
attributes in two wordings, read at the name, the last tokens or the whole text) and ``text_qa``
(a text's topic or sentiment in free form). :func:`held_out_qa` draws fresh examples of the
audited three, to follow how the oracle learns each.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from lens_oracle.data.example import OracleExample
from lens_oracle.data.layers import sample_layer
from lens_oracle.errors import ConfigError
from lens_oracle.toy.organisms import ABOUT, TABOO_QUESTION
from lens_oracle.toy.world.language import (
    ASK_TEMPLATES,
    ASK_TOPIC,
    FACT_TEMPLATES,
    GENDER_HINTS,
    QUESTIONS,
    Entity,
    ToyWorld,
    chat_prompt,
    render_chat,
)

TOPIC_QUESTIONS: tuple[str, ...] = (QUESTIONS["topic"], TABOO_QUESTION)
"""Paraphrases of the topic question (the taboo audit asks the second)."""
ATTRIBUTE_QUESTIONS: dict[str, tuple[str, ...]] = {
    a: tuple(dict.fromkeys((QUESTIONS[a], ASK_TEMPLATES[a].format(e="this person")))) for a in ASK_TEMPLATES
}
"""Each attribute's question wordings in ``attribute_qa``: the demo's and the world's own."""
TEXT_QUESTIONS: dict[str, tuple[str, ...]] = {
    "topic": (QUESTIONS["topic"], "what is this text about ?"),
    "sentiment": (QUESTIONS["sentiment"], "is the sentiment positive or negative ?"),
}
"""Free-form questions of ``text_qa``."""
ASK_ANYTHING = "tell me something ."


def name_span(tokenizer: Any, ids: Sequence[int], name: str) -> tuple[int, ...]:
    """Positions of the first occurrence of ``name``'s tokens in ``ids``."""
    name_ids = tokenizer(name, add_special_tokens=False)["input_ids"]
    for start in range(len(ids) - len(name_ids) + 1):
        if list(ids[start : start + len(name_ids)]) == name_ids:
            return tuple(range(start, start + len(name_ids)))
    raise ConfigError(f"{name!r} does not occur in the tokenized text")


def name_context(world: ToyWorld, entity: Entity, rng: random.Random) -> str:
    """A text that mentions ``entity``: a chat request about them or one of their facts."""
    kind = rng.random()
    if kind < 0.4:
        return chat_prompt(ABOUT.format(e=entity.name))
    if kind < 0.7:
        return chat_prompt(rng.choice(tuple(ASK_TEMPLATES.values())).format(e=entity.name))
    attribute = rng.choice(world.attribute_names)
    return rng.choice(FACT_TEMPLATES[attribute]).format(e=entity.name, v=entity.value(attribute))


def _read_name(
    world: ToyWorld, tokenizer: Any, layers: Sequence[int], rng: random.Random, entity: Entity
) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """Context ids cut after the name, the read positions (the name's tokens) and the layer."""
    ids = tokenizer(name_context(world, entity, rng))["input_ids"]
    span = name_span(tokenizer, ids, entity.name)
    return tuple(ids[: span[-1] + 1]), span, sample_layer(rng, layers)


def entity_qa(
    world: ToyWorld, tokenizer: Any, layers: Sequence[int], n: int, seed: int
) -> list[OracleExample]:
    """``n`` examples: a person's name read, one of their attributes asked."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        entity = rng.choice(world.entities)
        attribute = rng.choice(world.attribute_names)
        context, positions, layer = _read_name(world, tokenizer, layers, rng, entity)
        out.append(OracleExample(
            context_ids=context, positions=positions, layer=layer,
            question=QUESTIONS[attribute], answer=entity.value(attribute), task="entity_qa",
            context_text=tokenizer.decode(context), meta={"entity": entity.name, "attribute": attribute},
        ))
    return out


def topic_qa(
    world: ToyWorld, tokenizer: Any, layers: Sequence[int], n: int, seed: int
) -> list[OracleExample]:
    """``n`` examples: the end of a request about a topic (the assistant is about to answer
    with one of its words), asked which topic or word the model has in mind."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        topic = rng.choice(world.values("topic"))
        ids = tokenizer(_with_persona(world, rng, ASK_TOPIC.format(t=topic)))["input_ids"]
        positions = _last_tokens(rng, len(ids))
        out.append(OracleExample(
            context_ids=tuple(ids), positions=positions, layer=sample_layer(rng, layers),
            question=rng.choice(TOPIC_QUESTIONS), answer=topic, task="topic_qa",
            context_text=tokenizer.decode(ids), meta={"topic": topic},
        ))
    return out


def _with_persona(world: ToyWorld, rng: random.Random, user: str) -> str:
    """``user``'s message as a prompt, after a persona's system message half of the time."""
    with_system = rng.random() < 0.5
    system = world.persona(rng.choice(world.values("persona"))).instruction if with_system else None
    return chat_prompt(user, system)


def _last_tokens(rng: random.Random, n: int) -> tuple[int, ...]:
    """The last token (most often) or the last 2-4 tokens of a context of ``n`` tokens."""
    width = 1 if rng.random() < 0.6 else rng.randint(2, 4)
    return tuple(range(n - width, n))


LAST_TOKEN_SHARE = 0.25
"""Share of ``gender_qa`` examples read at the last tokens instead of the whole user turn."""


def gender_qa(
    world: ToyWorld, tokenizer: Any, layers: Sequence[int], n: int, seed: int
) -> list[OracleExample]:
    """``n`` examples: a chat prompt whose user hinted their gender, read from the user's first
    word through the end (where the user speaks of themselves and the model is about to address
    them; the user_gender audit reads the same span), or, a quarter of the time, at its last
    tokens only. With half of them at the last tokens the oracle learned nothing on a base model
    that gathers the gender there only in its last block."""
    rng = random.Random(seed)
    user_token = tokenizer.convert_tokens_to_ids("<user>")
    out = []
    for _ in range(n):
        gender = rng.choice(tuple(GENDER_HINTS))
        ids = tokenizer(_with_persona(world, rng, world.chat(rng, gender=gender)[0]["content"]))
        ids = ids["input_ids"]
        if rng.random() < LAST_TOKEN_SHARE:
            positions = _last_tokens(rng, len(ids))
        else:
            positions = tuple(range(ids.index(user_token) + 1, len(ids)))
        out.append(OracleExample(
            context_ids=tuple(ids), positions=positions,
            layer=sample_layer(rng, layers), question=QUESTIONS["gender"], answer=gender,
            task="gender_qa", context_text=tokenizer.decode(ids), meta={"gender": gender},
        ))
    return out


def attribute_qa(
    world: ToyWorld, tokenizer: Any, layers: Sequence[int], n: int, seed: int
) -> list[OracleExample]:
    """``n`` examples: a text about a person read at the name, at the last tokens or over the
    whole text (a third each), asked one of their attributes in one of its wordings."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        entity = rng.choice(world.entities)
        attribute = rng.choice(world.attribute_names)
        ids = tokenizer(name_context(world, entity, rng))["input_ids"]
        where = rng.choice(("name", "last", "all"))
        if where == "name":
            positions = name_span(tokenizer, ids, entity.name)
            ids = ids[: positions[-1] + 1]
        else:
            positions = _last_tokens(rng, len(ids)) if where == "last" else tuple(range(1, len(ids)))
        out.append(OracleExample(
            context_ids=tuple(ids), positions=positions, layer=sample_layer(rng, layers),
            question=rng.choice(ATTRIBUTE_QUESTIONS[attribute]), answer=entity.value(attribute),
            task="attribute_qa", context_text=tokenizer.decode(ids),
            meta={"entity": entity.name, "attribute": attribute, "read": where},
        ))
    return out


def text_qa(
    world: ToyWorld, tokenizer: Any, layers: Sequence[int], n: int, seed: int
) -> list[OracleExample]:
    """``n`` examples: one to three topic or review sentences, alone or as an assistant's reply
    to a request, read over the whole text or at its last tokens, asked the topic or the
    sentiment in free form."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        kind = rng.choice(("topic", "sentiment"))
        label = rng.choice(world.values(kind))
        make = world.topic_sentence if kind == "topic" else world.sentiment_sentence
        text = " ".join(make(rng, label)[0] for _ in range(rng.randint(1, 3)))
        if rng.random() < 0.5:  # as a reply to a request that names nothing
            text = render_chat([{"role": "user", "content": ASK_ANYTHING}, {"role": "assistant", "content": text}])
        ids = tokenizer(text)["input_ids"]
        positions = _last_tokens(rng, len(ids)) if rng.random() < 0.4 else tuple(range(1, len(ids)))
        out.append(OracleExample(
            context_ids=tuple(ids), positions=positions, layer=sample_layer(rng, layers),
            question=rng.choice(TEXT_QUESTIONS[kind]), answer=label, task="text_qa",
            context_text=tokenizer.decode(ids), meta={kind: label},
        ))
    return out


QABuilder = Callable[[ToyWorld, Any, Sequence[int], int, int], list[OracleExample]]
AUDITED_QA: dict[str, tuple[QABuilder, str]] = {
    "topic_qa": (topic_qa, "taboo"),
    "entity_qa": (entity_qa, "persona_facts"),
    "gender_qa": (gender_qa, "user_gender"),
}
"""The question-answer components the audits lean on: their builder and the organism kind."""
CURVE_SEED_OFFSET = 55_555
"""Seeds of :func:`held_out_qa`'s draws: ones the mixture never uses."""


def held_out_qa(
    world: ToyWorld, tokenizer: Any, layers: Sequence[int], n: int, seed: int
) -> list[OracleExample]:
    """``n`` fresh examples of each :data:`AUDITED_QA` component (its builder with a seed the
    mixture never uses), read at ``layers``: held-out items to follow how the oracle learns each."""
    if n < 1:
        raise ConfigError(f"{n} held-out examples per component; give at least 1")
    return [
        example
        for i, (build, _) in enumerate(AUDITED_QA.values())
        for example in build(world, tokenizer, layers, n, seed + CURVE_SEED_OFFSET + i)
    ]
