"""Shared pieces of the benchmark suite: sizes, model builders, side-by-side timing.

Every figure is a ratio of two things measured in the same process, on the same model and the
same tokens: the two are warmed up, then run in interleaved rounds (the order alternates from
round to round so slow drifts of a shared machine hit both), and the ratio of the medians is
reported. Raw timings go into the ``details`` of the result.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class Sizes:
    """How big a run is: model shape, batch shapes and repetitions."""

    mode: str
    """``tiny`` (smoke test), ``quick`` or ``full``."""
    d_model: int
    n_layers: int
    n_extra_words: int
    """Words added to the toy vocabulary (vocabulary size is about 420 + this)."""
    batch: int
    """Prompts per capture batch / examples per training batch."""
    ctx_len: int
    """Tokens per target prompt."""
    n_read: int
    """Positions read per example."""
    repeats: int
    """Interleaved timing rounds per comparison."""
    warmup: int
    """Untimed rounds first."""
    n_questions: int
    """Questions in the generation benchmark."""
    gen_batch: int
    """Prompts per ``generate`` call when batched."""
    max_new_tokens: int
    mixture_size: int
    """Examples in the padding-efficiency mixture."""
    mem_d_model: int
    """Model width of the memory benchmark (bigger: weights should dominate, as at scale)."""
    mem_n_layers: int
    lora_rank: int
    """LoRA rank (alpha = 2 x rank), small as AO's 64 is small next to a d_model of 4096."""
    cache_examples: int
    """Examples written to the activation cache benchmark."""


SIZES: dict[str, Sizes] = {
    "tiny": Sizes(
        mode="tiny", d_model=64, n_layers=4, n_extra_words=100, batch=4, ctx_len=24, n_read=4,
        repeats=2, warmup=1, n_questions=4, gen_batch=4, max_new_tokens=3, mixture_size=64,
        mem_d_model=64, mem_n_layers=4, lora_rank=4, cache_examples=8,
    ),
    "quick": Sizes(
        mode="quick", d_model=256, n_layers=4, n_extra_words=1600, batch=16, ctx_len=96, n_read=8,
        repeats=7, warmup=2, n_questions=32, gen_batch=16, max_new_tokens=12, mixture_size=3200,
        mem_d_model=512, mem_n_layers=8, lora_rank=8, cache_examples=64,
    ),
    "smollm2": Sizes(
        mode="smollm2", d_model=576, n_layers=30, n_extra_words=0, batch=8, ctx_len=36, n_read=10,
        repeats=7, warmup=1, n_questions=16, gen_batch=8, max_new_tokens=12, mixture_size=3200,
        mem_d_model=576, mem_n_layers=30, lora_rank=64, cache_examples=32,
    ),
    "full": Sizes(
        mode="full", d_model=384, n_layers=6, n_extra_words=2600, batch=16, ctx_len=128, n_read=10,
        repeats=11, warmup=2, n_questions=64, gen_batch=16, max_new_tokens=16, mixture_size=6400,
        mem_d_model=512, mem_n_layers=8, lora_rank=8, cache_examples=128,
    ),
}


