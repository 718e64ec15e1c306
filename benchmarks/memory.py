"""``same_model_memory_ratio``: peak memory of a same-model training step vs a separate target.

Same model (the AO setting, lens_oracle's default): one copy of the weights; the target pass
runs the oracle's own base with the adapter switched off. Separate copy: the same oracle, and
the target read from a second, frozen copy of the base weights (``target_reader``), which is
what a library without adapter switching needs.

Each variant builds its models, its trainer and runs two training steps (the first allocates
AdamW's state) inside one measuring window; the figure is the peak of live tensor bytes in that
window, everything included (weights, adapter, optimiser state, gradients, activations):

* CPU: allocations and frees recorded by ``torch.profiler`` (``profile_memory=True``), summed
  in time order; exact and deterministic (the process's resident set is not used: the
  allocator's caching and fragmentation would blur a difference of one small model);
* CUDA: ``torch.cuda.max_memory_allocated()`` minus what was allocated before the window.

The figure uses gradient checkpointing (the Activation Oracles recipe, where the weights
dominate); ``details`` also has the comparison without it, and the weights' size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import sys
from collections.abc import Iterator
from typing import Any

import torch

from benchmarks.common import Sizes, Workbench, progress

GOAL = 0.6
VARIANTS = ("same_model", "separate_copy")


def memory_sizes(sizes: Sizes) -> Sizes:
    """The run's sizes with the memory benchmark's (larger) model shape."""
    return dataclasses.replace(sizes, d_model=sizes.mem_d_model, n_layers=sizes.mem_n_layers)


def _variant(bench: Workbench, variant: str, checkpointing: bool) -> dict[str, int]:
    """Build and train one variant; returns its tensor bytes (the window is the caller's)."""
    from benchmarks.train_step import make_examples
    from lens_oracle.config import AdapterConfig, TrainConfig
    from lens_oracle.models import load_model
    from lens_oracle.oracle import ActivationOracle
    from lens_oracle.train import Trainer, target_reader

    sizes = bench.sizes
    examples = make_examples(bench, sizes.batch)
    adapter = AdapterConfig(rank=sizes.lora_rank, alpha=2 * sizes.lora_rank)
    oracle = ActivationOracle.create(bench.random_llama(), bench.tokenizer, adapter=adapter, name="bench-oracle")
    reader, models = None, [oracle.model.hf_model]
    if variant == "separate_copy":
        target = load_model(bench.random_llama(), bench.tokenizer, name="bench-target")
        reader = target_reader(target, oracle.config.read_site)
        models.append(target.hf_model)
    trainer = Trainer(oracle, TrainConfig(learning_rate=1e-4, progress=False), reader=reader)
    oracle.model.hf_model.train()
    with oracle.model.gradient_checkpointing(checkpointing):
        for step in range(2):
            trainer._step([examples], step)
    oracle.model.hf_model.eval()
    return {
        "base_weight_bytes": sum(
            p.numel() * p.element_size() for n, p in models[0].named_parameters() if "lora_" not in n
        ),
        "adapter_bytes": sum(p.numel() * p.element_size() for p in trainer.params),
    }


@contextlib.contextmanager
def _quiet_fd2() -> Iterator[None]:
    """Silence the C++ profiler's start/stop lines, which it writes straight to fd 2."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _peak_cpu(fn: Any) -> tuple[int, Any]:
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_fd2():
        prof.__enter__()
    try:
        out = fn()
    finally:
        with _quiet_fd2():
            prof.__exit__(None, None, None)
    results = prof.profiler.kineto_results  # type: ignore[union-attr]  # set once the window closes
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in results.events()
        if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak, out


def _peak_cuda(fn: Any) -> tuple[int, Any]:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    start = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - start, out


def measure(bench: Workbench, variant: str, checkpointing: bool) -> dict[str, Any]:
    """Peak tensor bytes of one variant, measured from an empty window."""
    gc.collect()
    peak_fn = _peak_cuda if bench.device.type == "cuda" else _peak_cpu
    peak, info = peak_fn(lambda: _variant(bench, variant, checkpointing))
    gc.collect()
    return {"peak_bytes": int(peak), **info}


def run(bench: Workbench) -> tuple[float, dict[str, Any]]:
    """Both variants, with and without gradient checkpointing; the figure is with it."""
    sizes = memory_sizes(bench.sizes)
    small = dataclasses.replace(bench, sizes=sizes)
    progress(f"memory: d_model {sizes.d_model}, {sizes.n_layers} layers, batch {sizes.batch} x {sizes.ctx_len}")
    mib = 1 << 20
    figures: dict[str, float] = {}
    details: dict[str, Any] = {
        "model": {"d_model": sizes.d_model, "n_layers": sizes.n_layers, "lora_rank": sizes.lora_rank},
        "batch": [sizes.batch, sizes.ctx_len],
    }
    for checkpointing in (True, False):
        same, copy = (measure(small, v, checkpointing) for v in VARIANTS)
        key = "with_gradient_checkpointing" if checkpointing else "without_gradient_checkpointing"
        figures[key] = same["peak_bytes"] / copy["peak_bytes"]
        details[key] = {
            "ratio": figures[key],
            "same_model_peak_mib": same["peak_bytes"] / mib,
            "separate_copy_peak_mib": copy["peak_bytes"] / mib,
            "copy_minus_same_mib": (copy["peak_bytes"] - same["peak_bytes"]) / mib,
        }
        progress(
            f"memory ({key.replace('_', ' ')}): same model {same['peak_bytes'] / mib:.1f} MiB "
            f"vs separate copy {copy['peak_bytes'] / mib:.1f} MiB -> {figures[key]:.3f}"
        )
    value = figures["with_gradient_checkpointing"]
    details.update(
        {
            "base_weights_mib": same["base_weight_bytes"] / mib,
            "adapter_mib": same["adapter_bytes"] / mib,
            "measure": "cuda.max_memory_allocated" if bench.device.type == "cuda" else "torch.profiler live tensor bytes",
            "goal": f"<= {GOAL} (with gradient checkpointing, as AO trains)",
            "goal_met": value <= GOAL,
        }
    )
    return value, details
