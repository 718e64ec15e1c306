"""The token-identity Patchscope: its patch is a plain residual replacement, its controls are sound."""

from __future__ import annotations

import pytest
import torch
from helpers import build_llama

from lens_oracle.errors import EvalError
from lens_oracle.evals.patchscope import (
    CONDITIONS,
    _derangement,
    _patched_next_tokens,
    token_identity_patchscope,
)
from lens_oracle.models import load_model


def test_the_patch_equals_a_plain_forward_hook_replacing_the_residual(tokenizer) -> None:
    hf = build_llama(tokenizer)
    model = load_model(build_llama(tokenizer), tokenizer, trainable=False)
    ids = tokenizer("w1 red w2 blue w3")["input_ids"]
    vectors = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    ours = _patched_next_tokens(model, ids, 2, 1, vectors, batch_size=2)

    def hook(module, args, output):
        hidden = (output[0] if isinstance(output, tuple) else output).clone()
        hidden[:, 2] = vectors
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = hf.model.layers[1].register_forward_hook(hook)
    try:
        with torch.no_grad():
            reference = hf(torch.tensor([ids] * 3)).logits[:, -1].argmax(-1)
    finally:
        handle.remove()
    assert torch.equal(ours, reference)


def test_every_word_gets_another_words_vector() -> None:
    for n, seed in [(2, 0), (5, 1), (200, 3)]:
        order = _derangement(n, seed)
        assert sorted(order) == list(range(n)) and all(i != j for i, j in enumerate(order))


def test_result_shape_and_refusals(tokenizer) -> None:
    model = load_model(build_llama(tokenizer), tokenizer, trainable=False)
    result = token_identity_patchscope(model, ["red", "blue", "gold"], [0, 2], progress=False)
    assert result.layers == (0, 2) and set(result.accuracy) == set(CONDITIONS)
    assert all(len(v) == 2 and all(0.0 <= a <= 1.0 for a in v) for v in result.accuracy.values())
    assert "| 2 |" in result.to_markdown()
    with pytest.raises(EvalError, match="at least two words"):
        token_identity_patchscope(model, ["red"], [0], progress=False)
    with pytest.raises(EvalError, match="leading space"):
        token_identity_patchscope(model, ["red blue", "gold"], [0], progress=False)
