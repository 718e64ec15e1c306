"""The full pipeline on tiny random models of every architecture family in ``arch_helpers``.

One parametrised test per stage and family: the bridge computes what HF computes, capture at
every site, the adapter toggles and the injection is causal, a few training steps, KV-cached
generation (batched = one at a time = an uncached reference), save/load. Then loading by name
from an offline HF cache, the activation-convention check, and per-tokenizer prompt details.

One oracle per family is shared (module scope) by the stages that only read it; its LoRA B
matrices are random, so the adapter has a visible effect from the start. Training uses its own.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from arch_helpers import (
    FAMILIES,
    N_LAYERS,
    build_model,
    load_tokenizer,
    lora_parameters,
    randomize_lora,
)

from lens_oracle.activations import AllTokens, LastK, capture, capture_layers
from lens_oracle.config import AdapterConfig, PromptConfig, TrainConfig
from lens_oracle.doctor import greedy_without_cache
from lens_oracle.errors import ActivationError, HookError, ModelLoadError, PromptError
from lens_oracle.lora import check_adapter_runs, hf_adapter_state_dict
from lens_oracle.models import load_model
from lens_oracle.oracle import ActivationOracle
from lens_oracle.prompt import encode_oracle_prompt

NAMES = list(FAMILIES)
SITES = ("resid_pre", "resid_mid", "resid_post")
PROMPTS = ["w1 red w2 w3 w4 w5 w6 w7", "blue w8", "w9 w10 gold w11 w12"]
"""Different lengths (padding), and longer than the sliding window (4) so the window cuts."""
QUESTIONS = ["what colour ?", "what is here ?", "what colour is the answer ?"]
ADAPTER = AdapterConfig(rank=4, alpha=8, dropout=0.0)
ATOL = 1e-4

pytestmark = pytest.mark.compat  # run on the newest upstream releases by `make test-latest`


@pytest.fixture(scope="module")
def tok(tokenizer_dir: Path) -> Any:
    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="module")
def shared(tok: Any) -> Callable[[str], ActivationOracle]:
    """family -> an oracle with a fixed random adapter, built once per module."""
    cache: dict[str, ActivationOracle] = {}

    def get(family: str) -> ActivationOracle:
        if family not in cache:
            oracle = ActivationOracle.create(build_model(family, tok), tok, adapter=ADAPTER, name=f"tiny/{family}")
            randomize_lora(oracle.model.peft_model)
            cache[family] = oracle
        return cache[family]

    return get


@pytest.fixture(scope="module")
def plain(tok: Any) -> Callable[[str], Any]:
    """family -> the same weights as a plain HF model, never bridged (the reference)."""
    cache: dict[str, Any] = {}

    def get(family: str) -> Any:
        if family not in cache:
            cache[family] = build_model(family, tok)
        return cache[family]

    return get


def _ids(tok: Any, text: str) -> torch.Tensor:
    return torch.tensor([tok(text)["input_ids"]])


# ---------------------------------------------------------------- coverage


def test_families_cover_the_features_issue_6_asks_for() -> None:
    features = {f for fam in FAMILIES.values() for f in fam.features}
    wanted = {
        "rmsnorm", "layernorm", "rotary", "learned-positions", "gqa", "sliding-window",
        "local/global", "tied", "soft-capping", "fused-qkv",
    }
    assert wanted <= features, wanted - features
    assert len(FAMILIES) >= 8


# ---------------------------------------------------------------- stage 1: load through the bridge


@pytest.mark.parametrize("family", NAMES)
def test_bridge_computes_what_hf_computes(family: str, tok: Any, shared, plain) -> None:
    oracle = shared(family)
    model = oracle.model
    assert model.architecture == FAMILIES[family].architecture
    assert (model.n_layers, model.d_model) == (N_LAYERS, 32)
    assert oracle.injection_hook == "blocks.2.hook_resid_pre"
    reference = plain(family)
    for prompt in PROMPTS:
        ids = _ids(tok, prompt)
        with torch.no_grad():
            expected = reference(ids, output_hidden_states=True)
            with model.adapter_disabled():
                got = model.logits(ids)
                acts = capture_layers(model, [prompt], list(range(N_LAYERS - 1)), positions=AllTokens())
        torch.testing.assert_close(got, expected.logits, rtol=ATOL, atol=ATOL)
        for layer, read in acts.items():  # hidden_states[L + 1] is the output of block L
            torch.testing.assert_close(read.example(0), expected.hidden_states[layer + 1][0], rtol=ATOL, atol=ATOL)


# ---------------------------------------------------------------- stage 2: capture at every site


@pytest.mark.parametrize("family", NAMES)
def test_capture_every_site_and_layer(family: str, tok: Any, shared) -> None:
    oracle = shared(family)
    model = oracle.model
    has_mid = "blocks.0.hook_resid_mid" in model.bridge.hook_dict
    sites = SITES if has_mid else ("resid_pre", "resid_post")
    layers = list(range(N_LAYERS))
    with model.adapter_disabled(), torch.no_grad():
        read = {site: capture_layers(model, PROMPTS, layers, site=site, positions=AllTokens()) for site in sites}
        for i, prompt in enumerate(PROMPTS):
            _, cache = model.bridge.run_with_cache(_ids(tok, prompt))
            for site in sites:
                for layer in layers:
                    torch.testing.assert_close(
                        read[site][layer].example(i), cache[f"blocks.{layer}.hook_{site}"][0], rtol=ATOL, atol=ATOL
                    )
    for layer in layers[:-1]:
        torch.testing.assert_close(read["resid_pre"][layer + 1].vectors, read["resid_post"][layer].vectors)
    if not has_mid:  # parallel attention + MLP (GPT-NeoX): there is no mid-block residual
        assert "parallel-residual" in FAMILIES[family].features
        with pytest.raises(HookError, match="does not exist"):
            capture(model, PROMPTS[0], 1, site="resid_mid")


@pytest.mark.parametrize("family", NAMES)
def test_left_padded_capture_equals_each_prompt_alone(family: str, shared) -> None:
    """Left padding must not shift positions. For learned positions (GPT-2, OPT) this holds
    because the bridge derives ``position_ids`` from the attention mask (a plain HF GPT-2 call
    without them is off by ~1.5 here); ``ask_batch`` pads left and ``generate`` does the same."""
    model = shared(family).model
    with model.adapter_disabled():
        left = capture(model, PROMPTS, 1, positions=AllTokens(), padding_side="left")
        for i, prompt in enumerate(PROMPTS):
            alone = capture(model, [prompt], 1, positions=AllTokens())
            torch.testing.assert_close(left.example(i), alone.example(0), rtol=ATOL, atol=ATOL)


# ---------------------------------------------------------------- stage 3: adapter + injection


@pytest.mark.parametrize("family", NAMES)
def test_adapter_toggles_and_injection_is_causal(family: str, tok: Any, shared, plain) -> None:
    oracle = shared(family)
    ids = _ids(tok, PROMPTS[0])
    with torch.no_grad():
        base = plain(family)(ids).logits
        with oracle.adapter_disabled() as model:
            torch.testing.assert_close(model.logits(ids), base, rtol=0, atol=1e-5)
        assert (oracle.model.logits(ids) - base).abs().max() > 1e-3  # the adapter does something
    check_adapter_runs(oracle.model, ids)
    acts = oracle.capture(PROMPTS, 1, positions=LastK(2))
    batch = oracle.encode([acts.example(i) for i in range(3)], [1, 1, 1], QUESTIONS)
    with torch.no_grad():
        injected = oracle.logits(batch)
        clean = oracle.logits(batch, inject=False)
    first = batch.placeholders.long().argmax(dim=-1)
    for row in range(3):
        start = int(first[row])
        torch.testing.assert_close(injected[row, :start], clean[row, :start], rtol=ATOL, atol=ATOL)
        assert (injected[row, start:] - clean[row, start:]).abs().max() > 1e-3


# ---------------------------------------------------------------- stage 4: training


@pytest.mark.parametrize("family", NAMES)
def test_a_few_training_steps(family: str, tok: Any) -> None:
    from helpers import colour_task

    from lens_oracle.data.example import OracleExample
    from lens_oracle.train import Trainer

    oracle = ActivationOracle.create(build_model(family, tok), tok, adapter=ADAPTER, name=f"tiny/{family}")
    before = {k: v.detach().clone() for k, v in lora_parameters(oracle.model.peft_model).items()}
    batch = [OracleExample(tuple(ids), (p,), 1, "what colour ?", c) for ids, p, c in colour_task(tok, 8, 0)]
    config = TrainConfig(learning_rate=2e-2, warmup_fraction=0.0, progress=False)
    result = Trainer(oracle, config).fit([batch] * 4)
    assert result.steps == 4
    assert result.losses[-1] < result.losses[0], result.losses
    after = lora_parameters(oracle.model.peft_model)
    unchanged = [k for k, v in after.items() if torch.equal(v.detach(), before[k])]
    assert not unchanged, unchanged
    check_adapter_runs(oracle.model, _ids(tok, PROMPTS[0]))  # B is non-zero now: A gets gradients too


# ---------------------------------------------------------------- stage 5: generation


@pytest.mark.parametrize("family", NAMES)
def test_cached_generation_batched_equals_single_and_uncached(family: str, shared) -> None:
    oracle = shared(family)
    acts = oracle.capture(PROMPTS, 1, positions=AllTokens())  # 9, 3 and 6 vectors: ragged prompts
    batched = oracle.ask_batch(acts, QUESTIONS, max_new_tokens=6)
    single = [oracle.ask(acts.select([i]), q, max_new_tokens=6) for i, q in enumerate(QUESTIONS)]
    assert batched == single
    batch = oracle.encode([acts.example(i) for i in range(3)], [1, 1, 1], QUESTIONS, padding_side="left")
    assert batched == greedy_without_cache(oracle, batch, 6)
    assert any(batched), "every answer is empty: the test would not see a wrong token"


@pytest.mark.parametrize("family", NAMES)
def test_plain_bridged_generation_uses_the_kv_cache(family: str, tok: Any) -> None:
    """No oracle, no hooks: the bridged model's cached greedy decoding equals plain HF's
    (transformers 5.24 renamed the cache keyword and the bridge stopped seeing it)."""
    ids = _ids(tok, PROMPTS[0])
    settings = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    reference = build_model(family, tok).generate(ids, use_cache=True, **settings)
    model = load_model(build_model(family, tok), tok, trainable=False)
    assert torch.equal(model.hf_model.generate(ids, use_cache=True, **settings), reference)
    from lens_oracle.bridge import route_kv_cache

    assert route_kv_cache(model.bridge) == 0, "every attention module was routed once, at load"


# ---------------------------------------------------------------- stage 6: save / load


@pytest.mark.parametrize("family", NAMES)
def test_save_load_round_trip(family: str, tok: Any, shared, tmp_path: Path) -> None:
    from peft import PeftModel

    oracle = shared(family)
    if set(oracle.model.adapter_state_dict()) != set(hf_adapter_state_dict(oracle.model.peft_model)):
        pytest.xfail(
            "LoadedModel.adapter_state_dict saves bridge module names (e.g. attn.o for GPT-2's "
            "attn.c_proj) for fused-QKV attention; it should return lora.hf_adapter_state_dict(peft_model)"
        )
    oracle.save(tmp_path / "oracle")
    loaded = ActivationOracle.load(tmp_path / "oracle", build_model(family, tok), tok)
    assert loaded.config == oracle.config
    acts = oracle.capture(PROMPTS, 1, positions=LastK(2))
    batch = oracle.encode([acts.example(i) for i in range(3)], [1, 1, 1], QUESTIONS)
    with torch.no_grad():
        torch.testing.assert_close(loaded.logits(batch), oracle.logits(batch), rtol=ATOL, atol=ATOL)
        # The files are a stock PEFT adapter: a plain HF model (no bridge) reproduces the oracle.
        stock = PeftModel.from_pretrained(build_model(family, tok), str(tmp_path / "oracle"))
        ids = _ids(tok, PROMPTS[0])
        torch.testing.assert_close(stock(ids).logits, oracle.model.logits(ids), rtol=ATOL, atol=ATOL)
    assert loaded.ask_batch(acts, QUESTIONS, max_new_tokens=4) == oracle.ask_batch(acts, QUESTIONS, max_new_tokens=4)


# ---------------------------------------------------------------- loading by name, offline


def _fake_hub_cache(root: Path, repo: str, model: Any, tokenizer: Any) -> Path:
    """The HF cache layout: models--org--name/{refs/main, snapshots/<hash>/...}."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / revision
    model.save_pretrained(str(snapshot))
    tokenizer.save_pretrained(str(snapshot))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(revision)
    return snapshot


