"""``cache_read_over_recompute``: vectors from the on-disk activation cache vs a target pass.

``cache_examples`` examples (``ctx_len`` tokens, ``n_read`` positions at 25/50/75% depth) are
captured once into a cache (:func:`lens_oracle.activation_cache.build_activation_cache`, float32
safetensors shards). Then, for one training batch of ``batch`` examples, reading their vectors
through ``cache.reader()`` (memory-mapped) is timed against recomputing them with the
trainer's default reader (the oracle's base, adapter off, no grad, ``stop_at_layer``).
Lower is better: 0.1 means reading costs a tenth of recomputing.
"""

from __future__ import annotations

import shutil
import time
from typing import Any

from benchmarks.common import Workbench, interleaved, progress, ratio, timing_details


def run(bench: Workbench) -> tuple[float, dict[str, Any]]:
    from benchmarks.train_step import make_examples
    from lens_oracle.activation_cache import build_activation_cache, open_activation_cache
    from lens_oracle.config import AdapterConfig
    from lens_oracle.oracle import ActivationOracle
    from lens_oracle.train import self_reader

    sizes = bench.sizes
    hf_model = bench.random_llama()
    adapter = AdapterConfig(rank=sizes.lora_rank, alpha=2 * sizes.lora_rank)
    oracle = ActivationOracle.create(hf_model, bench.tokenizer, adapter=adapter, name="bench-oracle")
    examples = make_examples(bench, sizes.cache_examples, seed=2)
    folder = bench.folder / "activation_cache"
    shutil.rmtree(folder, ignore_errors=True)
    progress(f"cache: writing {len(examples)} examples, then reading batches of {sizes.batch}")
    start = time.perf_counter()
    build_activation_cache(oracle, examples, folder, batch_size=sizes.batch, progress=False)
    build_s = time.perf_counter() - start
    cache = open_activation_cache(folder, model=oracle)
    read = cache.reader(examples)
    recompute = self_reader(oracle)
    batch = examples[: sizes.batch]

    cached, fresh = read(batch), recompute(batch)
    max_diff = max(float((a - b).abs().max()) for a, b in zip(cached, fresh, strict=True))
    times = interleaved(
        {"cache_read": lambda: read(batch), "recompute": lambda: recompute(batch)},
        repeats=sizes.repeats, warmup=sizes.warmup, device=bench.device,
    )
    value = ratio(times, "cache_read", "recompute")
    details = {
        "model": bench.describe(hf_model),
        "examples_cached": len(examples),
        "batch": [sizes.batch, sizes.ctx_len],
        "positions_read": sizes.n_read,
        "build_s": build_s,
        "cache_bytes": sum(p.stat().st_size for p in folder.iterdir()),
        "max_abs_diff_cached_vs_recomputed": max_diff,
        "timings": timing_details(times),
    }
    progress(f"cache: reading costs {value:.4f} x recomputing")
    return value, details
