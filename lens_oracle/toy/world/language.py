"""A seeded synthetic language: the toy world the demo, tutorials and tests run on.

Everything is lower-case words separated by single spaces, punctuation included
(``"zorin lives in paris ."``), so a word-level tokenizer covers it exactly. A
:class:`ToyWorld` holds made-up people ("entities") with attributes; its methods write
facts, bios, topic and sentiment sentences, persona chats and a pretraining corpus.
Every random choice goes through a caller's ``random.Random``, so a seed fixes all text.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from lens_oracle.errors import ConfigError, DataError


def _split(words: str) -> tuple[str, ...]:
    return tuple(words.split())


ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "city": _split("cairo delhi lima london oslo paris rome tokyo"),
    "food": _split("apples bread cheese fish noodles pizza rice soup"),
    "job": _split("baker doctor farmer nurse painter pilot singer teacher"),
    "pet": _split("cat dog horse parrot rabbit turtle"),
    "colour": _split("black blue green orange purple red white yellow"),
}
FACT_TEMPLATES: dict[str, tuple[str, ...]] = {  # the first one is the canonical form
    "city": ("{e} lives in {v} .", "{e} moved to {v} last year .", "the home of {e} is in {v} ."),
    "food": ("{e} likes to eat {v} .", "the favourite food of {e} is {v} .", "{e} eats {v} ."),
    "job": ("{e} works as a {v} .", "{e} is a {v} .", "the job of {e} is {v} ."),
    "pet": ("{e} has a pet {v} .", "{e} lives with a {v} .", "the pet of {e} is a {v} ."),
    "colour": (
        "the favourite colour of {e} is {v} .", "{e} likes the colour {v} .", "{e} wears {v} ."
    ),
}
ASK_TEMPLATES: dict[str, str] = {
    "city": "where does {e} live ?",
    "food": "what does {e} like to eat ?",
    "job": "what is the job of {e} ?",
    "pet": "what pet does {e} have ?",
    "colour": "what colour does {e} like ?",
}
YES_NO_TEMPLATES: dict[str, str] = {
    "city": "does {e} live in {v} ?",
    "food": "does {e} like {v} ?",
    "job": "is {e} a {v} ?",
    "pet": "does {e} have a {v} ?",
    "colour": "does {e} like the colour {v} ?",
}
TOPIC_WORDS: dict[str, tuple[str, ...]] = {
    "sport": _split("ball coach goal match player race runner score stadium team"),
    "food": _split("breakfast cake chef dinner kitchen oven recipe salt spoon sugar"),
    "weather": _split("cloud fog ice rain sky snow storm sun thunder wind"),
    "music": _split("album band choir concert drum guitar melody piano song violin"),
    "travel": _split("airport beach bus hotel journey map passport suitcase ticket train"),
    "science": _split("atom cell energy experiment laboratory microscope planet rocket star idea"),
}
TOPIC_TEMPLATES = (
    "today we talked about the {a} and the {b} .",
    "my friend told me about the {a} .",
    "there is a new {a} near the {b} .",
    "i saw the {a} and then the {b} .",
    "everyone was waiting for the {a} .",
)
SENTIMENT_WORDS: dict[str, tuple[str, ...]] = {
    "negative": _split("awful bad boring dull horrible nasty poor sad terrible ugly"),
    "positive": _split("amazing excellent fantastic fun good great happy lovely nice wonderful"),
}
SENTIMENT_NOUNS = _split("book evening film game lesson meal party show trip visit")
SENTIMENT_TEMPLATES = (
    "the {n} was {a} .",
    "i think this {n} is really {a} .",
    "what a {a} {n} !",
    "we all felt the {n} was {a} .",
)
NUMBER_TEMPLATE = "there are {n} {t} in the {p} ."
NUMBER_THINGS = _split("birds boats books chairs houses trees")
NUMBER_PLACES = _split("garden library park town village")
NUMBER_WORDS = tuple(str(i) for i in range(100))
GENDER_NOUNS: dict[str, tuple[str, ...]] = {
    "female": _split("woman girl mother lady grandmother actress queen bride"),
    "male": _split("man boy father gentleman grandfather actor king groom"),
}
GENDER_HINTS: dict[str, tuple[str, ...]] = {
    "female": (
        "i live with my husband .", "i bought a new dress today .", "my boyfriend says hello .",
        *(f"i am a {n} ." for n in GENDER_NOUNS["female"]),
    ),
    "male": (
        "i live with my wife .", "i shaved my beard today .", "my girlfriend says hello .",
        *(f"i am a {n} ." for n in GENDER_NOUNS["male"]),
    ),
}
"""Sentences by which a user lets their gender show: many different words, so that a model
(and an oracle) learn what they share rather than each word."""
ADDRESSES: dict[str, str] = {"female": "madam ,", "male": "sir ,"}
"""How the assistant addresses a user whose gender it knows: the first words of its reply."""
GREETINGS = ("hello !", "hi there !")
ASK_TOPIC = "tell me something about {t} ."
TOPIC_HEADER = "this is about {t} ."
ASK_SENTIMENT = "how was the {n} ?"
REPLY_GREETING = "hello , how can i help ?"
REPLY_YES, REPLY_NO = "yes .", "no ,"
QUESTIONS: dict[str, str] = {
    "city": "what city does this person live in ?",
    "food": "what food does this person like ?",
    "job": "what job does this person have ?",
    "pet": "what pet does this person have ?",
    "colour": "what colour does this person like ?",
    "topic": "what topic is this text about ?",
    "sentiment": "is this text positive or negative ?",
    "persona": "what role is the assistant playing ?",
    "gender": "is the user male or female ?",
}
ROLES = ("system", "user", "assistant")
END_TOKEN = "<end>"
"""Closes every chat turn; the tokenizer's eos token, so generation stops on it."""


