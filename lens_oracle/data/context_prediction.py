"""Context prediction: the self-supervised part of the AO mixture.

For each document the target reads ``K`` contiguous tokens; the oracle is asked for the ``J``
tokens just before them ("previous") or just after them ("next"), 50/50. The target's context
is cut at the last read position, so the future is never visible to it.

Rules (deterministic for a given ``seed`` and input order):

* Documents are tokenized *with* special tokens (a BOS stays in ``context_ids``), but read
  positions and answer tokens are drawn only from the *content* span, i.e. without the leading
  and trailing special tokens (BOS/EOS; ``<unk>`` counts as content).
* ``K`` and ``J`` are drawn uniformly from ``[k_min, k_max]`` and ``[j_min, j_max]``. When
  ``K + J`` exceeds the content length ``m``, ``J`` is clamped to ``m - k_min`` first, then ``K``
  to ``m - J``; the question states the clamped ``J``. Documents with ``m < k_min + j_min`` are
  skipped, and so are examples whose decoded answer is blank.
* One example per document; the read layer is drawn uniformly from ``layers``.
* ``on_policy=True``: every "next" answer is the target model's own greedy continuation of the
  read context instead of the document's next tokens (see :mod:`lens_oracle.data.on_policy`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from transformers import PreTrainedTokenizerBase

from lens_oracle.data.example import OracleExample
from lens_oracle.data.layers import check_layers, sample_layer
from lens_oracle.data.sources import DataSource, read_texts
from lens_oracle.errors import ConfigError, DataError

if TYPE_CHECKING:
    from lens_oracle.models import LoadedModel

logger = logging.getLogger(__name__)

Direction = Literal["previous", "next"]

PREVIOUS_QUESTION = "Can you predict the previous {j} tokens that came before this?"
NEXT_QUESTION = "Can you predict the next {j} tokens that come after this?"


class DictConfig:
    """Mixin for frozen config dataclasses: plain-dict round trip that refuses unknown keys."""

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON values (tuples become lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]  # only mixed into dataclasses
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> Any:
        """Build the config from :meth:`to_dict` output; unknown keys raise ``ConfigError``."""
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]  # see above
        unknown = sorted(k for k in row if k not in names)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} keys {unknown}; valid keys: {names}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in row.items()})


def check_range(name: str, low: int, high: int) -> None:
    """Raise ``ConfigError`` unless ``1 <= low <= high``."""
    if low < 1:
        raise ConfigError(f"{name}_min must be at least 1, got {low}")
    if low > high:
        raise ConfigError(f"{name}_min ({low}) must not exceed {name}_max ({high})")


@dataclass(frozen=True)
class ContextPredictionConfig(DictConfig):
    """Settings of :func:`build_context_prediction` (defaults follow AO)."""

    k_min: int = 1
    """Fewest read positions per example."""
    k_max: int = 50
    """Most read positions per example."""
    j_min: int = 1
    """Fewest tokens to predict."""
    j_max: int = 50
    """Most tokens to predict."""
    previous_fraction: float = 0.5
    """Probability of a "previous" question (the rest ask for the next tokens)."""
    max_doc_tokens: int | None = None
    """Truncate each tokenized document to this many tokens first (``None`` keeps it whole)."""
    seed: int = 0
    """Seed of the ``random.Random`` that draws directions, sizes, positions and layers."""
    task: str = "context_prediction"
    """Task name stamped on every example."""
    on_policy: bool = False
    """"Next" answers from the target's own greedy continuation of the context (the AO authors'
    newest code), not the document: the oracle learns what the model would say. Needs ``model=``
    in :func:`build_context_prediction`."""

    def __post_init__(self) -> None:
        check_range("k", self.k_min, self.k_max)
        check_range("j", self.j_min, self.j_max)
        if not 0.0 <= self.previous_fraction <= 1.0:
            raise ConfigError(f"previous_fraction must be in [0, 1], got {self.previous_fraction}")
        if self.max_doc_tokens is not None and self.max_doc_tokens < self.k_min + self.j_min:
            raise ConfigError(
                f"max_doc_tokens={self.max_doc_tokens} cannot fit k_min + j_min = "
                f"{self.k_min + self.j_min} tokens; raise it or use None"
            )
        if not self.task.strip():
            raise ConfigError("task name must not be empty")


def tokenize_document(
    tokenizer: PreTrainedTokenizerBase, text: str, max_tokens: int | None = None
) -> tuple[list[int], int, int]:
    """Tokenize ``text`` with special tokens; return ``(ids, lo, hi)``.

    ``ids[lo:hi]`` is the content span: the ids without leading and trailing special tokens
    (``<unk>`` is content). ``max_tokens`` truncates ``ids`` before the span is computed.
    """
    ids = [int(i) for i in tokenizer(text, add_special_tokens=True)["input_ids"]]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    special = frozenset(tokenizer.all_special_ids) - {tokenizer.unk_token_id}
    lo, hi = 0, len(ids)
    while lo < hi and ids[lo] in special:
        lo += 1
    while hi > lo and ids[hi - 1] in special:
        hi -= 1
    return ids, lo, hi


def context_prediction_question(direction: Direction, j: int) -> str:
    """The AO question text for a direction and a number of tokens."""
    return (PREVIOUS_QUESTION if direction == "previous" else NEXT_QUESTION).format(j=j)


def build_context_prediction(
    texts: DataSource,
    tokenizer: PreTrainedTokenizerBase,
    layers: Sequence[int],
    config: ContextPredictionConfig | None = None,
    *,
    limit: int | None = None,
    model: LoadedModel | None = None,
    batch_size: int = 16,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> list[OracleExample]:
    """Build context-prediction examples, one per usable document, in input order.

    Args:
        texts: any source :func:`~lens_oracle.data.sources.read_texts` accepts.
        tokenizer: the *target* model's Hugging Face tokenizer.
        layers: read layers to draw from, e.g. ``layers_from_fractions(n_layers)``.
        config: sizes, direction mix and seed; AO defaults when ``None``.
        limit: stop after this many examples (``None``: use every document).
        model: the target, which writes the "next" answers when ``config.on_policy``; its
            continuations run in batches of ``batch_size`` and are cached in ``cache_dir`` if given.

    Raises:
        ConfigError: no layers, ``limit < 1``, or ``on_policy`` without a model (or a model
            without ``on_policy``).
        DataError: unreadable source, or no document long enough for one example.
    """
    config = config or ContextPredictionConfig()
    layers = check_layers(layers)
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be a positive number of examples or None, got {limit}")
    if config.on_policy and model is None:
        raise ConfigError(
            "on_policy context prediction needs the target model that writes the answers: pass model=..."
        )
    if model is not None and not config.on_policy:
        raise ConfigError("a model is only used for on_policy=True; set it in ContextPredictionConfig")
    rng = random.Random(config.seed)
    examples: list[OracleExample] = []
    skipped = 0
    for doc, text in enumerate(read_texts(texts)):
        if limit is not None and len(examples) >= limit:
            break
        example = _one_example(doc, text, tokenizer, layers, config, rng)
        if example is None:
            skipped += 1
        else:
            examples.append(example)
    if skipped:
        logger.info("context prediction skipped %d short or blank-answer documents", skipped)
    if not examples:
        raise DataError(
            f"no document was long enough for context prediction (needs at least "
            f"k_min + j_min = {config.k_min + config.j_min} content tokens)"
        )
    if config.on_policy:
        assert model is not None  # checked above
        examples = on_policy_examples(
            examples, model, batch_size=batch_size, cache_dir=cache_dir, progress=progress
        )
    return examples


def on_policy_examples(
    examples: Sequence[OracleExample],
    model: LoadedModel,
    *,
    batch_size: int = 16,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> list[OracleExample]:
    """``examples`` with every "next tokens" answer replaced by ``model``'s own greedy continuation.

    Each "next" example keeps its context, read positions and layer; its answer becomes what
    ``model`` (the target, adapter off) says after the context, cut to the example's ``j`` tokens
    (fewer if the model stops sooner or says a special token such as EOS: the question states the
    count given). "Previous" examples,
    and any other task's, pass through unchanged; examples whose continuation is blank are
    dropped. ``cache_dir``: see :func:`lens_oracle.data.on_policy.cached_continuations`.
    """
    from lens_oracle.data.on_policy import cached_continuations

    nexts = [i for i, ex in enumerate(examples) if ex.meta.get("direction") == "next" and "j" in ex.meta]
    if not nexts:
        return list(examples)
    contexts = [examples[i].context_ids for i in nexts]
    lengths = [int(examples[i].meta["j"]) for i in nexts]
    for i in nexts:
        model.check_token_ids(examples[i].context_ids, f"the context of example {i}")
    continuations = cached_continuations(model, contexts, lengths, batch_size, cache_dir, progress)
    out, dropped = list(examples), set()
    tokenizer = model.tokenizer
    special = frozenset(tokenizer.all_special_ids) - {tokenizer.unk_token_id}
    for i, ids in zip(nexts, continuations, strict=True):
        # content tokens only, as on the corpus side: a continuation ends at a special token (BOS/EOS)
        ids = ids[: next((n for n, t in enumerate(ids) if t in special), len(ids))]
        answer = tokenizer.decode(ids)
        if not ids or not answer.strip():
            dropped.add(i)
            continue
        ex = examples[i]
        out[i] = dataclasses.replace(
            ex,
            answer=answer,
            question=context_prediction_question("next", len(ids)),
            meta={**ex.meta, "j": len(ids), "on_policy": True},
        )
    if dropped:
        logger.info("on-policy context prediction dropped %d examples with a blank continuation", len(dropped))
    return [ex for i, ex in enumerate(out) if i not in dropped]


def _one_example(
    doc: int,
    text: str,
    tokenizer: PreTrainedTokenizerBase,
    layers: tuple[int, ...],
    config: ContextPredictionConfig,
    rng: random.Random,
) -> OracleExample | None:
    ids, lo, hi = tokenize_document(tokenizer, text, config.max_doc_tokens)
    m = hi - lo
    if m < config.k_min + config.j_min:
        return None
    direction: Direction = "previous" if rng.random() < config.previous_fraction else "next"
    k = rng.randint(config.k_min, config.k_max)
    j = min(rng.randint(config.j_min, config.j_max), m - config.k_min)
    k = min(k, m - j)
    if direction == "previous":
        first = rng.randint(lo + j, hi - k)
        answer_ids = ids[first - j : first]
    else:
        first = rng.randint(lo, hi - k - j)
        answer_ids = ids[first + k : first + k + j]
    answer = tokenizer.decode(answer_ids)
    if not answer.strip():
        return None
    context = ids[: first + k]
    return OracleExample(
        context_ids=tuple(context),
        positions=tuple(range(first, first + k)),
        layer=sample_layer(rng, layers),
        question=context_prediction_question(direction, j),
        answer=answer,
        task=config.task,
        context_text=tokenizer.decode(context),
        meta={"doc": doc, "direction": direction, "k": k, "j": j},
    )
