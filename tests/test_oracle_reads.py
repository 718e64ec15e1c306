"""The oracle reads the activation: far above chance with it, at chance without it."""

from __future__ import annotations

import pytest
import torch

from helpers import COLOURS, build_llama, colour_task
from lens_oracle.activations import read_vectors
from lens_oracle.config import AdapterConfig, InjectionConfig, TrainConfig
from lens_oracle.data.example import OracleExample
from lens_oracle.oracle import ActivationOracle
from lens_oracle.runner import train_oracle

pytestmark = pytest.mark.compat  # run on the newest upstream releases by `make test-latest`

QUESTION = "what colour is here ?"
READ_LAYER = 1
CHANCE = 1 / len(COLOURS)


@pytest.fixture(scope="module")
def trained(tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    oracle = ActivationOracle.create(
        build_llama(tok), tok,
        adapter=AdapterConfig(rank=8, alpha=16, dropout=0.0), injection=InjectionConfig(layer=1),
    )
    examples = [
        OracleExample(tuple(ids), (p,), READ_LAYER, QUESTION, colour)
        for ids, p, colour in colour_task(tok, 400, seed=0)
    ]
    result = train_oracle(oracle, examples, TrainConfig(learning_rate=2e-3, batch_size=16, epochs=4, progress=False))
    test = colour_task(tok, 120, seed=1)
    with oracle.adapter_disabled() as base:
        vectors = read_vectors(base, [t[0] for t in test], [[t[1]] for t in test], [READ_LAYER] * len(test))
    return oracle, result, vectors, [t[2] for t in test]


def accuracy(oracle, vectors, truth, **kwargs) -> float:
    answers = oracle.ask_batch(vectors, QUESTION, layers=[READ_LAYER] * len(vectors), max_new_tokens=3, **kwargs)
    return sum(a == t for a, t in zip(answers, truth, strict=True)) / len(truth)


def test_training_lowers_the_loss(trained) -> None:
    _, result, _, _ = trained
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < 0.5 * first


def test_trained_oracle_reads_the_activation(trained) -> None:
    oracle, _, vectors, truth = trained
    score = accuracy(oracle, vectors, truth)
    assert score >= 0.6, score  # chance is 0.25


def test_without_the_activation_it_falls_to_chance(trained) -> None:
    oracle, _, vectors, truth = trained
    shuffled = [vectors[i] for i in torch.randperm(len(vectors), generator=torch.Generator().manual_seed(0))]
    zeroed = accuracy(oracle, vectors, truth, inject=False)  # h + 0 at the placeholders
    assert accuracy(oracle, shuffled, truth) <= CHANCE + 0.15
    assert zeroed <= CHANCE + 0.15
