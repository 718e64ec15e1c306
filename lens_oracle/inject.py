"""Injection: placeholder masks, the injection math, and the hook that applies it.

Pure tensor functions. The hook is meant for the oracle's ``blocks.{k}.hook_resid_pre``:
it acts on the prompt (prefill) pass and leaves cached decoding steps alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from einops import rearrange, repeat

from lens_oracle.config import InjectionMode
from lens_oracle.errors import ActivationError, PromptError
from lens_oracle.typing import (
    AttentionMask,
    Bool,
    ExampleVectors,
    Labels,
    PlaceholderMask,
    Residual,
    Tensor,
    TokenIds,
    VectorCounts,
    VectorLayers,
    Vectors,
)


@dataclass(frozen=True)
class OracleBatch:
    """Tokenized oracle inputs with the vectors to inject at their placeholders."""

    input_ids: TokenIds
    attention_mask: AttentionMask
    labels: Labels | None
    placeholders: PlaceholderMask
    vectors: Vectors
    counts: VectorCounts
    vector_layers: VectorLayers | None = None
    """Source layer of each vector (``-1`` on padding), for the projector."""


def placeholder_mask(
    input_ids: TokenIds,
    placeholder_id: int,
    counts: VectorCounts,
    groups: Sequence[Sequence[int]] | None = None,
) -> PlaceholderMask:
    """Mark the first ``counts[b]`` occurrences of ``placeholder_id`` in each row.

    The occurrences must be consecutive (the oracle prompt puts its placeholders in one run);
    a question that happens to contain the placeholder token later is left untouched.
    Multi-layer prompts give ``groups``: row b's placeholders must form one run per layer tag,
    of lengths ``groups[b]`` in order.
    """
    is_placeholder = input_ids == placeholder_id
    rank = is_placeholder.long().cumsum(dim=-1)
    mask = is_placeholder & (rank <= counts[:, None])
    found = mask.sum(dim=-1)
    if not torch.equal(found, counts.to(found.dtype)):
        row = int((found != counts).nonzero()[0, 0])
        raise PromptError(
            f"row {row} has {int(found[row])} placeholder tokens but {int(counts[row])} vectors "
            "to inject; each activation vector needs exactly one placeholder in the prompt"
        )
    if groups is not None:
        for row, sizes in enumerate(groups):
            runs = placeholder_runs(mask[row])
            if runs != [int(k) for k in sizes]:
                raise PromptError(
                    f"row {row} has placeholder runs of lengths {runs}, expected {list(sizes)} "
                    "(one run per layer tag); the layer tags must not contain the placeholder"
                )
        return mask
    first = mask.long().argmax(dim=-1)
    last = input_ids.shape[1] - 1 - mask.long().flip(-1).argmax(dim=-1)
    if not torch.equal(last - first + 1, counts.to(last.dtype)):
        raise PromptError("placeholder tokens are not consecutive; the oracle prompt needs one run")
    return mask


def placeholder_runs(row: Bool[Tensor, " pos"]) -> list[int]:
    """Lengths of the runs of consecutive ``True`` in one mask row, left to right."""
    runs: list[int] = []
    previous = -2
    for index in row.nonzero().flatten().tolist():
        if index == previous + 1:
            runs[-1] += 1
        else:
            runs.append(1)
        previous = index
    return runs


def check_vectors(vectors: Vectors, counts: VectorCounts) -> None:
    """Raise :class:`ActivationError` on NaN/inf or zero-norm vectors among the used ones."""
    used = torch.arange(vectors.shape[1], device=vectors.device)[None, :] < counts[:, None]
    chosen = vectors[used]
    if not torch.isfinite(chosen).all():
        raise ActivationError(
            "activation vectors contain NaN or inf; check the capture (dtype overflow?) "
            "before asking the oracle"
        )
    if (chosen.abs().amax(dim=-1) == 0).any():
        raise ActivationError(
            "an activation vector has zero norm, so norm-matched injection has no direction; "
            "use random vectors of matched norm as an ablation instead of zeros"
        )


def scatter_vectors(vectors: Vectors, mask: PlaceholderMask) -> Residual:
    """Lay vectors out on the placeholder positions: row b, k-th placeholder gets vectors[b, k]."""
    index = (mask.long().cumsum(dim=-1) - 1).clamp(min=0)  # [batch, pos]: which vector lands here
    index = repeat(index, "batch pos -> batch pos d_model", d_model=vectors.shape[-1])
    return torch.gather(vectors, 1, index)


def unit_direction(vectors: Residual) -> Residual:
    """``v / ||v||`` along ``d_model``, stable for tiny norms (rescaled by max |v| first)."""
    tiny = torch.finfo(vectors.dtype).tiny
    scaled = vectors / vectors.abs().amax(dim=-1, keepdim=True).clamp_min(tiny)
    return scaled / scaled.norm(dim=-1, keepdim=True).clamp_min(tiny)


def inject(
    resid: Residual,
    vectors: Vectors,
    mask: PlaceholderMask,
    *,
    mode: InjectionMode = "add",
    scale: float = 1.0,
) -> Residual:
    """Inject ``vectors`` into ``resid`` at the placeholder positions of ``mask``.

    ``add`` (Activation Oracles): ``h + scale * ||h|| * v / ||v||``, computed in at least
    float32 (a bfloat16 residual is rounded once, at the end; ``v`` is never rounded to it
    first). ``replace`` (LatentQA style): ``v`` replaces ``h``.
    Positions outside the mask are returned unchanged.
    """
    placed = scatter_vectors(vectors, mask)
    if mode == "replace":
        new = placed.to(resid.dtype)
    else:
        work = torch.promote_types(torch.promote_types(resid.dtype, placed.dtype), torch.float32)
        h = resid.to(work)
        new = (h + scale * h.norm(dim=-1, keepdim=True) * unit_direction(placed.to(work))).to(resid.dtype)
    return torch.where(rearrange(mask, "batch pos -> batch pos 1"), new, resid)


def make_injection_hook(
    vectors: Vectors,
    mask: PlaceholderMask,
    *,
    mode: InjectionMode = "add",
    scale: float = 1.0,
) -> Callable[[Residual, Any], Residual]:
    """A TransformerLens forward hook injecting at the placeholders on the prompt pass only.

    A cached decoding step shows the hook a shorter sequence than the mask: it is returned
    untouched, so generated tokens are never overwritten.
    """

    def hook(resid: Residual, hook: Any) -> Residual:
        if resid.shape[:2] != mask.shape:
            return resid
        return inject(resid, vectors.to(resid.device), mask.to(resid.device), mode=mode, scale=scale)

    return hook


def as_pre_hook(hook: Callable[[Residual, Any], Residual]) -> Callable[..., Any]:
    """A TransformerLens-style residual hook as a PyTorch forward pre-hook (``with_kwargs=True``)
    on a decoder layer: it rewrites the layer's ``hidden_states`` input, passed by position or by
    name -- the same tensor as ``blocks.{k}.hook_resid_pre``."""

    def pre_hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if args:
            return (hook(args[0], None), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hook(kwargs["hidden_states"], None)}

    return pre_hook


def stack_vectors(per_example: Sequence[ExampleVectors]) -> tuple[Vectors, VectorCounts]:
    """Right-pad a list of ``[n_i, d_model]`` tensors to ``[batch, max n_i, d_model]`` + counts."""
    if not per_example:
        raise ActivationError("no activation vectors were given; capture at least one example")
    counts = torch.tensor([t.shape[0] for t in per_example], dtype=torch.long)
    width = int(counts.max())
    d_model = per_example[0].shape[-1]
    out = per_example[0].new_zeros(len(per_example), width, d_model)
    for row, t in enumerate(per_example):
        if t.shape[-1] != d_model:
            raise ActivationError(
                f"example {row} has d_model {t.shape[-1]}, example 0 has {d_model}; "
                "vectors in one batch must come from the same model"
            )
        out[row, : t.shape[0]] = t
    return out, counts
