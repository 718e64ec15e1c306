"""The TransformerLens seam: booting a TransformerBridge around a loaded HF model, and what
the bridge needs mended to behave like the model it wraps (the KV-cache routing below).

Kept apart from :mod:`lens_oracle.loading` (Hugging Face and PEFT) so each upstream library has
one place where lens_oracle meets it.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

from lens_oracle.errors import ModelLoadError
from lens_oracle.typing import Float, Tensor

KeysOrValues = Float[Tensor, "batch n_kv_heads pos d_head"]
ORIGINAL = "_original_component"
"""Where a bridge component keeps the Hugging Face module it wraps."""


def clean_key(key: str) -> str:
    """Drop the bridge's ``._original_component`` wrappers from a parameter name."""
    return key.replace("._original_component", "")


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


def _update_kv_cache_any_name(self: Any, key: KeysOrValues, value: KeysOrValues, **kwargs: Any) -> Any:
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


@contextlib.contextmanager
def unbridged(hf_model: Any) -> Iterator[int]:
    """The Hugging Face model with its own modules back in place of the bridge's wrappers, for the
    duration of the block (restored on exit, also after an error); yields how many were swapped.

    The bridge wraps every block, attention, MLP and linear layer in a component that runs hook
    points around it: about 15% of a decoding step on a CPU (measured on a random 6-layer Llama,
    d_model 384). Cached generation needs none of that once the prompt pass is injected, so
    :meth:`~lens_oracle.asking.Asking.ask_batch` generates through the original modules (with a
    plain PyTorch hook for the injection, see :func:`original_block`); the same weights and LoRA
    layers run, and bridge hooks do not fire inside the block.
    """
    swaps: list[tuple[Any, str, Any]] = []
    stack, seen = [hf_model], set()
    while stack:
        module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        for name, child in list(module._modules.items()):
            original = None if child is None or name == ORIGINAL else child._modules.get(ORIGINAL)
            if original is not None:
                swaps.append((module, name, child))
                module._modules[name] = original
                stack.append(original)
            elif child is not None:
                stack.append(child)
    try:
        yield len(swaps)
    finally:
        for module, name, child in reversed(swaps):
            module._modules[name] = child


def original_block(bridge: Any, layer: int) -> Any:
    """The Hugging Face decoder layer that the bridge's ``blocks[layer]`` wraps (its input is
    ``blocks.{layer}.hook_resid_pre``)."""
    block = bridge.blocks[layer]
    return block._modules.get(ORIGINAL, block)
