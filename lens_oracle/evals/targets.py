"""Targets and prepared items: which model is read, and the vectors every method shares.

The runner resolves a task's :class:`~lens_oracle.evals.tasks.TargetSpec` to a :class:`Target`
(loaded models), then :func:`prepare` tokenizes the items, resolves their read positions and
reads the activation vectors once, so every method sees exactly the same items and vectors.

*Difference mode* (AO's model diffing): the vectors are the fine-tuned target's activations
minus the base model's, at the same tokens, positions, layer and site.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass

import torch

from lens_oracle.activations import read_vectors, tokenize_prompt
from lens_oracle.config import Site
from lens_oracle.errors import EvalError, LensOracleError
from lens_oracle.evals.tasks import EvalItem, EvalTask, TargetSpec
from lens_oracle.models import LoadedModel, load_model, resolve_layers
from lens_oracle.oracle import ActivationOracle
from lens_oracle.typing import ExampleVectors

log = logging.getLogger(__name__)

ModelLoader = Callable[[str], LoadedModel]


@dataclass(frozen=True)
class Target:
    """Loaded target model(s). Reads always run with any adapter switched off."""

    model: LoadedModel
    """The model read (and asked, by the black-box baseline); the fine-tuned one when diffing."""
    base: LoadedModel | None = None
    """Difference mode: the base model whose activations are subtracted."""

    def __post_init__(self) -> None:
        if self.base is None:
            return
        a, b = self.model, self.base
        if (a.d_model, a.n_layers) != (b.d_model, b.n_layers) or len(a.tokenizer) != len(
            b.tokenizer
        ):
            raise EvalError(
                f"difference mode needs two models of one shape and vocabulary; {a.name!r} has "
                f"d_model {a.d_model}, {a.n_layers} blocks, {len(a.tokenizer)} tokens and {b.name!r} "
                f"has d_model {b.d_model}, {b.n_layers} blocks, {len(b.tokenizer)} tokens"
            )


def default_loader(oracle: ActivationOracle) -> ModelLoader:
    """Load a target folder offline, on the oracle's device and in its dtype, without adapter."""
    device = oracle.model.device
    dtype = next(oracle.model.hf_model.parameters()).dtype

    def load(path: str) -> LoadedModel:
        return load_model(path, trainable=False, dtype=dtype, device=device)

    return load


def resolve_target(
    oracle: ActivationOracle,
    spec: TargetSpec,
    *,
    cache: MutableMapping[str, LoadedModel] | None = None,
    loader: ModelLoader | None = None,
) -> Target:
    """Load ``spec``'s models (each folder once per ``cache``); no folder = the oracle's base.

    A cross-model oracle reads its projector's source model: the task must name it (or pass
    ``target=`` to the runner), and it is checked against the projector.
    """
    if oracle.projector is not None and spec.model is None:
        raise EvalError(
            f"the oracle reads {oracle.projector.config.source_model!r} activations through its "
            "projector, not its own; name that model as the task's target or pass target=..."
        )
    cache = {} if cache is None else cache
    loader = loader or default_loader(oracle)

    def get(path: str | None) -> LoadedModel:
        if path is None:
            return oracle.model
        if path not in cache:
            try:
                cache[path] = loader(path)
            except LensOracleError as exc:
                raise EvalError(f"could not load the target model {path!r}: {exc}") from None
        return cache[path]

    target = Target(get(spec.model), None if spec.base is None else get(spec.base))
    check_target(oracle, target)
    return target


def check_target(oracle: ActivationOracle, target: Target) -> None:
    """Refuse a target the oracle cannot read (another width, or not its projector's source)."""
    if oracle.projector is not None:
        try:
            oracle.projector.check_source(target.model)
        except LensOracleError as exc:
            raise EvalError(str(exc)) from None
    if target.model.d_model != oracle.input_d_model:
        raise EvalError(
            f"target {target.model.name!r} has d_model {target.model.d_model} but the oracle expects "
            f"{oracle.input_d_model}; evaluate targets of the oracle's own model family"
        )


