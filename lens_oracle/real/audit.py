"""The real pipeline's audit: the organisms as evaluation tasks, every method, and the oracle's
own kind of question on held-out chats.

Every organism is read at half depth over the prompt's last :data:`READ_LAST` tokens (where the
model is about to reply), the same positions for every method. One organism holds one answer, so
the vector controls run pooled over a kind's organisms (:func:`~lens_oracle.evals.runner.run_pooled`:
the shuffle gives each item another organism's activations): the oracle, the untrained oracle, no
activation, shuffled and random vectors, and the linear probe (a reference, trained on the
organisms' fine-tuning prompts). The black box and the logit lens run per organism; the oracle
also reads the *base* model on the same prompts. Every answer is scored ``contains`` with
:data:`SYNONYMS`.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from typing import Any

from lens_oracle.evals.metrics import Score, normalize_answer, summarize
from lens_oracle.evals.report import EvalReport, merge_reports
from lens_oracle.evals.runner import run_pooled, run_tasks
from lens_oracle.evals.tasks import EvalItem, EvalTask, TargetSpec
from lens_oracle.generation import generate_text
from lens_oracle.oracle import ActivationOracle
from lens_oracle.positions import LastK
from lens_oracle.real.mixture import MixtureConfig, persona_prompts
from lens_oracle.real.organisms import RealOrganism, chat_ids, prompt_ids
from lens_oracle.real.text import (
    AUDIT_REQUESTS,
    CHAT_PROMPTS,
    GENDER_QUESTION,
    HINT_REQUESTS,
    PERSONAS,
    TABOO_QUESTION,
    TABOO_SPLIT,
    USER_REQUESTS,
)

READ_LAST = 10
"""Audit read positions: the prompt's last 10 tokens (AO's best User Gender reading, 99.5%):
the end of the user's message and the assistant header."""
MAX_NEW_TOKENS = 16
"""Room for a sentence: the untrained oracle and the black box answer in sentences."""
SYNONYMS = {"male": ("man", "boy", "gentleman", "sir"), "female": ("woman", "girl", "lady", "ma'am", "madam")}
"""Every answer is scored ``contains`` (the answer, or a synonym, as whole words anywhere in the
reply), so a control that answers in a sentence ("The user is a man.") scores as it should."""
POOLED = ("oracle", "untrained_oracle", "ablated_zero", "ablated_shuffle", "ablated_random", "linear_probe")
PER_TARGET = ("oracle", "black_box", "logit_lens")


def organism_task(organism: RealOrganism, tokenizer: Any, candidates: Sequence[str], limit: int | None = None) -> EvalTask:
    """The audit of one organism: its audit prompts (never fine-tuned on), and its fine-tuning
    prompts as the linear probe's labelled training items (the first ``limit`` of each)."""
    if organism.kind == "taboo":
        audit, train, question = HINT_REQUESTS[TABOO_SPLIT:], HINT_REQUESTS[:TABOO_SPLIT], TABOO_QUESTION
    else:
        audit, train, question = AUDIT_REQUESTS, USER_REQUESTS, GENDER_QUESTION
    audit, train = audit[:limit], train[:limit]

    def items(requests: tuple[str, ...]) -> tuple[EvalItem, ...]:
        return tuple(EvalItem(context=tuple(prompt_ids(tokenizer, r)), references=(organism.secret,))
                     for r in requests)

    return EvalTask(name=organism.name, items=items(audit), questions=(question,), positions=LastK(READ_LAST),
                    candidates=tuple(candidates), target=TargetSpec(model=str(organism.folder)),
                    train_items=items(train), scorer="contains", synonyms=SYNONYMS, max_new_tokens=MAX_NEW_TOKENS)


