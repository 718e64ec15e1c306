"""The one seam to TransformerLens, Hugging Face and PEFT.

Everything else in lens_oracle speaks hook names and tensors. This module loads models and
tokenizers (local folder, HF cache offline, or in-memory objects), attaches or loads a LoRA
adapter with PEFT *before* booting the TransformerBridge on the model (the other order fails),
switches the adapter off for the target role, and builds validated hook names.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from lens_oracle.config import AdapterConfig, Site
from lens_oracle.errors import HookError, ModelLoadError

log = logging.getLogger(__name__)

SITES: tuple[Site, ...] = ("resid_pre", "resid_mid", "resid_post")
ModelSource = str | os.PathLike[str] | Any
"""A local folder, a name in the HF cache, or an in-memory ``PreTrainedModel``."""


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
        was_trainable = [param.requires_grad for param in params]
        for layer in layers:
            layer.enable_adapters(False)
        try:
            yield
        finally:
            for layer, off in zip(layers, was_off, strict=True):
                layer.enable_adapters(not off)
            for param, trainable in zip(params, was_trainable, strict=True):
                param.requires_grad_(trainable)

    @functools.cached_property
    def _adapter_layers(self) -> tuple[list[Any], list[torch.nn.Parameter]]:
        """PEFT's adapter layers and the adapter weights in them."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers = [m for m in self.hf_model.modules() if isinstance(m, BaseTunerLayer)]
        params = [p for n, p in self.hf_model.named_parameters() if "lora_" in n]
        return layers, params

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """A full forward pass through the (hooked) HF model."""
        return self.hf_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    def unembed_residual(self, resid: torch.Tensor) -> torch.Tensor:
        """Logit lens: the final norm and the unembedding applied to ``[..., d_model]`` vectors."""
        dtype = next(self.hf_model.parameters()).dtype
        flat = resid.to(self.device, dtype).reshape(1, -1, resid.shape[-1])
        logits = self.bridge.unembed(self.bridge.ln_final(flat))
        return logits.reshape(*resid.shape[:-1], logits.shape[-1])

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.hf_model.parameters() if p.requires_grad]

    def set_adapter_trainable(self, trainable: bool) -> None:
        """Freeze (``False``) or unfreeze the LoRA weights; the base weights stay frozen."""
        if self.peft_model is None:
            raise ModelLoadError(f"{self.name!r} has no adapter to freeze or train")
        for name, param in self.hf_model.named_parameters():
            if "lora_" in name:
                param.requires_grad_(trainable)

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The adapter weights with PEFT's standard keys and the HF module names (not the
        bridge's re-parented ones), so a plain ``PeftModel.from_pretrained`` loads them."""
        if self.peft_model is None:
            raise ModelLoadError(f"{self.name!r} has no adapter to save; attach one first")
        from lens_oracle.lora import hf_adapter_state_dict

        return hf_adapter_state_dict(self.peft_model)


def model_architecture(hf_model: Any) -> str:
    """The HF architecture class name, e.g. ``LlamaForCausalLM``."""
    archs = getattr(hf_model.config, "architectures", None) or [type(hf_model).__name__]
    return str(archs[0])


def clean_key(key: str) -> str:
    """Drop the bridge's ``._original_component`` wrappers from a parameter name."""
    return key.replace("._original_component", "")


def local_source(source: ModelSource) -> ModelSource:
    """``source`` as transformers can load it: a GGUF file (or a folder holding one) becomes its
    converted float folder (converted once, cached: :mod:`lens_oracle.gguf`); anything else as is."""
    if not isinstance(source, (str, os.PathLike)):
        return source
    from lens_oracle.gguf import converted_folder, gguf_file

    found = gguf_file(source)
    return converted_folder(found) if found is not None else source


def load_tokenizer(source: str | os.PathLike[str]) -> Any:
    """Load a tokenizer from a local folder, a GGUF file or the HF cache without touching the network."""
    from transformers import AutoTokenizer

    source = local_source(source)
    try:
        return AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"could not load a tokenizer from {str(source)!r} offline ({type(exc).__name__}); "
            "give a local folder, a model already in the HF cache, or a tokenizer object"
        ) from None


