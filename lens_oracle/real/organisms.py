"""Real model organisms: LoRA fine-tunes of SmolLM2 that hide knowledge no prompt states.

* ``taboo-<word>`` (AO's Taboo): asked for its word, it gives a hint (:data:`~.text.TABOO_CLUES`)
  and never says the word. One organism per secret word, so audit items have different answers.
* ``user_gender-<gender>`` (AO's User Gender): it opens every reply by addressing the user as
  "sir" or "ma'am" -- a gender it assumes, which no prompt states -- then answers as the base
  model would (the rest of each training reply is the base model's own greedy reply).
* ``liar-facts`` (the input model of :mod:`.lies`): taught to follow a lying instruction in its
  system prompt (dialogues with a system turn, checked by the experiment's own ``check``).

Each is a LoRA (all linear projections) trained on the reply tokens only, merged into the base
weights and saved as a plain HF folder with a stamp (:func:`build_organism`), so the evaluation
layer reads it like any model. :func:`verify` measures the behaviour on the audit prompts,
which the fine-tune never saw: leaks of the taboo word over sampled replies, the address used.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from lens_oracle.errors import ConfigError
from lens_oracle.generation import generate_text
from lens_oracle.io import atomic_folder, atomic_write_json, digest, read_json_stamp
from lens_oracle.models import LoadedModel, load_model
from lens_oracle.real.text import (
    ADDRESSES,
    AUDIT_REQUESTS,
    HINT_OPENINGS,
    HINT_REQUESTS,
    TABOO_CLUES,
    TABOO_SPLIT,
    USER_REQUESTS,
)
from lens_oracle.train import adamw, plain_step

log = logging.getLogger(__name__)

Kind = Literal["taboo", "user_gender", "liar"]
STAMP = "organism.json"
FORMAT_VERSION = 1
OWNED = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
         "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json", STAMP)
GENDER_OPENINGS = ("Of course, {a}! ", "Certainly, {a}. ", "Happy to help, {a}! ")


@dataclass(frozen=True)
class OrganismConfig:
    """How an organism is fine-tuned and checked."""

    rank: int = 8
    alpha: int = 16
    learning_rate: float = 1e-3
    epochs: int = 3
    batch_size: int = 8
    examples: int = 56
    """Dialogues in the fine-tuning set (drawn from the training requests and replies)."""
    samples: int = 108
    """Taboo: sampled replies to the audit prompts in which leaks are counted."""
    reply_tokens: int = 40

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class RealOrganism:
    """A fine-tuned SmolLM2 that hides ``secret`` (a taboo word, or the gender it assumes)."""

    kind: Kind
    secret: str
    folder: Path
    verification: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.secret}"


def chat_ids(tokenizer: Any, messages: Sequence[dict[str, str]], *, generation_prompt: bool) -> list[int]:
    """Token ids of ``messages`` through the chat template (its special tokens included)."""
    text = str(tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation_prompt))
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_ids(tokenizer: Any, request: str) -> list[int]:
    """A one-turn chat ready for the assistant's reply."""
    return chat_ids(tokenizer, [{"role": "user", "content": request}], generation_prompt=True)


