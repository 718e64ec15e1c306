"""Baselines that do not use the oracle: the target asked in text, and white-box readouts.

* ``black_box``: the target is asked itself: its context, then the question as a user turn
  (chat template when the tokenizer has one), greedy decoding.
* ``logit_lens``: the target's final norm + unembedding applied to the vectors the oracle reads
  (in difference mode, to the difference); the candidate whose first token has the highest mean
  log-probability over the read positions wins, or the top token when there are no candidates.
* ``linear_probe``: logistic regression on the task's labelled ``train_items`` (a reference).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from einops import reduce

from lens_oracle.errors import EvalError
from lens_oracle.evals.methods import NO_QUESTION, MethodContext, MethodOutput, question_labels
from lens_oracle.evals.probe import pool_vectors, train_probe
from lens_oracle.generation import generate_text
from lens_oracle.models import LoadedModel
from lens_oracle.prompt import render_chat
from lens_oracle.typing import ExampleVectors, Float, Tensor


def _question_ids(tokenizer: Any, question: str) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        text = render_chat(tokenizer, [{"role": "user", "content": question}], True)
        ids = [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
        if ids and ids[0] == tokenizer.bos_token_id:  # the context already starts the sequence
            ids = ids[1:]
        return ids
    return [
        int(i) for i in tokenizer("\n" + question + "\n", add_special_tokens=False)["input_ids"]
    ]


def black_box(ctx: MethodContext) -> MethodOutput:
    """Ask the target model itself: context, then each paraphrase as a user turn."""
    prep, model = ctx.prepared, ctx.target.model
    predictions = []
    for k in range(prep.task.n_questions):
        prompts = [
            list(c) + _question_ids(model.tokenizer, q)
            for c, q in zip(prep.contexts, prep.questions(k), strict=True)
        ]
        predictions.append(
            tuple(generate_text(model, prompts, prep.task.max_new_tokens, ctx.batch_size))
        )
    return MethodOutput(tuple(predictions), question_labels(prep.task))


# ---------------------------------------------------------------- white-box readouts


@torch.no_grad()
def lens_logprobs(
    model: LoadedModel, vectors: Float[Tensor, "n_vec d_model"]
) -> Float[Tensor, "n_vec d_vocab"]:
    """Logit lens: the target's final norm and unembedding applied to residual vectors."""
    with model.adapter_disabled():
        logits = model.unembed_residual(vectors)
    return logits.float().log_softmax(dim=-1).cpu()


def candidate_token_ids(tokenizer: Any, candidate: str) -> list[int]:
    """First-token ids of ``candidate`` with and without a leading space (unknown tokens dropped)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    ids = {
        enc[0]
        for v in (candidate, f" {candidate}")
        if (enc := tokenizer.encode(v, add_special_tokens=False))
    }
    ids.discard(unk)
    if not ids:
        raise EvalError(f"candidate answer {candidate!r} has no known token for the logit lens")
    return sorted(int(i) for i in ids)


def logit_lens(ctx: MethodContext) -> MethodOutput:
    """Best candidate (or top token) under the logit lens, averaged over read positions."""
    model = ctx.target.model
    return _token_readout(ctx, lambda v: lens_logprobs(model, v))


def patchscope_readout(ctx: MethodContext) -> MethodOutput:
    """Best candidate (or top token) of the token-identity Patchscope at the read layer: each
    read vector patched into the identity prompt of the unmodified target, averaged over positions."""
    from lens_oracle.evals.patchscope import patched_logprobs

    model, layer = ctx.target.model, ctx.prepared.layer
    with model.adapter_disabled():
        return _token_readout(ctx, lambda v: patched_logprobs(model, v, layer, batch_size=ctx.batch_size))


def _token_readout(
    ctx: MethodContext, read: Callable[[ExampleVectors], Float[Tensor, "n_vec d_vocab"]]
) -> MethodOutput:
    """One answer per item from next-token log-probabilities per read vector (``read``), averaged
    over the item's positions: the candidate whose first token scores highest, or the top token
    when the task has no candidates."""
    model, prep = ctx.target.model, ctx.prepared
    candidates = prep.task.candidates or prep.task.label_set
    ids = [candidate_token_ids(model.tokenizer, c) for c in candidates]
    predictions = []
    for v in prep.vectors:
        logprobs = reduce(read(v), "n_vec d_vocab -> d_vocab", "mean")
        if candidates:
            scores = [float(logprobs[i].max()) for i in ids]
            predictions.append(candidates[max(range(len(scores)), key=scores.__getitem__)])
        else:
            predictions.append(model.tokenizer.decode([int(logprobs.argmax())]).strip())
    return MethodOutput((tuple(predictions),), (NO_QUESTION,))


def linear_probe(ctx: MethodContext) -> MethodOutput:
    """Logistic regression on the mean-pooled train vectors; predicts a label of the task."""
    prep, train = ctx.prepared, ctx.train
    labels = prep.task.label_set
    if train is None or not labels:
        raise EvalError(
            f"task {prep.task.name!r}: the linear probe needs candidates and train_items"
        )
    y = torch.tensor([labels.index(item.label) for item in train.items])
    probe = train_probe(pool_vectors(train.vectors), y, len(labels), ctx.probe)
    predicted = probe.predict(pool_vectors(prep.vectors))
    train_acc = float((probe.predict(pool_vectors(train.vectors)) == y).float().mean())
    return MethodOutput(
        (tuple(labels[int(i)] for i in predicted),),
        (NO_QUESTION,),
        extras={"probe_train_accuracy": train_acc, "probe_train_items": len(train)},
    )
