"""Opening an activation cache: every shard checked against the index, then examples' vectors
read through safetensors' memory map, one example's slice at a time."""

from __future__ import annotations

import json
import os
from bisect import bisect_right
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lens_oracle.activation_cache.keys import (
    DTYPES,
    FORMAT,
    FORMAT_VERSION,
    INDEX_FILE,
    KEY_BYTES,
    SAFETENSORS_DTYPES,
    ModelIdentity,
    as_model,
    describe_example,
    example_key,
    keys_digest,
    model_identity,
)
from lens_oracle.config import Site
from lens_oracle.data.example import OracleExample
from lens_oracle.errors import ArtifactError, DataError
from lens_oracle.io import sha256_file
from lens_oracle.models import LoadedModel
from lens_oracle.oracle import ActivationOracle
from lens_oracle.typing import ExampleVectors

if TYPE_CHECKING:
    from lens_oracle.train import VectorReader


class ActivationCache:
    """An opened cache: look up examples' vectors by key (see the module docstring)."""

    def __init__(self, folder: Path, index: dict[str, Any], verify_checksums: bool = False) -> None:
        """Use :func:`open_activation_cache`; this checks every shard against ``index``."""
        self.folder = folder
        self.index = index
        try:
            self.model = ModelIdentity(**index["model"])
        except TypeError:
            raise ArtifactError(f"{folder / INDEX_FILE} has a malformed model identity; build the cache again") from None
        self.site: Site = index["site"]
        self.convention: str = index["convention"]
        self.dtype: str = index["dtype"]
        self.layers: tuple[int, ...] = tuple(index["layers"])
        self._handles: list[Any] = []
        self._slices: list[Any] = []
        self._offsets: list[list[int]] = []
        self._first_row: list[int] = []
        self._rows: dict[bytes, int] = {}
        for number, shard in enumerate(index["shards"]):
            self._open_shard(number, shard, verify_checksums)
        if len(self._rows) != index["rows"] or keys_digest(list(self._rows)) != index["keys_sha256"]:
            raise ArtifactError(
                f"the activation cache at {folder} is corrupt: its shards hold other example keys "
                "than its index records; build it again"
            )

    @property
    def d_model(self) -> int:
        """Width of the stored vectors (the model that was read, not necessarily the oracle)."""
        return self.model.d_model

    def __len__(self) -> int:
        """Number of stored rows (distinct context, positions and layers)."""
        return len(self._rows)

    def __contains__(self, example: object) -> bool:
        return isinstance(example, OracleExample) and example_key(example) in self._rows

    def _open_shard(self, number: int, shard: dict[str, Any], verify_checksums: bool) -> None:
        from safetensors import SafetensorError, safe_open

        path = self.folder / shard["file"]
        broken = f"shard {path} of the activation cache is missing, truncated or corrupt"
        if not path.is_file() or path.stat().st_size != shard["bytes"]:
            raise ArtifactError(f"{broken} (expected {shard['bytes']} bytes); build the cache again")
        if verify_checksums:
            self._verify_shard(shard)
        rows, n_vectors = shard["rows"], shard["vectors"]
        try:
            handle = safe_open(str(path), framework="pt")
            vectors = handle.get_slice("vectors")
            offsets = handle.get_tensor("offsets")
            keys = handle.get_tensor("keys")
        except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
            raise ArtifactError(f"{broken} ({exc}); build the cache again") from None
        expected = (
            (list(vectors.get_shape()), vectors.get_dtype(), list(offsets.shape), list(keys.shape))
            == ([n_vectors, self.d_model], SAFETENSORS_DTYPES[self.dtype], [rows + 1], [rows, KEY_BYTES])
        )
        bounds = offsets.tolist()
        if not expected or bounds[0] != 0 or bounds[-1] != n_vectors or any(
            b <= a for a, b in pairwise(bounds)
        ):
            raise ArtifactError(f"{broken} (shapes or offsets do not match the index); build the cache again")
        first = sum(s["rows"] for s in self.index["shards"][:number])
        for row, key in enumerate(keys.numpy()):
            self._rows[key.tobytes()] = first + row
        self._handles.append(handle)
        self._slices.append(vectors)
        self._offsets.append(bounds)
        self._first_row.append(first)

    def missing(self, examples: Sequence[OracleExample]) -> list[int]:
        """Indices of ``examples`` whose vectors are not in the cache."""
        return [i for i, ex in enumerate(examples) if example_key(ex) not in self._rows]

    def check(self, examples: Sequence[OracleExample]) -> None:
        """Raise :class:`DataError` unless every example is in the cache."""
        missing = self.missing(examples)
        if missing:
            raise DataError(
                f"{len(missing)} of {len(examples)} examples are not in the activation cache at "
                f"{self.folder} (first: example {missing[0]}, {describe_example(examples[missing[0]])}); "
                "build the cache from these examples"
            )

    def vectors(self, examples: Sequence[OracleExample]) -> list[ExampleVectors]:
        """Each example's ``[len(positions) * len(read_layers), d_model]`` float32 vectors (CPU)."""
        out = []
        for ex in examples:
            row = self._rows.get(example_key(ex))
            if row is None:
                raise DataError(
                    f"an example is not in the activation cache at {self.folder} ({describe_example(ex)}); "
                    "build the cache from the examples you train on"
                )
            shard = bisect_right(self._first_row, row) - 1
            local = row - self._first_row[shard]
            start, end = self._offsets[shard][local], self._offsets[shard][local + 1]
            if end - start != len(ex.positions) * len(ex.read_layers):
                raise ArtifactError(f"the activation cache at {self.folder} is corrupt: wrong row size")
            # a copy: slices share the file's (private) memory map
            out.append(self._slices[shard][start:end].to(torch.float32, copy=True))
        return out

    def reader(self, examples: Sequence[OracleExample] | None = None) -> VectorReader:
        """A :data:`~lens_oracle.train.VectorReader` over this cache; with ``examples``, first
        checks that every one of them is cached (:meth:`check`)."""
        if examples is not None:
            self.check(examples)
        return self.vectors

    def verify(self) -> None:
        """Hash every shard and compare with the index (reads the whole cache)."""
        for shard in self.index["shards"]:
            self._verify_shard(shard)

    def _verify_shard(self, shard: dict[str, Any]) -> None:
        path = self.folder / shard["file"]
        if sha256_file(path) != shard["sha256"]:
            raise ArtifactError(f"shard {path} of the activation cache is corrupt (checksum mismatch); build it again")


