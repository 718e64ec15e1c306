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
* ``entity_qa``, ``topic_qa``, ``gender_qa``: persona facts read from a name, the topic a
  request is about to be answered with (taboo), the user's gender (user gender), asked in words
  (:mod:`lens_oracle.toy.demo.qa_components`).

The ``diverse`` mixture adds two components that are about no organism, only about reading in
general (more question forms, every read position, free-form answers):

* ``attribute_qa``: a text about a person read at the name, at the last tokens or over the
  whole text, asked one of their attributes in one of two wordings.
* ``text_qa``: a topic or review text, alone or as an assistant's reply, asked its topic or
  sentiment in free form ("is this text positive or negative ?" -> "negative").

The toy oracle learns a fixed set of question wordings (listed in :data:`ORACLE_WORDS` and the
constants here and in :mod:`~lens_oracle.toy.demo.qa_components`); what the demo tests is whether reading *base* activations carries over to
fine-tuned models, not whether the oracle understands new wordings.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lens_oracle.data.classification import ClassificationConfig, build_classification
from lens_oracle.data.context_prediction import ContextPredictionConfig, build_context_prediction
from lens_oracle.data.example import OracleExample
from lens_oracle.data.layers import check_layers
from lens_oracle.data.mixture import Mixture, MixtureComponent
from lens_oracle.data.spqa import SPQAConfig, build_spqa
from lens_oracle.errors import ConfigError
from lens_oracle.toy.demo.qa_components import attribute_qa, entity_qa, gender_qa, text_qa, topic_qa
from lens_oracle.toy.world.language import GENDER_HINTS, QUESTIONS, ToyWorld, chat_prompt

if TYPE_CHECKING:
    from lens_oracle.models import LoadedModel

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
