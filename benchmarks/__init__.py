"""lens_oracle's benchmark suite: how close each stage runs to the floor of its own arithmetic.

Run ``python -m benchmarks --out results.json`` (``--quick`` for a smaller run, ``--tiny`` for a
seconds-long smoke run, ``--device cuda`` on a GPU). Each figure is a ratio of two things
measured side by side in the same run; see :mod:`benchmarks.__main__` for the list.
"""

from __future__ import annotations

KEYS: tuple[str, ...] = (
    "capture_over_floor",
    "capture_speedup_vs_full_cache",
    "train_step_over_floor",
    "padding_efficiency",
    "batched_generation_speedup",
    "generation_over_hf",
    "generation_over_peft_hook",
    "same_model_memory_ratio",
    "cache_read_over_recompute",
)
"""The figures the suite writes, each a plain float at the top level of the JSON."""

__all__ = ["KEYS"]