def read_index(folder: Path) -> dict[str, Any]:
    path = folder / INDEX_FILE
    if not folder.is_dir() or not path.is_file():
        raise ArtifactError(f"{folder} is not an activation cache (no {INDEX_FILE}); build one first")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not readable JSON ({exc}); the cache is corrupt") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not an activation cache index")
    version = index.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has format version {version!r}; this lens_oracle reads version {FORMAT_VERSION}. "
            "Upgrade lens_oracle or build the cache again"
        )
    needed = {"model", "site", "convention", "dtype", "layers", "rows", "keys_sha256", "shards"}
    shard_fields = {"file": str, "rows": int, "vectors": int, "bytes": int, "sha256": str}
    shards = index.get("shards")
    if (
        not needed <= set(index) or index["dtype"] not in DTYPES or not isinstance(shards, list)
        or not all(isinstance(s, dict) and all(isinstance(s.get(k), t) for k, t in shard_fields.items()) for s in shards)
        or any(Path(s["file"]).name != s["file"] for s in shards)
    ):
        raise ArtifactError(f"{path} is malformed (missing fields, bad dtype or shard list); build the cache again")
    return index


def open_activation_cache(
    folder: str | os.PathLike[str],
    *,
    model: LoadedModel | ActivationOracle | None = None,
    verify_checksums: bool = False,
) -> ActivationCache:
    """Open a cache written by :func:`build_activation_cache` and check it.

    ``model`` (optional) must be the model the cache was built from, as it reads: an oracle
    means its base with the adapter off; a ``LoadedModel`` is taken with any adapter it has on.

    Raises:
        ArtifactError: no cache, a newer format, a missing/truncated/corrupt shard, or a cache
            built from another model (other width, other weights, other dtype).
    """
    folder = Path(folder)
    cache = ActivationCache(folder, read_index(folder), verify_checksums)
    if model is not None:
        loaded, with_adapter = as_model(model)
        found = model_identity(loaded, with_adapter=with_adapter)
        if not found.matches(cache.model):
            raise ArtifactError(
                f"the activation cache at {folder} was built from {cache.model.describe()}, but the "
                f"model given is {found.describe()}; build a cache for this model"
            )
    return cache
