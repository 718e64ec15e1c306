"""Training mixture: build the Activation Oracles data mix from files, train on it, ask questions.

Activation Oracles trains on a *mixture* of three kinds of examples (REFERENCE.md section 1):

* context prediction (self-supervised): read K tokens, predict the J tokens before or after;
* classification as balanced yes/no questions ("Is this review positive?");
* SPQA: persona / system-prompt conversations whose instruction is masked out of the read
  positions, with questions about the assistant's behaviour.

This script writes small local data files from the toy world, builds the three components
with the builders, mixes them, prints a preview, trains an oracle on length-grouped batches and
asks it a few questions. It runs on a CPU in one to two minutes:

    python tutorials/02_training_mixture.py                   # toy model, ~1-2 minutes
    python tutorials/02_training_mixture.py --smoke           # a few seconds, what CI runs
    python tutorials/02_training_mixture.py --model path/to/local/model
    python tutorials/02_training_mixture.py --model path/to/local/model --hf-dataset stanfordnlp/sst2

The same builders read real data: see ``hf_components`` below (run only with ``--hf-dataset``,
which needs internet access or the Hugging Face cache). The ``lens-oracle data build`` command
does the same from a JSON spec (format in ``lens_oracle/data/cli.py``).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import tempfile
from collections import Counter
from importlib import resources
from pathlib import Path

import lens_oracle as lo
from lens_oracle.activations import read_vectors
from lens_oracle.data import (
    ClassificationConfig,
    ContextPredictionConfig,
    Mixture,
    MixtureComponent,
    SPQAConfig,
    build_classification,
    build_context_prediction,
    build_spqa,
    layers_from_fractions,
    length_grouped_batches,
    load_templates,
    padding_efficiency,
    read_rows,
    read_spqa,
    render_preview,
)
from lens_oracle.data.classification import YES_NO_PREFIX
from lens_oracle.data.context_prediction import NEXT_QUESTION, PREVIOUS_QUESTION
from lens_oracle.train import Trainer

SPQA_FIXTURE = resources.files("lens_oracle.data").joinpath("fixtures/spqa_tiny.jsonl")
"""A few hand-written SPQA rows shipped with lens_oracle (the LatentQA row format)."""


def build_toy_model(tokenizer, seed: int):
    """A tiny random Llama for the toy tokenizer (no download, no pretraining needed here)."""
    from lens_oracle.toy.tiny import random_tiny_llama

    return random_tiny_llama(tokenizer, seed=seed)


def toy_vocabulary_extras() -> list[str]:
    """Words of the builders' questions and of the SPQA fixture, so the toy tokenizer knows them.

    The toy tokenizer is word-level and lower-cases everything ("Yes" -> "yes"); a real
    tokenizer needs none of this.
    """
    from lens_oracle.toy.world.tokenizer import split_words

    templates = load_templates()
    texts = [YES_NO_PREFIX, PREVIOUS_QUESTION, NEXT_QUESTION, SPQA_FIXTURE.read_text("utf-8")]
    texts += [t for kind in ("sentiment", "topic") for t in templates[kind]]
    cleaned = [t.replace("{label}", " ").replace("{j}", " ") for t in texts]
    return sorted({w for text in cleaned for w in split_words(text) if not w.startswith("<")})


# ----------------------------------------------------------------------------- 1. data files


def write_data_files(world, folder: Path, *, n_docs: int, n_rows: int, n_chats: int, seed: int) -> dict[str, Path]:
    """Small local files in the formats users have: .txt, .csv, .jsonl, SPQA .jsonl."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "texts": folder / "corpus.txt",          # one document per line
        "sentiment": folder / "sentiment.csv",   # text,label rows
        "topic": folder / "topic.jsonl",         # {"text": ..., "label": ...} rows
        "spqa": folder / "personas.jsonl",       # {"system", "dialog", "qa"} rows
        "spqa_fixture": folder / "spqa_tiny.jsonl",
    }
    files["texts"].write_text("\n".join(world.corpus(n_docs, seed=seed)) + "\n", encoding="utf-8")
    with files["sentiment"].open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(world.sentiment_sentence(rng) for _ in range(n_rows))
    topics = [dict(zip(("text", "label"), world.topic_sentence(rng))) for _ in range(n_rows)]
    files["topic"].write_text("".join(json.dumps(r) + "\n" for r in topics), encoding="utf-8")
    files["spqa"].write_text("".join(json.dumps(r) + "\n" for r in persona_rows(world, n_chats, rng)), encoding="utf-8")
    files["spqa_fixture"].write_text(SPQA_FIXTURE.read_text("utf-8"), encoding="utf-8")
    return files


