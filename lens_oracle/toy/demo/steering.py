"""Steering through the oracle in the toy world (:mod:`lens_oracle.control`), with its controls.

The demo's oracle (trained on the base mixture, cached like the demo's) steers the base model
itself (the same-model set-up: a steering adapter next to the oracle's). Two experiments, each a
set of *directions* (a wanted answer and the prompts it is trained on):

* ``user_address``: users who hint their gender ("i live with my wife ."); the oracle is asked
  "is the user male or female ?" and the wanted answer is the *other* gender. Behaviour: the
  steered model's reply addresses the user as the wanted gender ("madam ," instead of "sir ,").
  The oracle reads the user's turn through the end, the span its gender questions were trained on.
* ``topic``: requests about a topic; the oracle is asked "what topic is this text about ?" and
  the wanted answer is one chosen topic (each of the six in turn), trained on requests about the
  other five. Behaviour: the reply's first topic word is the chosen topic's. The oracle reads the
  last four tokens (its topic questions were trained on the last one to four).

Each direction is trained on its own prompts and measured on held-out prompts (other users'
hints; other personas' system prompts), greedy replies, under four conditions: ``before`` (the
base model), ``steered`` (toward the wanted answer), ``random_answer`` (the same training toward
a random answer of another kind, a city or a food: any steering at all, no aim) and ``zero_loss``
(the same steps with the oracle's loss scaled to zero). For each: the fraction of replies that
show the wanted behaviour, and the fraction of the oracle's answers on the steered activations
that are the wanted answer. Settings (learning rate, epochs, read spans) were chosen on seed 0,
which the README reports apart from the evaluation seeds.

Run ``python -m lens_oracle.toy.demo.steering --out DIR [--quick] [--seeds 1,2]``; writes
``steering.json`` (deterministic for the same seeds and threads) and ``steering.md``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lens_oracle.acceleration import torch_threads
from lens_oracle.activations import LastK, Positions, Substring, capture
from lens_oracle.config import TrainConfig
from lens_oracle.control import SteerConfig, default_read_layer, steer_with_oracle
from lens_oracle.errors import ConfigError
from lens_oracle.generation import generate_text
from lens_oracle.io import atomic_write_text
from lens_oracle.oracle import ActivationOracle
from lens_oracle.toy.demo.mixture import ORACLE_WORDS
from lens_oracle.toy.demo.pipeline import check_arguments, load_or_train_oracle
from lens_oracle.toy.demo.records import demo_config
from lens_oracle.toy.demo.sweep import spread
from lens_oracle.toy.world.language import (
    ADDRESSES,
    ASK_TOPIC,
    ATTRIBUTES,
    PERSONAS,
    QUESTIONS,
    TOPIC_WORDS,
    ToyWorld,
    chat_prompt,
    make_world,
)
from lens_oracle.toy.world.model import load_or_pretrain
from lens_oracle.toy.world.tokenizer import cache_root
from lens_oracle.validate import parse_ints

STEERING_VERSION = 1
CONDITIONS = ("before", "steered", "random_answer", "zero_loss")
EXPERIMENTS = ("user_address", "topic")
LEARNING_RATE = 1e-3
EPOCHS = {False: 20, True: 10}
"""Epochs over the training prompts (full, quick); chosen on seed 0 with the learning rate."""
MAX_NEW_TOKENS = 8


@dataclass(frozen=True)
class Direction:
    """One steering goal: train on ``train_prompts`` toward ``wanted``; measure on ``eval_prompts``."""

    experiment: str
    wanted: str
    question: str
    positions: Positions
    train_prompts: tuple[str, ...]
    eval_prompts: tuple[str, ...]
    behaves: Callable[[str], bool]
    """Whether a reply shows the wanted behaviour."""


def _addresses(gender: str) -> Callable[[str], bool]:
    return lambda reply: reply.startswith(ADDRESSES[gender])


def _first_topic(topic: str) -> Callable[[str], bool]:
    def behaves(reply: str) -> bool:
        for word in reply.split():
            for name, words in TOPIC_WORDS.items():
                if word in words:
                    return name == topic
        return False

    return behaves


def directions(world: ToyWorld, seed: int, *, quick: bool = False) -> list[Direction]:
    """Both experiments' directions for ``seed`` (see the module); ``quick``: fewer prompts and
    one direction per experiment."""
    n_train, n_eval = (16, 20) if quick else (24, 40)
    rng = random.Random(f"steering-{seed}")
    user_span = Substring("<user>", through_end=True)
    out = []
    for source, wanted in (("male", "female"), ("female", "male"))[: 1 if quick else 2]:
        train = _hinted(world, rng, source, n_train, avoid=())
        out.append(Direction(
            "user_address", wanted, QUESTIONS["gender"], user_span, train,
            _hinted(world, rng, source, n_eval, avoid=train), _addresses(wanted),
        ))
    systems = (None, *(p.instruction for p in PERSONAS))
    train_systems, eval_systems = systems[:4], systems[4:]
    for topic in world.values("topic")[: 1 if quick else None]:
        others = [t for t in world.values("topic") if t != topic]
        out.append(Direction(
            "topic", topic, QUESTIONS["topic"], LastK(4),
            tuple(chat_prompt(ASK_TOPIC.format(t=t), s) for t in others for s in train_systems),
            tuple(chat_prompt(ASK_TOPIC.format(t=t), s) for t in others for s in eval_systems),
            _first_topic(topic),
        ))
    return out


def _hinted(world: ToyWorld, rng: random.Random, gender: str, n: int, avoid: Sequence[str]) -> tuple[str, ...]:
    """``n`` distinct chat prompts whose user hints ``gender``, none of them in ``avoid``."""
    found: list[str] = []
    while len(found) < n:
        prompt = chat_prompt(world.chat(rng, gender=gender)[0]["content"])
        if prompt not in avoid and prompt not in found:
            found.append(prompt)
    return tuple(found)


def random_answer(direction: Direction, seed: int) -> str:
    """The ``random_answer`` control's target: a label of another kind (a city, food, job, pet or
    colour), drawn with ``seed``, never the wanted answer."""
    rng = random.Random(f"steering-random-{seed}-{direction.experiment}-{direction.wanted}")
    kind = rng.choice(sorted(ATTRIBUTES))
    return rng.choice([v for v in ATTRIBUTES[kind] if v != direction.wanted])


def measure_direction(
    oracle: ActivationOracle, direction: Direction, seed: int, *, quick: bool = False, progress: bool = False
) -> dict[str, dict[str, float]]:
    """Condition -> {"behaviour": fraction of held-out replies that behave as wanted,
    "oracle": fraction of the oracle's answers on those prompts that are the wanted answer}."""
    model, tokenizer = oracle.model, oracle.model.tokenizer
    eval_ids = [tokenizer(p)["input_ids"] for p in direction.eval_prompts]
    out = {}
    for condition in CONDITIONS:
        if condition == "before":
            replies = generate_text(model, eval_ids, MAX_NEW_TOKENS)
            with oracle.adapter_disabled() as base:
                acts = capture(base, list(direction.eval_prompts), default_read_layer(model), positions=direction.positions)
        else:
            answer = random_answer(direction, seed) if condition == "random_answer" else direction.wanted
            config = SteerConfig(
                train=TrainConfig(learning_rate=LEARNING_RATE, batch_size=8, epochs=EPOCHS[quick], seed=seed,
                                  progress=progress),
                positions=direction.positions,
                oracle_loss_weight=0.0 if condition == "zero_loss" else 1.0,
                adapter_name=f"steer-{direction.experiment}-{direction.wanted}-{condition}",
            )
            steered = steer_with_oracle(oracle, None, direction.train_prompts, direction.question, answer, config)
            with steered.active():
                replies = generate_text(model, eval_ids, MAX_NEW_TOKENS, adapter=True)
                acts = capture(model, list(direction.eval_prompts), steered.layer, positions=direction.positions)
            model.delete_adapter(config.adapter_name)
        readings = oracle.ask_batch(acts, direction.question)
        out[condition] = {
            "behaviour": round(statistics.fmean(direction.behaves(r) for r in replies), 6),
            "oracle": round(statistics.fmean(a.strip() == direction.wanted for a in readings), 6),
        }
    return out


def run_steering(
    out: str | Path,
    *,
    seeds: Sequence[int] = (0,),
    quick: bool = False,
    cache: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Every direction of both experiments for every seed (the demo's base model and oracle for
    that seed, built or reused from ``cache``); writes ``steering.json`` and ``steering.md``."""
    out, root = Path(out), Path(cache) if cache is not None else cache_root()
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"give one or more distinct seeds, got {list(seeds)}")
    for seed in seeds:
        check_arguments(out, seed, root)
    runs = []
    for seed in seeds:
        config = demo_config(quick, seed)
        with torch_threads(config.threads):
            base = load_or_pretrain(root, seed, quick, extra_words=ORACLE_WORDS, progress=progress)
            oracle, _ = load_or_train_oracle(base, config, seed, root, progress=progress)
            for direction in directions(make_world(seed), seed, quick=quick):
                results = measure_direction(oracle, direction, seed, quick=quick, progress=progress)
                runs.append({"seed": seed, "experiment": direction.experiment, "wanted": direction.wanted,
                             "n_eval": len(direction.eval_prompts), "results": results})
    data = {
        "version": STEERING_VERSION, "mode": "quick" if quick else "full", "seeds": list(seeds),
        "settings": {"learning_rate": LEARNING_RATE, "epochs": EPOCHS[quick], "batch_size": 8,
                     "max_new_tokens": MAX_NEW_TOKENS},
        "summary": summarise(runs), "runs": runs,
    }
    atomic_write_text(out / "steering.json", json.dumps(data, indent=2, sort_keys=True) + "\n")
    atomic_write_text(out / "steering.md", steering_markdown(data))
    return data


def summarise(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Experiment -> condition -> measure -> mean, min and max over the seeds of each seed's mean
    over its directions."""
    summary: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for experiment in sorted({r["experiment"] for r in runs}):
        mine = [r for r in runs if r["experiment"] == experiment]
        seeds = sorted({r["seed"] for r in mine})
        summary[experiment] = {}
        for condition in CONDITIONS:
            summary[experiment][condition] = {}
            for measure in ("behaviour", "oracle"):
                per_seed = [
                    statistics.fmean(r["results"][condition][measure] for r in mine if r["seed"] == s) for s in seeds
                ]
                summary[experiment][condition][measure] = spread(per_seed)
    return summary


def steering_markdown(data: dict[str, Any]) -> str:
    """The summary table: per experiment and condition, behaviour and the oracle's reading."""
    lines = [
        f"# Steering through the oracle, toy world ({data['mode']}; seeds {data['seeds']})",
        "",
        "| experiment | condition | replies with the wanted behaviour, mean [min, max] over seeds "
        "| oracle gives the wanted answer |",
        "|---|---|---|---|",
    ]
    for experiment, conditions in data["summary"].items():
        for condition, row in conditions.items():
            b, o = row["behaviour"], row["oracle"]
            lines.append(
                f"| {experiment} | {condition} | {b['mean']:.2f} [{b['min']:.2f}, {b['max']:.2f}] "
                f"| {o['mean']:.2f} [{o['min']:.2f}, {o['max']:.2f}] |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Steering through the oracle in the toy world.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="the quick demo's models, one direction each")
    parser.add_argument("--seeds", default="0", metavar="S,S,...", help="demo seeds (default 0)")
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    data = run_steering(args.out, seeds=parse_ints(args.seeds, "--seeds"), quick=args.quick, cache=args.cache,
                        progress=not args.no_progress)
    print(steering_markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
