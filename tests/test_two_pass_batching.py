"""Batches alike in both passes' lengths (target context, oracle prompt): what train_oracle uses."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lens_oracle.data import OracleExample, length_grouped_batches
from lens_oracle.data.mixture import pass_lengths, two_pass_batches
from lens_oracle.errors import ConfigError


def _example(target: int, oracle: int, index: int) -> OracleExample:
    """``target`` context tokens; ``oracle`` placeholders (plus a fixed 2-token question/answer)."""
    return OracleExample(
        context_ids=tuple(range(target)),
        positions=tuple(range(target - oracle, target)),
        layer=1,
        question="q?",
        answer="a",
        meta={"index": index},
    )


def _two_d(n: int, seed: int = 0) -> list[OracleExample]:
    """Target and oracle lengths drawn independently, like context prediction's K and J."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        out.append(_example(rng.randint(150, 300), rng.randint(1, 150), i))
    return out


def _efficiency(batches: list[list[OracleExample]]) -> float:
    real = processed = 0
    for batch in batches:
        for axis in (0, 1):
            lengths = [pass_lengths(e)[axis] for e in batch]
            real += sum(lengths)
            processed += len(lengths) * max(lengths)
    return real / processed


def test_pass_lengths_counts_each_pass() -> None:
    example = _example(30, 4, 0)
    # target: 30 context tokens; oracle: 4 placeholders + "q?" (1) + "a" (1), estimated at 4 chars a token
    assert pass_lengths(example) == (30, 4 + 1 + 1)
    multi = OracleExample(tuple(range(10)), (7, 8, 9), 1, "q?", "a", extra_layers=(2, 3))
    assert pass_lengths(multi) == (10, 3 * 3 + 2)  # one placeholder per position and layer


def test_two_pass_batches_pad_both_passes_less() -> None:
    examples = _two_d(1600)
    batches = two_pass_batches(examples, 16, seed=3)
    assert sorted(e.meta["index"] for b in batches for e in b) == list(range(1600))
    assert all(len(b) == 16 for b in batches)
    one_length = length_grouped_batches(examples, 16, seed=3, length_fn=lambda e: sum(pass_lengths(e)))
    ours, before = _efficiency(batches), _efficiency(one_length)
    assert ours > before + 0.1, (ours, before)
    assert ours > 0.85


def test_two_pass_batches_seeded_and_shuffled() -> None:
    examples = _two_d(320, seed=1)

    def order(seed: int) -> list[list[int]]:
        return [[e.meta["index"] for e in b] for b in two_pass_batches(examples, 8, seed)]

    assert order(1) == order(1)
    assert order(1) != order(2)
    maxima = [max(len(e.context_ids) for e in b) for b in two_pass_batches(examples, 8, 1)]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)


def test_two_pass_batches_options_and_errors() -> None:
    examples = _two_d(10)
    assert [len(b) for b in two_pass_batches(examples, 4, drop_last=True)] == [4, 4]
    assert sorted(len(b) for b in two_pass_batches(examples, 4)) == [2, 4, 4]
    assert two_pass_batches([], 4) == []
    with pytest.raises(ConfigError, match="batch_size must be at least 1"):
        two_pass_batches(examples, 0)
    with pytest.raises(ConfigError, match="megabatch_factor"):
        two_pass_batches(examples, 2, megabatch_factor=0)


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.tuples(st.integers(1, 300), st.integers(1, 40)), min_size=0, max_size=120),
    batch_size=st.integers(1, 20),
    factor=st.one_of(st.none(), st.integers(1, 5)),
)
def test_two_pass_batches_partition_property(
    lengths: list[tuple[int, int]], batch_size: int, factor: int | None
) -> None:
    examples = [_example(max(t, k), k, i) for i, (t, k) in enumerate(lengths)]
    batches = two_pass_batches(examples, batch_size, 0, megabatch_factor=factor)
    assert sorted(e.meta["index"] for b in batches for e in b) == list(range(len(lengths)))
    assert all(1 <= len(b) <= batch_size for b in batches)
    assert sum(len(b) < batch_size for b in batches) <= 1  # only the very last one may be short