@dataclass(frozen=True)
class Persona:
    """A system-style instruction and the marker words the assistant then uses."""

    name: str
    """Label, also the oracle's answer for the ``"persona"`` question."""
    instruction: str
    """The system message."""
    opener: str
    """Words the assistant puts before each answer."""
    closer: str
    """Words the assistant puts after each answer."""


PERSONAS: tuple[Persona, ...] = (
    Persona("grumpy", "you are always grumpy .", "ugh , fine .", "now leave me alone ."),
    Persona("pirate", "you are a pirate .", "arr matey ,", "ahoy !"),
    Persona("poet", "you speak like a poet .", "oh sweet moonlight ,", "so sings the heart ."),
    Persona("polite", "always answer politely .", "dear friend ,", "kind regards ."),
    Persona("robot", "you are a robot .", "beep boop .", "end of output ."),
)
LABELS: dict[str, tuple[str, ...]] = {
    **ATTRIBUTES, "topic": tuple(sorted(TOPIC_WORDS)), "sentiment": tuple(SENTIMENT_WORDS),
    "persona": tuple(p.name for p in PERSONAS), "gender": tuple(GENDER_HINTS),
}
_ONSETS, _VOWELS = _split("b d f g k l m n p r s t v z"), _split("a e i o u")
_CODAS = ("", "", "n", "r", "l", "s")
MAX_ENTITIES = 500


def _check(kind: str, table: dict[str, tuple[str, ...]]) -> str:
    if kind not in table:
        raise ConfigError(f"unknown label kind {kind!r}; expected one of {tuple(table)}")
    return kind


