"""Tensor aliases shared by every module, in TransformerLens's axis vocabulary.

Axis names: ``batch``, ``pos`` (token position), ``d_model`` (residual width), ``n_vec``
(activation vectors per example), ``d_vocab``, ``layer``; a projector maps ``d_source`` (the
read model's width) to ``d_oracle`` (the oracle's). The test run checks every annotation
(jaxtyping + beartype over the whole package), so a transposed or mis-reduced tensor fails there.

A leading ``_`` marks an axis named for the reader but not checked: one example's ``_n_vec``
differs from the next one's in the same list.
"""

from __future__ import annotations

from jaxtyping import Bool, Float, Int, Shaped, UInt8
from torch import Tensor

TokenIds = Int[Tensor, "batch pos"]
AttentionMask = Int[Tensor, "batch pos"]
Labels = Int[Tensor, "batch pos"]
"""Next-token targets aligned with ``TokenIds`` (``-100`` where nothing is learned)."""
PlaceholderMask = Bool[Tensor, "batch pos"]
Residual = Float[Tensor, "batch pos d_model"]
Logits = Float[Tensor, "batch pos d_vocab"]
Loss = Float[Tensor, ""]

Vectors = Float[Tensor, "batch n_vec d_model"]
"""A padded batch of activation vectors; row b's first ``counts[b]`` are real."""
VectorCounts = Int[Tensor, " batch"]
VectorLayers = Int[Tensor, "batch n_vec"]
"""The source layer of each vector slot (``-1`` on padding)."""
ExampleVectors = Float[Tensor, "_n_vec d_model"]
"""One example's vectors, in position order (layer by layer for a multi-layer query)."""
PooledVectors = Float[Tensor, "batch d_model"]

SourceVectors = Float[Tensor, "batch n_vec d_source"]
OracleVectors = Float[Tensor, "batch n_vec d_oracle"]

StateTensor = Shaped[Tensor, "..."]
"""A parameter, gradient or optimiser-state tensor: its shape is its parameter's, so it varies."""
RngState = UInt8[Tensor, " n_bytes"]
"""``torch.get_rng_state()``: the CPU generator's state as bytes."""

__all__ = [
    "AttentionMask",
    "Bool",
    "ExampleVectors",
    "Float",
    "Int",
    "Labels",
    "Logits",
    "Loss",
    "OracleVectors",
    "PlaceholderMask",
    "PooledVectors",
    "Residual",
    "RngState",
    "Shaped",
    "SourceVectors",
    "StateTensor",
    "Tensor",
    "TokenIds",
    "VectorCounts",
    "VectorLayers",
    "Vectors",
]
