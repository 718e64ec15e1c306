"""Building an activation cache: distinct examples read once, in length-sorted batches, written
as safetensors shards plus a JSON index into a staging folder renamed into place."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from einops import pack, rearrange
from tqdm.auto import tqdm

from lens_oracle.activation_cache.keys import (
    CACHE_FILES,
    DTYPES,
    FORMAT,
    FORMAT_VERSION,
    INDEX_FILE,
    KEY_BYTES,
    as_model,
    describe_example,
    example_key,
    keys_digest,
    model_identity,
)
from lens_oracle.activation_cache.reading import ActivationCache, open_activation_cache
from lens_oracle.activations import read_vectors
from lens_oracle.config import Site
from lens_oracle.data.example import OracleExample
from lens_oracle.errors import ArtifactError, ConfigError, DataError, PromptError
from lens_oracle.io import atomic_folder, atomic_write_json, sha256_file
from lens_oracle.models import LoadedModel
from lens_oracle.oracle import ActivationOracle
from lens_oracle.typing import ExampleVectors

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _reading(source: LoadedModel | ActivationOracle) -> Iterator[LoadedModel]:
    if isinstance(source, ActivationOracle):
        with source.adapter_disabled() as base:
            yield base
    else:
        yield source


class _ShardWriter:
    """Collects rows and writes a shard whenever ``max_bytes`` of vectors have piled up."""

    def __init__(self, folder: Path, dtype: torch.dtype, max_bytes: int) -> None:
        self.folder, self.dtype, self.max_bytes = folder, dtype, max_bytes
        self.keys: list[bytes] = []
        self.vectors: list[ExampleVectors] = []
        self.size = 0
        self.shards: list[dict[str, Any]] = []

    def add(self, key: bytes, vectors: ExampleVectors) -> None:
        self.keys.append(key)
        self.vectors.append(vectors.to(self.dtype))
        self.size += self.vectors[-1].numel() * self.vectors[-1].element_size()
        if self.size >= self.max_bytes:
            self.flush()

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.keys:
            return
        counts = torch.tensor([0] + [v.shape[0] for v in self.vectors], dtype=torch.int64)
        path = self.folder / f"shard-{len(self.shards):05d}.safetensors"
        tensors = {
            "vectors": pack(self.vectors, "* d_model")[0].contiguous(),
            "offsets": counts.cumsum(0),
            "keys": rearrange(
                torch.frombuffer(bytearray(b"".join(self.keys)), dtype=torch.uint8),
                "(row byte) -> row byte", byte=KEY_BYTES,
            ),
        }
        save_file(tensors, str(path), metadata={"format": FORMAT})
        self.shards.append({
            "file": path.name, "rows": len(self.keys), "vectors": int(counts.sum()),
            "bytes": path.stat().st_size, "sha256": sha256_file(path),
        })
        self.keys, self.vectors, self.size = [], [], 0


def build_activation_cache(
    source: LoadedModel | ActivationOracle,
    examples: Sequence[OracleExample],
    folder: str | os.PathLike[str],
    *,
    site: Site | None = None,
    batch_size: int = 16,
    dtype: str = "float32",
    max_shard_bytes: int = 1 << 30,
    progress: bool = True,
    overwrite: bool = False,
) -> ActivationCache:
    """Read every example's vectors from ``source`` once and write them to ``folder``.

    ``source`` is the model to read: a ``LoadedModel`` as it is (any target, e.g. another model
    for a cross-model oracle), or an oracle, whose base is read with the adapter off at its
    ``read_site``. ``site`` defaults to that (``resid_post`` for a model). Distinct inputs are
    read once, in length-sorted batches of ``batch_size``; ``dtype`` (``float32``, ``bfloat16``
    or ``float16``) is the storage type (vectors come back as float32); shards hold about
    ``max_shard_bytes`` each.

    Raises:
        ArtifactError: ``folder`` exists and ``overwrite`` is false.
        DataError / PromptError / HookError: no examples, a context longer than the model's, or
            a read layer the model lacks (checked before any forward pass).
    """
    folder = Path(folder)
    model, with_adapter = as_model(source)
    if dtype not in DTYPES:
        raise ConfigError(f"cache dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if batch_size < 1 or max_shard_bytes < 1:
        raise ConfigError(f"batch_size and max_shard_bytes must be positive, got {batch_size}, {max_shard_bytes}")
    if folder.exists() and not overwrite:
        raise ArtifactError(f"{folder} already exists; open it with open_activation_cache or pass overwrite=True")
    site = site or (source.config.read_site if isinstance(source, ActivationOracle) else "resid_post")
    unique: dict[bytes, OracleExample] = {}
    for ex in examples:
        unique.setdefault(example_key(ex), ex)
    if not unique:
        raise DataError("no examples to cache; give at least one OracleExample")
    layers = sorted({layer for ex in unique.values() for layer in ex.read_layers})
    for layer in layers:
        model.hook_name(layer, site)  # HookError with the valid range
    too_long = [ex for ex in unique.values() if len(ex.context_ids) > model.n_ctx]
    if too_long:
        raise PromptError(
            f"{len(too_long)} examples have contexts longer than the model's {model.n_ctx} tokens "
            f"(first: {describe_example(too_long[0])}); drop or truncate them"
        )
    identity = model_identity(model, with_adapter=with_adapter)
    order = sorted(unique, key=lambda k: -len(unique[k].context_ids))
    with atomic_folder(folder, owned=CACHE_FILES, what="activation cache") as staging, _reading(source) as reading:
        writer = _ShardWriter(staging, DTYPES[dtype], max_shard_bytes)
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc="caching activations", unit="batch", disable=not progress):
            keys = order[start : start + batch_size]
            batch = [unique[k] for k in keys]
            vectors = read_vectors(
                reading, [ex.context_ids for ex in batch], [ex.positions for ex in batch],
                [ex.read_layers for ex in batch], site=site,
            )
            for key, vecs in zip(keys, vectors, strict=True):
                writer.add(key, vecs)
        writer.flush()
        atomic_write_json(staging / INDEX_FILE, {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "model": dataclasses.asdict(identity),
            "site": site,
            "convention": "hf",
            "dtype": dtype,
            "layers": layers,
            "rows": len(unique),
            "vectors": sum(s["vectors"] for s in writer.shards),
            "keys_sha256": keys_digest(list(unique)),
            "shards": writer.shards,
        })
    log.info("cached %d rows of %d examples in %s", len(unique), len(examples), folder)
    return open_activation_cache(folder)
