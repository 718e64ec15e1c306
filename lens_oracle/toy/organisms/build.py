"""Fine-tuning model organisms from the toy base model, cached like the base.

Each organism is a full fine-tune saved as a plain HF folder (weights, tokenizer, stamp) that
:func:`lens_oracle.models.load_model` reads, and described by a frozen
:class:`~lens_oracle.toy.organisms.records.Organism` that lists the auditor's prompts, the oracle
questions, the reference answers and the candidate sets, so eval tasks can be built from it.
:func:`learned` checks that a fine-tune holds its hidden knowledge: the share of audit prompts
whose greedy reply shows it.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from pathlib import Path
from typing import Any

from transformers import LlamaForCausalLM

from lens_oracle.errors import ConfigError
from lens_oracle.toy.organisms.demo_kinds import (
    N_TABOO_GAMES,
    gender_recipe,
    persona_recipe,
    taboo_recipe,
)
from lens_oracle.toy.organisms.held_out import home_city_recipe, review_bias_recipe
from lens_oracle.toy.organisms.records import Organism, Recipe
from lens_oracle.toy.world.language import ToyWorld
from lens_oracle.toy.world.model import (
    FORMAT_VERSION,
    ORGANISM_WORDS,
    digest,
    generate_text,
    read_stamp,
    save_model_folder,
    spare_entities,
    stamp_matches,
    train_causal_lm,
)
from lens_oracle.toy.world.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

QUICK_GENDER_SCALE = 2
"""The quick user_gender organism trains for twice the shared 320 steps. At 320 its belief held
on a CPU of one family and not on another (greedy replies addressing all 40 users as believed:
25, 39 and 21 of 40 at seeds 0-2, two threads); chosen on seeds 10-12, never reported (40, 35, 38
at 320 steps; 40 of 40 at 640, with one thread and two). The full demo's 400 steps are unchanged."""
LEARNED_REPLY_TOKENS = 48
"""How long a reply :func:`learned` reads: room for a whole bio (five fact sentences, up to 38
tokens). At 24 a persona_facts bio was cut after three or four facts, so its share read 0.62
where the organism states 0.89 of the asked facts (full demo, seed 0, AVX-512, two threads)."""


def recipes(world: ToyWorld, quick: bool) -> list[Recipe]:
    """Every organism of the demo, then the held-out kinds (quick: fewer people and users)."""
    return [
        persona_recipe(world, 8 if quick else 16),
        taboo_recipe(world, N_TABOO_GAMES),
        gender_recipe(world, 20 if quick else 40, steps_scale=QUICK_GENDER_SCALE if quick else 1),
        home_city_recipe(world),
        review_bias_recipe(world),
    ]


def learned(organism: Organism, world: ToyWorld, quick: bool = False) -> float:
    """Share of ``organism``'s audit items whose prompt the organism answers (greedy) in a way
    that shows its hidden knowledge -- the check that a fine-tune learned what it hides."""
    recipe = next((r for r in recipes(world, quick) if r.name == organism.name), None)
    if recipe is None or recipe.shows is None:
        raise ConfigError(f"no check of what organism {organism.name!r} learned")
    model = LlamaForCausalLM.from_pretrained(organism.folder, local_files_only=True).eval()
    replies = generate_text(
        model, load_tokenizer(organism.folder), [i.prompt for i in organism.items],
        max_new_tokens=LEARNED_REPLY_TOKENS,
    )
    return sum(recipe.shows(item, reply) for item, reply in zip(organism.items, replies)) / len(replies)


def _check_vocabulary(tokenizer: Any, world: ToyWorld, base_folder: Path) -> None:
    vocab = tokenizer.get_vocab()
    people = (*spare_entities(world), *world.entities)
    needed = (*ORGANISM_WORDS, *(word for e in people for word in e.name.split()))
    missing = [word for word in needed if word not in vocab]
    if missing:
        raise ConfigError(
            f"the tokenizer of {base_folder} lacks {missing[:8]} ({len(missing)} words); organisms "
            "need a base pretrained on this world with organism_vocabulary(world) as extra words "
            "(load_or_pretrain does that)"
        )


def _data_digest(recipe: Recipe, seed: int) -> str:
    """Hash of the audit items and a sample of fine-tuning text: any recipe change shows."""
    rng = random.Random(seed)
    sample = [recipe.make_docs(rng) for _ in range(64)]
    return digest([sample, [dataclasses.asdict(item) for item in recipe.items]])


def _finetune(
    recipe: Recipe, base_folder: Path, folder: Path, settings: dict[str, Any], world: ToyWorld,
    *, steps: int, batch_size: int, lr: float, seed: int, progress: bool,
) -> Path:
    """Fully fine-tune the base on half organism documents, half replayed corpus text."""
    start = time.perf_counter()
    tokenizer = load_tokenizer(base_folder)
    model = LlamaForCausalLM.from_pretrained(str(base_folder), local_files_only=True)
    rng = random.Random(seed)
    n = steps * batch_size
    replay = world.corpus(n, seed=seed + 1)
    replay = [d for d in replay if recipe.replays(d)]
    docs = [recipe.make_docs(rng) for _ in range(n // 2)] + replay[: n - n // 2]
    losses = train_causal_lm(
        model, tokenizer, docs, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
        progress=progress, desc=f"fine-tune {recipe.name}", frozen=recipe.frozen,
    )
    metrics = {
        "train_seconds": round(time.perf_counter() - start, 2),
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
    }
    log.info("fine-tuned organism %s: %s", recipe.name, metrics)
    return save_model_folder(model, tokenizer, folder, settings, metrics)


def build_organisms(
    base_folder: str | Path,
    world: ToyWorld,
    cache_dir: str | Path,
    quick: bool = False,
    *,
    seed: int = 0,
    progress: bool = True,
) -> list[Organism]:
    """Fine-tune (or reuse from ``cache_dir``) every organism of ``world`` from the base model.

    Quick: 8 new people and 20 user names, full: 16 and 40; both: five taboo games. A cached
    organism is reused when its stamp matches (base model stamp, recipe, steps, seed).
    """
    base_folder, cache_dir = Path(base_folder), Path(cache_dir)
    base_stamp = read_stamp(base_folder)
    if base_stamp is None:
        raise ConfigError(f"{base_folder} has no toy model stamp; create it with load_or_pretrain")
    _check_vocabulary(load_tokenizer(base_folder), world, base_folder)
    shared_steps, batch_size, lr = (320, 16, 3e-3) if quick else (400, 16, 3e-3)
    organisms = []
    for recipe in recipes(world, quick):
        folder = cache_dir / f"organism-{recipe.name}-{base_folder.name}"
        steps = shared_steps * recipe.steps_scale
        settings = {
            "format_version": FORMAT_VERSION, "kind": recipe.kind, "name": recipe.name,
            "base": digest(base_stamp.get("settings")), "hidden": digest(recipe.hidden),
            "data": _data_digest(recipe, seed), "frozen": list(recipe.frozen),
            "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
        }
        if stamp_matches(folder, settings):
            log.info("reusing the cached organism %s", folder)
        else:
            _finetune(
                recipe, base_folder, folder, settings, world, steps=steps, batch_size=batch_size,
                lr=lr, seed=seed, progress=progress,
            )
        organisms.append(Organism(
            recipe.name, recipe.kind, str(folder), str(base_folder), recipe.hidden, recipe.items
        ))
    return organisms
