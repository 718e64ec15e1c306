"""``padding_efficiency``: real tokens / processed tokens over an epoch of an AO-like mixture.

The mixture follows the Activation Oracles proportions (context prediction 60%, classification
34%, system-prompt QA 6%), built with lens_oracle's own builders from synthetic documents whose
lengths spread like web text (log-uniform), so the length distribution is realistic even though
the words are random. Batches come from :func:`lens_oracle.train.training_batches`, exactly as
:func:`lens_oracle.runner.train_oracle` makes them; ``details`` also has plain random batches and
single-length grouping (:func:`lens_oracle.data.mixture.length_grouped_batches`) for comparison.

Both passes of a training step are counted, each padded to its own batch maximum (that is what
the trainer runs): the target pass over ``context_ids`` and the oracle pass over the tokenized
oracle prompt + answer. No timing is involved, so the figure is exact and deterministic.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

from benchmarks.common import Workbench, progress

GOAL = 0.90
SHARES = {"context_prediction": 0.60, "classification": 0.34, "spqa": 0.06}
"""Activation Oracles' mixture: ~600k context prediction, ~336k classification, ~64k SPQA."""


def _words(rng: random.Random, n: int) -> str:
    return " ".join(f"w{rng.randrange(1000)}" for _ in range(n))


def _log_uniform(rng: random.Random, low: int, high: int) -> int:
    return round(math.exp(rng.uniform(math.log(low), math.log(high))))


def build_mixture(bench: Workbench, n_examples: int, seed: int = 0) -> list[Any]:
    """An AO-proportioned list of :class:`~lens_oracle.data.example.OracleExample`."""
    from lens_oracle.data import (
        ClassificationConfig,
        ContextPredictionConfig,
        SPQAConfig,
        build_classification,
        build_context_prediction,
        build_spqa,
        layers_from_fractions,
    )

    rng = random.Random(seed)
    tok = bench.tokenizer
    layers = layers_from_fractions(bench.sizes.n_layers)
    max_doc = min(240, bench.sizes.ctx_len * 2)  # the toy Llama's context is 256 tokens
    counts = {name: max(1, round(share * n_examples)) for name, share in SHARES.items()}
    docs = [_words(rng, _log_uniform(rng, 24, max_doc)) for _ in range(counts["context_prediction"])]
    context = build_context_prediction(
        docs, tok, layers, ContextPredictionConfig(seed=seed, max_doc_tokens=max_doc)
    )
    rows = [
        {"text": _words(rng, _log_uniform(rng, 8, 120)), "label": rng.choice(["positive", "negative"])}
        for _ in range(counts["classification"])
    ]
    classification = build_classification(rows, tok, layers, ClassificationConfig(seed=seed))
    spqa_rows = []
    for _ in range(max(1, counts["spqa"] // 2)):
        dialog = []
        for turn in range(rng.randint(2, 4)):
            role = "user" if turn % 2 == 0 else "assistant"
            dialog.append({"role": role, "content": _words(rng, rng.randint(5, 40))})
        qa = [
            {"question": "what is the assistant 's tone ?", "answer": _words(rng, rng.randint(1, 6))}
            for _ in range(2)
        ]
        spqa_rows.append({"system": _words(rng, rng.randint(8, 30)), "dialog": dialog, "qa": qa})
    spqa = build_spqa(spqa_rows, tok, layers, SPQAConfig(seed=seed))
    examples = [*context, *classification, *spqa]
    random.Random(seed).shuffle(examples)
    return examples


def _oracle_length(bench: Workbench, example: Any) -> int:
    from lens_oracle.config import PromptConfig
    from lens_oracle.prompt import encode_oracle_prompt

    encoded = encode_oracle_prompt(
        bench.tokenizer, PromptConfig(), example.layer, len(example.positions),
        example.question, example.answer,
    )
    return len(encoded.input_ids)


def efficiency(batches: Sequence[Sequence[Any]], target: dict[int, int], oracle: dict[int, int]) -> dict[str, float]:
    """Real / processed tokens of both passes (each padded to its batch maximum)."""
    real = processed = 0
    real_target = processed_target = real_oracle = processed_oracle = 0
    for batch in batches:
        t = [target[id(e)] for e in batch]
        o = [oracle[id(e)] for e in batch]
        real_target += sum(t)
        processed_target += len(t) * max(t)
        real_oracle += sum(o)
        processed_oracle += len(o) * max(o)
    real = real_target + real_oracle
    processed = processed_target + processed_oracle
    return {
        "both_passes": real / processed,
        "target_pass": real_target / processed_target,
        "oracle_pass": real_oracle / processed_oracle,
        "real_tokens": float(real),
        "processed_tokens": float(processed),
    }


def run(bench: Workbench) -> tuple[float, dict[str, Any]]:
    """Padding efficiency of the trainer's batching; details include other batchings."""
    from lens_oracle.config import TrainConfig
    from lens_oracle.data.mixture import length_grouped_batches
    from lens_oracle.oracle import ActivationOracle
    from lens_oracle.train import training_batches

    sizes = bench.sizes
    progress(f"padding: building an AO-like mixture of {sizes.mixture_size} examples")
    examples = build_mixture(bench, sizes.mixture_size)
    target = {id(e): len(e.context_ids) for e in examples}
    oracle_lengths = {id(e): _oracle_length(bench, e) for e in examples}
    oracle = ActivationOracle.create(
        bench.random_llama(d_model=64, n_layers=sizes.n_layers), bench.tokenizer, name="bench-oracle"
    )
    ours = efficiency(
        training_batches(oracle, examples, TrainConfig(batch_size=sizes.batch, seed=0)), target, oracle_lengths
    )
    order = list(examples)
    random.Random(1).shuffle(order)
    unsorted = [order[i : i + sizes.batch] for i in range(0, len(order), sizes.batch)]
    single = length_grouped_batches(examples, sizes.batch, seed=0)
    by_task: dict[str, int] = {}
    for e in examples:
        by_task[e.task] = by_task.get(e.task, 0) + 1
    details = {
        "examples": len(examples),
        "by_task": by_task,
        "batch_size": sizes.batch,
        "train_oracle_batches": ours,
        "single_length_grouped": efficiency(single, target, oracle_lengths),
        "random_batches": efficiency(unsorted, target, oracle_lengths),
        "mean_target_tokens": sum(target.values()) / len(examples),
        "mean_oracle_tokens": sum(oracle_lengths.values()) / len(examples),
        "goal": f">= {GOAL}",
        "goal_met": ours["both_passes"] >= GOAL,
    }
    progress(
        f"padding: efficiency {ours['both_passes']:.3f} (one-length grouping "
        f"{details['single_length_grouped']['both_passes']:.3f}, random {details['random_batches']['both_passes']:.3f})"
    )
    return ours["both_passes"], details
