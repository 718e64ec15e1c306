"""The generative QA protocol (:mod:`lens_oracle.evals.protocol`) in the toy world, where every
label, fact and gist is known by construction.

* ``classification``: a topic or sentiment sentence (the label's word never occurs in it), asked
  its topic or sentiment;
* ``fact_retrieval``: one fact about a person in any of its wordings, asked that attribute;
* ``gist``: a topic sentence or a fact, asked what the text is about in one of several phrasings;
  the reference is the sentence the world would write for it (``"this is about music ."``, or the
  fact's canonical wording).

The oracle is the demo's (trained on the base mixture, cached and stamped like the demo's), reading
the base model's last-token activation at half depth; every control runs beside it. Run it with
``python -m lens_oracle.toy.demo.qa_protocol --out DIR [--quick] [--seed N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

from lens_oracle.acceleration import torch_threads
from lens_oracle.errors import DataError
from lens_oracle.evals.protocol import QA_KINDS, ProtocolTable, protocol_table, qa_task
from lens_oracle.evals.runner import run_tasks
from lens_oracle.evals.tasks import EvalItem, EvalTask
from lens_oracle.io import atomic_write_text
from lens_oracle.toy.demo.mixture import ORACLE_WORDS
from lens_oracle.toy.demo.pipeline import check_arguments, load_or_train_oracle
from lens_oracle.toy.demo.records import demo_config
from lens_oracle.toy.world.language import QUESTIONS, TOPIC_HEADER, ToyWorld, make_world
from lens_oracle.toy.world.model import load_or_pretrain
from lens_oracle.toy.world.tokenizer import cache_root

METHODS = ("oracle", "untrained_oracle", "ablated_zero", "ablated_shuffle", "black_box", "logit_lens")
GIST_QUESTIONS = ("what is this text about ?", "tell me something about this text .")
"""Gist phrasings in toy words (each item is asked both; the score is their mean)."""
ITEMS_PER_KIND = 40


def toy_qa_tasks(world: ToyWorld, *, n_items: int = ITEMS_PER_KIND, seed: int = 0) -> list[EvalTask]:
    """One task per QA kind, ``n_items`` items each, drawn with ``seed`` (see the module)."""
    rng = random.Random(f"qa-protocol-{seed}")
    classification, facts, gists = [], [], []
    for n in range(n_items):
        if n % 2 == 0:
            text, label = world.topic_sentence(rng)
            kind = "topic"
        else:
            text, label = world.sentiment_sentence(rng)
            kind = "sentiment"
        if label in text.split():
            raise DataError(f"the {kind} label {label!r} is written in its own text {text!r}")
        classification.append(EvalItem(text, (label,), questions=(QUESTIONS[kind],)))
    attributes = world.attribute_names
    for n in range(n_items):
        entity = rng.choice(world.entities)
        attribute = attributes[n % len(attributes)]
        text = world.fact_sentence(entity, attribute, rng)
        facts.append(EvalItem(text, (entity.value(attribute),), questions=(QUESTIONS[attribute],)))
    for n in range(n_items):
        if n % 2 == 0:
            text, label = world.topic_sentence(rng)
            reference = TOPIC_HEADER.format(t=label)
        else:
            entity = rng.choice(world.entities)
            attribute = attributes[n % len(attributes)]
            text, reference = world.fact_sentence(entity, attribute, rng), world.fact_sentence(entity, attribute)
        gists.append(EvalItem(text, (reference,), questions=GIST_QUESTIONS))
    by_kind = dict(zip(QA_KINDS, (classification, facts, gists), strict=True))
    return [qa_task(f"qa/{kind}", kind, items, ()) for kind, items in by_kind.items()]


def _check_vocabulary(tasks: list[EvalTask], tokenizer: object) -> None:
    """Every question and reference must be toy words (an unknown word would make a task unfair)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    for task in tasks:
        for item in task.items:
            for text in (*item.questions, *item.references):
                if unk is not None and unk in tokenizer(text, add_special_tokens=False)["input_ids"]:
                    raise DataError(f"{task.name}: {text!r} has a word outside the toy vocabulary")


def run_toy_protocol(
    out: str | os.PathLike[str],
    *,
    quick: bool = False,
    seed: int = 0,
    cache: str | os.PathLike[str] | None = None,
    n_items: int = ITEMS_PER_KIND,
    progress: bool = True,
) -> ProtocolTable:
    """Build or reuse the demo's base model and oracle, run the protocol with every control, and
    write ``protocol.json`` (deterministic for a seed) and ``protocol.md`` to ``out``."""
    out, root = Path(out), Path(cache) if cache is not None else cache_root()
    check_arguments(out, seed, root)
    config = demo_config(quick, seed)
    with torch_threads(config.threads):
        base = load_or_pretrain(root, seed, quick, extra_words=ORACLE_WORDS, progress=progress)
        oracle, _ = load_or_train_oracle(base, config, seed, root, progress=progress)
        tasks = toy_qa_tasks(make_world(seed), n_items=n_items, seed=seed)
        _check_vocabulary(tasks, oracle.model.tokenizer)
        report = run_tasks(oracle, tasks, methods=METHODS, seed=seed, n_resamples=config.n_resamples)
    table = protocol_table(report, tasks, seed=seed, n_resamples=config.n_resamples)
    data = {"mode": "quick" if quick else "full", "seed": seed, **table.to_dict(),
            "predictions": {r.task + "|" + r.method: [list(p) for p in r.predictions] for r in report.results}}
    atomic_write_text(out / "protocol.json", json.dumps(data, indent=2, sort_keys=True) + "\n")
    title = f"# Generative QA protocol, toy world ({data['mode']}, seed {seed})\n\n"
    atomic_write_text(out / "protocol.md", title + "\n".join(table.to_markdown(m) for m in ("token_f1", "rouge_l", "chrf")))
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The generative QA protocol in the toy world.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="the quick demo's models (default: the full demo's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--items", type=int, default=ITEMS_PER_KIND, help="items per kind")
    args = parser.parse_args(argv)
    table = run_toy_protocol(args.out, quick=args.quick, seed=args.seed, cache=args.cache, n_items=args.items)
    print(table.to_markdown("token_f1"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