@dataclass(frozen=True)
class Prepared:
    """A task's items, tokenized, with resolved positions and the vectors read from the target."""

    task: EvalTask
    layer: int
    """Resolved read layer (also the oracle prompt's layer tag)."""
    items: tuple[EvalItem, ...]
    contexts: tuple[tuple[int, ...], ...]
    positions: tuple[tuple[int, ...], ...]
    vectors: tuple[ExampleVectors, ...]
    """Item i's ``[len(positions[i]), d_model]`` float32 vectors (CPU); multi-layer tasks hold
    ``len(positions[i])`` vectors per read layer, layer by layer."""
    extra_layers: tuple[int, ...] = ()
    """Resolved further read layers of a multi-layer task."""

    def __len__(self) -> int:
        return len(self.items)

    @property
    def tag(self) -> int | tuple[int, ...]:
        """The oracle prompt's layer tag: the layer, or every read layer of a multi-layer task."""
        return (self.layer, *self.extra_layers) if self.extra_layers else self.layer

    def questions(self, k: int) -> list[str]:
        """Paraphrase ``k`` of every item's question."""
        return [self.task.questions_for(item)[k] for item in self.items]


def read_layer(task: EvalTask, model: LoadedModel) -> int:
    """The task's read layer, resolved (``None`` = 50% depth, AO's evaluation default)."""
    layer = model.n_layers // 2 if task.layer is None else task.layer
    try:
        return resolve_layers(model, [layer])[0]
    except LensOracleError as exc:
        raise EvalError(f"task {task.name!r}: {exc}") from None


@torch.no_grad()
def target_vectors(
    target: Target,
    contexts: Sequence[Sequence[int]],
    positions: Sequence[Sequence[int]],
    layer: int | tuple[int, ...],
    *,
    site: Site = "resid_post",
    batch_size: int = 16,
) -> list[ExampleVectors]:
    """Vectors at ``positions`` of ``layer`` (or of each layer of a tuple, layer by layer): the
    target's, or target minus base when diffing."""

    def read(model: LoadedModel) -> list[ExampleVectors]:
        out: list[ExampleVectors] = []
        with model.adapter_disabled():
            for start in range(0, len(contexts), batch_size):
                chunk = slice(start, start + batch_size)
                out.extend(
                    read_vectors(
                        model,
                        contexts[chunk],
                        positions[chunk],
                        [layer] * len(contexts[chunk]),
                        site=site,
                    )
                )
        return out

    vectors = read(target.model)
    if target.base is not None:
        vectors = [ft - base for ft, base in zip(vectors, read(target.base), strict=True)]
        same = [i for i, v in enumerate(vectors) if bool((v.norm(dim=-1) == 0).any())]
        if same:
            raise EvalError(
                f"difference mode: the two models give identical activations for item {same[0]}; "
                "the difference has no direction to inject. Check that the folders differ"
            )
    return vectors


def tokenize_items(
    task: EvalTask, items: Sequence[EvalItem], tokenizer: object
) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """Token ids and resolved read positions of ``items``."""
    contexts, positions = [], []
    for i, item in enumerate(items):
        tokenized = tokenize_prompt(tokenizer, item.context)
        selector = item.positions or task.positions
        try:
            picked = selector.resolve(len(tokenized.ids), tokenized)
        except LensOracleError as exc:
            raise EvalError(f"task {task.name!r}, item {i}: {exc}") from None
        contexts.append(tokenized.ids)
        positions.append(tuple(picked))
    return contexts, positions


def prepare(
    task: EvalTask,
    target: Target,
    *,
    items: Sequence[EvalItem] | None = None,
    batch_size: int = 16,
) -> Prepared:
    """Tokenize ``items`` (default: the task's) and read their vectors from ``target``."""
    items = tuple(task.items if items is None else items)
    if not items:
        raise EvalError(f"task {task.name!r}: no items to prepare")
    layer = read_layer(task, target.model)
    try:
        extra = tuple(resolve_layers(target.model, list(task.extra_layers)))
    except LensOracleError as exc:
        raise EvalError(f"task {task.name!r}: {exc}") from None
    if len({layer, *extra}) != 1 + len(extra):
        raise EvalError(f"task {task.name!r} reads a layer twice: {(layer, *extra)}")
    contexts, positions = tokenize_items(task, items, target.model.tokenizer)
    try:
        vectors = target_vectors(
            target, contexts, positions, (layer, *extra) if extra else layer,
            site=task.site, batch_size=batch_size,
        )
    except EvalError:
        raise
    except LensOracleError as exc:
        raise EvalError(f"task {task.name!r}: {exc}") from None
    return Prepared(task, layer, items, tuple(contexts), tuple(positions), tuple(vectors), extra)
