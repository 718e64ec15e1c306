"""The target's own continuations for on-policy context prediction: batched, greedy, cached.

The Activation Oracles authors' newest code builds the "next" side of context prediction from
what the *target model* says after the read context instead of what the document says, so the
oracle learns to read what the model itself is about to produce
(:func:`lens_oracle.data.context_prediction.on_policy_examples`). This module produces those
continuations: greedy decoding (deterministic), in batches of contexts asking for similar
lengths, optionally cached in a folder (one JSON file per model and request, keyed by a
fingerprint of the base model's weights, the contexts and the lengths).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from lens_oracle.errors import ArtifactError, ConfigError
from lens_oracle.generation import generate_ids
from lens_oracle.io import atomic_write_json
from lens_oracle.models import LoadedModel

log = logging.getLogger(__name__)

CACHE_FORMAT = "lens_oracle.on_policy_continuations"
CACHE_VERSION = 1


def continuations(
    model: LoadedModel,
    contexts: Sequence[Sequence[int]],
    lengths: Sequence[int],
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> list[list[int]]:
    """Greedy continuation of each context by ``model`` (adapter off), at most ``lengths[i]``
    tokens, in batches of contexts that ask for similar lengths."""
    if len(contexts) != len(lengths):
        raise ConfigError(f"got {len(contexts)} contexts but {len(lengths)} lengths; give one length per context")
    if any(n < 1 for n in lengths):
        raise ConfigError(f"continuation lengths must be at least 1, got {min(lengths)}")
    order = sorted(range(len(contexts)), key=lambda i: (lengths[i], len(contexts[i])))
    found: dict[int, list[int]] = {}
    with tqdm(total=len(order), desc="on-policy continuations", unit="context", disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            longest = max(lengths[i] for i in chunk)
            rows = generate_ids(model, [contexts[i] for i in chunk], longest, batch_size=len(chunk))
            for i, row in zip(chunk, rows, strict=True):
                found[i] = row[: lengths[i]]
            bar.update(len(chunk))
    return [found[i] for i in range(len(contexts))]


def cached_continuations(
    model: LoadedModel,
    contexts: Sequence[Sequence[int]],
    lengths: Sequence[int],
    batch_size: int = 16,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> list[list[int]]:
    """:func:`continuations`, read from (or written to) ``cache_dir`` when one is given."""
    if cache_dir is None:
        return continuations(model, contexts, lengths, batch_size=batch_size, progress=progress)
    folder = Path(cache_dir)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"the on-policy cache {folder} is a file; give a folder")
    key = request_key(model, contexts, lengths)
    path = folder / f"continuations-{key[:24]}.json"
    if path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"cannot read the on-policy cache file {path} ({exc}); delete it to rebuild") from None
        if data.get("format") == CACHE_FORMAT and data.get("key") == key:
            log.info("reusing %d on-policy continuations from %s", len(contexts), path)
            return [list(row) for row in data["continuations"]]
    rows = continuations(model, contexts, lengths, batch_size=batch_size, progress=progress)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"format": CACHE_FORMAT, "version": CACHE_VERSION, "key": key, "continuations": rows})
    return rows


def request_key(model: LoadedModel, contexts: Sequence[Sequence[int]], lengths: Sequence[int]) -> str:
    """SHA-256 over the base model's weight fingerprint, the contexts and the lengths."""
    from lens_oracle.activation_cache.keys import model_identity

    digest = hashlib.sha256()
    digest.update(f"{CACHE_FORMAT}/{CACHE_VERSION}".encode())
    digest.update(model_identity(model, with_adapter=False).fingerprint.encode())
    digest.update(json.dumps([[list(map(int, c)), int(n)] for c, n in zip(contexts, lengths, strict=True)]).encode())
    return digest.hexdigest()


__all__ = ["cached_continuations", "continuations", "request_key"]