def persona_rows(world, n: int, rng: random.Random) -> list[dict]:
    """Toy persona chats in the LatentQA row format: the system turn is what gets masked."""
    rows = []
    for i in range(n):
        persona = world.personas[i % len(world.personas)]
        messages = world.chat(rng, persona.name, n_turns=rng.randint(1, 2))
        rows.append({
            "system": messages[0]["content"],
            "dialog": messages[1:],
            "qa": [{"question": world.question_for("persona"), "answer": persona.name}],
        })
    return rows


# ----------------------------------------------------------------------------- 2. components


def build_components(files: dict[str, Path], tokenizer, layers, *, seed: int) -> list[MixtureComponent]:
    """The three AO components, built from the local files with the library's builders."""
    fields = {"text": str, "label": str}
    context = build_context_prediction(
        files["texts"], tokenizer, layers,
        ContextPredictionConfig(k_max=8, j_max=6, max_doc_tokens=48, seed=seed),  # AO: 1-50 each
    )
    sentiment = build_classification(
        read_rows(files["sentiment"], fields), tokenizer, layers,
        ClassificationConfig(kind="sentiment", window_max=10, seed=seed + 1),
    )
    topic = build_classification(
        read_rows(files["topic"], fields), tokenizer, layers,
        ClassificationConfig(kind="topic", window_max=10, seed=seed + 2),
    )
    records = read_spqa(files["spqa"]) + read_spqa(files["spqa_fixture"])
    spqa = build_spqa(records, tokenizer, layers, SPQAConfig(seed=seed + 3))
    # Weights share the mixture's total; a component could instead take a fixed size=...
    return [
        MixtureComponent("context_prediction", context, weight=2),
        MixtureComponent("sentiment", sentiment, weight=1),
        MixtureComponent("topic", topic, weight=1),
        MixtureComponent("spqa", spqa, weight=1),
    ]


# Pointing the same builders at Hugging Face datasets (needs internet or the HF cache).
# Only called with --hf-dataset NAME, and only with --model (a real tokenizer): the toy
# tokenizer knows nothing but the toy language.
#
#     rows = load_hf_dataset("stanfordnlp/sst2", split="train")       # columns: sentence, label
#     build_classification(rows, tokenizer, layers, ClassificationConfig(
#         kind="sentiment", text_field="sentence", labels=("negative", "positive")))
#     docs = load_hf_dataset("roneneldan/TinyStories", split="train")  # column: text
#     build_context_prediction(docs.select(range(10_000)), tokenizer, layers)
#     build_spqa(my_rows_in_the_spqa_format, tokenizer, layers)        # see lens_oracle/data/spqa.py
#
# Integer labels (HF ClassLabel columns) index into ClassificationConfig.labels.

HF_PRESETS: dict[str, dict] = {
    "stanfordnlp/sst2": {"kind": "sentiment", "text_field": "sentence", "labels": ("negative", "positive")},
    "fancyzhx/ag_news": {"kind": "topic", "text_field": "text",
                         "labels": ("world", "sports", "business", "science and technology")},
}