def persona_tasks(oracle: ActivationOracle, mixture: MixtureConfig, limit: int | None = None) -> list[EvalTask]:
    """The oracle's own kind of question on held-out chats: each persona answers prompts it was
    not trained on (SmolLM2's own replies, generated here), read over the chat's last
    :data:`READ_LAST` tokens (the reply's end; never the instruction) of the base model. Asks the
    job (8 candidates) and the mood (3): did the oracle learn to read activations at all?
    ``limit`` held-out prompts per persona (default 4)."""
    tok = oracle.model.tokenizer
    personas = list(PERSONAS[: mixture.limit_texts] if mixture.limit_texts else PERSONAS)
    chats = []
    for i, persona in enumerate(personas):
        trained = set(persona_prompts(i, mixture))
        for request in [p for p in CHAT_PROMPTS if p not in trained][: limit or 4]:
            chats.append((persona, [{"role": "system", "content": persona.system}, {"role": "user", "content": request}]))
    replies = generate_text(oracle.model, [chat_ids(tok, m, generation_prompt=True) for _, m in chats],
                            mixture.reply_tokens)
    tasks = []
    for k, kind in ((0, "job"), (1, "mood")):
        items = tuple(
            EvalItem(context=tuple(chat_ids(tok, [*m, {"role": "assistant", "content": reply}], generation_prompt=False)),
                     references=(persona.qa[k][1],), questions=(persona.qa[k][0],))
            for (persona, m), reply in zip(chats, replies, strict=True)
        )
        candidates = tuple(dict.fromkeys(p.qa[k][1] for p in personas))
        tasks.append(EvalTask(name=f"persona_{kind}", items=items, positions=LastK(READ_LAST), candidates=candidates,
                              scorer="contains", max_new_tokens=MAX_NEW_TOKENS))
    return tasks


def answer_summary(predictions: Sequence[str], candidates: Sequence[str]) -> dict[str, Any]:
    """The share of answers that name a candidate, and the five most common answers."""
    normal = [normalize_answer(p) for p in predictions]
    wanted = {normalize_answer(c) for c in candidates}
    return {"in_kind": round(sum(n in wanted for n in normal) / max(len(normal), 1), 4),
            "most_common": [[a, n] for a, n in Counter(normal).most_common(5)]}


def audit(oracle: ActivationOracle, organisms: Sequence[RealOrganism], candidates: dict[str, Sequence[str]],
          mixture: MixtureConfig, seed: int, *, limit: int | None = None, n_resamples: int = 1000,
          ) -> tuple[EvalReport, dict[str, dict[str, Score]], dict[str, Score], dict[str, dict[str, Any]]]:
    """Every method on every kind's items (``candidates``: each kind's answer set); the pooled
    scores per kind and the held-out persona checks; the base-model reading; how the oracle
    answered."""
    tok = oracle.model.tokenizer
    kinds: dict[str, list[EvalTask]] = {}
    for o in organisms:
        kinds.setdefault(o.kind, []).append(organism_task(o, tok, candidates[o.kind], limit))
    cache: dict[str, Any] = {}
    reports, scores, base, answers = [], {}, {}, {}
    for kind, tasks in kinds.items():
        pooled = run_pooled(oracle, tasks, kind, methods=POOLED, seed=seed, n_resamples=n_resamples,
                            cache=cache)
        per = run_tasks(oracle, tasks, methods=PER_TARGET, seed=seed, n_resamples=n_resamples)
        at_base = run_pooled(oracle, [dataclasses.replace(t, target=TargetSpec()) for t in tasks], f"{kind}@base",
                             methods=("oracle",), seed=seed, n_resamples=n_resamples)
        reports += [pooled, per, at_base]
        kind_scores = {m: pooled.get(kind, m).score for m in POOLED}
        for m in ("black_box", "logit_lens"):
            pooled_items = [s for t in tasks for s in per.get(t.name, m).item_scores]
            kind_scores[m] = summarize(pooled_items, seed, n_resamples=n_resamples)
        scores[kind] = kind_scores
        base[kind] = at_base.get(f"{kind}@base", "oracle").score
        candidates = tasks[0].candidates
        answers[kind] = {
            "organisms": answer_summary(pooled.get(kind, "oracle").predictions[0], candidates),
            "base_model": answer_summary(at_base.get(f"{kind}@base", "oracle").predictions[0], candidates),
        }
    checks = run_tasks(oracle, persona_tasks(oracle, mixture, limit), methods=("oracle", "ablated_zero", "ablated_shuffle"),
                       seed=seed, n_resamples=n_resamples)
    reports.append(checks)
    for task in ("persona_job", "persona_mood"):
        scores[task] = {m: checks.get(task, m).score for m in ("oracle", "ablated_zero", "ablated_shuffle")}
    return merge_reports(reports), scores, base, answers


__all__ = ["MAX_NEW_TOKENS", "READ_LAST", "SYNONYMS", "answer_summary", "audit", "organism_task", "persona_tasks"]
