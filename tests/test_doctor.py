"""`lens-oracle doctor`: it passes on a sound install and names the check that a broken seam fails.

Each failure is made by monkeypatching the seam the check guards, the way an upstream release
would break it: a bridge whose attention ignores the KV cache (what transformers 5.24 did to
transformer-lens 4.3), a bridge whose logits drift from HF's, an adapter saved wrong.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lens_oracle import doctor
from lens_oracle.cli import main
from lens_oracle.models import LoadedModel

pytestmark = pytest.mark.compat


def _run(capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["doctor"])
    out, err = capsys.readouterr()
    return code, out, err


def test_doctor_passes_and_prints_the_stack(capsys: pytest.CaptureFixture[str]) -> None:
    import transformers

    code, out, err = _run(capsys)
    assert code == 0, out + err
    assert f"transformers  {transformers.__version__}" in out
    assert f"threads  {torch.get_num_threads()}" in out
    assert f"cpu kernels  {torch.backends.cpu.get_cpu_capability()}" in out
    for name in doctor.CHECKS:
        assert f"ok    {name}" in out
    assert "all checks passed" in out and err == ""


def _cache_ignoring_bridge(bridge: Any) -> int:
    """The upstream break: attention never reads or writes the KV cache."""
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    def ignore_cache(self: Any, key: torch.Tensor, value: torch.Tensor, **kwargs: Any) -> Any:
        return key, value

    modules = [m for m in bridge.modules() if isinstance(m, AttentionBridge)]
    for module in modules:
        object.__setattr__(module, "_update_kv_cache", ignore_cache.__get__(module))
    return len(modules)


def test_doctor_fails_when_attention_ignores_the_kv_cache(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("lens_oracle.bridge.route_kv_cache", _cache_ignoring_bridge)
    code, out, err = _run(capsys)
    assert code == 1
    assert "FAIL  bridge_cached_generation" in out and "differ from uncached greedy decoding" in out
    assert "1 check(s) failed: bridge_cached_generation" in err
    # the oracle's own answers generate through the original modules: the break does not reach them
    for name in ("bridge_logits", "lora_runs", "cached_generation", "save_load"):
        assert f"ok    {name}" in out


def test_doctor_fails_when_bridge_logits_drift(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    original = LoadedModel.logits
    monkeypatch.setattr(LoadedModel, "logits", lambda self, *a, **k: original(self, *a, **k) + 1e-3)
    code, out, err = _run(capsys)
    assert code == 1
    assert "FAIL  bridge_logits" in out and "bridge logits differ from plain HF by 1.00e-03" in out
    assert "failed: bridge_logits" in err


def test_doctor_fails_when_a_saved_adapter_does_not_round_trip(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    original = LoadedModel.adapter_state_dict

    def zeroed(self: LoadedModel) -> dict[str, torch.Tensor]:
        return {key: torch.zeros_like(value) for key, value in original(self).items()}

    monkeypatch.setattr(LoadedModel, "adapter_state_dict", zeroed)
    code, out, err = _run(capsys)
    assert code == 1
    assert "FAIL  save_load" in out and "failed: save_load" in err
