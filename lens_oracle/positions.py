"""Which tokens of a prompt to read: position selectors, and prompts tokenized for them.

A selector resolves to token indices of one prompt (its own, unpadded coordinates) given the
prompt's :class:`TokenizedPrompt`. Constructors check their arguments, so a bad selector fails
where it is written, not deep inside a capture. :mod:`lens_oracle.activations` re-exports every
name here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lens_oracle.errors import PositionError
from lens_oracle.validate import is_int

Prompt = str | Sequence[int]
"""A prompt: text (tokenized with special tokens) or token ids used as they are."""


@dataclass(frozen=True)
class LastToken:
    """The final token of the prompt."""

    def resolve(self, n_tokens: int, tokenized: TokenizedPrompt) -> list[int]:
        return [n_tokens - 1]


@dataclass(frozen=True)
class LastK:
    """The last ``k`` tokens (all of them if the prompt is shorter)."""

    k: int

    def __post_init__(self) -> None:
        if not is_int(self.k) or self.k < 1:
            raise PositionError(f"LastK needs an integer k >= 1, got {self.k!r}")

    def resolve(self, n_tokens: int, tokenized: TokenizedPrompt) -> list[int]:
        return list(range(max(0, n_tokens - self.k), n_tokens))


@dataclass(frozen=True)
class Segment:
    """Tokens ``start:end`` with Python slice semantics (negative indices count from the end)."""

    start: int
    end: int | None = None

    def __post_init__(self) -> None:
        if not is_int(self.start) or not (self.end is None or is_int(self.end)):
            raise PositionError(f"Segment needs integer bounds, got [{self.start!r}:{self.end!r}]")

    def resolve(self, n_tokens: int, tokenized: TokenizedPrompt) -> list[int]:
        picked = list(range(n_tokens))[self.start : self.end]
        if not picked:
            raise PositionError(
                f"segment [{self.start}:{self.end}] is empty in a prompt of {n_tokens} tokens"
            )
        return picked


@dataclass(frozen=True)
class AllTokens:
    """Every token of the prompt (special tokens included unless ``skip_special``)."""

    skip_special: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.skip_special, bool):
            raise PositionError(f"AllTokens(skip_special=...) takes True or False, got {self.skip_special!r}")

    def resolve(self, n_tokens: int, tokenized: TokenizedPrompt) -> list[int]:
        if not self.skip_special:
            return list(range(n_tokens))
        picked = [i for i in range(n_tokens) if not tokenized.special[i]]
        if not picked:
            raise PositionError("the prompt has only special tokens; nothing left to read")
        return picked


@dataclass(frozen=True)
class Indices:
    """Explicit token indices (negative counts from the end)."""

    indices: tuple[int, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.indices, (tuple, list)) or not self.indices:
            raise PositionError(f"Indices needs a non-empty tuple of token indices, got {self.indices!r}")
        if not all(is_int(i) for i in self.indices):
            raise PositionError(f"Indices takes integers only, got {tuple(self.indices)!r}")
        if len(set(self.indices)) != len(self.indices):
            raise PositionError(f"Indices{tuple(self.indices)} names a position twice; give each once")
        object.__setattr__(self, "indices", tuple(self.indices))

    def resolve(self, n_tokens: int, tokenized: TokenizedPrompt) -> list[int]:
        out = []
        for i in self.indices:
            j = i + n_tokens if i < 0 else i
            if not 0 <= j < n_tokens:
                raise PositionError(
                    f"position {i} is out of range for a prompt of {n_tokens} tokens; "
                    f"use -{n_tokens}..{n_tokens - 1}"
                )
            out.append(j)
        if len(set(out)) != len(out):
            raise PositionError(
                f"Indices{self.indices} reads a token twice in a prompt of {n_tokens} tokens; "
                "give each position once"
            )
        return out


@dataclass(frozen=True)
class Substring:
    """The tokens covering the ``occurrence``-th appearance of ``text`` in a text prompt; with
    ``through_end``, those and every token after them (e.g. a user's sentence about themselves
    through to where the model starts its reply)."""

    text: str
    occurrence: int = 0
    through_end: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text:
            raise PositionError(f"Substring needs non-empty text, got {self.text!r}")
        if not is_int(self.occurrence) or self.occurrence < 0:
            raise PositionError(
                f"Substring occurrence counts matches from 0 (the first); got {self.occurrence!r}"
            )
        if not isinstance(self.through_end, bool):
            raise PositionError(f"Substring(through_end=...) takes True or False, got {self.through_end!r}")

    def resolve(self, n_tokens: int, tokenized: TokenizedPrompt) -> list[int]:
        if tokenized.text is None or tokenized.offsets is None:
            raise PositionError("Substring positions need text prompts (not token ids) and a fast tokenizer")
        start = -1
        for _ in range(self.occurrence + 1):
            start = tokenized.text.find(self.text, start + 1)
            if start < 0:
                raise PositionError(
                    f"substring {self.text!r} (occurrence {self.occurrence}) not found in the prompt "
                    f"{tokenized.text[:80]!r}"
                )
        end = start + len(self.text)
        picked = [
            i for i, (a, b) in enumerate(tokenized.offsets) if b > a and a < end and b > start
        ]
        if not picked:
            raise PositionError(f"substring {self.text!r} covers no token of the prompt")
        return list(range(picked[0], n_tokens)) if self.through_end else picked


Positions = LastToken | LastK | Segment | AllTokens | Indices | Substring
SELECTORS = (LastToken, LastK, Segment, AllTokens, Indices, Substring)


def check_selector(positions: object) -> Positions:
    """``positions`` if it is a position selector, else a :class:`PositionError` naming them."""
    if not isinstance(positions, SELECTORS):
        names = ", ".join(f"{cls.__name__}()" for cls in SELECTORS)
        raise PositionError(f"positions must be a selector ({names}), got {positions!r}")
    return positions


@dataclass(frozen=True)
class TokenizedPrompt:
    """Token ids of one prompt, with what position selectors may need."""

    ids: tuple[int, ...]
    special: tuple[bool, ...]
    text: str | None = None
    offsets: tuple[tuple[int, int], ...] | None = None


def tokenize_prompt(tokenizer: object, prompt: Prompt) -> TokenizedPrompt:
    """Tokenize text with special tokens (BOS etc.), or take token ids as given."""
    special_ids = set(getattr(tokenizer, "all_special_ids", []))
    if isinstance(prompt, str):
        enc = tokenizer(prompt, add_special_tokens=True, return_offsets_mapping=True)  # type: ignore[operator]  # HF tokenizers are callable
        ids = tuple(int(i) for i in enc["input_ids"])
        offsets = tuple((int(a), int(b)) for a, b in enc["offset_mapping"])
        return TokenizedPrompt(ids, tuple(i in special_ids for i in ids), prompt, offsets)
    ids = tuple(int(i) for i in prompt)
    return TokenizedPrompt(ids, tuple(i in special_ids for i in ids))
