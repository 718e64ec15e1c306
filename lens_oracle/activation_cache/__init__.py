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

The package: :mod:`~lens_oracle.activation_cache.keys` (layout constants, model identity, example
keys), :mod:`~lens_oracle.activation_cache.reading` (opening and reading) and
:mod:`~lens_oracle.activation_cache.building` (writing).
"""

from __future__ import annotations

from lens_oracle.activation_cache.building import build_activation_cache
from lens_oracle.activation_cache.keys import (
    CACHE_FILES,
    FORMAT_VERSION,
    INDEX_FILE,
    ModelIdentity,
    example_key,
    model_identity,
)
from lens_oracle.activation_cache.reading import ActivationCache, open_activation_cache

__all__ = [
    "CACHE_FILES", "FORMAT_VERSION", "INDEX_FILE", "ActivationCache", "ModelIdentity", "build_activation_cache",
    "example_key", "model_identity", "open_activation_cache",
]
