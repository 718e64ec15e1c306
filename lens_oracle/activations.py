"""Read residual-stream activations from a target model at chosen layers, sites and positions.

No gradients; the forward pass stops after the deepest block it needs (``stop_at_layer``).
Prompts of different lengths are padded; positions are always given and reported in each
prompt's own (unpadded) token coordinates. Position selectors live in :mod:`lens_oracle.positions`
and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch
from einops import pack

from lens_oracle.config import ActivationConvention, Site
from lens_oracle.errors import ActivationError, HookError, PositionError, PromptError
from lens_oracle.inject import stack_vectors
from lens_oracle.models import LoadedModel, resolve_layers
from lens_oracle.positions import (
    SELECTORS,
    AllTokens,
    Indices,
    LastK,
    LastToken,
    Positions,
    Prompt,
    Segment,
    Substring,
    TokenizedPrompt,
    check_selector,
    tokenize_prompt,
)
from lens_oracle.typing import ExampleVectors, Residual, VectorCounts, Vectors
from lens_oracle.validate import check_count, is_int

InputType = Literal["orig", "diff"]
"""What activation vectors are (the Activation Oracles authors' input types ``orig`` and ``diff``)."""


# ---------------------------------------------------------------- the record


@dataclass(frozen=True)
class Activations:
    """Activation vectors read from a target model, ready to inject into an oracle.

    ``vectors[b, :counts[b]]`` are example b's vectors, in position order; the rest is padding.
    """

    vectors: Vectors
    counts: VectorCounts
    layer: int
    """Read layer: block index of the hook the vectors came from."""
    site: Site
    positions: tuple[tuple[int, ...], ...]
    """Token indices read in each prompt (unpadded coordinates)."""
    source: str
    """Name of the model the activations came from."""
    convention: ActivationConvention = "hf"
    """Residual-stream convention: raw HF weights, or HookedTransformer's processed weights."""
    input_type: InputType = "orig"
    """``orig``: one model's activations; ``diff``: a fine-tuned model's minus its base model's
    at the same positions (model diffing, :func:`capture_diff`)."""

    def __post_init__(self) -> None:
        if self.vectors.shape[0] != self.counts.shape[0] or len(self.positions) != self.counts.shape[0]:
            raise ActivationError("vectors, counts and positions disagree on the batch size")

    def __len__(self) -> int:
        return int(self.counts.shape[0])

    @property
    def d_model(self) -> int:
        return int(self.vectors.shape[-1])

    def example(self, index: int) -> ExampleVectors:
        """Example ``index``'s vectors as ``[n_vec, d_model]``."""
        return self.vectors[index, : int(self.counts[index])]

    def select(self, indices: Sequence[int]) -> Activations:
        """A sub-batch, in the given order."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        width = int(self.counts[idx].max()) if len(idx) else 0
        return replace(
            self,
            vectors=self.vectors[idx, :width],
            counts=self.counts[idx],
            positions=tuple(self.positions[i] for i in indices),
        )

    def with_vectors(self, vectors: Vectors) -> Activations:
        """The same record with other vectors of the same shape (ablations, projections)."""
        if vectors.shape[:2] != self.vectors.shape[:2]:
            raise ActivationError(
                f"replacement vectors have shape {tuple(vectors.shape)}, expected "
                f"{tuple(self.vectors.shape[:2])} + (d_model,)"
            )
        return replace(self, vectors=vectors)


# ---------------------------------------------------------------- reading


def _check_prompts(prompts: object) -> None:
    """Prompts are a non-empty list of texts (not blank) or of non-empty token-id lists."""
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not prompts:
        raise PromptError(f"no prompts given ({prompts!r}); pass a list of strings or token-id lists")
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            if not prompt.strip():
                raise PromptError(f"prompt {i} is blank; an oracle would read only special tokens")
        elif isinstance(prompt, (Sequence, torch.Tensor)) and not isinstance(prompt, bytes):
            ids = prompt.tolist() if isinstance(prompt, torch.Tensor) else list(prompt)
            if not ids or not all(is_int(t) for t in ids):
                raise PromptError(f"prompt {i} must be text or a non-empty list of integer token ids, got {prompt!r}")
        else:
            raise PromptError(f"prompt {i} must be text or a list of token ids, got {type(prompt).__name__}")


def _stop_layer(layer: int, site: Site) -> int:
    return layer if site == "resid_pre" else layer + 1


def _check_contexts(model: LoadedModel, contexts: Sequence[Sequence[int]], positions: Sequence[Sequence[int]]) -> None:
    n_ctx = model.n_ctx
    for i, (ctx, pos) in enumerate(zip(contexts, positions, strict=True)):
        if len(ctx) == 0:
            raise PromptError(f"prompt {i} is empty")
        model.check_token_ids(ctx, f"prompt {i}")
        if len(ctx) > n_ctx:
            raise PromptError(
                f"prompt {i} has {len(ctx)} tokens, more than the model's context of {n_ctx}; "
                "truncate it or read fewer tokens"
            )
        if not pos:
            raise PositionError(f"prompt {i} reads no positions")
        bad = [p for p in pos if not 0 <= p < len(ctx)]
        if bad:
            raise PositionError(f"prompt {i} has {len(ctx)} tokens; positions {bad} are out of range")


def _residuals(
    model: LoadedModel,
    contexts: Sequence[Sequence[int]],
    layers: Sequence[int],
    site: Site,
    padding_side: Literal["left", "right"],
    grad: bool = False,
) -> tuple[dict[int, Residual], list[int]]:
    """One padded forward pass stopping after the deepest layer; residuals at ``layers``.

    Returns ``{layer: [batch, pos, d_model]}`` and each row's padding offset. ``grad=True`` keeps
    the autograd graph (the residuals stay attached to the model's weights).
    """
    names = {layer: model.hook_name(layer, site) for layer in sorted(set(layers))}
    stored: dict[int, Residual] = {}

    def keeper(layer: int) -> Callable[[Residual, object], Residual]:
        def keep(resid: Residual, hook: object) -> Residual:
            stored[layer] = resid if grad else resid.detach()
            return resid

        return keep

    width = max(len(c) for c in contexts)
    ids = torch.full((len(contexts), width), model.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(contexts), width), dtype=torch.long)
    offsets = []
    for row, ctx in enumerate(contexts):
        start = width - len(ctx) if padding_side == "left" else 0
        ids[row, start : start + len(ctx)] = torch.tensor(list(ctx), dtype=torch.long)
        mask[row, start : start + len(ctx)] = 1
        offsets.append(start)
    stop = max(_stop_layer(layer, site) for layer in names)
    device = model.device
    hooks = [(name, keeper(layer)) for layer, name in names.items()]
    with torch.set_grad_enabled(grad), model.bridge.hooks(fwd_hooks=hooks):
        model.bridge(ids.to(device), attention_mask=mask.to(device), stop_at_layer=stop)
    return stored, offsets


def _gather(resid: Residual, row: int, offset: int, positions: Sequence[int]) -> ExampleVectors:
    index = torch.tensor([offset + p for p in positions], device=resid.device)
    return resid[row].index_select(0, index).float().cpu()


def read_vectors(
    model: LoadedModel,
    contexts: Sequence[Sequence[int]],
    positions: Sequence[Sequence[int]],
    layers: Sequence[int | Sequence[int]],
    *,
    site: Site = "resid_post",
    padding_side: Literal["left", "right"] = "right",
    grad: bool = False,
) -> list[ExampleVectors]:
    """Example i's vectors at ``positions[i]`` of layer ``layers[i]``, in one batched pass.

    Returns a list of ``[len(positions[i]), d_model]`` float32 tensors on the CPU. The model runs
    as it is: switch an adapter off around the call for the target role. A multi-layer query
    gives a tuple of layers: its vectors are ``positions[i]`` at each layer, layer by layer.
    ``grad=True`` keeps the graph, so a loss on the vectors trains the model's adapter (steering
    through an oracle, :mod:`lens_oracle.control`); by default nothing is tracked.
    """
    if not (len(contexts) == len(positions) == len(layers)):
        raise ActivationError("contexts, positions and layers must have the same length")
    groups = [(layer,) if isinstance(layer, int) else tuple(layer) for layer in layers]
    if not all(groups):
        raise ActivationError("an example has an empty tuple of read layers; give at least one")
    _check_contexts(model, contexts, positions)
    stored, offsets = _residuals(model, contexts, [x for g in groups for x in g], site, padding_side, grad)
    return [
        pack([_gather(stored[layer], row, offsets[row], pos) for layer in group], "* d_model")[0]
        for row, (pos, group) in enumerate(zip(positions, groups, strict=True))
    ]


def capture_layers(
    model: LoadedModel,
    prompts: Sequence[Prompt],
    layers: Sequence[int],
    *,
    site: Site = "resid_post",
    positions: Positions = LastToken(),
    batch_size: int = 16,
    padding_side: Literal["left", "right"] = "right",
) -> dict[int, Activations]:
    """Activations of ``prompts`` at several layers, with one forward pass per batch.

    ``positions`` picks the tokens in each prompt (see the selector classes). The model runs as
    given; use ``oracle.target()`` or ``model.adapter_disabled()`` to read the base model.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    _check_prompts(prompts)
    check_selector(positions)
    check_count(batch_size, "batch_size")
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        raise HookError(f"layers must be a list of block indices, got {layers!r}")
    read = resolve_layers(model, list(layers))
    if not read:
        raise PositionError("no layers given; pass at least one layer")
    if len(set(read)) != len(read):
        raise HookError(f"layers {list(layers)} name a block twice; give each layer once")
    for layer in read:
        model.hook_name(layer, site)
    tokenized = [tokenize_prompt(model.tokenizer, p) for p in prompts]
    picked = [positions.resolve(len(t.ids), t) for t in tokenized]
    _check_contexts(model, [t.ids for t in tokenized], picked)
    per_layer: dict[int, list[ExampleVectors]] = {layer: [] for layer in read}
    for start in range(0, len(prompts), batch_size):
        chunk = range(start, min(start + batch_size, len(prompts)))
        stored, offsets = _residuals(model, [tokenized[i].ids for i in chunk], read, site, padding_side)
        for layer in per_layer:
            per_layer[layer].extend(
                _gather(stored[layer], row, offsets[row], picked[i]) for row, i in enumerate(chunk)
            )
    out = {}
    for layer, vectors in per_layer.items():
        stacked, counts = stack_vectors(vectors)
        out[layer] = Activations(
            vectors=stacked,
            counts=counts,
            layer=layer,
            site=site,
            positions=tuple(tuple(p) for p in picked),
            source=model.name,
        )
    return out


def capture(
    model: LoadedModel,
    prompts: Sequence[Prompt] | str,
    layer: int,
    *,
    site: Site = "resid_post",
    positions: Positions = LastToken(),
    batch_size: int = 16,
    padding_side: Literal["left", "right"] = "right",
) -> Activations:
    """Activations of ``prompts`` at one ``layer`` and ``site``; see :func:`capture_layers`."""
    if isinstance(prompts, str):
        prompts = [prompts]
    result = capture_layers(
        model, prompts, [layer], site=site, positions=positions,
        batch_size=batch_size, padding_side=padding_side,
    )
    return next(iter(result.values()))


def capture_diff(
    target: LoadedModel,
    base: LoadedModel,
    prompts: Sequence[Prompt] | str,
    layer: int,
    *,
    site: Site = "resid_post",
    positions: Positions = LastToken(),
    batch_size: int = 16,
) -> Activations:
    """Model diffing: ``target``'s activations minus ``base``'s on the same prompts, layer, site
    and positions (``input_type="diff"``), as the Activation Oracles authors read emergent
    misalignment. Refused where a difference means nothing: models of different widths or
    depths, or tokenizers that split a prompt differently."""
    if isinstance(prompts, str):
        prompts = [prompts]
    _check_prompts(prompts)
    if (target.d_model, target.n_layers) != (base.d_model, base.n_layers):
        raise ActivationError(
            f"cannot subtract activations of {base.name!r} (d_model {base.d_model}, {base.n_layers} blocks) "
            f"from {target.name!r} (d_model {target.d_model}, {target.n_layers} blocks); diff a fine-tune "
            "with its own base model"
        )
    for i, prompt in enumerate(prompts):
        if tokenize_prompt(target.tokenizer, prompt).ids != tokenize_prompt(base.tokenizer, prompt).ids:
            raise PromptError(
                f"the two models' tokenizers split prompt {i} differently; a difference needs the same "
                "tokens at the same positions (diff a fine-tune with its own base model)"
            )
    read = {"site": site, "positions": positions, "batch_size": batch_size}
    tuned, original = capture(target, prompts, layer, **read), capture(base, prompts, layer, **read)
    return replace(tuned, vectors=tuned.vectors - original.vectors, source=f"{target.name} - {base.name}",
                   input_type="diff")


__all__ = [
    "SELECTORS", "Activations", "AllTokens", "Indices", "InputType", "LastK", "LastToken", "Positions", "Prompt",
    "Segment", "Substring", "TokenizedPrompt", "capture", "capture_diff", "capture_layers", "check_selector",
    "read_vectors", "tokenize_prompt",
]
