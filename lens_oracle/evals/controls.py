"""The oracle family and the vector ablations: the same oracle, asked with altered vectors.

``ablated_zero`` is asking with ``inject=False``: norm-matched addition refuses a zero vector (no
direction) and ``h + 0 = h``, so "inject zeros" and "inject nothing" are the same computation.
The placeholders stay in the prompt, so the prompt is token-for-token the oracle's.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Sequence
from typing import Any

import torch

from lens_oracle.errors import EvalError
from lens_oracle.evals.methods import MethodContext, MethodOutput, question_labels
from lens_oracle.evals.metrics import normalize_answer, yes_no_probability
from lens_oracle.models import LoadedModel
from lens_oracle.oracle import ActivationOracle
from lens_oracle.typing import ExampleVectors


def shuffle_permutation(keys: Sequence[str], seed: int) -> tuple[list[int], int]:
    """A seeded derangement ``perm`` (item i gets item ``perm[i]``'s vectors) avoiding equal keys.

    Returns the permutation and how many items still get vectors from an item with the same key
    (0 whenever no key holds more than half the items).
    """
    n = len(keys)
    rng = random.Random(seed)
    perm = list(range(n))
    rng.shuffle(perm)
    if n < 2:
        return perm, n
    order = list(range(n))
    for i in range(n):
        if keys[perm[i]] != keys[i]:
            continue
        rng.shuffle(order)
        for j in order:
            if keys[perm[j]] != keys[i] and keys[perm[i]] != keys[j]:
                perm[i], perm[j] = perm[j], perm[i]
                break
    for i in range(n):  # no item may keep its own vectors
        if perm[i] == i:
            j = next((j for j in range(n) if j != i and keys[perm[j]] != keys[i]), (i + 1) % n)
            perm[i], perm[j] = perm[j], perm[i]
    return perm, sum(keys[perm[i]] == keys[i] for i in range(n))


def random_like(vectors: Sequence[ExampleVectors], seed: int) -> list[ExampleVectors]:
    """Seeded Gaussian vectors with each row rescaled to the norm of the matching original row."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for v in vectors:
        noise = torch.randn(v.shape, generator=generator, dtype=torch.float32)
        norms = v.float().norm(dim=-1, keepdim=True)
        out.append(noise / noise.norm(dim=-1, keepdim=True) * norms)
    return out


# ---------------------------------------------------------------- oracle family


def yes_no_token_ids(tokenizer: Any) -> tuple[list[int], list[int]]:
    """First-token ids of yes / no spellings (``Yes``, `` yes``, ...) that the tokenizer knows."""
    unk = getattr(tokenizer, "unk_token_id", None)
    sides: list[list[int]] = []
    for word in ("yes", "no"):
        ids = set()
        for variant in (word, word.capitalize(), f" {word}", f" {word.capitalize()}"):
            enc = tokenizer.encode(variant, add_special_tokens=False)
            if enc and enc[0] != unk and normalize_answer(tokenizer.decode(enc[:1])) == word:
                ids.add(int(enc[0]))
        sides.append(sorted(ids))
    if not sides[0] or not sides[1] or set(sides[0]) & set(sides[1]):
        raise EvalError(
            "the tokenizer has no distinct single tokens for 'yes' and 'no'; yes/no probabilities need them"
        )
    return sides[0], sides[1]


@torch.no_grad()
def oracle_p_yes(
    oracle: ActivationOracle,
    vectors: Sequence[ExampleVectors],
    layer: int | tuple[int, ...],
    questions: Sequence[str],
    *,
    inject: bool = True,
    batch_size: int = 16,
) -> list[float]:
    """P(yes) vs no from the oracle's next-token logits at the last prompt position (left padding)."""
    yes_ids, no_ids = yes_no_token_ids(oracle.model.tokenizer)
    model = oracle.model.hf_model
    was_training = model.training
    model.eval()
    out: list[float] = []
    try:
        for start in range(0, len(vectors), batch_size):
            chunk = slice(start, start + batch_size)
            batch = oracle.encode(
                list(vectors[chunk]),
                [layer] * len(vectors[chunk]),
                list(questions[chunk]),
                padding_side="left",
            )
            logits = oracle.logits(batch, inject=inject)[:, -1].float().cpu()  # the last position's
            out.extend(float(p) for p in yes_no_probability(logits, yes_ids, no_ids))
    finally:
        model.train(was_training)
    return out


@torch.no_grad()
def text_p_yes(model: LoadedModel, prompts: Sequence[Sequence[int]], *, batch_size: int = 32) -> list[float]:
    """P(yes) vs no from ``model``'s next-token logits after each prompt (ids; left padding),
    its adapter off: a model reading text and asked a yes/no question, with no vectors."""
    tokenizer = model.tokenizer
    yes_ids, no_ids = yes_no_token_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[float] = []
    with model.adapter_disabled():
        for start in range(0, len(prompts), batch_size):
            rows = [list(p) for p in prompts[start : start + batch_size]]
            width = max(map(len, rows))
            ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
            logits = model.logits(ids.to(model.device), mask.to(model.device))[:, -1].float().cpu()
            out.extend(float(p) for p in yes_no_probability(logits, yes_ids, no_ids))
    return out


def ask_oracle(
    ctx: MethodContext, vectors: Sequence[ExampleVectors], *, adapter: bool = True, inject: bool = True
) -> MethodOutput:
    """The oracle (or its base model) asked every paraphrase about ``vectors``.

    ``granularity="each"`` (AO's token-level probe) asks every read position in a query of its own;
    an item's answers (one per position, or ``samples`` per position) are then kept as its sample
    group, the prediction shown is the most common one, and P(yes) is the mean over its positions.
    """
    prep, oracle = ctx.prepared, ctx.oracle
    task = prep.task
    each = task.granularity == "each"
    if each:
        queries = [v[k : k + 1] for v in vectors for k in range(v.shape[0])]
        owner = [i for i, v in enumerate(vectors) for _ in range(v.shape[0])]
    else:
        queries, owner = list(vectors), list(range(len(vectors)))
    layers = [prep.tag] * len(queries)
    predictions, probs, samples = [], [], []
    for k in range(task.n_questions):
        questions = [prep.questions(k)[i] for i in owner]
        with contextlib.nullcontext() if adapter else oracle.adapter_disabled():
            if task.samples:
                drawn = oracle.ask_samples(
                    queries, questions, n_samples=task.samples, max_new_tokens=task.max_new_tokens,
                    seed=ctx.seed, layers=layers, batch_size=ctx.batch_size, inject=inject,
                )
            else:
                answers = oracle.ask_batch(
                    queries, questions, layers=layers, max_new_tokens=task.max_new_tokens,
                    batch_size=ctx.batch_size, inject=inject,
                )
                drawn = [[answer] for answer in answers]
            p_yes = (
                oracle_p_yes(oracle, queries, prep.tag, questions, inject=inject, batch_size=ctx.batch_size)
                if task.scorer == "yes_no" and (each or not task.samples) else None
            )
        groups: list[list[str]] = [[] for _ in vectors]
        for item, group in zip(owner, drawn, strict=True):
            groups[item].extend(group)
        if task.samples or each:
            samples.append(tuple(tuple(g) for g in groups))
        predictions.append(tuple(most_common(g) for g in groups))
        if p_yes is not None:
            per_item: list[list[float]] = [[] for _ in vectors]
            for p, item in zip(p_yes, owner, strict=True):
                per_item[item].append(p)
            probs.append(tuple(sum(ps) / len(ps) for ps in per_item))
    return MethodOutput(tuple(predictions), question_labels(task), tuple(probs), samples=tuple(samples))


def most_common(answers: Sequence[str]) -> str:
    """The most frequent answer after normalisation (the earliest among ties), as first written."""
    from collections import Counter

    from lens_oracle.evals.metrics import normalize_answer

    counts = Counter(normalize_answer(a) for a in answers)
    top = max(counts.values())
    return next(a for a in answers if counts[normalize_answer(a)] == top)


def ablated_shuffle(ctx: MethodContext) -> MethodOutput:
    """The oracle asked with other items' vectors (a label-avoiding seeded derangement)."""
    vectors = ctx.prepared.vectors
    perm, clashes = shuffle_permutation([item.label for item in ctx.prepared.items], ctx.seed)
    out = ask_oracle(ctx, [vectors[j] for j in perm])
    return MethodOutput(
        out.predictions, out.questions, out.p_yes, {"shuffle_same_label_items": clashes}, out.samples
    )
