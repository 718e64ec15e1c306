"""``batched_generation_speedup`` and ``generation_over_hf``.

An oracle answers ``n_questions`` questions, each about its own ``n_read`` activation vectors,
greedy, ``max_new_tokens`` tokens each (the benchmark model never picks a stop token, so every
answer has the same length on every side).

* Batched: one :meth:`ActivationOracle.ask_batch` call, ``gen_batch`` prompts per generate call.
* One at a time: :meth:`ActivationOracle.ask` in a loop.
* Plain HF: ``hf_model.generate`` on the very same left-padded prompt batches (tokenized
  beforehand, outside the timed region), without the injection hook.
* Plain PEFT + hook (``generation_over_peft_hook``): what one writes without lens_oracle, the
  Activation Oracles way: an unbridged copy of the same base weights, wrapped by PEFT with the
  oracle's LoRA weights, ``generate`` with a forward hook on ``model.model.layers[1]`` that adds
  the norm-matched vectors at the placeholders on the prompt pass (vectors scattered beforehand).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from benchmarks.common import Workbench, interleaved, progress, ratio, timing_details

SPEEDUP_GOAL = 5.0
OVER_HF_GOAL = 1.15
OVER_PEFT_HOOK_GOAL = 1.05


def plain_peft_generator(bench: Workbench, oracle: Any, encoded: list[Any], new_tokens: int, stops: list[int]) -> Any:
    """A function generating the encoded batches with an unbridged PEFT copy and a forward hook."""
    import torch.nn.functional as F
    from peft import get_peft_model, set_peft_model_state_dict

    plain = bench.random_llama()  # the same seed: the same base weights as the oracle's
    with warnings.catch_warnings():  # PEFT reads a deprecated transformers attribute; not ours
        warnings.simplefilter("ignore", FutureWarning)
        peft = get_peft_model(plain, oracle.model.peft_model.peft_config["default"])
    set_peft_model_state_dict(peft, oracle.model.adapter_state_dict())
    peft.eval()
    layer = peft.base_model.model.model.layers[1]
    device, tokenizer = bench.device, bench.tokenizer
    scattered = []
    for b in encoded:
        dense = torch.zeros(*b.placeholders.shape, b.vectors.shape[-1])
        for row in range(len(b.vectors)):
            dense[row, b.placeholders[row]] = b.vectors[row, : int(b.counts[row])]
        scattered.append((b.placeholders.to(device), F.normalize(dense, dim=-1).to(device)))
    current: dict[str, Any] = {}

    def hook(module: Any, args: Any, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        if hidden.shape[1] == 1:  # cached decoding steps: nothing to inject
            return output
        mask, unit = current["batch"]
        added = torch.where(mask[..., None], hidden + hidden.norm(dim=-1, keepdim=True) * unit, hidden)
        return (added, *output[1:]) if isinstance(output, tuple) else added

    handle = layer.register_forward_hook(hook)

    @torch.no_grad()
    def generate() -> list[torch.Tensor]:
        outs = []
        for b, batch in zip(encoded, scattered, strict=True):
            current["batch"] = batch
            outs.append(peft.generate(
                input_ids=b.input_ids.to(device), attention_mask=b.attention_mask.to(device),
                max_new_tokens=new_tokens, do_sample=False,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=stops or None,
            ))
        return outs

    generate.handle = handle  # type: ignore[attr-defined]  # kept alive with the function
    return generate


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

    plain_peft_hook = plain_peft_generator(bench, oracle, encoded, new_tokens, stops)
    answer_words = [len(a.split()) for a in batched()]
    hf_new = [int(out.shape[1] - b.input_ids.shape[1]) for out, b in zip(plain_hf(), encoded, strict=True)]
    peft_new = [int(out.shape[1] - b.input_ids.shape[1]) for out, b in zip(plain_peft_hook(), encoded, strict=True)]
    times = interleaved(
        {"batched": batched, "plain_hf": plain_hf, "plain_peft_hook": plain_peft_hook},
        repeats=sizes.repeats, warmup=sizes.warmup, device=device,
    )
    single_rounds = max(2, sizes.repeats // 3)
    single = interleaved(
        {"batched": batched, "one_at_a_time": one_at_a_time},
        repeats=single_rounds, warmup=1, device=device,
    )
    speedup = ratio(single, "one_at_a_time", "batched")
    over_hf = ratio(times, "batched", "plain_hf")
    over_peft_hook = ratio(times, "batched", "plain_peft_hook")
    new_tokens_total = n * new_tokens
    details = {
        "model": bench.describe(hf_model),
        "questions": n,
        "batch_size": batch_size,
        "max_new_tokens": new_tokens,
        "vectors_per_question": sizes.n_read,
        "answer_words_min_max": [min(answer_words), max(answer_words)],
        "plain_hf_new_tokens": hf_new,
        "plain_peft_hook_new_tokens": peft_new,
        "new_tokens_per_second": round(new_tokens_total / (sum(times["batched"]) / len(times["batched"])), 1),
        "timings_vs_hf": timing_details(times),
        "timings_vs_single": timing_details(single),
        "speedup_goal": f">= {SPEEDUP_GOAL}",
        "speedup_goal_met": speedup >= SPEEDUP_GOAL,
        "over_hf_goal": f"<= {OVER_HF_GOAL}",
        "over_hf_goal_met": over_hf <= OVER_HF_GOAL,
        "over_peft_hook_goal": f"<= {OVER_PEFT_HOOK_GOAL}",
        "over_peft_hook_goal_met": over_peft_hook <= OVER_PEFT_HOOK_GOAL,
    }
    progress(f"generation: batched {speedup:.2f}x faster than one at a time, {over_hf:.3f} x plain HF, "
             f"{over_peft_hook:.3f} x plain PEFT + hook")
    return {"batched_generation_speedup": speedup, "generation_over_hf": over_hf,
            "generation_over_peft_hook": over_peft_hook}, details
