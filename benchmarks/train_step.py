"""``train_step_over_floor``: one oracle training step vs the arithmetic it cannot avoid.

Ours: one optimiser step of :class:`lens_oracle.train.Trainer` on a batch of examples: the
target pass (the oracle's own base, adapter off, no grad, ``stop_at_layer``), encoding the
oracle prompts, the injected forward, backward, clipping and AdamW.

Floor: the sum of (a) a plain PEFT LoRA step on the same oracle tokens and labels (forward with
``labels``, backward, clipping, AdamW; no injection, no prompt encoding) and (b) a no-grad
``bridge(..., stop_at_layer=deepest read layer + 1)`` on the same target tokens with the adapter
off. Both run on the same model object (so the bridge's hook points fire on both sides).
"""

from __future__ import annotations

import random
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

GOAL = 1.10


def make_examples(bench: Workbench, n: int, seed: int = 0) -> list[Any]:
    """``n`` context-prediction-like examples: ``ctx_len`` tokens, the last ``n_read`` read at
    25/50/75% depth in turn, an 8-word answer."""
    from lens_oracle.data.example import OracleExample
    from lens_oracle.data.layers import layers_from_fractions

    sizes = bench.sizes
    rng = random.Random(seed)
    layers = layers_from_fractions(sizes.n_layers)
    contexts = random_contexts(sizes, bench.tokenizer, n, seed=seed)
    return [
        OracleExample(
            context_ids=tuple(ctx),
            positions=tuple(range(len(ctx) - sizes.n_read, len(ctx))),
            layer=layers[i % len(layers)],
            question="Can you predict the next 8 tokens that come after this?",
            answer=" ".join(f"w{rng.randrange(1000)}" for _ in range(8)),
        )
        for i, ctx in enumerate(contexts)
    ]


def run(bench: Workbench) -> tuple[float, dict[str, Any]]:
    from lens_oracle.config import AdapterConfig, TrainConfig
    from lens_oracle.oracle import ActivationOracle
    from lens_oracle.train import Trainer, self_reader

    sizes = bench.sizes
    hf_model = bench.random_llama()
    adapter = AdapterConfig(rank=sizes.lora_rank, alpha=2 * sizes.lora_rank)
    oracle = ActivationOracle.create(hf_model, bench.tokenizer, adapter=adapter, name="bench-oracle")
    model = oracle.model
    examples = make_examples(bench, sizes.batch)
    trainer = Trainer(oracle, TrainConfig(learning_rate=1e-4, progress=False))

    # The floor's inputs, prepared once outside the timed region.
    vectors = self_reader(oracle)(examples)
    batch = oracle.encode(
        vectors, [e.layer for e in examples], [e.question for e in examples], [e.answer for e in examples]
    )
    device = bench.device
    oracle_ids, oracle_mask = batch.input_ids.to(device), batch.attention_mask.to(device)
    assert batch.labels is not None
    labels = batch.labels.to(device)
    target_ids = torch.tensor([list(e.context_ids) for e in examples], device=device)
    target_mask = torch.ones_like(target_ids)
    stop = max(e.layer for e in examples) + 1
    params = model.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    progress(
        f"train step: {sizes.batch} examples, target {tuple(target_ids.shape)}, "
        f"oracle {tuple(oracle_ids.shape)}, LoRA rank {sizes.lora_rank}"
    )

    def ours() -> None:
        trainer._step([examples], 0)

    def floor() -> None:
        with torch.no_grad(), model.adapter_disabled():
            model.bridge(target_ids, attention_mask=target_mask, stop_at_layer=stop)
        optimizer.zero_grad(set_to_none=True)
        out = model.hf_model(input_ids=oracle_ids, attention_mask=oracle_mask, labels=labels, use_cache=False)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    model.hf_model.train()
    try:
        times = interleaved(
            {"ours": ours, "floor": floor}, repeats=sizes.repeats, warmup=sizes.warmup, device=device
        )
    finally:
        model.hf_model.eval()
    over = ratio(times, "ours", "floor")
    details = {
        "model": bench.describe(hf_model),
        "lora_rank": sizes.lora_rank,
        "target_tokens": list(target_ids.shape),
        "oracle_tokens": list(oracle_ids.shape),
        "read_layers": sorted({e.layer for e in examples}),
        "timings": timing_details(times),
        "goal": f"<= {GOAL}",
        "goal_met": over <= GOAL,
    }
    progress(f"train step: {over:.3f} x floor")
    return over, details