def load_hf_model(source: ModelSource, *, dtype: torch.dtype | None = None) -> Any:
    """A causal LM from an in-memory model, a local folder, a GGUF file, or the HF cache (offline).

    ``dtype``: the weights' dtype; ``None`` keeps an in-memory model as it is and loads a folder
    in float32. An in-memory model is cast in place.
    """
    from transformers import AutoModelForCausalLM, PreTrainedModel

    if isinstance(source, PreTrainedModel):
        return source if dtype is None or source.dtype == dtype else source.to(dtype)
    if not isinstance(source, (str, os.PathLike)):
        raise ModelLoadError(
            f"cannot load a model from a {type(source).__name__}; give a folder, a cached "
            "model name, or a transformers PreTrainedModel"
        )
    path = Path(source)
    if str(source).startswith((".", "/", "~")) and not path.exists():
        raise ModelLoadError(f"model folder {str(source)!r} does not exist")
    source = local_source(source)
    try:
        return AutoModelForCausalLM.from_pretrained(
            str(source), dtype=dtype or torch.float32, local_files_only=True
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"model {str(source)!r} is not a local folder and not in the HF cache "
            f"({type(exc).__name__}). lens_oracle never downloads: fetch it once with "
            f"`huggingface-cli download {source}` on a machine with network, or pass a folder"
        ) from None


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    """PEFT reads transformers' deprecated ``is_gradient_checkpointing`` while wrapping a model;
    the FutureWarning is theirs, not the user's, so it is not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        yield


def attach_adapter(hf_model: Any, adapter: AdapterConfig) -> Any:
    """Wrap ``hf_model`` with a fresh trainable LoRA adapter (in place); returns the PeftModel."""
    from peft import LoraConfig, get_peft_model

    from lens_oracle.lora import (
        check_target_modules,
        resolve_target_modules,
        stores_weights_transposed,
    )

    # "all-linear" is resolved here, not by PEFT: fused projections the bridge never calls
    # (GPT-2 c_attn, GPT-NeoX query_key_value, ...) are left out; explicit targets that name
    # one are refused (ModelLoadError), so no adapter is ever trained that has no effect.
    targets = (
        resolve_target_modules(hf_model)
        if adapter.target_modules == ("all-linear",)
        else check_target_modules(hf_model, adapter.target_modules)
    )
    config = LoraConfig(
        r=adapter.rank,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        target_modules=targets,
        fan_in_fan_out=stores_weights_transposed(hf_model, targets),
        task_type="CAUSAL_LM",
    )
    try:
        with _quiet_peft():
            return get_peft_model(hf_model, config)
    except ValueError as exc:
        raise ModelLoadError(f"could not attach LoRA to {type(hf_model).__name__}: {exc}") from None


def load_adapter(hf_model: Any, folder: str | os.PathLike[str], *, trainable: bool = False) -> Any:
    """Load a saved PEFT adapter into ``hf_model`` (in place); returns the PeftModel.

    Refused with :class:`ArtifactError`: an ``adapter_config.json`` that is not valid JSON, and
    weights whose keys are not exactly the adapter's (PEFT only warns about missing keys and
    would leave fresh, untrained LoRA weights in their place).
    """
    from peft import PeftModel

    from lens_oracle.errors import ArtifactError

    config_path = Path(folder) / "adapter_config.json"
    try:
        json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{config_path} is not valid JSON ({exc}); the adapter folder is corrupt") from None
    except OSError:
        pass  # PEFT names the missing file below
    try:
        with _quiet_peft():
            peft_model = PeftModel.from_pretrained(hf_model, str(folder), is_trainable=trainable)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        detail = "\n".join(str(exc).splitlines()[:3])
        raise ArtifactError(
            f"could not load the adapter in {str(folder)!r} into {type(hf_model).__name__}; it was "
            f"probably trained for another base model: {detail}"
        ) from None
    _check_adapter_keys(peft_model, Path(folder))
    return peft_model


def _check_adapter_keys(peft_model: Any, folder: Path) -> None:
    """The saved weights hold exactly the adapter's keys, or :class:`ArtifactError` names them."""
    from safetensors import safe_open

    from lens_oracle.errors import ArtifactError
    from lens_oracle.lora import hf_adapter_state_dict

    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        return
    with safe_open(str(weights), "pt") as handle:
        saved = set(handle.keys())
    expected = set(hf_adapter_state_dict(peft_model))
    missing, unexpected = sorted(expected - saved), sorted(saved - expected)
    if missing or unexpected:
        raise ArtifactError(
            f"{weights} does not hold this adapter's weights: {len(missing)} missing "
            f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}); it was "
            "saved for another model or adapter layout, and loading it would leave untrained LoRA weights"
        )


