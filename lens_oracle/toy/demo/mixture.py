"""The oracle's training mixture on the toy world, built from the *base* world only.

The oracle is a LoRA on the base toy model and reads the base model's own activations (the
Activation Oracles setting); it never sees a model organism in training. Each component teaches a
skill an audit later needs, on base text:

* ``context_prediction`` (AO's self-supervised task): the previous or next tokens of a corpus
  window, with :func:`~lens_oracle.data.build_context_prediction`; with ``on_policy_context`` the
  "next" answers are the base model's own greedy continuations (the AO authors' newest code).
* ``classification``: balanced yes/no questions about a text's topic and sentiment and about the
  user's gender in a chat, with :func:`~lens_oracle.data.build_classification` and toy templates.
* ``persona``: "what role is the assistant playing ?" about persona chats, the system prompt
  masked out of the read positions, with :func:`~lens_oracle.data.build_spqa`.
* ``entity_qa``: the tokens of a person's name are read and the oracle is asked one of their
  attributes ("what city does this person live in ?") -- persona facts read from a name.
* ``topic_qa``: the end of a request about a topic, where the model is about to answer with one
  of the topic's words, asked "what is the secret word ?" (or "what topic is this text about ?")
  -- the taboo organism keeps a secret topic and hints at it without ever naming it.
* ``gender_qa``: a chat prompt whose user hinted their gender (the assistant is about to address
  them as sir or madam), read from the user's first word through the end (or, a quarter of the
  time, at its last tokens), asked "is the user male or female ?" (user gender).

The ``diverse`` mixture adds two components that are about no organism, only about reading in
general (more question forms, every read position, free-form answers):

* ``attribute_qa``: a text about a person (a request about them, a question, one of their facts),
  read at the name, at the last tokens (where the model is about to answer about them) or over
  the whole text, asked one of their attributes in one of two wordings ("what city does this
  person live in ?" or "where does this person live ?").
* ``text_qa``: a topic or review text, alone or as an assistant's reply, read over the whole
  text or at its last tokens, asked its topic or sentiment in free form ("is this text positive
  or negative ?" -> "negative").

The toy oracle learns a fixed set of question wordings (listed in :data:`ORACLE_WORDS` and the
constants below); what the demo tests is whether reading *base* activations carries over to
fine-tuned models, not whether the oracle understands new wordings.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lens_oracle.data.classification import ClassificationConfig, build_classification
from lens_oracle.data.context_prediction import ContextPredictionConfig, build_context_prediction
from lens_oracle.data.example import OracleExample
from lens_oracle.data.layers import check_layers, sample_layer
from lens_oracle.data.mixture import Mixture, MixtureComponent
from lens_oracle.data.spqa import SPQAConfig, build_spqa
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

if TYPE_CHECKING:
    from lens_oracle.models import LoadedModel

TOPIC_QUESTIONS: tuple[str, ...] = (QUESTIONS["topic"], TABOO_QUESTION)
"""Paraphrases of the topic question (the taboo audit asks the second)."""
CLASSIFICATION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "topic": ("is this text about {label} ?", "is the topic {label} ?"),
    "sentiment": ("is this text {label} ?", "is the sentiment {label} ?"),
    "gender": ("is the user {label} ?", "is the user a {label} ?"),
}
"""Yes/no templates in toy words, by classification kind."""
ORACLE_WORDS: tuple[str, ...] = (
    "after", "before", "came", "can", "come", "next", "predict", "previous", "sentiment", "that",
    "tokens", "who", "word", "secret", "person",
)
"""Words of the oracle's questions that the toy language lacks; the base vocabulary gets them."""
COMPONENTS: tuple[str, ...] = (
    "context_prediction", "classification", "persona", "entity_qa", "topic_qa", "gender_qa",
)
"""The demo mixture's components."""
DIVERSE_COMPONENTS: tuple[str, ...] = ("attribute_qa", "text_qa")
"""What the ``diverse`` mixture adds: reading in general, about no organism."""
MIXTURE_GROUPS: dict[str, tuple[str, ...]] = {
    "full": COMPONENTS,
    "context": ("context_prediction",),
    "classification": ("classification",),
    "qa": ("persona", "entity_qa", "topic_qa", "gender_qa"),
    "diverse": (*COMPONENTS, *DIVERSE_COMPONENTS),
}
"""The diversity ablation's mixtures (AO: diverse data helped in 10 of 12 settings): the whole
mixture, or one kind of task alone (context prediction; yes/no classification; the question-answer
tasks), each at the same total example count; and the whole mixture with the general reading
components added (``diverse``, same count)."""
DIVERSE_WEIGHTS: tuple[tuple[str, float], ...] = (("attribute_qa", 2.0), ("text_qa", 1.5))
"""The added components' weights in the ``diverse`` mixture (the others keep theirs)."""
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