def hf_components(name: str, tokenizer, layers, *, split: str, limit: int, seed: int) -> list[MixtureComponent]:
    """Classification and context prediction from one Hugging Face dataset."""
    from lens_oracle.data import load_hf_dataset

    preset = HF_PRESETS.get(name, {"kind": "sentiment", "text_field": "text", "labels": ()})
    dataset = load_hf_dataset(name, split=split)
    dataset = dataset.select(range(min(limit, len(dataset))))  # a small slice is plenty here
    classification = build_classification(
        dataset, tokenizer, layers,
        ClassificationConfig(kind=preset["kind"], text_field=preset["text_field"],
                             labels=tuple(preset["labels"]), seed=seed),
    )
    texts = (row[preset["text_field"]] for row in dataset)
    context = build_context_prediction(texts, tokenizer, layers, ContextPredictionConfig(seed=seed))
    return [
        MixtureComponent(f"hf_{preset['kind']}", classification, weight=1),
        MixtureComponent("hf_context_prediction", context, weight=1),
    ]


# ----------------------------------------------------------------------------- 4. asking


def ask(oracle, examples, max_new_tokens: int = 4) -> list[str]:
    """Read each example's activations with the adapter off, then ask its question."""
    with oracle.adapter_disabled() as base:
        vectors = read_vectors(base, [e.context_ids for e in examples], [e.positions for e in examples],
                               [e.layer for e in examples])
    return oracle.ask_batch(vectors, [e.question for e in examples], layers=[e.layer for e in examples],
                            max_new_tokens=max_new_tokens)