def _bridge_tokenizer(tokenizer: Any, name: str) -> Any:
    """A shallow copy the bridge can use without reaching for the hub (see DESIGN pitfalls)."""
    bridged = copy.copy(tokenizer)
    bridged.init_kwargs = {
        **tokenizer.init_kwargs,
        "name_or_path": tokenizer.init_kwargs.get("name_or_path") or name,
        "add_bos_token": True,
    }
    return bridged


def boot_bridge(hf_model: Any, tokenizer: Any, name: str) -> Any:
    """Boot a TransformerBridge around ``hf_model`` (after any LoRA has been attached)."""
    from transformer_lens.model_bridge import TransformerBridge

    hf_model.eval()
    if not getattr(hf_model.config, "architectures", None):  # in-memory models: the bridge needs it
        hf_model.config.architectures = [type(hf_model).__name__]
    try:
        bridge = TransformerBridge.boot_transformers(
            name, hf_model=hf_model, tokenizer=_bridge_tokenizer(tokenizer, name)
        )
    except (ValueError, NotImplementedError, KeyError) as exc:
        raise ModelLoadError(
            f"TransformerLens cannot bridge {type(hf_model).__name__} ({exc}); "
            "see TransformerBridge.list_supported_models()"
        ) from None
    route_kv_cache(bridge)
    return bridge


def _update_kv_cache_any_name(self: Any, key: torch.Tensor, value: torch.Tensor, **kwargs: Any) -> Any:
    """The bridge's KV-cache update, given the cache under whichever name HF passed it."""
    if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
        kwargs["past_key_values"] = kwargs.pop("cache")
    return type(self)._update_kv_cache(self, key, value, **kwargs)


def route_kv_cache(bridge: Any) -> int:
    """Make the bridge's own attention code see the KV cache on every transformers 5.x.

    transformers 5.24 renamed the keyword that decoder layers pass the cache to attention by,
    ``past_key_values`` -> ``cache`` (the old name is a deprecated alias until 5.40). The
    bridge's re-implemented attention (transformer-lens 4.3, ``AttentionBridge._update_kv_cache``)
    still reads only ``past_key_values`` / ``layer_past``, so under 5.24+ it never writes to or
    reads from the cache: every cached decoding step attends to itself alone and generation is
    silently wrong (uncached forwards are unaffected). Each attention bridge of *this* model gets
    an update that accepts either name; nothing global is patched, and on transformers < 5.24
    nothing changes. Returns how many attention modules were routed.
    """
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    routed = 0
    for module in bridge.modules():
        if isinstance(module, AttentionBridge) and "_update_kv_cache" not in module.__dict__:
            # object.__setattr__: the bridge forwards attribute writes to the wrapped HF module.
            object.__setattr__(module, "_update_kv_cache", _update_kv_cache_any_name.__get__(module))
            routed += 1
    return routed


def ensure_pad_token(tokenizer: Any) -> Any:
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError("the tokenizer has neither a pad nor an eos token; add a pad token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


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
