"""``lens-oracle doctor``: is this install sound?

It prints the versions of the stack, the device, the default dtype and the thread count, then
runs a self-check on a tiny random Llama (a few seconds, offline). Each check compares a path
that depends on upstream internals with a reference that does not:

* ``load``: the model loads and bridges (tiny random Llama, or ``--model``);
* ``bridge_logits``: the bridged model's logits equal the same weights run by plain HF;
* ``lora_runs``: every LoRA module of a fresh adapter runs (and gets gradients) under the bridge;
* ``cached_generation``: the oracle's KV-cached answers (``ask_batch``, which generates through
  the original Hugging Face modules) equal greedy decoding by full forward passes through the bridge
  with the same injection (:func:`greedy_without_cache`);
* ``bridge_cached_generation``: the same answers KV-cached *through the bridge* (every hook point
  live, as when you generate under your own bridge hooks): the check that catches an upstream
  cache change in the bridge's attention (transformers 5.24 broke it with no error);
* ``save_load``: a saved oracle loads back into a fresh copy of the base model with equal logits.

A failing check never stops the others; :func:`run_checks` returns every result.
"""

from __future__ import annotations

import copy
import inspect
import platform
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lens_oracle.typing import TokenIds

PACKAGES = ("torch", "transformers", "transformer-lens", "peft", "safetensors", "tokenizers", "lens-oracle")
ATOL = 1e-4
PROMPTS = ("zovo lives in oslo .", "the cat is red", "tell me something about music .")
QUESTIONS = ("what city ?", "what colour ?", "what topic ?")


@dataclass(frozen=True)
class CheckResult:
    """One self-check: its name, whether it passed, and what was measured."""

    name: str
    passed: bool
    detail: str


def environment() -> dict[str, str]:
    """Versions of the stack, the device, the default dtype, torch's thread count and the level
    of CPU kernels torch dispatches to (``AVX2``, ``AVX512``...: with the thread count, what fixes
    a CPU's float order)."""
    from importlib.metadata import PackageNotFoundError, version

    info = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            info[package] = version(package)
        except PackageNotFoundError:
            info[package] = "not installed"
    info["device"] = (
        f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    )
    info["dtype"] = str(torch.get_default_dtype()).removeprefix("torch.")
    info["threads"] = str(torch.get_num_threads())
    info["cpu kernels"] = torch.backends.cpu.get_cpu_capability()
    return info


