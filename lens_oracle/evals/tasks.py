"""Evaluation tasks: typed frozen records (their JSON file form is in :mod:`.taskfile`).

A task names a target (the oracle's own base model, a local model folder, or a fine-tuned +
base pair for *difference* mode), the prompts it reads, the read layer / site / positions, the
oracle question paraphrases, the reference answers and how answers are scored. Models are named
by folder in the file and loaded by the runner; see :mod:`lens_oracle.evals.targets`.

See :mod:`lens_oracle.evals.taskfile` for the task file format.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, get_args

from lens_oracle.activations import (
    AllTokens,
    Indices,
    LastK,
    LastToken,
    Positions,
    Segment,
    Substring,
)
from lens_oracle.config import Site
from lens_oracle.errors import EvalError
from lens_oracle.evals.metrics import normalize_answer

Scorer = Literal["exact", "contains", "token_f1", "rouge_l", "chrf", "yes_no"]
SampleScore = Literal["any", "majority", "mean"]
"""How sampled answers make one item score: the best sample, the most common answer's score,
or the mean over samples."""
SAMPLE_SCORES: tuple[str, ...] = get_args(SampleScore)
Granularity = Literal["joint", "each"]
"""How the oracle reads an item's positions: all in one query (``joint``: AO's segment and
full-sequence probes), or each position in a query of its own (``each``: AO's token-level probe),
the per-position answers then scored like samples, by ``sample_score``."""
GRANULARITIES: tuple[str, ...] = get_args(Granularity)
"""How a predicted answer is scored against the references (see :mod:`.scoring`)."""
SCORERS: tuple[str, ...] = get_args(Scorer)

_POSITION_KINDS: dict[str, type] = {
    "last_token": LastToken,
    "last_k": LastK,
    "segment": Segment,
    "all_tokens": AllTokens,
    "indices": Indices,
    "substring": Substring,
}


def positions_to_dict(selector: Positions) -> dict[str, Any]:
    """A position selector as JSON: ``{"kind": "last_k", "k": 3}``."""
    for kind, cls in _POSITION_KINDS.items():
        if type(selector) is cls:
            data = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(selector).items()}
            return {"kind": kind, **data}
    raise EvalError(f"unknown position selector {selector!r}; use one from lens_oracle.activations")


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "k": (int,),
    "start": (int,),
    "end": (int, type(None)),
    "skip_special": (bool,),
    "indices": (list,),
    "text": (str,),
    "occurrence": (int,),
    "through_end": (bool,),
}
_BOOL_FIELDS = frozenset(name for name, types in _FIELD_TYPES.items() if types == (bool,))


def positions_from_dict(data: Any, where: str = "positions") -> Positions:
    """Inverse of :func:`positions_to_dict`, with the offending field named in errors."""
    if not isinstance(data, Mapping) or "kind" not in data:
        raise EvalError(f"{where} must be an object with a 'kind' among {sorted(_POSITION_KINDS)}")
    kind = data["kind"]
    if kind not in _POSITION_KINDS:
        raise EvalError(f"{where}.kind is {kind!r}; choose one of {sorted(_POSITION_KINDS)}")
    cls = _POSITION_KINDS[kind]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    given = {k: v for k, v in data.items() if k != "kind"}
    required = {n for n, f in fields.items() if f.default is dataclasses.MISSING}
    if set(given) - set(fields) or required - set(given):
        raise EvalError(
            f"{where}: bad fields for kind {kind!r}: got {sorted(given)}, expected {sorted(fields)}"
        )
    for name, value in given.items():
        ok = isinstance(value, _FIELD_TYPES[name]) and (
            name in _BOOL_FIELDS or not isinstance(value, bool)
        )
        if name == "indices":
            ok = (
                ok
                and bool(value)
                and all(isinstance(i, int) and not isinstance(i, bool) for i in value)
            )
        if not ok:
            raise EvalError(f"{where}.{name} has the wrong type ({value!r}) for kind {kind!r}")
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in given.items()}
    return cls(**kwargs)  # type: ignore[no-any-return]  # one of the Positions classes


def describe_positions(selector: Positions | None) -> str:
    """A short label for reports: ``last_token``, ``last_k=3``, ``segment=2:5``, ``per_item``."""
    if selector is None:
        return "per_item"
    data = positions_to_dict(selector)
    kind = data.pop("kind")
    if not data or data == {"skip_special": False}:
        return str(kind)
    if kind == "segment":
        return f"segment={data['start']}:{'' if data['end'] is None else data['end']}"
    return f"{kind}=" + ",".join(str(v) for v in data.values())


@dataclass(frozen=True)
class TargetSpec:
    """Which model the activations are read from, named by folder (JSON-friendly)."""

    model: str | None = None
    """Folder of the target model; ``None`` = the oracle's own base model, adapter off."""
    base: str | None = None
    """Difference mode (model diffing): folder of the base model. Vectors are the target's
    activations minus the base's at the same tokens, positions and layer."""

    @property
    def difference(self) -> bool:
        return self.base is not None

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "base": self.base}


