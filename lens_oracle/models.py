"""A loaded model: the HF model, its TransformerBridge, tokenizer and optional LoRA adapter.

Everything else in lens_oracle speaks hook names and tensors through :class:`LoadedModel`.
:func:`load_model` puts one together from a local folder, the HF cache (offline) or in-memory
objects: Hugging Face and PEFT loading live in :mod:`lens_oracle.loading`, the bridge in
:mod:`lens_oracle.bridge`. ``LoadedModel`` switches the adapter off for the target role and
builds validated hook names.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from einops import pack, rearrange, unpack

from lens_oracle.bridge import boot_bridge, clean_key, route_kv_cache, unbridged
from lens_oracle.config import AdapterConfig, Site
from lens_oracle.errors import HookError, ModelLoadError
from lens_oracle.loading import (
    ModelSource,
    attach_adapter,
    ensure_pad_token,
    load_adapter,
    load_hf_model,
    load_tokenizer,
    local_source,
    model_architecture,
)
from lens_oracle.typing import AttentionMask, Float, Logits, StateTensor, Tensor, TokenIds

log = logging.getLogger(__name__)

SITES: tuple[Site, ...] = ("resid_pre", "resid_mid", "resid_post")


@dataclass
class LoadedModel:
    """A Hugging Face causal LM booted into a TransformerBridge, optionally with a LoRA adapter.

    ``hf_model`` is the model the bridge wraps (LoRA layers already injected when an adapter is
    attached); calling it directly still fires the bridge's hooks. ``peft_model`` is the PEFT
    wrapper when an adapter is attached, else ``None``.
    """

    hf_model: Any
    bridge: Any
    tokenizer: Any
    name: str
    peft_model: Any = None

    @property
    def n_layers(self) -> int:
        return int(self.bridge.cfg.n_layers)

    @property
    def d_model(self) -> int:
        return int(self.bridge.cfg.d_model)

    @property
    def n_ctx(self) -> int:
        return int(self.bridge.cfg.n_ctx)

    @property
    def d_vocab(self) -> int:
        """Rows of the input embedding: every valid token id is below this."""
        return int(self.hf_model.get_input_embeddings().num_embeddings)

    def check_token_ids(self, ids: Sequence[int], what: str) -> None:
        """Raise :class:`PromptError` unless every id in ``ids`` is a token of this model."""
        d_vocab = self.d_vocab
        bad = [t for t in ids if not 0 <= t < d_vocab]
        if bad:
            from lens_oracle.errors import PromptError

            raise PromptError(
                f"{what} holds token ids {bad[:5]} outside {self.name!r}'s vocabulary of {d_vocab} "
                f"(0..{d_vocab - 1}); tokenize it with this model's tokenizer"
            )

    @property
    def architecture(self) -> str:
        return model_architecture(self.hf_model)

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    @property
    def has_adapter(self) -> bool:
        return self.peft_model is not None

    @property
    def attention(self) -> str:
        """``"sdpa"`` or ``"bridge"``: how attention runs (see :mod:`lens_oracle.acceleration`)."""
        from lens_oracle.acceleration import attention_mode

        return attention_mode(self.hf_model)

    def set_attention(self, mode: Literal["bridge", "sdpa"]) -> str:
        """Run attention through PyTorch SDPA (where verified) or the bridge's own code;
        returns the mode in effect (see :func:`lens_oracle.acceleration.set_attention`)."""
        from lens_oracle.acceleration import set_attention

        return set_attention(self.hf_model, self.bridge, mode)

    def gradient_checkpointing(self, enabled: bool = True) -> contextlib.AbstractContextManager[None]:
        """Recompute each block's activations in the backward pass instead of storing them,
        inside the block (see :func:`lens_oracle.acceleration.gradient_checkpointing`)."""
        from lens_oracle.acceleration import gradient_checkpointing

        return gradient_checkpointing(self.hf_model, enabled)

    def hook_name(self, layer: int, site: Site | str = "resid_post") -> str:
        """The validated hook name for ``site`` of block ``layer``, e.g. ``blocks.3.hook_resid_post``."""
        if site not in SITES:
            raise HookError(f"unknown hook site {site!r}; choose one of {list(SITES)}")
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < self.n_layers:
            raise HookError(
                f"layer {layer!r} is out of range for {self.name!r} with {self.n_layers} blocks; "
                f"choose 0..{self.n_layers - 1}"
            )
        name = f"blocks.{layer}.hook_{site}"
        return self.validate_hook(name)

    def validate_hook(self, name: str) -> str:
        """Return ``name`` if the bridge has that hook point, else raise listing close choices."""
        if name not in self.bridge.hook_dict:
            prefix = name.rsplit(".", 1)[0]
            close = sorted(h for h in self.bridge.hook_dict if h.startswith(prefix))[:12]
            raise HookError(f"hook {name!r} does not exist on {self.name!r}; hooks nearby: {close}")
        return name

    @contextlib.contextmanager
    def adapter_disabled(self) -> Iterator[None]:
        """Run the base model: the LoRA adapter is off inside the block (no-op without one).

        Switches PEFT's adapter layers (found once) directly. ``PeftModel.disable_adapter()``
        walks every module twice and takes a status census on each call (~4 ms on a 4-block
        model, on every training step), and on exit it marks the adapter weights trainable
        again, even on an oracle loaded frozen; here their ``requires_grad`` is restored.
        """
        if self.peft_model is None:
            yield
            return
        layers, params = self._adapter_layers
        was_off = [layer.disable_adapters for layer in layers]
        with requires_grad_restored(params):
            for layer in layers:
                layer.enable_adapters(False)
            try:
                yield
            finally:
                for layer, off in zip(layers, was_off, strict=True):
                    layer.enable_adapters(not off)

    def add_adapter(self, name: str, adapter: AdapterConfig) -> dict[str, torch.nn.Parameter]:
        """A second LoRA adapter ``name`` on the same projections as the first, for another role on
        one copy of the weights (steering: the oracle's adapter and the steered target's). It
        starts fresh (PEFT's initialisation: ``lora_B`` zero, so the model is unchanged), is
        trainable and inactive until :meth:`using_adapter`; every other weight keeps its
        ``requires_grad``. Returns the new adapter's weights by name."""
        if self.peft_model is None:
            raise ModelLoadError(f"{self.name!r} has no adapter; load it with one to add another next to it")
        if name in self.peft_model.peft_config:
            raise ModelLoadError(f"{self.name!r} already has an adapter named {name!r}; choose another name")
        from peft import LoraConfig

        first = self.peft_model.peft_config["default"]
        config = LoraConfig(
            r=adapter.rank, lora_alpha=adapter.alpha, lora_dropout=adapter.dropout,
            target_modules=first.target_modules, fan_in_fan_out=first.fan_in_fan_out, task_type="CAUSAL_LM",
        )
        trainable = {id(p): p.requires_grad for p in self.hf_model.parameters()}
        # PEFT finds its LoRA layers by module name; under the bridge's wrappers it would find the
        # wrappers instead, so the original module tree is put back while it adds the adapter.
        with unbridged(self.hf_model):
            self.peft_model.add_adapter(name, config)
        self.__dict__.pop("_adapter_layers", None)  # the cached layer/weight census is stale
        added = {}
        for key, param in self.hf_model.named_parameters():
            is_new = id(param) not in trainable
            param.requires_grad_(is_new or trainable[id(param)])
            if is_new:
                added[clean_key(key)] = param
        if not added:
            raise ModelLoadError(f"adding adapter {name!r} to {self.name!r} created no weights")
        return added

    def delete_adapter(self, name: str) -> None:
        """Remove an adapter added with :meth:`add_adapter` (not the first, ``"default"``)."""
        if self.peft_model is None or name not in self.peft_model.peft_config or name == "default":
            have = [] if self.peft_model is None else sorted(self.peft_model.peft_config)
            raise ModelLoadError(f"{self.name!r} has no added adapter named {name!r} to delete (it has {have})")
        trainable = {id(p): p.requires_grad for p in self.hf_model.parameters()}
        active = list(self.peft_model.active_adapters)
        with unbridged(self.hf_model):
            self.peft_model.delete_adapter(name)
        self.__dict__.pop("_adapter_layers", None)
        if name not in active:
            self.peft_model.base_model.set_adapter(active)
        for param in self.hf_model.parameters():  # PEFT's bookkeeping may flip flags; keep the caller's
            param.requires_grad_(trainable.get(id(param), False))

    @contextlib.contextmanager
    def using_adapter(self, name: str) -> Iterator[LoadedModel]:
        """Only LoRA adapter ``name`` is on inside the block (see :meth:`add_adapter`); the
        active adapters and every weight's ``requires_grad`` are restored on exit."""
        if self.peft_model is None or name not in self.peft_model.peft_config:
            have = [] if self.peft_model is None else sorted(self.peft_model.peft_config)
            raise ModelLoadError(f"{self.name!r} has no adapter named {name!r} (it has {have})")
        layers, _ = self._adapter_layers
        was_active = [list(layer.active_adapters) for layer in layers]
        with requires_grad_restored(self.hf_model.parameters()):  # PEFT's set_adapter flips them
            for layer in layers:
                layer.set_adapter(name)
            try:
                yield self
            finally:
                for layer, active in zip(layers, was_active, strict=True):
                    layer.set_adapter(active)

    @functools.cached_property
    def _adapter_layers(self) -> tuple[list[Any], list[torch.nn.Parameter]]:
        """PEFT's adapter layers and the adapter weights in them."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers = [m for m in self.hf_model.modules() if isinstance(m, BaseTunerLayer)]
        params = [p for n, p in self.hf_model.named_parameters() if "lora_" in n]
        return layers, params

    def logits(self, input_ids: TokenIds, attention_mask: AttentionMask | None = None) -> Logits:
        """A full forward pass through the (hooked) HF model."""
        return self.hf_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    def unembed_residual(self, resid: Float[Tensor, "*vec d_model"]) -> Float[Tensor, "*vec d_vocab"]:
        """Logit lens: the final norm and the unembedding applied to ``[..., d_model]`` vectors
        (run as one sequence of all of them)."""
        dtype = next(self.hf_model.parameters()).dtype
        flat, shape = pack([resid.to(self.device, dtype)], "* d_model")
        sequence = rearrange(flat, "vec d_model -> 1 vec d_model")
        logits = self.bridge.unembed(self.bridge.ln_final(sequence))
        return unpack(rearrange(logits, "1 vec d_vocab -> vec d_vocab"), shape, "* d_vocab")[0]

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.hf_model.parameters() if p.requires_grad]

    def set_adapter_trainable(self, trainable: bool) -> None:
        """Freeze (``False``) or unfreeze the LoRA weights; the base weights stay frozen."""
        if self.peft_model is None:
            raise ModelLoadError(f"{self.name!r} has no adapter to freeze or train")
        for name, param in self.hf_model.named_parameters():
            if "lora_" in name:
                param.requires_grad_(trainable)

    def adapter_state_dict(self) -> dict[str, StateTensor]:
        """The adapter weights with PEFT's standard keys and the HF module names (not the
        bridge's re-parented ones), so a plain ``PeftModel.from_pretrained`` loads them."""
        if self.peft_model is None:
            raise ModelLoadError(f"{self.name!r} has no adapter to save; attach one first")
        from lens_oracle.lora import hf_adapter_state_dict

        return hf_adapter_state_dict(self.peft_model)


@contextlib.contextmanager
def requires_grad_restored(params: Iterable[torch.nn.Parameter]) -> Iterator[None]:
    """Every weight in ``params`` gets its ``requires_grad`` back on exit, whatever the block did."""
    flags = [(param, param.requires_grad) for param in params]
    try:
        yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)


