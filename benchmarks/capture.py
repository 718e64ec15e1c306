"""``capture_over_floor`` and ``capture_speedup_vs_full_cache``.

Ours: :func:`lens_oracle.activations.capture` of ``batch`` prompts (token ids) at the middle layer,
``n_read`` positions each. Floor: a bare ``bridge(ids, stop_at_layer=layer + 1)`` under
``no_grad`` on the same padded tokens, nothing else. Full cache: ``bridge.run_with_cache`` on the
same tokens (every hook of every layer, the usual TransformerLens way to read activations).
"""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.common import (
    Workbench,
    interleaved,
    progress,
    random_contexts,
    ratio,
    timing_details,
)

GOAL = 1.05


def run(bench: Workbench) -> tuple[dict[str, float], dict[str, Any]]:
    from lens_oracle.activations import LastK, capture
    from lens_oracle.models import load_model

    sizes = bench.sizes
    hf_model = bench.random_llama()
    model = load_model(hf_model, bench.tokenizer, name="bench-target")
    layer = sizes.n_layers // 2
    contexts = random_contexts(sizes, bench.tokenizer, sizes.batch, seed=1)
    ids = torch.tensor(contexts, device=bench.device)
    mask = torch.ones_like(ids)
    positions = LastK(sizes.n_read)
    progress(f"capture: {sizes.batch} x {sizes.ctx_len} tokens, layer {layer} of {sizes.n_layers}")

    def ours() -> None:
        capture(model, contexts, layer, positions=positions, batch_size=sizes.batch)

    @torch.no_grad()
    def floor() -> None:
        model.bridge(ids, attention_mask=mask, stop_at_layer=layer + 1)

    @torch.no_grad()
    def full_cache() -> None:
        _, cache = model.bridge.run_with_cache(ids, attention_mask=mask)
        cache[f"blocks.{layer}.hook_resid_post"][:, -sizes.n_read :].float().cpu()

    times = interleaved(
        {"ours": ours, "floor": floor, "full_cache": full_cache},
        repeats=sizes.repeats, warmup=sizes.warmup, device=bench.device,
    )
    over = ratio(times, "ours", "floor")
    speedup = ratio(times, "full_cache", "ours")
    details = {
        "model": bench.describe(hf_model),
        "tokens": [sizes.batch, sizes.ctx_len],
        "layer": layer,
        "positions_read": sizes.n_read,
        "timings": timing_details(times),
        "goal": f"<= {GOAL}",
        "goal_met": over <= GOAL,
    }
    progress(f"capture: {over:.3f} x floor, {speedup:.2f}x faster than run_with_cache")
    return {"capture_over_floor": over, "capture_speedup_vs_full_cache": speedup}, details
