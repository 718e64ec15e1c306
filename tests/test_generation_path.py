"""Generation runs through the original Hugging Face modules: the same answers as through the
bridge, every wrapper restored afterwards (also after an error)."""

from __future__ import annotations

import pytest
import torch
from helpers import build_llama

from lens_oracle import ActivationOracle
from lens_oracle.bridge import original_block, unbridged
from lens_oracle.config import AdapterConfig


@pytest.fixture(scope="module")
def oracle(tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    oracle = ActivationOracle.create(build_llama(tokenizer, n_layers=4, d_model=64), tokenizer,
                                     adapter=AdapterConfig(rank=4, alpha=8))
    with torch.no_grad():  # non-zero B: the adapter changes the answers
        for name, param in oracle.model.hf_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(1)) * 0.05)
    return oracle


def _modules(model: torch.nn.Module) -> list[tuple[str, int]]:
    return [(name, id(module)) for name, module in model.named_modules()]


def test_unbridged_swaps_every_wrapper_and_restores_them(oracle) -> None:
    hf = oracle.model.hf_model
    before = _modules(hf)
    with unbridged(hf) as swapped:
        inside = _modules(hf)
        assert swapped > 0 and not any("_original_component" in name for name, _ in inside)
        assert hf.model.layers[2] is original_block(oracle.model.bridge, 2)
    assert _modules(hf) == before
    with pytest.raises(RuntimeError, match="boom"), unbridged(hf):
        raise RuntimeError("boom")
    assert _modules(hf) == before


def test_answers_equal_the_bridged_path(oracle, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    vectors = [torch.randn(3, 64) * 4 for _ in range(5)]
    questions = ["w1 red ?", "what colour ?", "w2 blue w3 ?", "what is here ?", "w4 ?"]
    ask = dict(layers=[1] * 5, max_new_tokens=6)
    direct = oracle.ask_batch(vectors, questions, **ask)
    sampled = oracle.ask_samples(vectors, questions, n_samples=2, temperature=1.0, seed=3, **ask)
    without = oracle.ask_batch(vectors, questions, inject=False, **ask)
    original = type(oracle).injecting

    def through_the_bridge(self, batch, *, enabled=True, bridged=True):
        return original(self, batch, enabled=enabled, bridged=True)

    monkeypatch.setattr(type(oracle), "injecting", through_the_bridge)
    assert oracle.ask_batch(vectors, questions, **ask) == direct
    assert oracle.ask_samples(vectors, questions, n_samples=2, temperature=1.0, seed=3, **ask) == sampled
    assert oracle.ask_batch(vectors, questions, inject=False, **ask) == without
    assert direct != without  # the injection reaches the answers on both paths