def greedy_without_cache(oracle: Any, batch: Any, n_new: int) -> list[str]:
    """Greedy answers by full forward passes (no KV cache), injecting at the prompt's
    placeholders on every pass: the reference that cached generation must equal."""
    from lens_oracle.inject import make_injection_hook
    from lens_oracle.prompt import stop_token_ids

    model = oracle.model
    stops = set(stop_token_ids(model.tokenizer, model.hf_model.generation_config))
    ids, mask = batch.input_ids, batch.attention_mask
    takes_positions = "position_ids" in inspect.signature(model.hf_model.forward).parameters
    injection = oracle.config.injection
    for _ in range(n_new):
        placeholders = torch.zeros_like(ids, dtype=torch.bool)
        placeholders[:, : batch.placeholders.shape[1]] = batch.placeholders
        hook = make_injection_hook(batch.vectors, placeholders, mode=injection.mode, scale=injection.scale)
        extra = {"position_ids": (mask.cumsum(-1) - 1).clamp(min=0)} if takes_positions else {}
        with torch.no_grad(), model.bridge.hooks(fwd_hooks=[(oracle.injection_hook, hook)]):
            logits = model.hf_model(input_ids=ids, attention_mask=mask, use_cache=False, **extra).logits
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=-1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
    answers = []
    for row in ids[:, batch.input_ids.shape[1] :].tolist():
        cut = next((i for i, token in enumerate(row) if token in stops), len(row))
        answers.append(model.tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
    return answers


class _Bench:
    """The model, tokenizer and oracle the checks share (built lazily, once): a tiny random
    Llama, or the user's model (a local folder, a cached name or a GGUF file)."""

    def __init__(self, folder: Path, model: str | None = None) -> None:
        self.folder = folder
        self._oracle: Any = None
        self.fresh_model: Callable[[], Any]
        if model is None:
            from lens_oracle.toy.tiny import random_tiny_llama
            from lens_oracle.toy.world.language import make_world
            from lens_oracle.toy.world.tokenizer import build_tokenizer

            self.name = "doctor/tiny-llama"
            self.tokenizer = build_tokenizer(make_world(), folder / "tokenizer", padding_side="left")
            self.fresh_model = lambda: random_tiny_llama(self.tokenizer, n_layers=3, seed=0)
        else:
            from lens_oracle.loading import ensure_pad_token, load_hf_model, load_tokenizer

            self.name = model
            self.tokenizer = ensure_pad_token(load_tokenizer(model))
            self.fresh_model = lambda: load_hf_model(model).eval()

    @property
    def oracle(self) -> Any:
        if self._oracle is None:
            from lens_oracle.config import AdapterConfig
            from lens_oracle.oracle import ActivationOracle

            oracle = ActivationOracle.create(
                self.fresh_model(), self.tokenizer, adapter=AdapterConfig(rank=4, alpha=8, dropout=0.0),
                name=self.name,
            )
            generator = torch.Generator().manual_seed(0)
            with torch.no_grad():  # random B matrices: the adapter changes the output from the start
                for name, param in oracle.model.hf_model.named_parameters():
                    if "lora_B" in name:
                        param.copy_(torch.randn(param.shape, generator=generator) * 0.5 / param.shape[1] ** 0.5)
            self._oracle = oracle
        return self._oracle

    def ids(self) -> TokenIds:
        return torch.tensor([self.tokenizer(PROMPTS[0])["input_ids"]])


def _check_bridge_logits(bench: _Bench) -> str:
    from lens_oracle.models import load_model

    plain = bench.fresh_model()
    bridged = load_model(copy.deepcopy(plain), bench.tokenizer, trainable=False, name=bench.name)
    ids = bench.ids()
    with torch.no_grad():
        diff = (bridged.logits(ids) - plain(ids).logits).abs().max().item()
    if not diff <= ATOL:
        raise AssertionError(f"bridge logits differ from plain HF by {diff:.2e} (allowed {ATOL:.0e})")
    return f"max |bridge - HF| = {diff:.1e}"


def _check_load(bench: _Bench) -> str:
    model = bench.oracle.model
    return f"{model.architecture}, {model.n_layers} blocks, d_model {model.d_model} ({bench.name})"


def _check_lora_runs(bench: _Bench) -> str:
    from lens_oracle.lora import check_adapter_runs

    check_adapter_runs(bench.oracle.model)
    n_modules = sum(1 for name, _ in bench.oracle.model.hf_model.named_modules() if name.endswith("lora_A"))
    return f"{n_modules} LoRA modules run and receive gradients"


def _check_cached_generation(bench: _Bench) -> str:
    from lens_oracle.activations import AllTokens

    oracle = bench.oracle
    acts = oracle.capture(list(PROMPTS), 1, positions=AllTokens())
    cached = oracle.ask_batch(acts, list(QUESTIONS), max_new_tokens=6)
    batch = oracle.encode(
        [acts.example(i) for i in range(len(PROMPTS))], [1] * len(PROMPTS), list(QUESTIONS), padding_side="left"
    )
    uncached = greedy_without_cache(oracle, batch, 6)
    if cached != uncached:
        raise AssertionError(f"KV-cached answers {cached} differ from uncached greedy decoding {uncached}")
    if not any(cached):
        raise AssertionError("every answer is empty, so the comparison proves nothing")
    return f"{len(cached)} answers x 6 tokens equal with and without the KV cache"


def _check_bridge_cached_generation(bench: _Bench) -> str:
    from lens_oracle.activations import AllTokens
    from lens_oracle.prompt import stop_token_ids

    oracle = bench.oracle
    model = oracle.model
    acts = oracle.capture(list(PROMPTS), 1, positions=AllTokens())
    batch = oracle.encode(
        [acts.example(i) for i in range(len(PROMPTS))], [1] * len(PROMPTS), list(QUESTIONS), padding_side="left"
    )
    stops = set(stop_token_ids(model.tokenizer, model.hf_model.generation_config))
    with torch.no_grad(), oracle.injecting(batch, bridged=True):
        out = model.hf_model.generate(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=6,
            do_sample=False, pad_token_id=model.tokenizer.pad_token_id, eos_token_id=sorted(stops) or None,
        )
    cached = []
    for row in out[:, batch.input_ids.shape[1] :].tolist():
        cut = next((i for i, token in enumerate(row) if token in stops), len(row))
        cached.append(model.tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
    uncached = greedy_without_cache(oracle, batch, 6)
    if cached != uncached:
        raise AssertionError(
            f"KV-cached answers through the bridge {cached} differ from uncached greedy decoding {uncached}: "
            "the bridge's attention mishandles the cache (lens_oracle's own answers do not use it)"
        )
    return f"{len(cached)} answers x 6 tokens equal with and without the bridge's KV cache"


def _check_save_load(bench: _Bench) -> str:
    from lens_oracle.activations import LastK
    from lens_oracle.oracle import ActivationOracle

    oracle = bench.oracle
    folder = oracle.save(bench.folder / "oracle")
    loaded = ActivationOracle.load(folder, bench.fresh_model(), bench.tokenizer)
    acts = oracle.capture(list(PROMPTS), 1, positions=LastK(2))
    batch = oracle.encode([acts.example(i) for i in range(len(PROMPTS))], [1] * len(PROMPTS), list(QUESTIONS))
    with torch.no_grad():
        diff = (loaded.logits(batch) - oracle.logits(batch)).abs().max().item()
    if loaded.config != oracle.config or not diff <= ATOL:
        raise AssertionError(f"the loaded oracle differs: config equal {loaded.config == oracle.config}, logits by {diff:.2e}")
    return f"config equal, max |loaded - saved| logits = {diff:.1e}"


CHECKS: dict[str, Callable[[_Bench], str]] = {
    "load": _check_load,
    "bridge_logits": _check_bridge_logits,
    "lora_runs": _check_lora_runs,
    "cached_generation": _check_cached_generation,
    "bridge_cached_generation": _check_bridge_cached_generation,
    "save_load": _check_save_load,
}


def iter_checks(model: str | None = None) -> Iterator[CheckResult]:
    """Run every self-check in a temporary folder, yielding each result as it is known; on a
    tiny random Llama, or on ``model`` (a folder, cached name or GGUF file)."""
    with tempfile.TemporaryDirectory(prefix="lens_oracle_doctor_") as tmp:
        try:
            bench = _Bench(Path(tmp), model)
        except Exception as exc:
            yield CheckResult("load", False, f"{type(exc).__name__}: {exc}")
            return
        for name, check in CHECKS.items():
            try:
                yield CheckResult(name, True, check(bench))
            except Exception as exc:
                yield CheckResult(name, False, f"{type(exc).__name__}: {exc}")


def run_checks(model: str | None = None) -> list[CheckResult]:
    """Every self-check's result (see the module docstring)."""
    return list(iter_checks(model))