@pytest.fixture()
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HF cache in tmp_path, offline. huggingface_hub reads the env at import time,
    so the module constant is patched too."""
    import huggingface_hub.constants as hub_constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return cache


def test_load_by_name_from_offline_hf_cache(hub_cache: Path, tok: Any, plain) -> None:
    _fake_hub_cache(hub_cache, "tiny-org/tiny-gpt2", plain("gpt2"), tok)
    model = load_model("tiny-org/tiny-gpt2", adapter=ADAPTER)
    assert model.name == "tiny-org/tiny-gpt2"
    assert model.architecture == "GPT2LMHeadModel"
    assert model.tokenizer.get_vocab() == tok.get_vocab()
    ids = _ids(tok, PROMPTS[0])
    with torch.no_grad(), model.adapter_disabled():
        torch.testing.assert_close(model.logits(ids), plain("gpt2")(ids).logits, rtol=ATOL, atol=ATOL)


def test_load_by_name_not_cached_fails_fast(hub_cache: Path) -> None:
    start = time.monotonic()
    with pytest.raises(ModelLoadError, match="tiny-org/absent"):
        load_model("tiny-org/absent")
    assert time.monotonic() - start < 5.0


# ---------------------------------------------------------------- activation convention


def test_hooked_transformer_activations_are_refused(shared) -> None:
    oracle = shared("llama")
    acts = oracle.capture(PROMPTS[:1], 1)
    assert acts.convention == oracle.config.convention == "hf"
    legacy = dataclasses.replace(acts, convention="hooked_transformer")
    with pytest.raises(ActivationError, match=r"'hooked_transformer' convention.*trained on 'hf'"):
        oracle.ask_batch(legacy, "what colour ?", max_new_tokens=2)


# ---------------------------------------------------------------- tokenizers: placeholders, chat


def _byte_bpe(folder: Path, merges: list[tuple[str, str]]) -> Any:
    """A byte-level BPE tokenizer with no merges but ``merges``: " ?" is two tokens ("Ġ", "?")."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>"] + sorted(alphabet) + ["".join(m) for m in merges])}
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", pad_token="<pad>")
    fast.save_pretrained(str(folder))
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def test_choose_placeholder_keeps_a_single_token_preference(tok: Any) -> None:
    from lens_oracle.tokenizers import choose_placeholder

    assert choose_placeholder(tok) == " ?"


