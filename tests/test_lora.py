"""LoRA that provably does something: target resolution, the run check, fused-QKV, HF key names."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from arch_helpers import (
    FAMILIES,
    build_model,
    load_tokenizer,
    lora_parameters,
    randomize_lora,
)

from lens_oracle.bridge import boot_bridge
from lens_oracle.config import AdapterConfig
from lens_oracle.errors import ModelLoadError, TrainingError
from lens_oracle.lora import (
    check_adapter_runs,
    hf_adapter_state_dict,
    probe_input_ids,
    resolve_target_modules,
    stores_weights_transposed,
)
from lens_oracle.models import LoadedModel, load_model
from lens_oracle.oracle import ActivationOracle

ADAPTER = AdapterConfig(rank=4, alpha=8, dropout=0.0)
FUSED = [name for name, family in FAMILIES.items() if family.fused]
LLAMA_LIKE = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
EXPECTED_TARGETS = {
    "llama": LLAMA_LIKE,
    "qwen2": LLAMA_LIKE,
    "qwen3": LLAMA_LIKE,
    "gemma2": LLAMA_LIKE,
    "gemma3": LLAMA_LIKE,
    "mistral": LLAMA_LIKE,
    "olmo2": LLAMA_LIKE,
    "phi3": ["down_proj", "o_proj"],  # qkv_proj and gate_up_proj are split by the bridge
    "gpt2": ["c_fc", "c_proj"],  # c_attn is split by the bridge; c_proj is attn and MLP
    "neox": ["dense", "dense_4h_to_h", "dense_h_to_4h"],  # query_key_value is split
    "opt": ["fc1", "fc2", "k_proj", "out_proj", "q_proj", "v_proj"],
}


@pytest.fixture(scope="module")
def tok(tokenizer_dir: Path) -> Any:
    return load_tokenizer(tokenizer_dir)


def _ids(tok: Any, text: str = "w1 red w2 w3 blue w4") -> torch.Tensor:
    return torch.tensor([tok(text)["input_ids"]])


def test_expectations_cover_every_family() -> None:
    assert set(EXPECTED_TARGETS) == set(FAMILIES)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_resolve_target_modules(family: str, tok: Any) -> None:
    model = build_model(family, tok)
    targets = resolve_target_modules(model)
    assert targets == EXPECTED_TARGETS[family]
    assert stores_weights_transposed(model, targets) == (family == "gpt2")  # Conv1D: fan_in_fan_out
    assert not set(targets) & set(FAMILIES[family].fused)
    assert "lm_head" not in targets and not any("embed" in t or t in ("wte", "wpe") for t in targets)
    from peft import LoraConfig, get_peft_model

    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=targets, fan_in_fan_out=family == "gpt2"))
    assert resolve_target_modules(wrapped) == targets  # the same answer once PEFT has wrapped them


# ---------------------------------------------------------------- fused QKV under the bridge


def _bridged_with_lora_on(family: str, tok: Any, targets: list[str]) -> tuple[LoadedModel, torch.Tensor]:
    """PEFT straight onto ``targets`` (bypassing attach_adapter's refusal), B random, then boot.

    Returns the booted model and the pre-boot (plain HF) change the adapter made to the logits.
    """
    from peft import LoraConfig, get_peft_model

    hf_model = build_model(family, tok)
    transposed = stores_weights_transposed(hf_model, targets)  # GPT-2's Conv1D
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, fan_in_fan_out=transposed)
    peft_model = get_peft_model(hf_model, config)
    randomize_lora(peft_model)
    ids = _ids(tok)
    with torch.no_grad():
        on = peft_model(ids).logits
        with peft_model.disable_adapter():
            off = peft_model(ids).logits
    bridge = boot_bridge(hf_model, tok, f"tiny/{family}")
    return LoadedModel(hf_model, bridge, tok, f"tiny/{family}", peft_model), (on - off).abs().max()


@pytest.mark.parametrize("family", FUSED)
def test_lora_on_a_fused_projection_is_silently_ignored_by_the_bridge(family: str, tok: Any) -> None:
    fused = list(FAMILIES[family].fused)
    model, plain_effect = _bridged_with_lora_on(family, tok, fused)
    assert plain_effect > 1e-2  # in plain HF the LoRA changes the output...
    ids = _ids(tok)
    with torch.no_grad():
        on = model.logits(ids)
        with model.adapter_disabled():
            off = model.logits(ids)
    torch.testing.assert_close(on, off, rtol=0, atol=0)  # ...under the bridge it does nothing
    with pytest.raises(TrainingError, match=rf"never run under the TransformerBridge.*\.{fused[0]}\b"):
        check_adapter_runs(model, ids)


@pytest.mark.parametrize("family", FUSED)
def test_explicit_fused_target_is_refused_with_the_alternative(family: str, tok: Any) -> None:
    fused = FAMILIES[family].fused[0]
    alternative = tuple(EXPECTED_TARGETS[family])
    with pytest.raises(ModelLoadError, match=rf"\['{fused}'\].*would never run.*" + re.escape(repr(alternative))):
        ActivationOracle.create(
            build_model(family, tok), tok, adapter=AdapterConfig(rank=4, alpha=8, target_modules=(fused,))
        )


def test_mixed_live_and_dead_modules_name_only_the_dead(tok: Any) -> None:
    model, _ = _bridged_with_lora_on("gpt2", tok, ["c_attn", "c_fc"])
    with pytest.raises(TrainingError) as caught:
        check_adapter_runs(model, _ids(tok))
    message = str(caught.value)
    assert "3 of 6 LoRA modules" in message
    listed = message.split("change nothing: ")[1].split(". The bridge")[0]
    assert listed == ", ".join(f"transformer.h.{i}.attn.c_attn" for i in range(3))


# ---------------------------------------------------------------- the check itself


def test_fresh_adapter_gradients_reach_b_and_a_is_called(tok: Any) -> None:
    """Why the check asks "A called, B has a gradient" at step 0: B starts at zero, so dL/dA = 0."""
    oracle = ActivationOracle.create(build_model("llama", tok), tok, adapter=ADAPTER)  # the check ran
    model = oracle.model
    sentinel = {name: torch.full_like(p, 7.0) for name, p in lora_parameters(model.peft_model).items()}
    for name, p in lora_parameters(model.peft_model).items():
        p.grad = sentinel[name].clone()
    check_adapter_runs(model, _ids(tok))
    for name, p in lora_parameters(model.peft_model).items():
        assert torch.equal(p.grad, sentinel[name]), f"{name}: the check must restore .grad"
        p.grad = None
    ids = _ids(tok)
    logits = model.logits(ids)
    torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).backward()
    params = lora_parameters(model.peft_model)
    assert len(params) == 2 * 7 * 3
    for name, p in params.items():
        if ".lora_A." in name:
            assert p.grad is not None and not p.grad.count_nonzero(), name
        else:
            assert p.grad is not None and p.grad.count_nonzero(), name


def test_lora_weights_without_gradient_are_named(tok: Any) -> None:
    oracle = ActivationOracle.create(build_model("llama", tok), tok, adapter=ADAPTER)
    down = oracle.model.hf_model.model.layers[1].mlp.down_proj
    with torch.no_grad():
        down.lora_A["default"].weight.zero_()  # then dL/dB = (dL/dy) (A x)^T = 0
    with pytest.raises(TrainingError, match=r"no usable gradient.*model\.layers\.1\.mlp\.down_proj\.lora_B"):
        check_adapter_runs(oracle.model, _ids(tok))


def test_load_model_runs_the_check_unless_told_not_to(tok: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import lens_oracle.lora

    calls: list[str] = []
    monkeypatch.setattr(lens_oracle.lora, "check_adapter_runs", lambda model, ids=None: calls.append(model.name))
    load_model(build_model("llama", tok), tok, adapter=ADAPTER, name="checked")
    load_model(build_model("llama", tok), tok, adapter=ADAPTER, name="unchecked", check_lora=False)
    load_model(build_model("llama", tok), tok, name="no-adapter")
    assert calls == ["checked"]


def test_check_needs_an_adapter(tok: Any) -> None:
    with pytest.raises(TrainingError, match="no LoRA adapter"):
        check_adapter_runs(load_model(build_model("llama", tok), tok), _ids(tok))


def test_probe_ids_fit_the_vocabulary() -> None:
    ids = probe_input_ids(50)
    assert ids.shape == (1, 8) and int(ids.max()) < 50 and len(set(ids[0].tolist())) > 1


# ---------------------------------------------------------------- HF names for the saved adapter


@pytest.mark.parametrize("family", ["llama", "gpt2", "neox", "phi3"])
def test_hf_adapter_state_dict_loads_into_a_plain_hf_model(family: str, tok: Any, tmp_path: Path) -> None:
    from peft import PeftModel
    from safetensors.torch import save_file

    oracle = ActivationOracle.create(build_model(family, tok), tok, adapter=ADAPTER)
    randomize_lora(oracle.model.peft_model)
    state = hf_adapter_state_dict(oracle.model.peft_model)
    hf_names = {n for n, _ in build_model(family, tok).named_modules()}
    modules = {k.removeprefix("base_model.model.").rsplit(".lora_", 1)[0] for k in state}
    assert modules <= hf_names, sorted(modules - hf_names)  # e.g. no GPT-2 "attn.o"
    assert len(state) == len(lora_parameters(oracle.model.peft_model))
    oracle.model.peft_model.peft_config["default"].save_pretrained(str(tmp_path))
    save_file(state, str(tmp_path / "adapter_model.safetensors"))
    stock = PeftModel.from_pretrained(build_model(family, tok), str(tmp_path))
    ids = _ids(tok)
    with torch.no_grad():
        torch.testing.assert_close(stock(ids).logits, oracle.model.logits(ids), rtol=1e-4, atol=1e-4)
