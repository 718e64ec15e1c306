"""Activations captured once, kept on disk, and read back memory-mapped for training.

Reading the target model is a large part of an oracle training step. When the same examples
are used for several epochs or several oracle variants, or when the target is another model
than the oracle (cross-model oracles), capture the vectors once and train from the cache::

    from lens_oracle.activation_cache import build_activation_cache, open_activation_cache

    cache = build_activation_cache(target, examples, "runs/cache")    # a LoadedModel, or an
                                                                      # oracle (its base, adapter off)
    cache = open_activation_cache("runs/cache", model=target)         # later; model= checks identity
    train_oracle(oracle, examples, config, reader=cache.reader(examples))
    vectors = cache.vectors(examples[:4])                             # [len(positions), d] float32 each

``cache.reader(examples)`` is a :data:`~lens_oracle.train.VectorReader` (it takes a batch of
examples and returns their vectors); with ``examples`` it first checks that every one of them
is in the cache. An example is found by its *key*, a digest of what determines its vectors
(context token ids, positions, read layers), so questions and answers may change freely, and
examples that share a context and positions share one stored row.

On disk (written into a staging folder and renamed into place, so a crash never leaves a
partial cache at the path)::

    runs/cache/index.json                 format version, model identity (name, architecture,
                                          d_model, n_layers, dtype, weight fingerprint), read
                                          site, convention, layers, shard list with sizes and
                                          SHA-256, digest of all keys
    runs/cache/shard-00000.safetensors    vectors [n_vectors, d_model], offsets [rows + 1],
                                          keys [rows, 16] (uint8)

Opening checks the version, every shard's size, header, shapes and offsets, and the keys'
digest (``verify_checksums=True`` also hashes every shard); shards are then read through
safetensors' memory map, one example's slice at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from lens_oracle.activations import read_vectors
from lens_oracle.config import Site
from lens_oracle.data.example import OracleExample
from lens_oracle.errors import ArtifactError, ConfigError, DataError, PromptError
from lens_oracle.io import atomic_folder, atomic_write_json, sha256_file
from lens_oracle.models import LoadedModel
from lens_oracle.oracle import ActivationOracle

if TYPE_CHECKING:
    from lens_oracle.train import VectorReader

log = logging.getLogger(__name__)

FORMAT = "lens_oracle.activation_cache"
FORMAT_VERSION = 1
INDEX_FILE = "index.json"
CACHE_FILES = (INDEX_FILE, "shard-*.safetensors")
"""What a cache folder holds: the only files that rebuilding one may replace."""
KEY_BYTES = 16
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
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


def model_identity(model: LoadedModel, *, with_adapter: bool = True) -> ModelIdentity:
    """The identity of ``model`` as it reads: with its adapter's weights, or without them
    (``with_adapter=False``: an oracle's base, read with the adapter off)."""
    digest = hashlib.sha256()
    dtype = "float32"
    for name, param in model.hf_model.named_parameters():
        if not with_adapter and "lora_" in name:  # PEFT's names for adapter weights
            continue
        flat = param.detach().reshape(-1)
        index = torch.linspace(0, flat.numel() - 1, FINGERPRINT_SAMPLES, device=flat.device).long()
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


def _describe(example: OracleExample) -> str:
    return (
        f"task {example.task!r}, layers {list(example.read_layers)}, positions "
        f"{list(example.positions)[:8]}, context of {len(example.context_ids)} tokens"
    )


def _keys_digest(keys: Sequence[bytes]) -> str:
    return hashlib.sha256(b"".join(sorted(keys))).hexdigest()


# ---------------------------------------------------------------- the cache


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
        if len(self._rows) != index["rows"] or _keys_digest(list(self._rows)) != index["keys_sha256"]:
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
            == ([n_vectors, self.d_model], _SAFETENSORS_DTYPES[self.dtype], [rows + 1], [rows, KEY_BYTES])
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
                f"{self.folder} (first: example {missing[0]}, {_describe(examples[missing[0]])}); "
                "build the cache from these examples"
            )

    def vectors(self, examples: Sequence[OracleExample]) -> list[torch.Tensor]:
        """Each example's ``[len(positions) * len(read_layers), d_model]`` float32 vectors (CPU)."""
        out = []
        for ex in examples:
            row = self._rows.get(example_key(ex))
            if row is None:
                raise DataError(
                    f"an example is not in the activation cache at {self.folder} ({_describe(ex)}); "
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


# ---------------------------------------------------------------- opening


def _read_index(folder: Path) -> dict[str, Any]:
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
    cache = ActivationCache(folder, _read_index(folder), verify_checksums)
    if model is not None:
        loaded, with_adapter = _as_model(model)
        found = model_identity(loaded, with_adapter=with_adapter)
        if not found.matches(cache.model):
            raise ArtifactError(
                f"the activation cache at {folder} was built from {cache.model.describe()}, but the "
                f"model given is {found.describe()}; build a cache for this model"
            )
    return cache


# ---------------------------------------------------------------- building


def _as_model(source: LoadedModel | ActivationOracle) -> tuple[LoadedModel, bool]:
    if isinstance(source, ActivationOracle):
        return source.model, False
    if isinstance(source, LoadedModel):
        return source, True
    raise ConfigError(f"cannot read activations from a {type(source).__name__}; give a LoadedModel or an oracle")


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
        self.vectors: list[torch.Tensor] = []
        self.size = 0
        self.shards: list[dict[str, Any]] = []

    def add(self, key: bytes, vectors: torch.Tensor) -> None:
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
            "vectors": torch.cat(self.vectors).contiguous(),
            "offsets": counts.cumsum(0),
            "keys": torch.frombuffer(bytearray(b"".join(self.keys)), dtype=torch.uint8).reshape(-1, KEY_BYTES),
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
    model, with_adapter = _as_model(source)
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
            f"(first: {_describe(too_long[0])}); drop or truncate them"
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
            "keys_sha256": _keys_digest(list(unique)),
            "shards": writer.shards,
        })
    log.info("cached %d rows of %d examples in %s", len(unique), len(examples), folder)
    return open_activation_cache(folder)
