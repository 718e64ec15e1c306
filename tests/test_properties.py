"""Property-based tests (hypothesis) for the injection math and the position selectors,
and the determinism of training."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lens_oracle.activations import AllTokens, Indices, LastK, LastToken, Segment, TokenizedPrompt
from lens_oracle.inject import inject

finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)


def vectors(d: int):
    return st.lists(finite, min_size=d, max_size=d).filter(lambda v: max(abs(x) for x in v) > 1e-3)


@settings(max_examples=60, deadline=None)
@given(h=vectors(8), v=vectors(8), scale=st.floats(0.1, 10.0), factor=st.floats(1e-3, 1e3))
def test_addition_is_scale_invariant_in_v_and_adds_c_times_norm_h(h, v, scale, factor) -> None:
    resid = torch.tensor([[h]], dtype=torch.float64)
    vec = torch.tensor([[v]], dtype=torch.float64)
    mask = torch.tensor([[True]])
    out = inject(resid, vec, mask, scale=scale)
    torch.testing.assert_close(out, inject(resid, vec * factor, mask, scale=scale), rtol=1e-9, atol=1e-9)
    added = (out - resid)[0, 0]
    torch.testing.assert_close(added.norm(), scale * resid[0, 0].norm(), rtol=1e-9, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(h=vectors(6), exponent=st.integers(-30, 30))
def test_tiny_and_huge_vectors_give_finite_output(h, exponent) -> None:
    resid = torch.tensor([[h]], dtype=torch.float32)
    vec = torch.full((1, 1, 6), 10.0 ** exponent, dtype=torch.float32)
    out = inject(resid, vec, torch.tensor([[True]]))
    assert torch.isfinite(out).all()


def _prompt(n: int) -> TokenizedPrompt:
    return TokenizedPrompt(tuple(range(n)), tuple(i == 0 for i in range(n)))


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 60), k=st.integers(1, 80), start=st.integers(-70, 70), end=st.integers(-70, 70))
def test_selectors_stay_in_bounds_and_ordered(n, k, start, end) -> None:
    prompt = _prompt(n)
    picks = [LastToken().resolve(n, prompt), LastK(k).resolve(n, prompt), AllTokens().resolve(n, prompt)]
    assert picks[0] == [n - 1]
    assert picks[1] == list(range(max(0, n - k), n))
    expected = list(range(n))[start:end]
    if expected:
        picks.append(Segment(start, end).resolve(n, prompt))
        assert picks[-1] == expected
    for picked in picks:
        assert picked and all(0 <= p < n for p in picked) and picked == sorted(set(picked))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), data=st.data())
def test_indices_accept_negative_and_reject_out_of_range(n, data) -> None:
    import pytest

    from lens_oracle.errors import PositionError

    i = data.draw(st.integers(-n, n - 1))
    assert Indices((i,)).resolve(n, _prompt(n)) == [i % n]
    bad = data.draw(st.one_of(st.integers(n, n + 50), st.integers(-n - 50, -n - 1)))
    with pytest.raises(PositionError, match="out of range"):
        Indices((bad,)).resolve(n, _prompt(n))


def test_same_seed_same_loss_curve_and_adapter(tokenizer) -> None:
    from helpers import build_llama, colour_task
    from lens_oracle.config import AdapterConfig, TrainConfig
    from lens_oracle.data.example import OracleExample
    from lens_oracle.oracle import ActivationOracle
    from lens_oracle.runner import train_oracle

    examples = [OracleExample(tuple(i), (p,), 1, "what colour ?", c) for i, p, c in colour_task(tokenizer, 48, 0)]
    runs = []
    for _ in range(2):
        oracle = ActivationOracle.create(build_llama(tokenizer), tokenizer, adapter=AdapterConfig(rank=4, alpha=8, dropout=0.1))
        result = train_oracle(oracle, examples, TrainConfig(learning_rate=1e-2, batch_size=8, progress=False))
        runs.append((result.losses, oracle.model.adapter_state_dict()))
    assert runs[0][0] == runs[1][0]
    for key, value in runs[0][1].items():
        assert torch.equal(value, runs[1][1][key]), key
