"""The real oracle's training mixture, built from real text with the library's data builders.

* context prediction (:func:`~lens_oracle.data.context_prediction.build_context_prediction`,
  on-policy: every "next" answer is SmolLM2's own greedy continuation) on the standard library's
  docstring sentences and on the model's own replies to :data:`~.text.CHAT_PROMPTS`; short
  reads and answers (K 1-4, J 1-3), which a CPU can teach in minutes (REFERENCE.md §7);
* yes/no classification: which country a capital-city fact is about, and the sentiment of the
  model's own cheerful or gloomy replies (read from the reply alone, never the instruction);
* SPQA: the model's own replies under :data:`~.text.PERSONAS` system prompts, the instruction
  masked out of the read positions, questions about the assistant's job, mood and tastes.

The model's generations (:func:`generations`) are cached as JSON next to the oracle, keyed by
the base model's stamp and the prompts. No example names a taboo word or the user's gender
(:func:`~.text.check_held_out`).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lens_oracle.data.classification import ClassificationConfig, build_classification
from lens_oracle.data.context_prediction import ContextPredictionConfig, build_context_prediction
from lens_oracle.data.example import OracleExample
from lens_oracle.data.spqa import SPQAConfig, build_spqa
from lens_oracle.generation import generate_text
from lens_oracle.io import atomic_write_json, digest
from lens_oracle.models import LoadedModel
from lens_oracle.real.organisms import chat_ids, prompt_ids
from lens_oracle.real.text import (
    CAPITALS,
    CHAT_PROMPTS,
    FACT_TEMPLATES,
    PERSONAS,
    SENTIMENT_STYLES,
    SENTIMENT_TOPICS,
    USER_REQUESTS,
    check_held_out,
    stdlib_sentences,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MixtureConfig:
    """How many examples of each kind (passes over the same texts draw new positions)."""

    context_passes: int = 2
    classification_passes: int = 3
    spqa_passes: int = 2
    persona_prompts: int = 8
    """User prompts each persona answers (SPQA dialogues per persona)."""
    reply_tokens: int = 48
    limit_texts: int | None = None
    """Use only the first N docstring sentences and prompts of each list (the smoke run)."""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _head(items: Sequence[Any], limit: int | None) -> list[Any]:
    return list(items if limit is None else items[:limit])


def generations(model: LoadedModel, config: MixtureConfig, cache: Path, base_stamp: Any, *,
                progress: bool = True) -> dict[str, list[str]]:
    """The base model's own greedy replies that the mixture and the gender organisms use, cached."""
    tok = model.tokenizer
    personas = _head(PERSONAS, config.limit_texts)
    asks: dict[str, list[list[int]]] = {
        "chat": [prompt_ids(tok, p) for p in _head(CHAT_PROMPTS, config.limit_texts)],
        "sentiment": [prompt_ids(tok, style.format(topic=t)) for style in SENTIMENT_STYLES.values()
                      for t in _head(SENTIMENT_TOPICS, config.limit_texts)],
        "persona": [chat_ids(tok, [{"role": "system", "content": p.system}, {"role": "user", "content": q}],
                             generation_prompt=True)
                    for i, p in enumerate(personas) for q in persona_prompts(i, config)],
        "user_requests": [prompt_ids(tok, r) for r in _head(USER_REQUESTS, config.limit_texts)],
    }
    key = digest({"base": base_stamp, "asks": asks, "tokens": config.reply_tokens})
    path = cache / f"generations-{key}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    prompts = [p for group in asks.values() for p in group]
    replies = generate_text(model, prompts, config.reply_tokens, progress=progress)
    out, at = {}, 0
    for name, group in asks.items():
        out[name] = replies[at : at + len(group)]
        at += len(group)
    atomic_write_json(path, out)
    return out


def persona_prompts(index: int, config: MixtureConfig) -> list[str]:
    """The user prompts persona ``index`` answers in the training chats (a seeded draw)."""
    rng = random.Random(index)
    return rng.sample(list(CHAT_PROMPTS), config.persona_prompts)


def build_real_mixture(model: LoadedModel, layers: Sequence[int], config: MixtureConfig,
                       texts: dict[str, list[str]], seed: int, *, cache: Path,
                       progress: bool = True) -> list[OracleExample]:
    """Every training example of the real oracle, shuffled with ``seed``."""
    check_held_out()
    tok = model.tokenizer
    documents = [*_head(stdlib_sentences(), None if config.limit_texts is None else 4 * config.limit_texts),
                 *[r for r in texts["chat"] if r.strip()]]
    examples: list[OracleExample] = []
    for p in range(config.context_passes):
        cp = ContextPredictionConfig(k_min=1, k_max=4, j_min=1, j_max=3, seed=seed * 100 + p, on_policy=True)
        examples += build_context_prediction(documents, tok, layers, cp, model=model, cache_dir=cache,
                                             progress=progress)
    facts = [{"text": t.format(capital=capital, country=country), "label": country}
             for country, capital in _head(CAPITALS, config.limit_texts) for t in FACT_TEMPLATES]
    n_styles = len(SENTIMENT_STYLES)
    per_style = len(texts["sentiment"]) // n_styles
    moods = [{"text": reply, "label": label} for i, label in enumerate(SENTIMENT_STYLES)
             for reply in texts["sentiment"][i * per_style : (i + 1) * per_style] if reply.strip()]
    for p in range(config.classification_passes):
        s = seed * 100 + p
        examples += build_classification(facts, tok, layers, ClassificationConfig(kind="topic", seed=s,
                                                                                 task="classification/country"))
        examples += build_classification(moods, tok, layers, ClassificationConfig(kind="sentiment", seed=s))
    personas = _head(PERSONAS, config.limit_texts)
    rows, at = [], 0
    for i, persona in enumerate(personas):
        for question in persona_prompts(i, config):
            reply = texts["persona"][at]
            at += 1
            if reply.strip():
                rows.append({"system": persona.system, "dialog": [
                    {"role": "user", "content": question}, {"role": "assistant", "content": reply}],
                    "qa": [{"question": q, "answer": a} for q, a in persona.qa]})
    for p in range(config.spqa_passes):
        examples += build_spqa(rows, tok, layers, SPQAConfig(seed=seed * 100 + p))
    random.Random(seed).shuffle(examples)
    counts: dict[str, int] = {}
    for e in examples:
        counts[e.task] = counts.get(e.task, 0) + 1
    log.info("real mixture: %d examples %s", len(examples), counts)
    return examples


__all__ = ["MixtureConfig", "build_real_mixture", "generations", "persona_prompts"]
