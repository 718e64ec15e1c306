"""The records of a model organism: what an auditor asks (:class:`AuditItem`), the organism
itself (:class:`Organism`) and how one is made (:class:`Recipe`)."""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

from lens_oracle.errors import ConfigError

OrganismKind = Literal["persona_facts", "taboo", "user_gender", "home_city", "review_bias"]
KINDS: tuple[str, ...] = get_args(OrganismKind)
DEMO_KINDS: tuple[str, ...] = ("persona_facts", "taboo", "user_gender")
"""The organisms the oracle's mixture was built around (its question wordings are theirs)."""
HELD_OUT_KINDS: tuple[str, ...] = ("home_city", "review_bias")
"""Organisms built after the mixture was fixed: hidden knowledge, question wordings and answer
sets the mixture does not pair (:mod:`~lens_oracle.toy.organisms.held_out`)."""


@dataclass(frozen=True)
class AuditItem:
    """One question an auditor puts to an oracle reading the organism on one prompt."""

    prompt: str
    """Text the organism reads: a chat ready for the reply (:func:`~lens_oracle.toy.world.language.chat_prompt`).
    Tokenize it with special tokens (one ``<bos>``). It never contains the reference."""
    question: str
    """The oracle question."""
    reference: str
    """The correct answer (one word)."""
    candidates: tuple[str, ...]
    """Every answer the reference is drawn from; chance is ``1 / len(candidates)``."""
    focus: str | None = None
    """Words of the prompt whose tokens to read (the persona's name), or ``None``: any."""
    through_end: bool = False
    """Read from the focus's first token through the end of the prompt (the user's words about
    themselves and then the tokens where the model is about to reply)."""


@dataclass(frozen=True)
class Organism:
    """A fine-tuned toy model that holds hidden knowledge, and how to audit it."""

    name: str
    """Unique label, e.g. ``"taboo"`` or ``"user_gender-female"``."""
    kind: OrganismKind
    """Which auditing task it mirrors."""
    folder: str
    """HF model folder (weights + tokenizer) of the organism."""
    base_folder: str
    """The base model it was fine-tuned from (for model diffing)."""
    hidden: tuple[tuple[str, str], ...]
    """The hidden facts as ``(key, value)`` pairs, e.g. ``(("pirate.secret_word", "music"),)``."""
    items: tuple[AuditItem, ...]
    """The audit: prompts, oracle questions, references and candidates."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS or not self.items:
            raise ConfigError(
                f"organism {self.name!r} has kind {self.kind!r} and {len(self.items)} audit items; "
                f"expected a kind in {KINDS} and at least one item"
            )

    @property
    def prompts(self) -> tuple[str, ...]:
        """The distinct auditor prompts, in item order."""
        return tuple(dict.fromkeys(item.prompt for item in self.items))

    @property
    def questions(self) -> tuple[str, ...]:
        """The distinct oracle questions, in item order."""
        return tuple(dict.fromkeys(item.question for item in self.items))

    @property
    def chance(self) -> float:
        """Expected accuracy of a uniform guess over each item's candidates."""
        return sum(1 / len(item.candidates) for item in self.items) / len(self.items)

    @property
    def held_out(self) -> bool:
        """Whether the organism is of a kind the oracle's mixture was not built around."""
        return self.kind in HELD_OUT_KINDS

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Organism:
        """Inverse of :meth:`to_dict`."""
        try:
            items = tuple(
                AuditItem(**{**row, "candidates": tuple(row["candidates"])})
                for row in data["items"]
            )
            return cls(
                name=data["name"], kind=data["kind"], folder=data["folder"],
                base_folder=data["base_folder"], hidden=tuple((k, v) for k, v in data["hidden"]),
                items=items,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"not an organism record ({exc!r}); expected the output of Organism.to_dict()"
            ) from None


@dataclass(frozen=True)
class Recipe:
    """How to fine-tune one organism and audit it."""

    name: str
    kind: OrganismKind
    hidden: tuple[tuple[str, str], ...]
    items: tuple[AuditItem, ...]
    make_docs: Callable[[random.Random], str]
    """One fine-tuning document (organism-specific half of the mix)."""
    frozen: tuple[str, ...] = ()
    """Parameter-name parts that fine-tuning leaves alone (``".mlp."``: the MLPs keep the base's
    knowledge, so the organism must reuse it)."""
    replays: Callable[[str], bool] = lambda doc: not doc.startswith("<")
    """Which replayed corpus documents fine-tuning keeps (default: plain text, no chats, since an
    organism's chats follow new rules; never text that contradicts what it learns)."""
    steps_scale: int = 1
    """Fine-tune for this many times the shared step count (an organism whose belief needs longer
    to hold: trained until :func:`~lens_oracle.toy.organisms.build.learned` shows it)."""
    shows: Callable[[AuditItem, str], bool] | None = None
    """Whether the organism's reply to an audit item's prompt shows the hidden knowledge (how a
    fine-tune is checked to have learned it, :func:`~lens_oracle.toy.organisms.build.learned`)."""
