"""What an activation cache is keyed by: the on-disk layout's constants, the identity of the
model that was read, and each example's key (a digest of what determines its vectors)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from einops import rearrange
from jaxtyping import Int
from torch import Tensor

from lens_oracle.data.example import OracleExample
from lens_oracle.errors import ConfigError
from lens_oracle.models import LoadedModel
from lens_oracle.oracle import ActivationOracle

FORMAT = "lens_oracle.activation_cache"
FORMAT_VERSION = 1
INDEX_FILE = "index.json"
CACHE_FILES = (INDEX_FILE, "shard-*.safetensors")
"""What a cache folder holds: the only files that rebuilding one may replace."""
KEY_BYTES = 16
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
FINGERPRINT_SAMPLES = 64
"""Weights sampled per parameter tensor for the model's fingerprint."""


@dataclass(frozen=True)
class ModelIdentity:
    """What a cache records about the model its vectors came from."""

    name: str
    architecture: str
    d_model: int
    n_layers: int
    dtype: str
    fingerprint: str
    """SHA-256 over shapes and evenly spaced samples of every weight (adapter weights only when
    the adapter was on), so a fine-tune with the same name and shape is told apart."""

    def matches(self, other: ModelIdentity) -> bool:
        """Same weights, width, depth, architecture and dtype (the name may differ: a copy of
        the model in another folder reads the same vectors)."""
        return dataclasses.replace(self, name="") == dataclasses.replace(other, name="")

    def describe(self) -> str:
        return (
            f"{self.name!r} ({self.architecture}, d_model {self.d_model}, {self.n_layers} blocks, "
            f"{self.dtype}, weights {self.fingerprint[:12]})"
        )


def sample_indices(n: int, k: int) -> Int[Tensor, " k"]:
    """``k`` evenly spaced indices into ``n`` elements, first and last included (float64: float32
    rounds the last index of a weight above 2**24 elements past its end)."""
    return torch.linspace(0, n - 1, k, dtype=torch.float64).long()


def model_identity(model: LoadedModel, *, with_adapter: bool = True) -> ModelIdentity:
    """The identity of ``model`` as it reads: with its adapter's weights, or without them
    (``with_adapter=False``: an oracle's base, read with the adapter off)."""
    digest = hashlib.sha256()
    dtype = "float32"
    for name, param in model.hf_model.named_parameters():
        if not with_adapter and "lora_" in name:  # PEFT's names for adapter weights
            continue
        flat = rearrange(param.detach(), "... -> (...)")
        index = sample_indices(flat.numel(), FINGERPRINT_SAMPLES).to(flat.device)
        digest.update(repr(tuple(param.shape)).encode())
        digest.update(flat[index].float().cpu().numpy().tobytes())
        dtype = str(param.dtype).removeprefix("torch.")
    return ModelIdentity(
        model.name, model.architecture, model.d_model, model.n_layers, dtype, digest.hexdigest()
    )


def example_key(example: OracleExample) -> bytes:
    """16-byte digest of what determines an example's vectors: context, positions, read layers."""
    data = json.dumps([list(example.context_ids), list(example.positions), list(example.read_layers)])
    return hashlib.sha256(data.encode()).digest()[:KEY_BYTES]


def describe_example(example: OracleExample) -> str:
    return (
        f"task {example.task!r}, layers {list(example.read_layers)}, positions "
        f"{list(example.positions)[:8]}, context of {len(example.context_ids)} tokens"
    )


def keys_digest(keys: Sequence[bytes]) -> str:
    return hashlib.sha256(b"".join(sorted(keys))).hexdigest()


def as_model(source: LoadedModel | ActivationOracle) -> tuple[LoadedModel, bool]:
    """The model a source reads with, and whether its adapter is on (an oracle reads its base)."""
    if isinstance(source, ActivationOracle):
        return source.model, False
    if isinstance(source, LoadedModel):
        return source, True
    raise ConfigError(f"cannot read activations from a {type(source).__name__}; give a LoadedModel or an oracle")
