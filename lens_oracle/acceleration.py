"""Running faster and smaller on a GPU: SDPA attention under the bridge, gradient checkpointing.

Part of the seam to TransformerLens and Hugging Face (with :mod:`lens_oracle.bridge`, :mod:`lens_oracle.loading` and
:mod:`lens_oracle.lora`); :class:`~lens_oracle.models.LoadedModel` exposes both as methods.

**Attention.** What TransformerBridge (transformer-lens 4.3) does to attention, checked on this machine:

* At boot it sets the Hugging Face model's ``attn_implementation`` to ``"eager"``.
* For rotary architectures it goes further: ``PositionEmbeddingsAttentionBridge`` *re-implements*
  attention (explicit ``Q K^T``, softmax, ``@ V``) so that ``hook_attn_scores``,
  ``hook_pattern``, ``hook_rot_q/k`` and ``hook_cos/sin`` fire. HF's attention function is never
  called, so setting ``attn_implementation="sdpa"`` back on the config alone changes nothing
  (logits are bit-identical). Other bridges either delegate to HF's attention module (OPT's
  plain ``AttentionBridge``: the config switch alone is enough) or compute attention from fused
  weights themselves (GPT-2, GPT-NeoX, Phi-3: left as they are).

:func:`set_attention` with ``"sdpa"`` restores SDPA for real: the config is set to ``"sdpa"``
and each re-implementing attention module runs HF's own attention forward instead
(``hook_in`` -> HF attention, whose q/k/v/o projections are still the bridge's ``LinearBridge``
s, so ``hook_q/k/v/z`` fire -> ``hook_out``). Whenever a hook is attached to one of the
attention-internal hook points (``hook_pattern``, ``hook_attn_scores``, ``hook_rot_q``, ...),
or a TransformerLens option that needs them is on (``use_split_qkv_input``, ``use_attn_in``,
``use_attn_result``), that call falls back to the bridge's code, so such hooks keep working.
Residual-stream hooks (capture, injection) are unaffected either way. Measured on the
architectures listed in :data:`SDPA_VERIFIED`: logits equal to the bridge's within 1e-5.

**Gradient checkpointing** (:func:`gradient_checkpointing`): HF's per-block activation
checkpointing, non-reentrant. The bridge calls each HF decoder layer from its block wrapper, and
HF checkpoints the layer's ``forward``, so the block's ``hook_resid_pre`` (where an oracle
injects) runs once, outside the recomputed region; gradients are unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import types
from collections.abc import Iterator
from typing import Any, Literal

import torch

log = logging.getLogger(__name__)

AttentionMode = Literal["bridge", "sdpa"]
"""``bridge``: TransformerLens's own attention code (every attention hook fires);
``sdpa``: PyTorch's fused ``scaled_dot_product_attention`` through HF, where verified."""

SDPA_VERIFIED: frozenset[str] = frozenset(
    {
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "Gemma3ForCausalLM",
        "Olmo2ForCausalLM",
        "OPTForCausalLM",
    }
)
"""Architectures whose SDPA logits were checked against the bridge's attention (tiny random
models, padded batches, LoRA on; max difference <= 1.1e-5). Gemma 2 is absent: its logit
soft-capping has no SDPA path in HF."""

_NEEDS_BRIDGE_OPTIONS = ("use_split_qkv_input", "use_attn_in", "use_attn_result")
_PATCHED = "_lens_oracle_internal_hooks"


def _reimplementing_bridges(bridge: Any) -> list[Any]:
    from transformer_lens.model_bridge.generalized_components.position_embeddings_attention import (
        PositionEmbeddingsAttentionBridge,
    )

    return [m for m in bridge.modules() if isinstance(m, PositionEmbeddingsAttentionBridge)]


def _internal_hook_points(module: Any) -> list[Any]:
    """Hook points that only the bridge's re-implementation fires (not the projections')."""
    from transformer_lens.hook_points import HookPoint

    return [
        child
        for name, child in module.named_children()
        if isinstance(child, HookPoint) and name not in ("hook_in", "hook_out")
    ]


def _needs_bridge(module: Any) -> bool:
    config = getattr(module, "config", None)
    if any(bool(getattr(config, option, False)) for option in _NEEDS_BRIDGE_OPTIONS):
        return True
    return any(hook._forward_hooks or hook._backward_hooks for hook in getattr(module, _PATCHED))


def _sdpa_forward(self: Any, *args: Any, **kwargs: Any) -> Any:
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    if _needs_bridge(self):
        return type(self).forward(self, *args, **kwargs)
    return AttentionBridge.forward(self, *args, **kwargs)


def attention_mode(hf_model: Any) -> AttentionMode:
    """The attention mode in effect on a bridged model."""
    return "sdpa" if getattr(hf_model.config, "_attn_implementation", None) == "sdpa" else "bridge"


def set_attention(hf_model: Any, bridge: Any, mode: AttentionMode) -> AttentionMode:
    """Switch a bridged model's attention to ``mode``; returns the mode now in effect.

    ``"sdpa"`` on an architecture outside :data:`SDPA_VERIFIED`, or one whose HF class refuses
    SDPA, keeps the bridge's attention (logged, not an error).
    """
    modules = _reimplementing_bridges(bridge)
    if mode == "bridge":
        for module in modules:
            module.__dict__.pop("forward", None)
        if attention_mode(hf_model) != "bridge":
            hf_model.set_attn_implementation("eager")
        return "bridge"
    archs = getattr(hf_model.config, "architectures", None) or [type(hf_model).__name__]
    if archs[0] not in SDPA_VERIFIED:
        log.info("%s is not verified with SDPA under the bridge; keeping the bridge's attention", archs[0])
        return "bridge"
    try:
        hf_model.set_attn_implementation("sdpa")
    except (ValueError, NotImplementedError) as exc:
        log.info("keeping the bridge's attention: %s", exc)
        return "bridge"
    for module in modules:
        # object.__setattr__: the bridge forwards attribute writes to the wrapped HF module.
        object.__setattr__(module, _PATCHED, _internal_hook_points(module))
        object.__setattr__(module, "forward", types.MethodType(_sdpa_forward, module))
    return "sdpa"


@contextlib.contextmanager
def gradient_checkpointing(hf_model: Any, enabled: bool = True) -> Iterator[None]:
    """Recompute each block's activations in the backward pass instead of storing them.

    Less memory for about one more forward pass of compute; it acts in training mode only.
    Checkpoints are non-reentrant, so frozen embeddings need no input gradients, dropout masks
    are replayed exactly and a no-grad target pass is untouched. Already on: left as it is.
    """
    was_on = any(getattr(m, "gradient_checkpointing", False) is True for m in hf_model.modules())
    if not enabled or was_on:
        yield
        return
    kwargs = {"use_reentrant": False}
    if hasattr(hf_model, "activation_checkpointing_enable"):
        hf_model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # transformers releases before the rename
        hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    try:
        yield
    finally:
        if hasattr(hf_model, "activation_checkpointing_disable"):
            hf_model.activation_checkpointing_disable()
        else:
            hf_model.gradient_checkpointing_disable()


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads, then restore the caller's count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
