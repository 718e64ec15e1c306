"""The one record every data builder produces and the trainer consumes."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lens_oracle.errors import DataError, PromptError
from lens_oracle.validate import check_question, is_int


@dataclass(frozen=True)
class OracleExample:
    """One oracle training or evaluation example.

    The target model reads ``context_ids`` (already tokenized, so ``positions`` are exact
    token indices); the residual stream at the output of block ``layer`` is taken at
    ``positions`` and injected at one placeholder each in the oracle prompt, which asks
    ``question``; ``answer`` is the supervised reply.
    """

    context_ids: tuple[int, ...]
    """Token ids the target model reads (special tokens included)."""
    positions: tuple[int, ...]
    """Indices into ``context_ids`` whose activations are read, in order."""
    layer: int
    """Read layer: the output of decoder block ``layer`` (``blocks.{layer}.hook_resid_post``)."""
    question: str
    """The question put to the oracle."""
    answer: str
    """The reference answer (the training target)."""
    task: str = "custom"
    """Name of the task or mixture component this example came from."""
    context_text: str = ""
    """Human-readable context, for previews and reports only."""
    meta: Mapping[str, Any] = field(default_factory=dict)
    """Provenance: source file, row, builder settings. Plain JSON values only."""
    extra_layers: tuple[int, ...] = ()
    """Multi-layer queries (Meta-Models): more read layers after ``layer``. ``positions`` is
    read at each of :attr:`read_layers`, and the oracle prompt gets one tagged group per layer."""

    def __post_init__(self) -> None:
        self._check_types()
        if len(self.context_ids) == 0:
            raise DataError(f"example of task {self.task!r} has an empty context; give at least one token")
        if len(self.positions) == 0:
            raise DataError(f"example of task {self.task!r} reads no positions; give at least one")
        n = len(self.context_ids)
        bad = [p for p in self.positions if not 0 <= p < n]
        if bad:
            raise DataError(
                f"example of task {self.task!r} reads positions {bad} outside its context of "
                f"{n} tokens; positions must be in [0, {n - 1}]"
            )
        if self.layer < 0 or any(x < 0 for x in self.extra_layers):
            raise DataError(f"example of task {self.task!r} has a negative read layer {self.read_layers}")
        if len(set(self.read_layers)) != len(self.read_layers):
            raise DataError(f"example of task {self.task!r} reads a layer twice: {self.read_layers}")
        negative = [t for t in self.context_ids if t < 0]
        if negative:
            raise DataError(f"example of task {self.task!r} has negative token ids {negative[:5]}; ids are >= 0")
        try:
            check_question(self.question, f"the question of an example of task {self.task!r}")
        except PromptError as exc:
            raise DataError(str(exc)) from None
        if not self.answer.strip():
            raise DataError(f"example of task {self.task!r} has an empty answer; every example needs one")

    def _check_types(self) -> None:
        """Integers where ids, positions and layers go, text where text goes; lists become tuples."""
        for name in ("context_ids", "positions", "extra_layers"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)) or not all(
                is_int(v) for v in value
            ):
                raise DataError(f"OracleExample.{name} must be a tuple of integers, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if not is_int(self.layer):
            raise DataError(f"OracleExample.layer must be an integer block index, got {self.layer!r}")
        if not isinstance(self.meta, Mapping):
            raise DataError(f"OracleExample.meta must be a mapping of JSON values, got {self.meta!r}")
        for name in ("question", "answer", "task", "context_text"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise DataError(f"OracleExample.{name} must be text, got {value!r} ({type(value).__name__})")

    @property
    def read_layers(self) -> tuple[int, ...]:
        """Every read layer, in prompt order: ``layer``, then ``extra_layers``."""
        return (self.layer, *self.extra_layers)

    @property
    def layer_tag(self) -> int | tuple[int, ...]:
        """What the oracle prompt is tagged with: ``layer``, or all read layers if several."""
        return self.read_layers if self.extra_layers else self.layer

    def to_dict(self) -> dict[str, Any]:
        row = {
            "context_ids": list(self.context_ids),
            "positions": list(self.positions),
            "layer": self.layer,
            "question": self.question,
            "answer": self.answer,
            "task": self.task,
            "context_text": self.context_text,
            "meta": dict(self.meta),
        }
        if self.extra_layers:  # single-layer rows keep the original file format, byte for byte
            row["extra_layers"] = list(self.extra_layers)
        return row

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> OracleExample:
        required = {"context_ids": list, "positions": list, "layer": int, "question": str, "answer": str}
        for name, kind in required.items():
            if name not in row:
                raise DataError(f"example row is missing the field {name!r}; required: {sorted(required)}")
            if not isinstance(row[name], kind) or (kind is int and isinstance(row[name], bool)):
                raise DataError(
                    f"example field {name!r} should be {kind.__name__}, got {type(row[name]).__name__}"
                )
        extra = row.get("extra_layers", [])
        if not isinstance(extra, list):
            raise DataError(f"example field 'extra_layers' should be list, got {type(extra).__name__}")
        for name, values in (("context_ids", row["context_ids"]), ("positions", row["positions"]),
                             ("extra_layers", extra)):
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                raise DataError(f"example field {name!r} should hold integers only")
        return cls(
            context_ids=tuple(row["context_ids"]),
            positions=tuple(row["positions"]),
            layer=row["layer"],
            question=row["question"],
            answer=row["answer"],
            task=str(row.get("task", "custom")),
            context_text=str(row.get("context_text", "")),
            meta=dict(row.get("meta", {})),
            extra_layers=tuple(extra),
        )


def example_list(examples: object, what: str = "training") -> list[OracleExample]:
    """``examples`` (meant to be OracleExamples) as a list (a generator is read once), refused
    with a :class:`DataError` when empty or when an item is not an :class:`OracleExample`;
    ``what`` names them in the message."""
    if isinstance(examples, (str, bytes, Mapping)) or not isinstance(examples, Iterable):
        raise DataError(f"{what} examples must be a list of OracleExample, got {type(examples).__name__}")
    examples = list(examples)
    if not examples:
        raise DataError(f"no {what} examples given")
    for index, ex in enumerate(examples):
        if not isinstance(ex, OracleExample):
            hint = "; build it with OracleExample.from_dict(row)" if isinstance(ex, Mapping) else ""
            raise DataError(f"{what} example {index} is a {type(ex).__name__}, not an OracleExample{hint}")
    return examples


def write_jsonl(examples: Iterable[OracleExample], path: str | Path) -> Path:
    """Write examples to JSONL atomically, with a stable key order (same data -> same bytes)."""
    from lens_oracle.io import atomic_write_text

    lines = [json.dumps(ex.to_dict(), sort_keys=True, ensure_ascii=False) for ex in examples]
    return atomic_write_text(Path(path), "".join(line + "\n" for line in lines))


def read_jsonl(path: str | Path) -> Iterator[OracleExample]:
    """Read examples written by :func:`write_jsonl`, with the line number in any error."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"example file {str(path)!r} does not exist; check the path")
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number} is not valid JSON ({exc.msg})") from None
            try:
                yield OracleExample.from_dict(row)
            except DataError as exc:
                raise DataError(f"{path}:{number}: {exc}") from None
