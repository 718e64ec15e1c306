"""Model diffing: a fine-tune's activations minus its base model's, refused where it means nothing."""

from __future__ import annotations

import pytest
import torch

import lens_oracle as lo
from helpers import build_llama
from lens_oracle.errors import ActivationError, PromptError
from lens_oracle.models import load_model

PROMPTS = ["w1 red w2 w3", "blue w4"]


@pytest.fixture(scope="module")
def pair(tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    base = load_model(build_llama(tok, seed=0), tok, trainable=False, name="base")
    tuned = load_model(build_llama(tok, seed=1), tok, trainable=False, name="tuned")
    return tok, base, tuned


def test_the_difference_is_target_minus_base_at_the_same_positions(pair) -> None:
    _, base, tuned = pair
    diff = lo.capture_diff(tuned, base, PROMPTS, 2, positions=lo.AllTokens())
    orig_t = lo.capture(tuned, PROMPTS, 2, positions=lo.AllTokens())
    orig_b = lo.capture(base, PROMPTS, 2, positions=lo.AllTokens())
    assert torch.equal(diff.vectors, orig_t.vectors - orig_b.vectors)
    assert diff.positions == orig_t.positions and torch.equal(diff.counts, orig_t.counts)
    assert (diff.input_type, orig_t.input_type) == ("diff", "orig")
    assert diff.source == "tuned - base" and diff.select([1]).input_type == "diff"
    same = lo.capture_diff(base, base, PROMPTS, 2)
    assert torch.count_nonzero(same.vectors) == 0


def test_diffing_models_of_another_shape_or_tokenizer_is_refused(pair, tmp_path) -> None:
    from helpers import build_tokenizer

    tok, base, _ = pair
    wider = load_model(build_llama(tok, d_model=32), tok, trainable=False, name="wider")
    deeper = load_model(build_llama(tok, n_layers=3), tok, trainable=False, name="shallower")
    with pytest.raises(ActivationError, match="d_model 32"):
        lo.capture_diff(wider, base, PROMPTS, 1)
    with pytest.raises(ActivationError, match="3 blocks"):
        lo.capture_diff(deeper, base, PROMPTS, 1)
    other_tok = build_tokenizer(tmp_path / "plain", chat=False)
    other_tok.add_tokens(["w1red"])
    assert other_tok("w1 red")["input_ids"] == tok("w1 red")["input_ids"]
    other = load_model(build_llama(tok), other_tok, trainable=False, name="other")
    other_ids = [[5, 6, 7]]
    assert lo.capture_diff(other, base, other_ids, 1).input_type == "diff"  # token ids: used as given
    with pytest.raises(PromptError, match="split prompt 0 differently"):
        lo.capture_diff(other, base, ["w1red w2"], 1)


def test_multi_layer_queries_do_not_mix_kinds(pair, tokenizer_dir) -> None:
    from lens_oracle.config import AdapterConfig
    from lens_oracle.oracle import ActivationOracle

    tok, base, tuned = pair
    oracle = ActivationOracle.create(build_llama(tok), tok, adapter=AdapterConfig(rank=4, alpha=8))
    diff = lo.capture_diff(tuned, base, PROMPTS, 1)
    plain = lo.capture(tuned, PROMPTS, 2)
    with pytest.raises(ActivationError, match="mix original and difference"):
        oracle.ask_batch([diff, plain], "what ?")
    assert len(oracle.ask_batch(diff, "what ?", max_new_tokens=2)) == 2