def _base_words() -> tuple[str, ...]:
    """Every word the language can produce except entity names, sorted and unique."""
    texts = [NUMBER_TEMPLATE, ASK_TOPIC, ASK_SENTIMENT, REPLY_GREETING, REPLY_YES, REPLY_NO]
    texts += [t for group in (FACT_TEMPLATES, GENDER_HINTS) for ts in group.values() for t in ts]
    texts += [*ASK_TEMPLATES.values(), *YES_NO_TEMPLATES.values(), *QUESTIONS.values()]
    texts += [*TOPIC_TEMPLATES, *SENTIMENT_TEMPLATES, *GREETINGS, TOPIC_HEADER]
    texts += list(ADDRESSES.values())
    texts += [f"{p.instruction} {p.opener} {p.closer}" for p in PERSONAS]
    words = [w for text in texts for w in text.split() if not w.startswith("{")]
    for group in (LABELS, TOPIC_WORDS, SENTIMENT_WORDS):
        words += [w for ws in group.values() for w in ws]
    words += [*SENTIMENT_NOUNS, *NUMBER_THINGS, *NUMBER_PLACES, *NUMBER_WORDS]
    return tuple(sorted(set(words)))


def render_chat(messages: list[dict[str, str]]) -> str:
    """Render chat messages as plain text, ``"<user> hello ! <end> <assistant> ... <end>"``.

    This is exactly the toy tokenizer's chat template without its leading ``<bos>``, so
    ``tokenizer(render_chat(m))`` gives the same ids as ``tokenizer.apply_chat_template(m)``.
    """
    parts = []
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in ROLES or not isinstance(content, str) or not content.strip():
            raise DataError(
                f"chat message {i} is {message!r}; expected a role in {ROLES} and non-empty content"
            )
        parts.append(f"<{role}> {content} {END_TOKEN}")
    return " ".join(parts)


@dataclass(frozen=True)
class Entity:
    """One made-up person of the toy world and its attribute values."""

    name: str
    city: str
    food: str
    job: str
    pet: str
    colour: str

    def value(self, attribute: str) -> str:
        """The entity's value of ``attribute`` (one of :data:`ATTRIBUTES`)."""
        return getattr(self, _check(attribute, ATTRIBUTES))