def same(answer: str, truth: str) -> bool:
    """Compare case-insensitively: the toy tokenizer lower-cases "Yes" to "yes"."""
    words = answer.lower().replace(".", " ").split()
    return bool(words) and words[0] == truth.lower().split()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a local model folder (default: a tiny random toy model)")
    parser.add_argument("--smoke", action="store_true", help="tiny data, a few steps (CI)")
    parser.add_argument("--total", type=int, default=640, help="mixture size (default 640)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=None, help="default: 1e-2 toy model, 1e-4 real model")
    parser.add_argument("--data-dir", type=Path, default=None, help="where to write the data files")
    parser.add_argument("--out", type=Path, default=None, help="save the trained oracle here")
    parser.add_argument("--hf-dataset", default=None, metavar="NAME",
                        help="also mix in a Hugging Face dataset, e.g. stanfordnlp/sst2 (needs --model)")
    parser.add_argument("--hf-split", default="train")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.hf_dataset and not args.model:
        parser.error("--hf-dataset needs --model: the toy tokenizer only knows the toy language")

    from lens_oracle.toy.world.language import make_world
    from lens_oracle.toy.world.tokenizer import build_tokenizer

    world = make_world(args.seed)
    if args.model:
        oracle = lo.ActivationOracle.create(args.model, adapter=lo.AdapterConfig(rank=16, alpha=32))
        tokenizer = oracle.model.tokenizer
    else:
        tokenizer = build_tokenizer(world, extra_words=toy_vocabulary_extras())
        oracle = lo.ActivationOracle.create(
            build_toy_model(tokenizer, args.seed), tokenizer, name="toy-random-llama",
            adapter=lo.AdapterConfig(rank=8, alpha=16, dropout=0.0),
            injection=lo.InjectionConfig(layer=1),  # a 4-block toy model reads better at 1
        )
    # AO reads at 25%, 50% and 75% depth, about a third of the data each.
    layers = layers_from_fractions(oracle.config.n_layers)
    print(f"oracle: {oracle.config.base_model} ({oracle.config.n_layers} blocks), read layers {layers}")

    # 1. Small local data files from the toy world.
    sizes = (
        {"n_docs": 60, "n_rows": 40, "n_chats": 20} if args.smoke
        else {"n_docs": 600, "n_rows": 300, "n_chats": 150}
    )
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="lens_oracle_mixture_"))
    files = write_data_files(world, data_dir, seed=args.seed, **sizes)
    print(f"data files in {data_dir}: {', '.join(sorted(p.name for p in files.values()))}")

    # 2. Components, then the mixture (seeded; AO drops the longest 0.1%, we drop 1% here).
    components = build_components(files, tokenizer, layers, seed=args.seed)
    if args.hf_dataset:
        components += hf_components(args.hf_dataset, tokenizer, layers, split=args.hf_split,
                                    limit=2000, seed=args.seed)
    total = 32 if args.smoke else args.total
    mixture = Mixture(components, total=total, drop_quantile=0.99, seed=args.seed).build()
    counts = Counter(e.meta["component"] for e in mixture)
    print(f"mixture: {len(mixture)} examples: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print(f"read layers used: {dict(sorted(Counter(e.layer for e in mixture).items()))}")

    # 3. Preview: the read positions are marked with ⟦ ⟧ (what `lens-oracle data preview` shows).
    print("\n" + render_preview(mixture, tokenizer, n=4))

    # 4. Train on length-grouped batches (AO: ~30% faster than random batches).
    grouped = length_grouped_batches(mixture, args.batch_size, seed=args.seed)
    shuffled = [mixture[i : i + args.batch_size] for i in range(0, len(mixture), args.batch_size)]
    print(f"padding efficiency: {padding_efficiency(grouped):.2f} length-grouped vs "
          f"{padding_efficiency(shuffled):.2f} in mixture order")
    lr = args.lr or (1e-4 if args.model else 1e-2)
    config = lo.TrainConfig(learning_rate=lr, batch_size=args.batch_size, epochs=1 if args.smoke else args.epochs,
                            seed=args.seed, progress=not args.smoke)
    result = Trainer(oracle, config).fit(grouped)
    head, tail = result.losses[: max(1, result.steps // 10)], result.losses[-max(1, result.steps // 10) :]
    print(f"trained {result.steps} steps: loss {sum(head) / len(head):.3f} -> {sum(tail) / len(tail):.3f} "
          "(mean of the first and last 10% of steps)")

    # 5. Ask: held-out examples built from fresh rows with the same builders.
    # What to expect: in a minute or two on a tiny *random* model, the oracle learns each task's
    # answer format (yes/no, a persona name, toy words) and its priors, but reads little content:
    # accuracy stays near chance (we measured 0.4-0.5 on sentiment and ~0.2 on personas with 2-5
    # epochs). The quickstart shows an oracle reading one-token facts; reading behaviour from a
    # mixture needs a real model (--model) and far more data (AO: ~1M examples).
    rng = random.Random(args.seed + 100)
    n_ask = 4 if args.smoke else 40
    held_rows = [dict(zip(("text", "label"), world.sentiment_sentence(rng))) for _ in range(n_ask)]
    sentiment = build_classification(held_rows, tokenizer, layers,
                                     ClassificationConfig(kind="sentiment", seed=args.seed + 100))
    personas = build_spqa(persona_rows(world, n_ask, rng), tokenizer, layers,
                          SPQAConfig(all_tokens_fraction=1.0, seed=args.seed + 100))
    for name, examples, chance in (("sentiment yes/no", sentiment, 0.5),
                                   ("persona", personas, 1 / len(world.personas))):
        answers = ask(oracle, examples)
        right = sum(same(a, e.answer) for a, e in zip(answers, examples)) / len(examples)
        print(f"{name}: {right:.2f} correct on {len(examples)} held-out examples (chance {chance:.2f})")
        for answer, example in list(zip(answers, examples))[:2]:
            print(f"  Q: {example.question}\n     context: {example.context_text}\n"
                  f"     oracle: {answer!r}  truth: {example.answer!r}")
    yes_no = sum(a.lower().split()[:1] in (["yes"], ["no"]) for a in ask(oracle, sentiment)) / len(sentiment)
    print(f"yes/no questions answered with yes or no: {yes_no:.2f}")

    if args.out:
        oracle.save(args.out, overwrite=True)  # replaces only an oracle saved there before
        print(f"saved the oracle to {args.out}")
    if args.data_dir is None:
        shutil.rmtree(data_dir, ignore_errors=True)
    print("done.")


if __name__ == "__main__":
    main()
