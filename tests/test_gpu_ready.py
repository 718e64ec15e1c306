"""GPU readiness, checked on the CPU with tiny models: bfloat16 end to end, SDPA attention
restored under the bridge, gradient checkpointing, and the adapter switch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from arch_helpers import build_model, randomize_lora
from helpers import build_llama, colour_task

from lens_oracle.activations import LastK, capture
from lens_oracle.config import AdapterConfig, InjectionConfig, TrainConfig
from lens_oracle.data.example import OracleExample
from lens_oracle.inject import inject, scatter_vectors
from lens_oracle.models import load_model
from lens_oracle.oracle import ActivationOracle
from lens_oracle.train import batch_loss
from lens_oracle.runner import train_oracle

ADAPTER = AdapterConfig(rank=4, alpha=8, dropout=0.0)
PROMPTS = ["w1 red w2 w3 w4", "w5 blue w6", "gold w7 w8 w9 w10 w11 w12"]
QUESTION = "what colour is here ?"


def _oracle(tokenizer, *, dtype=None, dropout: float = 0.0) -> ActivationOracle:
    adapter = AdapterConfig(rank=4, alpha=8, dropout=dropout)
    oracle = ActivationOracle.create(
        build_llama(tokenizer), tokenizer, adapter=adapter, injection=InjectionConfig(layer=1), dtype=dtype
    )
    randomize_lora(oracle.model.peft_model, seed=1, std=0.2)
    return oracle


def _lora(model) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.hf_model.named_parameters() if "lora_" in n}


def _padded(tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [tokenizer(p)["input_ids"] for p in PROMPTS]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def _examples(tokenizer, n: int = 16) -> list[OracleExample]:
    return [OracleExample(tuple(ids), (p,), 2, QUESTION, c) for ids, p, c in colour_task(tokenizer, n, seed=0)]


# ---------------------------------------------------------------- bfloat16


def test_bf16_oracle_end_to_end_close_to_fp32(tokenizer) -> None:
    full = _oracle(tokenizer)
    half = _oracle(tokenizer, dtype=torch.bfloat16)
    base = [p for n, p in half.model.hf_model.named_parameters() if "lora_" not in n]
    assert {p.dtype for p in base} == {torch.bfloat16}  # an in-memory model is cast too
    assert {p.dtype for p in _lora(half.model).values()} == {torch.float32}  # PEFT keeps LoRA fp32
    with torch.no_grad():  # PEFT drew LoRA A in bfloat16 there: start from the same adapter
        for name, param in _lora(half.model).items():
            param.copy_(_lora(full.model)[name])

    a32 = full.capture(PROMPTS, 2, positions=LastK(2))
    a16 = half.capture(PROMPTS, 2, positions=LastK(2))
    assert a16.vectors.dtype == torch.float32
    assert torch.isfinite(a16.vectors).all()
    assert (a16.vectors - a32.vectors).norm() / a32.vectors.norm() < 0.03

    vectors = [a32.example(i) for i in range(len(a32))]
    batch = full.encode(vectors, [2] * 3, [QUESTION] * 3, ["red", "blue", "gold"])
    with torch.no_grad():
        l32, l16 = full.logits(batch), half.logits(batch)
    assert l16.dtype == torch.bfloat16 and torch.isfinite(l16).all()
    assert (l16.float() - l32).norm() / l32.norm() < 0.05
    with torch.no_grad():
        loss16, loss32 = float(half.loss(batch)), float(full.loss(batch))
    assert abs(loss16 - loss32) < 0.05 * loss32

    before = {n: p.detach().clone() for n, p in _lora(half.model).items()}
    result = train_oracle(half, _examples(tokenizer), TrainConfig(learning_rate=1e-3, batch_size=8, progress=False))
    assert len(result.losses) == 2 and all(torch.isfinite(torch.tensor(result.losses)))
    assert any(not torch.equal(p, before[n]) for n, p in _lora(half.model).items())
    assert {p.dtype for p in _lora(half.model).values()} == {torch.float32}
    assert all(isinstance(a, str) for a in half.ask_batch(a16, QUESTION, max_new_tokens=2))


def test_injection_into_a_bf16_residual_is_rounded_once() -> None:
    torch.manual_seed(0)
    resid = (torch.randn(4, 6, 64) * 3).to(torch.bfloat16)
    vectors = torch.randn(4, 2, 64)
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[:, 1:3] = True
    out = inject(resid, vectors, mask)
    h, v = resid.double(), scatter_vectors(vectors.double(), mask)
    reference = torch.where(mask[..., None], h + h.norm(dim=-1, keepdim=True) * v / v.norm(dim=-1, keepdim=True), h)
    assert out.dtype == torch.bfloat16
    # The float32 result rounded once to bfloat16: the correctly rounded reference. (Rounding
    # the added term to bfloat16 first, as before, missed it on a third of the entries.)
    assert torch.equal(out, reference.to(torch.bfloat16))


# ---------------------------------------------------------------- SDPA


def test_sdpa_attention_is_restored_and_matches_the_bridge(tokenizer, monkeypatch) -> None:
    bridge = load_model(build_llama(tokenizer), tokenizer, adapter=ADAPTER, attention="bridge")
    sdpa = load_model(build_llama(tokenizer), tokenizer, adapter=ADAPTER, attention="sdpa")
    for model in (bridge, sdpa):
        randomize_lora(model.peft_model, seed=2, std=0.3)
    assert (bridge.attention, sdpa.attention) == ("bridge", "sdpa")
    assert load_model(build_llama(tokenizer), tokenizer).attention == "bridge"  # auto, on a CPU

    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    ids, mask = _padded(tokenizer)
    with torch.no_grad():
        reference = bridge.logits(ids, mask)
        assert not calls  # the bridge computes attention itself
        fast = sdpa.logits(ids, mask)
    assert len(calls) == sdpa.n_layers
    keep = mask.bool()
    torch.testing.assert_close(fast[keep], reference[keep], atol=1e-4, rtol=0)

    with bridge.adapter_disabled(), sdpa.adapter_disabled():
        read_b = capture(bridge, PROMPTS, 2, positions=LastK(3))
        read_s = capture(sdpa, PROMPTS, 2, positions=LastK(3))
    torch.testing.assert_close(read_s.vectors, read_b.vectors, atol=1e-4, rtol=0)


def test_sdpa_falls_back_to_the_bridge_for_attention_hooks(tokenizer) -> None:
    bridge = load_model(build_llama(tokenizer), tokenizer, attention="bridge")
    sdpa = load_model(build_llama(tokenizer), tokenizer, attention="sdpa")
    ids, mask = _padded(tokenizer)
    patterns = {}

    def keep(pattern, hook):
        patterns[hook.name] = pattern.detach().clone()
        return pattern

    with torch.no_grad():
        with bridge.bridge.hooks(fwd_hooks=[("blocks.1.attn.hook_pattern", keep)]):
            reference = bridge.logits(ids, mask)
        expected = patterns.pop("blocks.1.attn.hook_pattern")
        with sdpa.bridge.hooks(fwd_hooks=[("blocks.1.attn.hook_pattern", keep)]):
            logits = sdpa.logits(ids, mask)
    torch.testing.assert_close(patterns["blocks.1.attn.hook_pattern"], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(logits, reference, atol=1e-4, rtol=0)
    assert sdpa.set_attention("bridge") == "bridge"
    with torch.no_grad():
        assert torch.equal(sdpa.logits(ids, mask), reference)  # back to the bridge, bit for bit


def test_sdpa_keeps_the_bridge_where_not_verified(tokenizer) -> None:
    model = load_model(build_model("gemma2", tokenizer), tokenizer, attention="sdpa")
    assert model.attention == "bridge"  # soft-capping: HF has no SDPA path for Gemma 2


# ---------------------------------------------------------------- gradient checkpointing


def _grads(oracle: ActivationOracle, examples, checkpointing: bool) -> tuple[dict[str, torch.Tensor], int]:
    model = oracle.model.hf_model
    saved = []
    model.train()
    torch.manual_seed(0)
    with oracle.model.gradient_checkpointing(checkpointing):
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            loss = batch_loss(oracle, examples)
        model.zero_grad(set_to_none=True)
        loss.backward()
    model.eval()
    return {n: p.grad.clone() for n, p in _lora(oracle.model).items()}, sum(saved)


def test_gradient_checkpointing_gives_the_same_gradients(tokenizer) -> None:
    oracle = _oracle(tokenizer, dropout=0.1)  # dropout masks must be replayed exactly
    examples = _examples(tokenizer, 8)
    plain, saved_plain = _grads(oracle, examples, False)
    checked, saved_checked = _grads(oracle, examples, True)
    assert saved_checked < saved_plain / 4  # it is really on: far fewer saved activations
    for name, grad in plain.items():
        torch.testing.assert_close(checked[name], grad, atol=1e-5, rtol=0)
    assert not any(getattr(m, "gradient_checkpointing", False) is True for m in oracle.model.hf_model.modules())


def test_training_with_gradient_checkpointing_ends_with_the_same_adapter(tokenizer) -> None:
    examples = _examples(tokenizer, 16)
    adapters = []
    for checkpointing in (False, True):
        oracle = _oracle(tokenizer, dropout=0.05)
        config = TrainConfig(learning_rate=1e-3, batch_size=8, progress=False, gradient_checkpointing=checkpointing)
        train_oracle(oracle, examples, config)
        adapters.append(_lora(oracle.model))
    for name, param in adapters[0].items():
        torch.testing.assert_close(adapters[1][name], param, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- the adapter switch


def test_adapter_switch_reads_the_base_model_and_keeps_grad_flags(tokenizer, tmp_path) -> None:
    oracle = _oracle(tokenizer)
    plain = load_model(build_llama(tokenizer), tokenizer)
    ids, mask = _padded(tokenizer)
    with torch.no_grad():
        adapted = oracle.model.logits(ids, mask)
        with oracle.adapter_disabled():
            base = oracle.model.logits(ids, mask)
            with oracle.adapter_disabled():  # nested: still off, and on again only at the end
                assert torch.equal(oracle.model.logits(ids, mask), base)
            assert torch.equal(oracle.model.logits(ids, mask), base)
        assert torch.equal(oracle.model.logits(ids, mask), adapted)
        with oracle.model.peft_model.disable_adapter():
            assert torch.equal(oracle.model.logits(ids, mask), base)  # same as PEFT's own switch
        assert torch.equal(base, plain.logits(ids, mask))
    assert not torch.equal(adapted, base)

    oracle.save(tmp_path / "oracle")
    frozen = ActivationOracle.load(tmp_path / "oracle", build_llama(tokenizer), tokenizer)
    assert not any(p.requires_grad for p in frozen.model.hf_model.parameters())
    frozen.capture(PROMPTS, 1)
    assert not any(p.requires_grad for p in frozen.model.hf_model.parameters())  # PEFT's switch sets them
    assert all(p.requires_grad for p in _lora(oracle.model).values())