def progress(message: str) -> None:
    """Progress goes to stderr, never into the JSON."""
    print(f"[benchmarks] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- timing


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def interleaved(
    fns: dict[str, Callable[[], Any]],
    *,
    repeats: int,
    warmup: int,
    device: torch.device | str = "cpu",
) -> dict[str, list[float]]:
    """Seconds per call of each function, measured in interleaved rounds after warming up.

    The order within a round is rotated every round, so neither side always runs first.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            sync(device)
            start = time.perf_counter()
            fns[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def ratio(times: dict[str, list[float]], numerator: str, denominator: str) -> float:
    """``median(numerator) / median(denominator)``."""
    return median(times[numerator]) / median(times[denominator])


def timing_details(times: dict[str, list[float]]) -> dict[str, Any]:
    return {
        name: {"median_s": median(ts), "min_s": min(ts), "runs_s": [round(t, 6) for t in ts]}
        for name, ts in times.items()
    }


# ---------------------------------------------------------------- models


@dataclass
class Workbench:
    """The tokenizer and the random-model settings every benchmark builds from."""

    sizes: Sizes
    device: torch.device
    folder: Path
    tokenizer: Any
    model_folder: Path | None = None
    """A real model (``--model smollm2``): every benchmark model is a fresh copy of it."""

    def random_llama(self, *, d_model: int | None = None, n_layers: int | None = None, seed: int = 0) -> Any:
        """A random Llama of the run's shape (or the given one), on the run's device; with a
        real model, a fresh copy of it (special tokens never chosen, as for the random ones)."""
        if self.model_folder is not None:
            return real_model(self.model_folder, self.tokenizer).to(self.device)
        return random_llama(
            self.tokenizer,
            d_model=d_model or self.sizes.d_model,
            n_layers=n_layers or self.sizes.n_layers,
            seed=seed,
        ).to(self.device)

    def describe(self, model: Any) -> dict[str, Any]:
        cfg = model.config
        return {
            "d_model": cfg.hidden_size,
            "n_layers": cfg.num_hidden_layers,
            "d_vocab": cfg.vocab_size,
            "n_params": sum(p.numel() for p in model.parameters()),
        }


def make_workbench(sizes: Sizes, device: str | torch.device, folder: Path, model_folder: Path | None = None) -> Workbench:
    """The toy tokenizer with ``n_extra_words`` filler words (vocabulary ~0.5k-3k), saved to
    ``folder``; or, with ``model_folder``, that real model's tokenizer."""
    from lens_oracle.toy.world.language import make_world
    from lens_oracle.toy.world.tokenizer import build_tokenizer

    if model_folder is not None:
        from lens_oracle.loading import ensure_pad_token, load_tokenizer

        tokenizer = ensure_pad_token(load_tokenizer(model_folder))
        return Workbench(sizes=sizes, device=torch.device(device), folder=folder, tokenizer=tokenizer,
                         model_folder=model_folder)

    words = [f"w{i}" for i in range(sizes.n_extra_words)]
    tokenizer = build_tokenizer(make_world(), folder / "tokenizer", extra_words=words)
    return Workbench(sizes=sizes, device=torch.device(device), folder=folder, tokenizer=tokenizer)


def random_llama(tokenizer: Any, *, d_model: int, n_layers: int, seed: int = 0) -> Any:
    """A random Llama (see :func:`lens_oracle.toy.tiny.random_tiny_llama`) whose special
    tokens are never the greedy choice, so every generation runs its full length.

    Their unembedding rows are zeroed: with the large random init the best ordinary token's
    logit is far above 0, so generation lengths are the same on both sides of a comparison.
    """
    from lens_oracle.toy.tiny import random_tiny_llama

    model = random_tiny_llama(tokenizer, n_layers=n_layers, d_model=d_model, seed=seed)
    with torch.no_grad():
        model.lm_head.weight[list(tokenizer.all_special_ids)] = 0.0
    return model


def real_model(folder: Path, tokenizer: Any) -> Any:
    """A fresh float32 copy of the model in ``folder`` whose special tokens are never the greedy
    choice: the unembedding is untied and the special rows zeroed (a real model's top logits are
    far above 0), so every generation runs its full length on both sides of a comparison."""
    from lens_oracle.loading import load_hf_model

    model = load_hf_model(folder).eval()
    with torch.no_grad():
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone(), requires_grad=False)
        model.config.tie_word_embeddings = False
        model.lm_head.weight[list(tokenizer.all_special_ids)] = 0.0
    return model


def random_contexts(sizes: Sizes, tokenizer: Any, n: int, *, length: int | None = None, seed: int = 0) -> list[list[int]]:
    """``n`` token-id contexts of ordinary tokens, each starting with BOS."""
    rng = random.Random(seed)
    special = set(tokenizer.all_special_ids)
    ordinary = [i for i in range(len(tokenizer)) if i not in special]
    length = length or sizes.ctx_len
    return [[tokenizer.bos_token_id] + rng.choices(ordinary, k=length - 1) for _ in range(n)]


def sizes_dict(sizes: Sizes) -> dict[str, Any]:
    return asdict(sizes)