def load_model(
    source: ModelSource,
    tokenizer: Any = None,
    *,
    adapter: AdapterConfig | None = None,
    adapter_path: str | os.PathLike[str] | None = None,
    trainable: bool = True,
    name: str | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    check_lora: bool = True,
    attention: Literal["auto", "bridge", "sdpa"] = "auto",
) -> LoadedModel:
    """Load a model (folder, cached name, or in-memory) and boot it into a TransformerBridge.

    With ``adapter`` a fresh LoRA is attached; with ``adapter_path`` a saved PEFT adapter is
    loaded (trainable if ``trainable``). Both happen before the bridge boots. Nothing is
    downloaded: a name that is not cached raises :class:`ModelLoadError` at once.
    With ``check_lora`` (default) one probe forward (+ backward when trainable) proves every
    LoRA module runs under the bridge; see :func:`lens_oracle.lora.check_adapter_runs`.
    ``dtype`` (e.g. ``torch.bfloat16``) casts the base weights before the adapter is attached,
    so a fresh LoRA keeps float32 weights (PEFT's default); ``None``: float32 from disk, an
    in-memory model as it is. ``attention``: ``"sdpa"`` restores PyTorch's fused attention that
    the bridge switches off, where verified (:mod:`lens_oracle.acceleration`); ``"bridge"`` keeps
    TransformerLens's own attention code; ``"auto"`` (default) is ``"sdpa"`` on CUDA and
    ``"bridge"`` on the CPU (where SDPA measured no faster and references compare bit-exactly).
    """
    if adapter is not None and adapter_path is not None:
        raise ModelLoadError("give either a fresh adapter config or an adapter_path, not both")
    if tokenizer is None:
        if not isinstance(source, (str, os.PathLike)):
            raise ModelLoadError("an in-memory model needs its tokenizer: pass tokenizer=...")
        tokenizer = load_tokenizer(source)
    elif isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer)
    ensure_pad_token(tokenizer)
    hf_model = load_hf_model(source, dtype=dtype)
    if device is not None:
        hf_model.to(device)
    model_name = name or _model_name(source, hf_model)
    peft_model = None
    if adapter is not None:
        peft_model = attach_adapter(hf_model, adapter)
    elif adapter_path is not None:
        peft_model = load_adapter(hf_model, adapter_path, trainable=trainable)
    bridge = boot_bridge(hf_model, tokenizer, model_name)
    if attention == "sdpa" or (attention == "auto" and torch.device(hf_model.device).type == "cuda"):
        from lens_oracle.acceleration import set_attention

        set_attention(hf_model, bridge, "sdpa")
    if peft_model is None:
        for param in hf_model.parameters():
            param.requires_grad_(False)
    loaded = LoadedModel(hf_model=hf_model, bridge=bridge, tokenizer=tokenizer, name=model_name, peft_model=peft_model)
    if peft_model is not None and check_lora:
        from lens_oracle.lora import check_adapter_runs

        check_adapter_runs(loaded)
    return loaded


def _model_name(source: ModelSource, hf_model: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return str(getattr(hf_model, "name_or_path", "") or type(hf_model).__name__)


def resolve_layers(model: LoadedModel, layers: Sequence[int]) -> list[int]:
    """Validate read layers (negative counts from the end, as in Python)."""
    out = []
    for layer in layers:
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise HookError(f"layer must be an integer block index, got {layer!r}")
        resolved = layer + model.n_layers if layer < 0 else layer
        model.hook_name(resolved)  # raises with the valid range
        out.append(resolved)
    return out


__all__ = [
    "SITES", "LoadedModel", "ModelSource", "attach_adapter", "boot_bridge", "clean_key", "ensure_pad_token",
    "load_adapter", "load_hf_model", "load_model", "load_tokenizer", "local_source", "model_architecture",
    "resolve_layers", "route_kv_cache",
]
