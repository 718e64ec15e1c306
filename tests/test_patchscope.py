"""The token-identity Patchscope: its patch is a plain residual replacement, its controls are sound."""

from __future__ import annotations

import pytest
import torch
from helpers import build_llama

from lens_oracle.errors import EvalError
from lens_oracle.evals.patchscope import (
    CONDITIONS,
    _derangement,
    identity_prompt,
    patched_logprobs,
    token_identity_patchscope,
)
from lens_oracle.models import load_model


def test_the_patch_equals_a_plain_forward_hook_replacing_the_residual(tokenizer) -> None:
    hf = build_llama(tokenizer)
    model = load_model(build_llama(tokenizer), tokenizer, trainable=False)
    prompt = "w1 red ? blue w3"
    ids, slot = identity_prompt(tokenizer, prompt)
    assert ids == tokenizer(prompt)["input_ids"] and tokenizer.decode([ids[slot]]).strip() == "?"
    vectors = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    ours = patched_logprobs(model, vectors, 1, batch_size=2, prompt=prompt)

    def hook(module, args, output):
        hidden = (output[0] if isinstance(output, tuple) else output).clone()
        hidden[:, slot] = vectors
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = hf.model.layers[1].register_forward_hook(hook)
    try:
        with torch.no_grad():
            reference = hf(torch.tensor([ids] * 3)).logits[:, -1].float().log_softmax(-1)
    finally:
        handle.remove()
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    with pytest.raises(EvalError, match="no '\\?' token to patch"):
        identity_prompt(tokenizer, "w1 red w2")


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
