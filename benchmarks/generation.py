"""``batched_generation_speedup`` and ``generation_over_hf``.

An oracle answers ``n_questions`` questions, each about its own ``n_read`` activation vectors,
greedy, ``max_new_tokens`` tokens each (the benchmark model never picks a stop token, so every
answer has the same length on every side).

* Batched: one :meth:`ActivationOracle.ask_batch` call, ``gen_batch`` prompts per generate call.
* One at a time: :meth:`ActivationOracle.ask` in a loop.
* Plain HF: ``hf_model.generate`` on the very same left-padded prompt batches (tokenized
  beforehand, outside the timed region), without the injection hook.
"""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.common import Workbench, interleaved, progress, ratio, timing_details

SPEEDUP_GOAL = 5.0
OVER_HF_GOAL = 1.15


def run(bench: Workbench) -> tuple[dict[str, float], dict[str, Any]]:
    from lens_oracle.config import AdapterConfig
    from lens_oracle.oracle import ActivationOracle
    from lens_oracle.prompt import stop_token_ids

    sizes = bench.sizes
    hf_model = bench.random_llama()
    adapter = AdapterConfig(rank=sizes.lora_rank, alpha=2 * sizes.lora_rank)
    oracle = ActivationOracle.create(hf_model, bench.tokenizer, adapter=adapter, name="bench-oracle")
    tokenizer = bench.tokenizer
    n, batch_size, new_tokens = sizes.n_questions, sizes.gen_batch, sizes.max_new_tokens
    generator = torch.Generator().manual_seed(0)
    vectors = [torch.randn(sizes.n_read, sizes.d_model, generator=generator) for _ in range(n)]
    layer = sizes.n_layers // 2
    layers = [layer] * n
    questions = [f"what is w{i} about here ?" for i in range(n)]
    progress(f"generation: {n} questions x {new_tokens} new tokens, batch {batch_size}")

    def batched() -> list[str]:
        return oracle.ask_batch(
            vectors, questions, layers=layers, max_new_tokens=new_tokens, batch_size=batch_size
        )

    def one_at_a_time() -> list[str]:
        return [
            oracle.ask(v, q, layers=[layer], max_new_tokens=new_tokens)
            for v, q in zip(vectors, questions, strict=True)
        ]

    encoded = [
        oracle.encode(vectors[s : s + batch_size], layers[s : s + batch_size], questions[s : s + batch_size], padding_side="left")
        for s in range(0, n, batch_size)
    ]
    stops = stop_token_ids(tokenizer, hf_model.generation_config)
    device = bench.device

    @torch.no_grad()
    def plain_hf() -> list[torch.Tensor]:
        return [
            hf_model.generate(
                input_ids=b.input_ids.to(device), attention_mask=b.attention_mask.to(device),
                max_new_tokens=new_tokens, do_sample=False,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=stops or None,
            )
            for b in encoded
        ]

    answer_words = [len(a.split()) for a in batched()]
    hf_new = [int(out.shape[1] - b.input_ids.shape[1]) for out, b in zip(plain_hf(), encoded, strict=True)]
    times = interleaved(
        {"batched": batched, "plain_hf": plain_hf},
        repeats=sizes.repeats, warmup=sizes.warmup, device=device,
    )
    single_rounds = max(2, sizes.repeats // 3)
    single = interleaved(
        {"batched": batched, "one_at_a_time": one_at_a_time},
        repeats=single_rounds, warmup=1, device=device,
    )
    speedup = ratio(single, "one_at_a_time", "batched")
    over_hf = ratio(times, "batched", "plain_hf")
    details = {
        "model": bench.describe(hf_model),
        "questions": n,
        "batch_size": batch_size,
        "max_new_tokens": new_tokens,
        "vectors_per_question": sizes.n_read,
        "answer_words_min_max": [min(answer_words), max(answer_words)],
        "plain_hf_new_tokens": hf_new,
        "timings_vs_hf": timing_details(times),
        "timings_vs_single": timing_details(single),
        "speedup_goal": f">= {SPEEDUP_GOAL}",
        "speedup_goal_met": speedup >= SPEEDUP_GOAL,
        "over_hf_goal": f"<= {OVER_HF_GOAL}",
        "over_hf_goal_met": over_hf <= OVER_HF_GOAL,
    }
    progress(f"generation: batched {speedup:.2f}x faster than one at a time, {over_hf:.3f} x plain HF")
    return {"batched_generation_speedup": speedup, "generation_over_hf": over_hf}, details
