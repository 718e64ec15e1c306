"""Sampled answers (the AO open-ended protocol): seeded, batched, one group of samples per example."""

from __future__ import annotations

import pytest
import torch

from arch_helpers import randomize_lora
from helpers import build_llama
from lens_oracle.activations import LastK
from lens_oracle.config import AdapterConfig
from lens_oracle.errors import ConfigError
from lens_oracle.oracle import ActivationOracle

PROMPTS = ["w1 red w2", "w3 blue", "gold w4 w5 w6"]
QUESTIONS = ["what colour ?", "what is here ?", "what ?"]


@pytest.fixture(scope="module")
def oracle(tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    oracle = ActivationOracle.create(build_llama(tok), tok, adapter=AdapterConfig(rank=4, alpha=8, dropout=0.0))
    randomize_lora(oracle.model.peft_model, std=0.3)
    return oracle


def test_samples_are_seeded_and_leave_the_callers_random_state(oracle) -> None:
    acts = oracle.capture(PROMPTS, 1, positions=LastK(2))
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = oracle.ask_samples(acts, QUESTIONS, n_samples=4, temperature=1.5, max_new_tokens=5, seed=7)
    assert torch.equal(torch.rand(3), expected_next)
    again = oracle.ask_samples(acts, QUESTIONS, n_samples=4, temperature=1.5, max_new_tokens=5, seed=7)
    other = oracle.ask_samples(acts, QUESTIONS, n_samples=4, temperature=1.5, max_new_tokens=5, seed=8)
    assert first == again and first != other
    assert [len(group) for group in first] == [4, 4, 4]
    assert len({answer for group in first for answer in group}) > 3  # they really are samples


def test_near_zero_temperature_samples_equal_each_examples_greedy_answer(oracle) -> None:
    """Each group belongs to its own example: at temperature 1e-3 every sample is the greedy answer."""
    acts = oracle.capture(PROMPTS, 1, positions=LastK(2))
    greedy = oracle.ask_batch(acts, QUESTIONS, max_new_tokens=5)
    samples = oracle.ask_samples(acts, QUESTIONS, n_samples=3, temperature=1e-3, top_p=1.0, max_new_tokens=5,
                                 batch_size=4)
    assert samples == [[answer] * 3 for answer in greedy]
    assert len(set(greedy)) > 1


@pytest.mark.parametrize(("kwargs", "phrase"), [
    ({"n_samples": 0}, "n_samples"), ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
    ({"temperature": 0.0}, "temperature"), ({"seed": -1}, "seed"),
])
def test_bad_sampling_settings_are_refused(oracle, kwargs, phrase) -> None:
    acts = oracle.capture(PROMPTS[:1], 1)
    with pytest.raises(ConfigError, match=phrase):
        oracle.ask_samples(acts, "q ?", **kwargs)
