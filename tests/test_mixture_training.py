"""Integration tier: an oracle trained on a small three-part MIXTURE with the core trainer.

Toy world -> local data files -> the three builders (context prediction, classification read
back from CSV/JSONL through ``read_rows``, SPQA from persona chats) -> ``Mixture.build()`` ->
``train_oracle`` on a tiny random Llama. One training run (module fixture) serves every test.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers import build_llama

from lens_oracle.activations import read_vectors
from lens_oracle.config import AdapterConfig, InjectionConfig, TrainConfig
from lens_oracle.data import (
    ClassificationConfig,
    ContextPredictionConfig,
    Mixture,
    MixtureComponent,
    OracleExample,
    SPQAConfig,
    build_classification,
    build_context_prediction,
    build_spqa,
    layers_from_fractions,
    load_templates,
    read_rows,
)
from lens_oracle.data.classification import YES_NO_PREFIX
from lens_oracle.data.context_prediction import NEXT_QUESTION, PREVIOUS_QUESTION
from lens_oracle.oracle import ActivationOracle
from lens_oracle.runner import train_oracle
from lens_oracle.toy.world.language import ToyWorld, make_world
from lens_oracle.toy.world.tokenizer import build_tokenizer, split_words
from lens_oracle.train import TrainResult

N_ROWS = 60
"""Labelled rows per classification file (the mixture takes a weighted share of them)."""
ROW_FIELDS = {"text": str, "label": str}


def question_words() -> list[str]:
    """Words of every question the builders can ask, so the toy tokenizer has no ``<unk>``."""
    templates = load_templates()
    texts = [YES_NO_PREFIX, PREVIOUS_QUESTION, NEXT_QUESTION]
    texts += [t for kind in ("sentiment", "topic") for t in templates[kind]]
    return sorted({w for t in texts for w in split_words(t.replace("{label}", " ").replace("{j}", " "))})


def write_rows(world: ToyWorld, folder: Path, seed: int) -> tuple[Path, Path]:
    """Sentiment rows as CSV and topic rows as JSONL, both ``text,label``."""
    rng = random.Random(seed)
    sentiment = folder / f"sentiment_{seed}.csv"
    with sentiment.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for _ in range(N_ROWS):
            writer.writerow(world.sentiment_sentence(rng))
    topic = folder / f"topic_{seed}.jsonl"
    lines = []
    for _ in range(N_ROWS):
        text, label = world.topic_sentence(rng)
        lines.append(json.dumps({"text": text, "label": label}) + "\n")
    topic.write_text("".join(lines), encoding="utf-8")
    return sentiment, topic


def persona_rows(world: ToyWorld, n: int, seed: int) -> list[dict]:
    """Toy persona chats in the LatentQA/SPQA row format (system, dialog, qa)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        persona = world.personas[i % len(world.personas)]
        messages = world.chat(rng, persona.name, n_turns=1)
        rows.append(
            {
                "system": messages[0]["content"],
                "dialog": messages[1:],
                "qa": [{"question": world.question_for("persona"), "answer": persona.name}],
            }
        )
    return rows


def classification_examples(
    world: ToyWorld, tokenizer, layers, folder: Path, seed: int
) -> tuple[list[OracleExample], list[OracleExample]]:
    """Sentiment and topic examples built from rows written to disk and read back."""
    sentiment_file, topic_file = write_rows(world, folder, seed)
    sentiment = build_classification(
        read_rows(sentiment_file, ROW_FIELDS), tokenizer, layers,
        ClassificationConfig(kind="sentiment", window_max=8, seed=seed),
    )
    topic = build_classification(
        read_rows(topic_file, ROW_FIELDS), tokenizer, layers,
        ClassificationConfig(kind="topic", window_max=8, seed=seed + 1),
    )
    return sentiment, topic


def yes_no_rate(oracle: ActivationOracle, examples: list[OracleExample]) -> float:
    """Share of answers whose first word is yes/no (case-insensitive: the toy tokenizer lower-cases)."""
    with oracle.adapter_disabled() as base:
        vectors = read_vectors(
            base, [e.context_ids for e in examples], [e.positions for e in examples],
            [e.layer for e in examples],
        )
    answers = oracle.ask_batch(
        vectors, [e.question for e in examples], layers=[e.layer for e in examples], max_new_tokens=3
    )
    first = [a.split()[0].lower() if a.split() else "" for a in answers]
    return sum(w in ("yes", "no") for w in first) / len(first)