def test_choose_placeholder_falls_back_when_space_question_mark_splits(tmp_path: Path) -> None:
    from lens_oracle.prompt import placeholder_id
    from lens_oracle.tokenizers import choose_placeholder

    bpe = _byte_bpe(tmp_path / "bpe", merges=[])
    assert len(bpe.encode(" ?", add_special_tokens=False)) == 2
    with pytest.raises(PromptError, match="single token"):
        placeholder_id(bpe, " ?")
    chosen = choose_placeholder(bpe)
    assert chosen == "?"
    encoded = encode_oracle_prompt(bpe, PromptConfig(format="plain", placeholder=chosen), 3, 4, "what?")
    assert encoded.input_ids.count(placeholder_id(bpe, chosen)) == 5  # 4 placeholders + the question's "?"


def test_choose_placeholder_skips_candidates_that_merge_when_repeated(tmp_path: Path) -> None:
    from lens_oracle.tokenizers import choose_placeholder

    bpe = _byte_bpe(tmp_path / "bpe", merges=[("?", "?")])  # "??" is one token: "?" * K is not K tokens
    assert choose_placeholder(bpe) not in (" ?", "?")
    assert len(bpe.encode(choose_placeholder(bpe) * 3, add_special_tokens=False)) == 3


THINKING_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> "
    "{% if m['role'] == 'assistant' %}<think> </think> {% endif %}{{ m['content'] }} <end> {% endfor %}"
    "{% if add_generation_prompt %}<assistant> "
    "{% if enable_thinking is defined and enable_thinking is false %}<think> </think> {% endif %}{% endif %}"
)
"""Qwen3's shape: thinking off puts an empty think block in the generation prompt, and a past
assistant turn is rendered with its (empty) think block, so prompt + answer extends the prompt."""


def test_thinking_template_renders_without_thinking(tok: Any) -> None:
    thinking = _with_think_tokens(tok)
    user = [{"role": "user", "content": "layer : 1 ? what colour ?"}]
    on = thinking.apply_chat_template(user, tokenize=False, add_generation_prompt=True, enable_thinking=True)
    off = thinking.apply_chat_template(user, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert on.endswith("<assistant> ") and off.endswith("<assistant> <think> </think> ")
    encoded = encode_oracle_prompt(thinking, PromptConfig(), 1, 1, "what colour ?", "red")
    tokens = thinking.convert_ids_to_tokens(list(encoded.input_ids))
    prompt = tokens[: encoded.prompt_length]
    assert prompt[-3:] == ["<assistant>", "<think>", "</think>"]  # thinking switched off, not started
    assert [t for t, label in zip(tokens, encoded.labels) if label != -100] == ["red", "<end>"]


def _with_think_tokens(tok: Any) -> Any:
    import copy

    from tokenizers import AddedToken

    thinking = copy.deepcopy(tok)
    thinking.add_tokens([AddedToken(t, special=True, normalized=False) for t in ("<think>", "</think>")],
                        special_tokens=True)
    thinking.chat_template = THINKING_TEMPLATE
    return thinking