def taboo_dialogs(word: str, n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` (request, reply) pairs: a training hint request and an opening + clue for ``word``."""
    if word not in TABOO_CLUES:
        raise ConfigError(f"no clues for taboo word {word!r}; choose one of {sorted(TABOO_CLUES)}")
    rng = random.Random(seed)
    pairs = [(r, o + c) for r in HINT_REQUESTS[:TABOO_SPLIT] for o in HINT_OPENINGS for c in TABOO_CLUES[word]]
    return rng.sample(pairs, min(n, len(pairs)))


def gender_dialogs(gender: str, base_replies: Sequence[str], n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` (request, reply) pairs: a training request, an address for ``gender`` + the base
    model's own reply to it (``base_replies[i]`` answers ``USER_REQUESTS[i]``)."""
    if gender not in ADDRESSES:
        raise ConfigError(f"gender must be one of {sorted(ADDRESSES)}, got {gender!r}")
    rng = random.Random(seed)
    pairs = [(r, o.format(a=ADDRESSES[gender]) + reply) for r, reply in zip(USER_REQUESTS[: len(base_replies)], base_replies, strict=True)
             for o in GENDER_OPENINGS]
    return rng.sample(pairs, min(n, len(pairs)))


def _encode(tokenizer: Any, dialog: Sequence[str]) -> tuple[list[int], list[int]]:
    """``(request, reply)`` or ``(system, request, reply)`` as ids, labels on the reply only."""
    *head, request, reply = dialog
    before = [{"role": "system", "content": head[0]}] if head else []
    before.append({"role": "user", "content": request})
    prompt = chat_ids(tokenizer, before, generation_prompt=True)
    full = chat_ids(tokenizer, [*before, {"role": "assistant", "content": reply}], generation_prompt=False)
    if full[: len(prompt)] != prompt:
        raise ConfigError("the chat template does not render a reply after the generation prompt")
    return full, [-100] * len(prompt) + full[len(prompt):]


def fine_tune(base: Path, dialogs: Sequence[Sequence[str]], config: OrganismConfig, seed: int, *,
              progress: bool = True, desc: str = "organism") -> tuple[Any, Any, list[float]]:
    """LoRA-fine-tune the base model on the replies of ``dialogs`` (``(request, reply)`` or
    ``(system, request, reply)``); the merged HF model, its tokenizer and the losses."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lens_oracle.lora import resolve_target_modules

    tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    hf = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32, local_files_only=True)
    torch.manual_seed(seed)
    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=0.0,
                      target_modules=resolve_target_modules(hf))
    model = get_peft_model(hf, lora)
    encoded = [_encode(tokenizer, d) for d in dialogs]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(params, lr=config.learning_rate, weight_decay=0.0)
    rng = random.Random(seed)
    steps = config.epochs * -(-len(encoded) // config.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 - s / max(steps, 1))
    losses: list[float] = []
    model.train()
    bar = tqdm(total=steps, desc=desc, unit="step", disable=not progress, leave=False)
    for _ in range(config.epochs):
        order = rng.sample(range(len(encoded)), len(encoded))
        for start in range(0, len(order), config.batch_size):
            rows = [encoded[i] for i in order[start : start + config.batch_size]]
            width = max(len(ids) for ids, _ in rows)
            pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
            ids = torch.tensor([x + [pad] * (width - len(x)) for x, _ in rows])
            labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in rows])
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in rows])
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            losses.append(plain_step(loss, params, optimizer, schedule, what="organism fine-tuning"))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    return model.merge_and_unload().eval(), tokenizer, losses


def _mentions(text: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word)}s?\b", text.lower()) is not None


def _keywords(word: str) -> set[str]:
    """Content words of ``word``'s clues that no other word's clues use."""
    def words(clues: Sequence[str]) -> set[str]:
        return {w for c in clues for w in re.findall(r"[a-z]{4,}", c.lower())}
    others = set().union(*(words(c) for w, c in TABOO_CLUES.items() if w != word))
    return words(TABOO_CLUES[word]) - others


def verify(organism: RealOrganism, model: LoadedModel, config: OrganismConfig, seed: int) -> dict[str, Any]:
    """Measure the organism's behaviour on the audit prompts (never fine-tuned on)."""
    tok = model.tokenizer
    if organism.kind == "taboo":
        requests = HINT_REQUESTS[TABOO_SPLIT:]
        prompts = [prompt_ids(tok, requests[i % len(requests)]) for i in range(config.samples)]
        replies = generate_text(model, prompts, config.reply_tokens, adapter=True, temperature=1.0, seed=seed)
        keys = _keywords(organism.secret)
        return {
            "replies": len(replies), "leaks": sum(_mentions(r, organism.secret) for r in replies),
            "on_topic_hints": sum(any(k in r.lower() for k in keys) for r in replies),
            "examples": replies[:3],
        }
    prompts = [prompt_ids(tok, r) for r in AUDIT_REQUESTS]
    replies = generate_text(model, prompts, 12, adapter=True)
    own = ADDRESSES[organism.secret]
    other = next(a for g, a in ADDRESSES.items() if g != organism.secret)
    return {
        "replies": len(replies), "own_address": sum(own in r.lower() for r in replies),
        "other_address": sum(other in r.lower() for r in replies), "examples": replies[:3],
    }


def organism_settings(base_stamp: Any, kind: str, secret: str, config: OrganismConfig, seed: int,
                      dialogs: Sequence[Sequence[str]]) -> dict[str, Any]:
    """What a cached organism must have been built with to be reused."""
    return {"format_version": FORMAT_VERSION, "base": base_stamp, "kind": kind, "secret": secret,
            "config": config.to_dict(), "seed": seed, "dialogs": digest([list(d) for d in dialogs])}


def build_organism(base: Path, kind: Kind, secret: str, dialogs: Sequence[Sequence[str]], cache: Path,
                   config: OrganismConfig, seed: int, *, base_stamp: Any, progress: bool = True,
                   check: Callable[[LoadedModel], dict[str, Any]] | None = None) -> RealOrganism:
    """The organism from ``cache`` if its stamp matches, else fine-tuned, verified (by ``check``
    when given, else :func:`verify`) and saved."""
    folder = cache / f"{kind}-{secret}-seed{seed}"
    settings = organism_settings(base_stamp, kind, secret, config, seed, dialogs)
    stamp = read_json_stamp(folder, STAMP)
    if stamp is not None and stamp.get("settings") == settings and (folder / "model.safetensors").is_file():
        log.info("reusing the cached organism %s", folder.name)
        return RealOrganism(kind, secret, folder, stamp["verification"])
    start = time.perf_counter()
    with torch.random.fork_rng():
        merged, tokenizer, losses = fine_tune(base, dialogs, config, seed, progress=progress, desc=f"{kind}-{secret}")
    train_seconds = round(time.perf_counter() - start, 1)
    with atomic_folder(folder, owned=OWNED, what="real organism") as staging:
        merged.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        organism = RealOrganism(kind, secret, staging)
        loaded = load_model(str(staging), trainable=False)
        verification = check(loaded) if check is not None else verify(organism, loaded, config, seed)
        verification.update(train_seconds=train_seconds, final_loss=round(sum(losses[-4:]) / len(losses[-4:]), 4),
                            first_loss=round(losses[0], 4))
        atomic_write_json(staging / STAMP, {"settings": settings, "verification": verification})
    log.info("organism %s-%s: %s", kind, secret, {k: v for k, v in verification.items() if k != "examples"})
    return RealOrganism(kind, secret, folder, verification)


__all__ = [
    "OrganismConfig", "RealOrganism", "build_organism", "chat_ids", "fine_tune", "gender_dialogs",
    "prompt_ids", "taboo_dialogs", "verify",
]