@dataclass
class Run:
    world: ToyWorld
    oracle: ActivationOracle
    mixture: list[OracleExample]
    result: TrainResult
    before: dict[str, torch.Tensor]
    held_out: list[OracleExample]
    rate_before: float
    rate_after: float


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    folder = tmp_path_factory.mktemp("mixture")
    world = make_world(0)
    tokenizer = build_tokenizer(world, folder / "tokenizer", extra_words=question_words())
    oracle = ActivationOracle.create(
        build_llama(tokenizer, n_layers=4, d_model=64, seed=0), tokenizer, name="toy-random-llama",
        adapter=AdapterConfig(rank=8, alpha=16, dropout=0.0),
        injection=InjectionConfig(layer=1),
    )
    layers = layers_from_fractions(oracle.config.n_layers)
    context = build_context_prediction(
        world.corpus(60, seed=1), tokenizer, layers,
        ContextPredictionConfig(k_max=6, j_max=4, max_doc_tokens=24, seed=0),
    )
    sentiment, topic = classification_examples(world, tokenizer, layers, folder, seed=1)
    spqa = build_spqa(persona_rows(world, 30, seed=3), tokenizer, layers,
                      SPQAConfig(all_tokens_fraction=0.25, seed=3))
    mixture = Mixture(
        [
            MixtureComponent("context", context, weight=1),
            MixtureComponent("sentiment", sentiment, weight=1),
            MixtureComponent("topic", topic, weight=1),
            MixtureComponent("spqa", spqa, weight=0.5),
        ],
        total=112, max_tokens=64, seed=0,
    ).build()
    # Held-out yes/no questions: fresh rows, another seed; asked before and after training.
    held_sentiment, held_topic = classification_examples(world, tokenizer, layers, folder, seed=7)
    held_out = held_sentiment[:12] + held_topic[:12]
    rate_before = yes_no_rate(oracle, held_out)
    before = {k: v.clone() for k, v in oracle.model.adapter_state_dict().items()}
    result = train_oracle(
        oracle, mixture, TrainConfig(learning_rate=1e-2, batch_size=8, epochs=2, progress=False)
    )
    rate_after = yes_no_rate(oracle, held_out)
    return Run(world, oracle, mixture, result, before, held_out, rate_before, rate_after)


def test_mixture_has_every_component(run: Run) -> None:
    components = {e.meta["component"] for e in run.mixture}
    assert components == {"context", "sentiment", "topic", "spqa"}
    tasks = {e.task for e in run.mixture}
    assert tasks == {"context_prediction", "classification/sentiment", "classification/topic", "spqa"}
    assert len(run.mixture) == 112


def test_every_layer_is_a_depth_fraction(run: Run) -> None:
    allowed = set(layers_from_fractions(run.oracle.config.n_layers))
    assert allowed == {1, 2, 3}
    assert {e.layer for e in run.mixture} == allowed  # all three are used, nothing else


def test_loss_decreases(run: Run) -> None:
    losses = run.result.losses
    assert run.result.steps == 2 * 112 // 8
    assert all(map(torch.isfinite, torch.tensor(losses)))
    first, last = losses[:6], losses[-6:]
    print(f"loss first {sum(first) / 6:.2f} last {sum(last) / 6:.2f}; yes/no rate "
          f"{run.rate_before:.2f} -> {run.rate_after:.2f}")
    assert sum(last) / len(last) < 0.75 * (sum(first) / len(first)), losses


def test_adapter_weights_changed(run: Run) -> None:
    after = run.oracle.model.adapter_state_dict()
    assert after.keys() == run.before.keys()
    changed = [k for k in after if not torch.equal(after[k], run.before[k])]
    # PEFT starts lora_B at zero; training must move both A and B matrices.
    assert any("lora_A" in k for k in changed) and any("lora_B" in k for k in changed)
    assert all(after[k].abs().sum() > 0 for k in after if "lora_B" in k)


def test_yes_no_questions_get_yes_no_answers(run: Run) -> None:
    # The toy tokenizer lower-cases ("Yes" -> "yes"); the rate compares case-insensitively.
    assert {e.answer for e in run.held_out} == {"Yes", "No"}
    assert run.rate_after >= 0.75, (run.rate_before, run.rate_after)
    assert run.rate_after > run.rate_before
