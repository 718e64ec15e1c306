"""Evaluate an activation oracle against its controls, and check it really reads the vector.

An oracle's answer can come from the activation it was given, or from the question alone (its
prior over answers). This script trains a tiny oracle on a toy *colour* task, where only the
activation at one token tells the colour, then scores it next to controls that get no usable
vector information (REFERENCE.md sections 1 and 4):

* ``untrained_oracle``: the same injection with the adapter off (Patchscopes / SelfIE);
* ``ablated_zero`` / ``ablated_shuffle`` / ``ablated_random``: no vector, another item's
  vectors, random vectors of the same norms;
* ``black_box``: the target model asked the question in text;
* ``logit_lens``: the target's unembedding read at the same layer and positions;

and a supervised reference, ``linear_probe`` (logistic regression on labelled activations).
The report gives each method's score with a bootstrap CI and the oracle's margin over the best
control. It runs on a CPU in about a minute:

    python tutorials/03_evaluate.py                          # toy model, ~1 minute
    python tutorials/03_evaluate.py --smoke                  # a few seconds, what CI runs
    python tutorials/03_evaluate.py --model path/to/local/model [--oracle saved_oracle_dir]
    python tutorials/03_evaluate.py --model path/to/local/model --tasks my_tasks.json

With ``--model`` nothing is trained: the oracle is loaded from ``--oracle`` (a saved oracle or
AO adapter for that model) or, without it, a fresh adapter (which equals the base model: a
Patchscopes-style baseline). The same evaluation runs from the command line with
``lens-oracle eval --oracle DIR --tasks FILE.json --out DIR``.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

import torch

from lens_oracle.activations import AllTokens, Indices, LastToken, Substring
from lens_oracle.config import AdapterConfig, InjectionConfig, TrainConfig
from lens_oracle.data.example import OracleExample
from lens_oracle.evals import EvalItem, EvalTask, load_tasks, merge_reports, run_task, sweep
from lens_oracle.oracle import ActivationOracle
from lens_oracle.runner import train_oracle

COLOURS = ["red", "blue", "green", "gold"]
FILLER = [f"w{i}" for i in range(40)]
QUESTIONS = ("what colour is here ?", "what is the colour ?")
READ_LAYER = 0


# ---------------------------------------------------------------- a toy world (no download)


def build_toy_tokenizer(folder: Path):
    """A word-level tokenizer with a chat template, saved and loaded back (the bridge needs it)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<unk>", "<user>", "<assistant>", "<end>"]
    words = ["layer", ":", "?", "what", "colour", "is", "here", "the", *map(str, range(64))]
    vocab = {w: i for i, w in enumerate(specials + COLOURS + FILLER + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<end>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    fast.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} <end> {% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    fast.save_pretrained(str(folder))
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def build_toy_model(tokenizer, seed: int = 0):
    """A tiny random Llama for the toy tokenizer (no download, no pretraining needed here)."""
    from lens_oracle.toy.tiny import random_tiny_llama

    return random_tiny_llama(tokenizer, seed=seed)


def colour_data(tokenizer, n: int, seed: int) -> list[tuple[tuple[int, ...], int, str]]:
    """Filler words with one colour word: (token ids, the colour's position, colour)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(FILLER) for _ in range(rng.randint(4, 9))]
        at = rng.randrange(len(words))
        words[at] = rng.choice(COLOURS)
        out.append((tuple(tokenizer(" ".join(words))["input_ids"]), at + 1, words[at]))  # +1: <bos>
    return out


def colour_items(tokenizer, n: int, seed: int) -> tuple[EvalItem, ...]:
    """Eval items that read the activation at the colour word."""
    return tuple(
        EvalItem(ids, (c,), positions=Indices((p,)))
        for ids, p, c in colour_data(tokenizer, n, seed)
    )


# ---------------------------------------------------------------- the two modes


def toy_run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)  # a tiny model is overhead-bound: one thread is as fast
    folder = Path(tempfile.mkdtemp(prefix="lens_oracle_eval_"))
    tokenizer = build_toy_tokenizer(folder / "tokenizer")
    oracle = ActivationOracle.create(
        build_toy_model(tokenizer),
        tokenizer,
        adapter=AdapterConfig(rank=8, alpha=16, dropout=0.0),
        injection=InjectionConfig(layer=1),
    )
    n_train, epochs, n_eval = (240, 3, 24) if args.smoke else (400, 3, 64)
    examples = [
        OracleExample(ids, (p,), READ_LAYER, QUESTIONS[i % 2], colour)
        for i, (ids, p, colour) in enumerate(colour_data(tokenizer, n_train, seed=0))
    ]
    print(f"training the oracle on {len(examples)} colour examples ...")
    train_oracle(
        oracle,
        examples,
        TrainConfig(learning_rate=3e-3, epochs=epochs, progress=sys.stderr.isatty()),
    )

    task = EvalTask(
        name="colour",
        items=colour_items(tokenizer, n_eval, seed=1),
        questions=QUESTIONS[:1] if args.smoke else QUESTIONS,
        layer=READ_LAYER,
        candidates=tuple(COLOURS),
        max_new_tokens=3,
        train_items=colour_items(
            tokenizer, 40 if args.smoke else 160, seed=2
        ),  # for the probe only
    )
    report = run_task(oracle, task, seed=args.seed, n_resamples=100 if args.smoke else 1000)
    print(report.to_markdown())
    margin = report.margins()[0]
    verdict = (
        "reads the vector" if margin.margin > 0.1 else "may be answering from the question alone"
    )
    print(
        f"The oracle beats the best control ({margin.best_control}) by {margin.margin:+.2f}: it {verdict}."
    )

    if not args.smoke:
        print(
            "\nBy read layer, and by position policy (the oracle was trained on the colour token, layer 0):"
        )
        small = EvalTask(
            name="colour-sweep",
            items=task.items[:32],
            questions=QUESTIONS[:1],
            layer=READ_LAYER,
            candidates=tuple(COLOURS),
            max_new_tokens=3,
        )
        swept = sweep(
            oracle,
            small,
            layers=[0, 1, 2, 3],
            positions=[LastToken(), AllTokens()],
            methods=["oracle", "ablated_shuffle", "logit_lens"],
            seed=args.seed,
            n_resamples=200,
        )
        print(swept.sweep_table("colour-sweep", by="layer"))
        print(swept.sweep_table("colour-sweep", by="positions"))
        report = merge_reports([report, swept])
    if args.out:
        written = report.save(args.out)
        print("wrote", ", ".join(str(p) for p in written))


def real_model_tasks() -> list[EvalTask]:
    """A small built-in task for a real chat model: which colour does the sentence mention?"""
    sentences = [
        ("I painted the old fence red last summer.", "red"),
        ("Her new car is a deep shade of blue.", "blue"),
        ("The frog on the lily pad was bright green.", "green"),
        ("He wore a gold ring on his left hand.", "gold"),
        ("The tomatoes in the garden turned red overnight.", "red"),
        ("We watched the blue waves roll onto the beach.", "blue"),
    ]
    items = tuple(
        EvalItem(text, (colour,), positions=Substring(colour)) for text, colour in sentences
    )
    return [
        EvalTask(
            name="colour-mention",
            items=items,
            scorer="contains",
            candidates=tuple(COLOURS),
            max_new_tokens=12,
            questions=(
                "What colour is this about? Answer with one word.",
                "Which colour is mentioned?",
            ),
        )
    ]


def real_run(args: argparse.Namespace) -> None:
    if args.oracle:
        oracle = ActivationOracle.load(args.oracle, source=args.model)
    else:
        print("no --oracle given: a fresh adapter, i.e. the base model itself (Patchscopes-style)")
        oracle = ActivationOracle.create(args.model)
    tasks = list(load_tasks(args.tasks)) if args.tasks else real_model_tasks()
    methods = [
        "oracle",
        "ablated_zero",
        "ablated_shuffle",
        "ablated_random",
        "black_box",
        "logit_lens",
    ]
    if args.oracle:
        methods.insert(1, "untrained_oracle")
    for task in tasks:
        report = run_task(
            oracle, task, methods=methods, seed=args.seed, n_resamples=200 if args.smoke else 1000
        )
        print(report.to_markdown())
        if args.out:
            report.save(Path(args.out) / task.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="local folder of a real model (skips the toy training)")
    parser.add_argument(
        "--oracle", help="with --model: a saved oracle / AO adapter folder for that model"
    )
    parser.add_argument(
        "--tasks", help="with --model: a task file (JSON) instead of the built-in task"
    )
    parser.add_argument("--out", help="folder for results.json, results.md and plots")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny and fast (CI)")
    args = parser.parse_args()
    if args.model:
        real_run(args)
    else:
        toy_run(args)


if __name__ == "__main__":
    main()