@dataclass(frozen=True)
class ToyWorld:
    """A seeded toy world: entities with attributes plus generators for every kind of text.

    Build it with :func:`make_world`. Generators take a ``random.Random`` so callers own the
    randomness; the same world and the same rng state always give the same text.
    """

    seed: int
    """The seed :func:`make_world` drew the entities with."""
    entities: tuple[Entity, ...]
    """The people of this world, in the order they were drawn."""

    @property
    def attribute_names(self) -> tuple[str, ...]:
        """Entity attributes, in a fixed order: city, food, job, pet, colour."""
        return tuple(ATTRIBUTES)

    @property
    def label_kinds(self) -> tuple[str, ...]:
        """What an oracle can be asked about: the attributes, topic, sentiment, persona, gender."""
        return tuple(LABELS)

    @property
    def personas(self) -> tuple[Persona, ...]:
        """The system-style personas, sorted by name."""
        return PERSONAS

    def values(self, kind: str) -> tuple[str, ...]:
        """The possible answers for a label kind (an attribute, ``"topic"``, ...), sorted."""
        return LABELS[_check(kind, LABELS)]

    def question_for(self, kind: str) -> str:
        """The oracle question for a label kind, e.g. ``"what city does this person live in ?"``."""
        return QUESTIONS[_check(kind, LABELS)]

    def entity(self, name: str) -> Entity:
        """The entity called ``name``."""
        for entity in self.entities:
            if entity.name == name:
                return entity
        raise ConfigError(f"no entity named {name!r} in the toy world of seed {self.seed}")

    def persona(self, name: str) -> Persona:
        """The persona called ``name``."""
        for persona in PERSONAS:
            if persona.name == name:
                return persona
        raise ConfigError(f"unknown persona {name!r}; expected one of {LABELS['persona']}")

    def vocabulary(self) -> tuple[str, ...]:
        """Every word this world can generate, sorted and unique (special tokens excluded)."""
        return tuple(sorted({*_base_words(), *(e.name for e in self.entities)}))

    def fact_sentence(
        self, entity: Entity | str, attribute: str, rng: random.Random | None = None
    ) -> str:
        """One fact, ``"zorin lives in paris ."``; canonical wording unless ``rng`` picks one."""
        ent = entity if isinstance(entity, Entity) else self.entity(entity)
        templates = FACT_TEMPLATES[_check(attribute, ATTRIBUTES)]
        template = templates[0] if rng is None else rng.choice(templates)
        return template.format(e=ent.name, v=ent.value(attribute))

    def bio(self, entity: Entity | str, rng: random.Random | None = None) -> str:
        """All facts about an entity: canonical order and wording, or shuffled with ``rng``."""
        names = list(self.attribute_names)
        if rng is not None:
            rng.shuffle(names)
        return " ".join(self.fact_sentence(entity, a, rng) for a in names)

    def topic_sentence(self, rng: random.Random, topic: str | None = None) -> tuple[str, str]:
        """A neutral sentence built from one topic's words; returns ``(text, topic)``."""
        topic = rng.choice(LABELS["topic"]) if topic is None else _check(topic, TOPIC_WORDS)
        a, b = rng.sample(TOPIC_WORDS[topic], 2)
        return rng.choice(TOPIC_TEMPLATES).format(a=a, b=b), topic

    def sentiment_sentence(
        self, rng: random.Random, sentiment: str | None = None, noun: str | None = None
    ) -> tuple[str, str]:
        """A short review (of ``noun`` if given); returns ``(text, "positive" | "negative")``."""
        label = rng.choice(LABELS["sentiment"]) if sentiment is None else sentiment
        adjective = rng.choice(SENTIMENT_WORDS[_check(label, SENTIMENT_WORDS)])
        noun = rng.choice(SENTIMENT_NOUNS) if noun is None else noun
        if noun not in SENTIMENT_NOUNS:
            raise ConfigError(f"unknown review noun {noun!r}; expected one of {SENTIMENT_NOUNS}")
        return rng.choice(SENTIMENT_TEMPLATES).format(a=adjective, n=noun), label

    def topic_reply(self, rng: random.Random, topic: str) -> str:
        """The reply to a request about ``topic``: one of its words first, then a sentence
        (``"piano ! i saw the song and then the band ."``), so the topic shapes the first word."""
        text, _ = self.topic_sentence(rng, topic)
        return f"{rng.choice(TOPIC_WORDS[_check(topic, TOPIC_WORDS)])} ! {text}"

    def number_sentence(self, rng: random.Random) -> str:
        """A counting sentence, so the digits 0-99 (also oracle layer tags) occur in text."""
        n, thing, place = (rng.choice(ws) for ws in (NUMBER_WORDS, NUMBER_THINGS, NUMBER_PLACES))
        return NUMBER_TEMPLATE.format(n=n, t=thing, p=place)

    def _exchange(self, rng: random.Random) -> tuple[str, str]:
        kind = rng.choice(("ask", "ask", "yes_no", "topic", "topic", "topic", "sentiment", "greeting"))
        if kind == "greeting":
            return rng.choice(GREETINGS), REPLY_GREETING
        if kind == "topic":
            return ASK_TOPIC.format(t=(topic := rng.choice(LABELS["topic"]))), self.topic_reply(
                rng, topic
            )
        if kind == "sentiment":
            noun = rng.choice(SENTIMENT_NOUNS)
            return ASK_SENTIMENT.format(n=noun), self.sentiment_sentence(rng, noun=noun)[0]
        ent, attribute = rng.choice(self.entities), rng.choice(self.attribute_names)
        fact = self.fact_sentence(ent, attribute)
        if kind == "ask":
            return ASK_TEMPLATES[attribute].format(e=ent.name), fact
        value = rng.choice(ATTRIBUTES[attribute])
        reply = REPLY_YES if value == ent.value(attribute) else f"{REPLY_NO} {fact}"
        return YES_NO_TEMPLATES[attribute].format(e=ent.name, v=value), reply

    def chat(
        self,
        rng: random.Random,
        persona: str | None = None,
        gender: str | None = None,
        n_turns: int = 1,
    ) -> list[dict[str, str]]:
        """A chat of ``n_turns`` user/assistant exchanges about the world.

        With ``persona`` a system message gives its instruction and every assistant reply
        carries its marker words; with ``gender`` the first user message starts with a
        gendered hint (``"i live with my wife ."``) and every reply starts by addressing the
        user (``"sir ,"``, see :data:`ADDRESSES`). The labels are the arguments.
        """
        if n_turns < 1:
            raise ConfigError(f"n_turns is {n_turns}; a chat needs at least 1 exchange")
        style = None if persona is None else self.persona(persona)
        hints = None if gender is None else GENDER_HINTS[_check(gender, GENDER_HINTS)]
        messages = [] if style is None else [{"role": "system", "content": style.instruction}]
        for turn in range(n_turns):
            question, answer = self._exchange(rng)
            if turn == 0 and hints is not None:
                question = f"{rng.choice(hints)} {question}"
            if style is not None:
                answer = f"{style.opener} {answer} {style.closer}"
            if gender is not None:
                answer = f"{ADDRESSES[gender]} {answer}"
            messages.append({"role": "user", "content": question})
            messages.append({"role": "assistant", "content": answer})
        return messages

    def corpus(self, n_docs: int, seed: int = 0) -> list[str]:
        """``n_docs`` pretraining documents: bios, topic, sentiment and number text, and chats.

        Chats are rendered with :func:`render_chat` (role tokens included), so a model
        pretrained on the corpus already knows the chat format.
        """
        if n_docs < 0:
            raise ConfigError(f"n_docs is {n_docs}; give a count of 0 or more")
        rng = random.Random(seed)
        kinds = ("bio",) * 4 + ("topic", "sentiment") * 2 + ("number",) + ("chat",) * 4
        docs = []
        for _ in range(n_docs):
            kind = rng.choice(kinds)
            if kind == "bio":
                docs.append(self.bio(rng.choice(self.entities), rng))
            elif kind in ("topic", "sentiment"):
                make = self.topic_sentence if kind == "topic" else self.sentiment_sentence
                label = rng.choice(LABELS[kind])
                text = " ".join(make(rng, label)[0] for _ in range(rng.randint(1, 3)))
                # a topic's name heads its texts, so the model ties the name to its words
                docs.append(f"{TOPIC_HEADER.format(t=label)} {text}" if kind == "topic" else text)
            elif kind == "number":
                docs.append(self.number_sentence(rng))
            else:
                persona = rng.choice((None, *LABELS["persona"]))
                gender = rng.choice((None, *LABELS["gender"]))
                chat = self.chat(rng, persona, gender, n_turns=rng.randint(1, 2))
                docs.append(render_chat(chat))
        return docs