@dataclass(frozen=True)
class EvalItem:
    """One evaluated prompt with its reference answer(s)."""

    context: str | tuple[int, ...]
    """What the target reads: text (tokenized with special tokens) or token ids as given."""
    references: tuple[str, ...]
    """Accepted answers; the first one is the item's label for probes and yes/no tasks."""
    positions: Positions | None = None
    """Per-item read positions, overriding the task's (e.g. where the answer token sits)."""
    questions: tuple[str, ...] = ()
    """Per-item question paraphrases, overriding the task's (e.g. ``is the colour red?``)."""

    def __post_init__(self) -> None:
        for name in ("context", "references", "questions"):  # accept lists from Python callers
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if isinstance(self.context, str):
            if not self.context:
                raise EvalError("an item has an empty context; give text or token ids")
        elif not self.context or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in self.context
        ):
            raise EvalError("an item's token-id context must be a non-empty list of integers")
        if isinstance(self.references, str) or not self.references:
            raise EvalError("an item needs references as a non-empty list of strings")
        if not all(isinstance(r, str) for r in self.references):
            raise EvalError(f"references must be strings, got {list(self.references)!r}")

    @property
    def label(self) -> str:
        """The normalised first reference (class label for probes and yes/no)."""
        return normalize_answer(self.references[0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "context": self.context if isinstance(self.context, str) else list(self.context),
            "references": list(self.references),
            "positions": None if self.positions is None else positions_to_dict(self.positions),
            "questions": list(self.questions),
        }


@dataclass(frozen=True)
class EvalTask:
    """A named set of items evaluated the same way (one row group of a report)."""

    name: str
    items: tuple[EvalItem, ...]
    questions: tuple[str, ...] = ()
    """Oracle question paraphrases; reports give the mean over them and the best one."""
    layer: int | None = None
    """Read layer (output of block ``layer``); ``None`` = 50% depth, AO's evaluation default."""
    site: Site = "resid_post"
    positions: Positions = field(default_factory=LastToken)
    """Read positions for items without their own."""
    scorer: Scorer = "exact"
    candidates: tuple[str, ...] = ()
    """Finite answer set (classification): used by the logit lens and the linear probe."""
    synonyms: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Canonical answer -> accepted alternatives (see ``metrics.exact_match``)."""
    target: TargetSpec = field(default_factory=TargetSpec)
    train_items: tuple[EvalItem, ...] = ()
    """Labelled items for the supervised linear probe (never scored)."""
    max_new_tokens: int = 16
    extra_layers: tuple[int, ...] = ()
    """Multi-layer queries (Meta-Models): more read layers after ``layer``; the oracle gets the
    same positions at every layer, one tagged group per layer."""
    samples: int = 0
    """0: greedy answers. N: the oracle family samples N answers per item and paraphrase (the AO
    open-ended protocol: temperature 0.7, top-p 0.9; seeded by the run's seed), scored by
    ``sample_score``; the black box and the logit lens stay greedy."""
    sample_score: SampleScore = "mean"
    granularity: Granularity = "joint"
    """``joint``: one query reads every position; ``each``: one query per read position (with
    ``samples``, each position is sampled that many times), scored by ``sample_score``."""
    kind: str = ""
    """A free label grouping tasks in summaries, e.g. the generative QA protocol's
    ``classification`` / ``fact_retrieval`` / ``gist`` (:mod:`lens_oracle.evals.protocol`)."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise EvalError("a task needs a non-empty name")
        where = f"task {self.name!r}"
        if not self.items:
            raise EvalError(f"{where} has no items; give at least one")
        if self.scorer not in SCORERS:
            raise EvalError(
                f"{where}: scorer {self.scorer!r} is unknown; choose one of {list(SCORERS)}"
            )
        if isinstance(self.questions, str) or isinstance(self.candidates, str):
            raise EvalError(f"{where}: questions and candidates must be lists of strings")
        counts = {len(item.questions or self.questions) for item in self.items}
        if 0 in counts:
            raise EvalError(f"{where}: give questions for the task or for every item")
        if len(counts) > 1:
            raise EvalError(
                f"{where}: items have different numbers of question paraphrases {sorted(counts)}"
            )
        if self.layer is not None and (
            isinstance(self.layer, bool) or not isinstance(self.layer, int)
        ):
            raise EvalError(f"{where}: layer must be an integer or null, got {self.layer!r}")
        if self.site not in get_args(Site):
            raise EvalError(
                f"{where}: site {self.site!r} is unknown; choose one of {list(get_args(Site))}"
            )
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise EvalError(f"{where}: max_new_tokens must be a positive integer")
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 0:
            raise EvalError(f"{where}: samples must be 0 (greedy) or a positive number of samples")
        if self.sample_score not in SAMPLE_SCORES:
            raise EvalError(f"{where}: sample_score must be one of {list(SAMPLE_SCORES)}, got {self.sample_score!r}")
        if not isinstance(self.kind, str):
            raise EvalError(f"{where}: kind must be text, got {self.kind!r}")
        if self.granularity not in GRANULARITIES:
            raise EvalError(f"{where}: granularity must be one of {list(GRANULARITIES)}, got {self.granularity!r}")
        if self.granularity == "each" and self.extra_layers:
            raise EvalError(
                f"{where}: granularity 'each' asks one position at a time; a multi-layer task "
                "(extra_layers) reads every position at several layers: use granularity 'joint'"
            )
        if isinstance(self.extra_layers, list):
            object.__setattr__(self, "extra_layers", tuple(self.extra_layers))
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in self.extra_layers):
            raise EvalError(f"{where}: extra_layers must be integers, got {self.extra_layers!r}")
        labels = set(self.label_set)
        if labels:
            for item in self.train_items:
                if item.label not in labels:
                    raise EvalError(
                        f"{where}: train item label {item.references[0]!r} is not among the "
                        f"candidates {list(self.label_set)}; a probe needs labels from that set"
                    )

    @property
    def n_questions(self) -> int:
        """Number of question paraphrases each item is asked with."""
        return len(self.items[0].questions or self.questions)

    @property
    def label_set(self) -> tuple[str, ...]:
        """Normalised candidates (``("yes", "no")`` for yes/no tasks without candidates)."""
        cands = self.candidates or (("yes", "no") if self.scorer == "yes_no" else ())
        return tuple(dict.fromkeys(normalize_answer(c) for c in cands))

    def questions_for(self, item: EvalItem) -> tuple[str, ...]:
        return item.questions or self.questions

    def variant(
        self, *, layer: int | None = None, positions: Positions | None = None, granularity: Granularity | None = None
    ) -> EvalTask:
        """The same task at another read layer, position policy and/or granularity.

        A new ``positions`` policy applies to every item: per-item positions are dropped.
        """
        task = self if layer is None else replace(self, layer=layer)
        if granularity is not None:
            task = replace(task, granularity=granularity)
        if positions is not None:
            items = tuple(replace(i, positions=None) for i in task.items)
            train = tuple(replace(i, positions=None) for i in task.train_items)
            task = replace(task, positions=positions, items=items, train_items=train)
        return task

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "items": [i.to_dict() for i in self.items],
            "questions": list(self.questions),
            "layer": self.layer,
            "site": self.site,
            "positions": positions_to_dict(self.positions),
            "scorer": self.scorer,
            "candidates": list(self.candidates),
            "synonyms": {k: list(v) for k, v in sorted(self.synonyms.items())},
            "target": self.target.to_dict(),
            "train_items": [i.to_dict() for i in self.train_items],
            "max_new_tokens": self.max_new_tokens,
            **({"extra_layers": list(self.extra_layers)} if self.extra_layers else {}),
            **({"samples": self.samples, "sample_score": self.sample_score} if self.samples else {}),
            **({"granularity": self.granularity, "sample_score": self.sample_score} if self.granularity != "joint" else {}),
            **({"kind": self.kind} if self.kind else {}),
        }
