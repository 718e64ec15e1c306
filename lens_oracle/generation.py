"""Greedy continuations of token-id prompts by a :class:`~lens_oracle.models.LoadedModel`, batched.

Used where the *target* speaks: the black-box baseline asks it in text, on-policy context
prediction (:mod:`lens_oracle.data.context_prediction`) learns what it would say next, and the
steering demo (:mod:`lens_oracle.control`) measures what a steered model says. Prompts are left
padded; decoding runs through the model's original Hugging Face modules (no hook fires: ~15%
faster per step, see :func:`lens_oracle.bridge.unbridged`); an answer ends before its first stop
token (the tokenizer's eos and the model's generation eos ids).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from lens_oracle.bridge import unbridged
from lens_oracle.errors import PromptError
from lens_oracle.models import LoadedModel
from lens_oracle.prompt import stop_token_ids
from lens_oracle.validate import check_count


@torch.no_grad()
def generate_ids(
    model: LoadedModel,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    batch_size: int = 16,
    adapter: bool = False,
    progress: bool = False,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[list[int]]:
    """Each prompt's greedy continuation as token ids, stop tokens cut off.

    ``temperature > 0`` samples instead (seeded by ``seed``; the global RNG is left as it was).

    ``adapter=False`` (default) runs the base model with any LoRA adapter off (the target role);
    ``adapter=True`` runs the model as it is (a steered target, an organism with its adapter on).
    A prompt longer than the model's context less ``max_new_tokens`` keeps its last tokens.
    """
    check_count(max_new_tokens, "max_new_tokens")
    check_count(batch_size, "batch_size")
    if not 0.0 <= temperature <= 10.0:
        raise PromptError(f"temperature is {temperature}; give 0 (greedy) or a value up to 10")
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0} if temperature > 0 else {"do_sample": False}
    limit = model.n_ctx - max_new_tokens
    if limit < 1:
        raise PromptError(
            f"max_new_tokens={max_new_tokens} leaves no room for a prompt in {model.name!r}'s "
            f"context of {model.n_ctx} tokens; ask for fewer new tokens"
        )
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise PromptError(f"prompt {i} is empty; give at least one token")
        model.check_token_ids(list(prompt), f"prompt {i}")
    tokenizer, hf = model.tokenizer, model.hf_model
    stops = set(stop_token_ids(tokenizer, getattr(hf, "generation_config", None)))
    answers: list[list[int]] = []
    was_training = hf.training
    hf.eval()
    bar = tqdm(total=len(prompts), desc="generating", unit="prompt", disable=not progress)
    try:
        with _adapter_as_asked(model, adapter), unbridged(hf), torch.random.fork_rng():
            torch.manual_seed(seed)
            for start in range(0, len(prompts), batch_size):
                rows = [list(p)[-limit:] for p in prompts[start : start + batch_size]]
                width = max(len(r) for r in rows)
                ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for r, row in enumerate(rows):
                    ids[r, width - len(row) :] = torch.tensor(row)
                    mask[r, width - len(row) :] = 1
                out = hf.generate(
                    input_ids=ids.to(model.device),
                    attention_mask=mask.to(model.device),
                    max_new_tokens=max_new_tokens,
                    **sampling,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=sorted(stops) or None,
                )
                for row in out[:, width:].tolist():
                    cut = next((i for i, t in enumerate(row) if t in stops), len(row))
                    answers.append(row[:cut])
                bar.update(len(rows))
    finally:
        bar.close()
        hf.train(was_training)
    return answers


def generate_text(
    model: LoadedModel,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    batch_size: int = 16,
    *,
    adapter: bool = False,
    temperature: float = 0.0,
    seed: int = 0,
    progress: bool = False,
) -> list[str]:
    """:func:`generate_ids`, decoded (special tokens dropped, whitespace stripped)."""
    rows = generate_ids(
        model, prompts, max_new_tokens, batch_size=batch_size, adapter=adapter, temperature=temperature,
        seed=seed, progress=progress,
    )
    return [model.tokenizer.decode(row, skip_special_tokens=True).strip() for row in rows]


def _adapter_as_asked(model: LoadedModel, adapter: bool) -> contextlib.AbstractContextManager[object]:
    return contextlib.nullcontext() if adapter else model.adapter_disabled()


__all__ = ["generate_ids", "generate_text"]