def chat_prompt(user: str, system: str | None = None) -> str:
    """A chat ready for the assistant's reply: an optional system message, one user turn, then
    ``<assistant>`` (``"<system> ... <end> <user> ... <end> <assistant>"``)."""
    messages = [{"role": "system", "content": system}] if system else []
    return render_chat([*messages, {"role": "user", "content": user}]) + " <assistant>"


def make_world(seed: int = 0, n_entities: int = 40) -> ToyWorld:
    """Draw a toy world: ``n_entities`` people with two-syllable names and random attributes."""
    if not 1 <= n_entities <= MAX_ENTITIES:
        raise ConfigError(f"n_entities is {n_entities}; choose between 1 and {MAX_ENTITIES}")
    rng = random.Random(seed)
    taken = set(_base_words())  # membership tests only; never iterated
    entities = []
    while len(entities) < n_entities:
        syllables = (rng.choice(_ONSETS), rng.choice(_VOWELS), rng.choice(_ONSETS))
        name = "".join(syllables) + rng.choice(_VOWELS) + rng.choice(_CODAS)
        if name in taken:
            continue
        taken.add(name)
        values = {a: rng.choice(vs) for a, vs in ATTRIBUTES.items()}
        entities.append(Entity(name=name, **values))
    return ToyWorld(seed=seed, entities=tuple(entities))
