"""On-policy context prediction: "next" answers are the target's own greedy continuations,
deterministic per seed, batched, cached; the rest of the builder's draws are unchanged."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from helpers import FILLER, build_llama

from lens_oracle.data.context_prediction import (
    ContextPredictionConfig,
    build_context_prediction,
    on_policy_examples,
)
from lens_oracle.data.on_policy import continuations, request_key
from lens_oracle.errors import ConfigError
from lens_oracle.generation import generate_ids, generate_text
from lens_oracle.models import load_model

LAYERS = (1, 2)


@pytest.fixture(scope="module")
def model(tokenizer_dir: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    return load_model(build_llama(tokenizer, seed=4), tokenizer)


def _docs(n: int = 24, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(FILLER) for _ in range(rng.randint(6, 14))) for _ in range(n)]


def _config(seed: int = 0, on_policy: bool = True) -> ContextPredictionConfig:
    return ContextPredictionConfig(k_max=4, j_max=3, seed=seed, on_policy=on_policy)


def test_next_answers_are_the_models_own_continuations(model) -> None:
    on = build_context_prediction(_docs(), model.tokenizer, LAYERS, _config(), model=model)
    off = build_context_prediction(_docs(), model.tokenizer, LAYERS, _config(on_policy=False))
    assert len(on) == len(off) == 24  # random filler: no continuation here is blank
    nexts = [i for i, ex in enumerate(off) if ex.meta["direction"] == "next"]
    assert 0 < len(nexts) < len(off)
    changed = 0
    for i, (a, b) in enumerate(zip(on, off, strict=True)):
        # Same documents, read positions, layers and directions: only "next" answers differ.
        assert (a.context_ids, a.positions, a.layer, a.meta["direction"]) == (
            b.context_ids, b.positions, b.layer, b.meta["direction"])
        if i not in nexts:
            assert a == b
            continue
        own = generate_ids(model, [a.context_ids], b.meta["j"])[0]
        assert a.answer == model.tokenizer.decode(own) and a.meta["on_policy"] is True
        assert a.meta["j"] == len(own) and a.question == f"Can you predict the next {len(own)} tokens that come after this?"
        changed += a.answer != b.answer
    assert changed > 0  # a random model does not continue the corpus


def test_on_policy_is_deterministic_per_seed(model) -> None:
    first = build_context_prediction(_docs(), model.tokenizer, LAYERS, _config(seed=1), model=model, batch_size=5)
    again = build_context_prediction(_docs(), model.tokenizer, LAYERS, _config(seed=1), model=model, batch_size=16)
    other = build_context_prediction(_docs(), model.tokenizer, LAYERS, _config(seed=2), model=model)
    assert first == again  # batching does not change greedy answers
    assert first != other


def test_continuations_are_cached_by_model_and_request(model, tmp_path: Path, monkeypatch) -> None:
    built = build_context_prediction(_docs(), model.tokenizer, LAYERS, _config(), model=model, cache_dir=tmp_path)
    files = list(tmp_path.glob("continuations-*.json"))
    assert len(files) == 1
    saved = json.loads(files[0].read_text())
    assert saved["format"] == "lens_oracle.on_policy_continuations" and len(saved["continuations"]) > 0

    def no_generation(*args, **kwargs):
        raise AssertionError("generated although the continuations were cached")

    monkeypatch.setattr("lens_oracle.data.on_policy.generate_ids", no_generation)
    assert build_context_prediction(_docs(), model.tokenizer, LAYERS, _config(), model=model, cache_dir=tmp_path) == built
    contexts, lengths = [[1, 10, 11]], [2]
    assert request_key(model, contexts, lengths) != request_key(model, contexts, [3])
    other = load_model(build_llama(model.tokenizer, seed=5), model.tokenizer)
    assert request_key(model, contexts, lengths) != request_key(other, contexts, lengths)


def test_on_policy_needs_its_model_and_only_then(model) -> None:
    with pytest.raises(ConfigError, match="needs the target model"):
        build_context_prediction(_docs(), model.tokenizer, LAYERS, _config())
    with pytest.raises(ConfigError, match="only used for on_policy"):
        build_context_prediction(_docs(), model.tokenizer, LAYERS, _config(on_policy=False), model=model)
    with pytest.raises(ConfigError, match="one length per context"):
        continuations(model, [[1, 10]], [1, 2])
    with pytest.raises(ConfigError, match="at least 1"):
        continuations(model, [[1, 10]], [0])
    examples = build_context_prediction(_docs(4), model.tokenizer, LAYERS, _config(on_policy=False))
    previous_only = [ex for ex in examples if ex.meta["direction"] == "previous"]
    assert on_policy_examples(previous_only, model) == previous_only


def test_generate_text_decodes_generate_ids(model) -> None:
    prompts = [[1, 10, 11, 12], [1, 20]]
    ids = generate_ids(model, prompts, 5)
    assert generate_text(model, prompts, 5) == [model.tokenizer.decode(r, skip_special_tokens=True).strip() for r in ids]
    assert all(len(r) <= 5 for r in ids)


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(model) -> None:
    import torch

    from lens_oracle.errors import PromptError

    prompts = [[1, 10, 11, 12]] * 6
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first = generate_ids(model, prompts, 8, temperature=1.0, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert generate_ids(model, prompts, 8, temperature=1.0, seed=1) == first
    assert generate_ids(model, prompts, 8, temperature=1.0, seed=2) != first
    assert len({tuple(r) for r in first}) > 1  # six samples of one prompt are not all the same
    greedy = generate_ids(model, prompts, 8)
    assert len({tuple(r) for r in greedy}) == 1 and generate_ids(model, prompts, 8, seed=5) == greedy
    for bad in (-0.5, 11.0):
        with pytest.raises(PromptError, match="temperature"):
            generate_ids(model, prompts, 8, temperature=bad)


def test_toy_mixture_on_policy_option() -> None:
    from lens_oracle.toy.demo.mixture import ToyMixtureConfig, build_toy_mixture
    from lens_oracle.toy.world.language import make_world

    config = ToyMixtureConfig(total=60, on_policy_context=True)
    assert config.to_dict()["on_policy_context"] is True
    assert "on_policy_context" not in ToyMixtureConfig(total=60).to_dict()  # older stamps still match
    with pytest.raises(ConfigError, match="on_policy_context needs the base model"):
        build_toy_mixture(make_world(0), None, (1,), config)  # refused before the tokenizer is used