@dataclass(frozen=True)
class ToyMixtureConfig:
    """Sizes and proportions of the toy oracle mixture."""

    total: int = 8000
    """Examples in the mixture."""
    weights: tuple[tuple[str, float], ...] = (
        ("context_prediction", 1.0), ("classification", 1.0), ("persona", 0.5),
        ("entity_qa", 3.0), ("topic_qa", 2.0), ("gender_qa", 3.0),
    )
    """``(component, weight)``: each component's share of ``total``."""
    context_k_max: int = 6
    """Context prediction: most read positions."""
    context_j_max: int = 3
    """Context prediction: most tokens to predict."""
    seed: int = 0
    """Seed of every draw (texts, positions, layers, sampling)."""
    on_policy_context: bool = False
    """Context prediction's "next" answers from the base model's own greedy continuations
    instead of the corpus (``build_toy_mixture`` then needs ``model=``)."""

    def __post_init__(self) -> None:
        names = [name for name, _ in self.weights]
        known = (*COMPONENTS, *DIVERSE_COMPONENTS)
        unknown = sorted(set(names) - set(known))
        if unknown or len(set(names)) != len(names) or not names:
            raise ConfigError(f"mixture weights name {names}; give each of {known} at most once")
        if any(not w > 0 for _, w in self.weights) or self.total < len(names):
            raise ConfigError(f"weights must be positive and total >= {len(names)}, got {self}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values. ``on_policy_context`` appears only when on, so the stamps of
        oracles trained before the option existed (the same computation) still match."""
        data = json_ready(dataclasses.asdict(self))
        if not self.on_policy_context:
            del data["on_policy_context"]
        return data


def json_ready(obj: Any) -> Any:
    """Tuples become lists, recursively (stamps compare equal after a JSON round trip)."""
    if isinstance(obj, (list, tuple)):
        return [json_ready(x) for x in obj]
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    return obj


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


def _classification(
    world: ToyWorld, tokenizer: Any, layers: Sequence[int], n: int, seed: int
) -> list[OracleExample]:
    rng = random.Random(seed)
    rows: dict[str, list[dict[str, str]]] = {"topic": [], "sentiment": [], "gender": []}
    for i in range(n):
        kind = ("topic", "sentiment", "gender")[i % 3]
        if kind == "gender":
            gender = rng.choice(tuple(GENDER_HINTS))
            text = chat_prompt(world.chat(rng, gender=gender)[0]["content"])
            rows[kind].append({"text": text, "label": gender})
        else:
            make = world.topic_sentence if kind == "topic" else world.sentiment_sentence
            text, label = make(rng)
            rows[kind].append({"text": text, "label": label})
    out = []
    for kind, kind_rows in rows.items():
        config = ClassificationConfig(
            kind=kind, labels=world.values(kind), prefix="", window_max=12, seed=seed,
            task=f"classification/{kind}",
        )
        out += build_classification(
            kind_rows, tokenizer, layers, config, templates=CLASSIFICATION_TEMPLATES
        )
    return out


def _persona(
    world: ToyWorld, tokenizer: Any, layers: Sequence[int], n: int, seed: int
) -> list[OracleExample]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        persona = rng.choice(world.values("persona"))
        chat = world.chat(rng, persona=persona, n_turns=rng.randint(1, 2))
        qa = [{"question": QUESTIONS["persona"], "answer": persona}]
        rows.append({"system": chat[0]["content"], "dialog": chat[1:], "qa": qa})
    return build_spqa(rows, tokenizer, layers, SPQAConfig(seed=seed))


def only_group(config: ToyMixtureConfig, group: str) -> ToyMixtureConfig:
    """``config`` restricted to the components of :data:`MIXTURE_GROUPS` ``[group]`` (their
    weights kept, the total unchanged); ``"diverse"`` adds :data:`DIVERSE_WEIGHTS`."""
    if group not in MIXTURE_GROUPS:
        raise ConfigError(f"unknown mixture {group!r}; choose one of {sorted(MIXTURE_GROUPS)}")
    weights = (*config.weights, *DIVERSE_WEIGHTS) if group == "diverse" else config.weights
    kept = tuple((name, w) for name, w in dict(weights).items() if name in MIXTURE_GROUPS[group])
    return dataclasses.replace(config, weights=kept)


def mixture_group(config: ToyMixtureConfig) -> str:
    """The :data:`MIXTURE_GROUPS` name whose components ``config`` weighs, else ``"custom"``."""
    names = {name for name, _ in config.weights}
    return next((g for g, members in MIXTURE_GROUPS.items() if names == set(members)), "custom")


def build_toy_mixture(
    world: ToyWorld,
    tokenizer: Any,
    layers: Sequence[int],
    config: ToyMixtureConfig | None = None,
    *,
    model: LoadedModel | None = None,
) -> list[OracleExample]:
    """The seeded oracle mixture on ``world``'s base text (see the module docstring).

    ``tokenizer`` is the base model's; ``layers`` the read layers (AO: 25, 50 and 75% depth).
    Each component is built with a little more than its share and then sampled, so the mixture
    holds exactly ``config.total`` examples. ``model``: the base model (an oracle's model is
    fine: its adapter is switched off), needed only for ``config.on_policy_context``.
    """
    config = config or ToyMixtureConfig()
    layers = check_layers(layers)
    if config.on_policy_context and model is None:
        raise ConfigError("on_policy_context needs the base model that continues the texts: pass model=...")
    weights = dict(config.weights)
    scale = 1.2 * config.total / sum(weights.values())
    seed = config.seed

    def need(name: str) -> int:
        return max(4, int(weights[name] * scale) + 1)

    def context() -> list[OracleExample]:
        docs = world.corpus(need("context_prediction"), seed=seed + 1)
        settings = ContextPredictionConfig(
            k_max=config.context_k_max, j_max=config.context_j_max, seed=seed,
            on_policy=config.on_policy_context,
        )
        target = model if config.on_policy_context else None
        return build_context_prediction(docs, tokenizer, layers, settings, model=target, batch_size=64)

    builders = {
        "context_prediction": context,
        "classification": lambda: _classification(
            world, tokenizer, layers, need("classification"), seed + 2
        ),
        "persona": lambda: _persona(world, tokenizer, layers, need("persona"), seed + 3),
        "entity_qa": lambda: entity_qa(world, tokenizer, layers, need("entity_qa"), seed + 4),
        "topic_qa": lambda: topic_qa(world, tokenizer, layers, need("topic_qa"), seed + 5),
        "gender_qa": lambda: gender_qa(world, tokenizer, layers, need("gender_qa"), seed + 6),
        "attribute_qa": lambda: attribute_qa(world, tokenizer, layers, need("attribute_qa"), seed + 7),
        "text_qa": lambda: text_qa(world, tokenizer, layers, need("text_qa"), seed + 8),
    }
    components = [
        MixtureComponent(name, builders[name], weight=weight) for name, weight in config.weights
    ]
    return Mixture(components, total=config.total, seed=seed).build()


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
