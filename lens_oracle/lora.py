"""LoRA that provably does something under the TransformerBridge.

Three jobs, all about the gap between the Hugging Face module tree PEFT wraps and the module
tree the bridge actually runs:

* :func:`resolve_target_modules`: "all linear projections" of the decoder blocks for this
  architecture, minus the fused projections the bridge never calls.
* :func:`check_adapter_runs`: one forward + backward that proves every LoRA module is called
  and every LoRA weight gets a gradient; raises :class:`TrainingError` naming the dead ones.
* :func:`hf_adapter_state_dict`: the adapter weights under their Hugging Face names. The bridge
  re-parents modules (GPT-2's ``attn.c_proj`` is reached first as ``attn.o``), so PEFT's own
  state dict taken after boot can carry bridge names that a plain HF model does not have.

Why fused projections are dead (transformer-lens 4.3, checked on tiny models): attention
bridges for fused QKV (``JointQKVAttentionBridge`` and its subclasses) copy the fused weight into
new, separate q/k/v linears when the bridge boots and run those; the fused module itself is
never called again. ``JointGateUpMLPBridge`` does the same to a fused gate/up projection. A LoRA
attached (before boot, as it must be) to such a module is silently ignored: it trains nothing
and changes nothing. The table below lists the modules verified to be dead; any other
architecture is still covered by :func:`check_adapter_runs`, which ``load_model`` runs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange

from lens_oracle.errors import ArtifactError, ConfigError, ModelLoadError, TrainingError
from lens_oracle.typing import StateTensor, TokenIds

log = logging.getLogger(__name__)

BRIDGE_SPLIT_MODULES: dict[str, tuple[str, ...]] = {
    "BloomForCausalLM": ("query_key_value",),
    "CodeGenForCausalLM": ("qkv_proj",),
    "FalconForCausalLM": ("query_key_value",),
    "GPT2LMHeadModel": ("c_attn",),
    "GPTBigCodeForCausalLM": ("c_attn",),
    "GPTNeoXForCausalLM": ("query_key_value",),
    "GlmForCausalLM": ("gate_up_proj",),
    "MptForCausalLM": ("Wqkv",),
    "OpenAIGPTLMHeadModel": ("c_attn",),
    "Phi3ForCausalLM": ("qkv_proj", "gate_up_proj"),
}
"""Architecture -> fused projections that the bridge splits into copies at boot and never calls.

Verified with transformer-lens 4.3 / transformers 5.23 by hooking every LoRA module of a tiny
random model of each architecture (see ``tests/test_lora.py`` for GPT-2, GPT-NeoX, Phi-3).
"""

ORIGINAL = "_original_component"
"""Attribute under which a bridge component keeps the Hugging Face module it wraps."""


# ---------------------------------------------------------------- target modules


def _base_model(model: Any) -> Any:
    """The plain HF model inside a PeftModel (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _architecture(model: Any) -> str:
    base = _base_model(model)
    archs = getattr(base.config, "architectures", None) or [type(base).__name__]
    return str(archs[0])


def _is_projection(module: torch.nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (torch.nn.Linear, Conv1D))


def _decoder_blocks(model: Any) -> str | None:
    """Dotted name of the ModuleList holding the decoder blocks (one entry per layer)."""
    n_layers = getattr(model.config, "num_hidden_layers", None)
    best: tuple[int, str] | None = None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers and n_layers:
            n_linear = sum(1 for m in module.modules() if _is_projection(m))
            if n_linear and (best is None or n_linear > best[0]):
                best = (n_linear, name)
    return None if best is None else best[1]


def bridge_split_modules(model: Any) -> tuple[str, ...]:
    """Module-name suffixes the bridge never calls for this model's architecture."""
    return BRIDGE_SPLIT_MODULES.get(_architecture(model), ())


def _projections(model: Any) -> tuple[list[str], list[str]]:
    """Full names of the linear projections inside the decoder blocks, and of all the others."""
    base = _base_model(model)
    blocks = _decoder_blocks(base)
    skip = {id(base.get_output_embeddings()), id(base.get_input_embeddings())}
    inside, outside = [], []
    for name, module in base.named_modules():
        if not _is_projection(module) or id(module) in skip or "lora_" in name:
            continue
        name = name.removesuffix(".base_layer")  # already wrapped by PEFT: name the wrapper
        in_blocks = blocks is None or name.startswith(blocks + ".")
        (inside if in_blocks else outside).append(name)
    return inside, outside


def _matches(module_name: str, target: str) -> bool:
    """PEFT's rule for a target name in a list: the whole name, or a dotted suffix of it."""
    return module_name == target or module_name.endswith("." + target)


def resolve_target_modules(hf_model: Any) -> list[str]:
    """"All linear projections" of the decoder blocks, as PEFT ``target_modules`` names.

    Returns the sorted module-name suffixes of the ``nn.Linear`` / ``Conv1D`` layers inside the
    decoder blocks (e.g. ``q_proj`` ... ``down_proj`` for Llama, ``c_fc`` and ``c_proj`` for
    GPT-2), leaving out the LM head, the embeddings, anything outside the blocks, and the fused
    projections the bridge never calls (:data:`BRIDGE_SPLIT_MODULES`). A suffix that would also
    match a projection outside the blocks is replaced by the full module names.
    """
    inside, outside = _projections(hf_model)
    dead = bridge_split_modules(hf_model)
    kept = [n for n in inside if not any(_matches(n, d) for d in dead)]
    targets: set[str] = set()
    for name in kept:
        suffix = name.rsplit(".", 1)[-1]
        targets.add(name if any(_matches(o, suffix) for o in outside) else suffix)
    if not targets:
        raise ModelLoadError(
            f"found no linear projections the bridge runs in {_architecture(hf_model)}'s decoder "
            "blocks; pass AdapterConfig(target_modules=(...)) with the module names to adapt"
        )
    skipped = sorted({n.rsplit(".", 1)[-1] for n in inside} - {n.rsplit(".", 1)[-1] for n in kept})
    if skipped:
        log.info(
            "all-linear LoRA on %s leaves out %s: TransformerBridge splits these fused "
            "projections into copies at boot and never calls them",
            _architecture(hf_model), skipped,
        )
    return sorted(targets)


def check_target_modules(hf_model: Any, targets: Sequence[str]) -> list[str]:
    """Explicit ``targets``, refused with :class:`ModelLoadError` if any would never run."""
    dead = bridge_split_modules(hf_model)
    inside, outside = _projections(hf_model)
    hit = sorted(
        {t for t in targets for n in inside + outside if _matches(n, t) and any(_matches(n, d) for d in dead)}
    )
    if hit:
        alternatives = resolve_target_modules(hf_model)
        raise ModelLoadError(
            f"LoRA target(s) {hit} of {_architecture(hf_model)} would never run: TransformerLens's "
            f"bridge copies the fused projection(s) {list(dead)} into separate q/k/v (or gate/up) "
            "modules at boot and never calls the fused module, so the adapter would have no effect. "
            f"Target the projections it runs instead, e.g. AdapterConfig(target_modules="
            f"{tuple(alternatives)!r}), or use the default ('all-linear',), which leaves them out"
        )
    return list(targets)


def stores_weights_transposed(hf_model: Any, targets: Sequence[str]) -> bool:
    """True when every module ``targets`` matches is a GPT-2-style ``Conv1D`` (weight ``[in, out]``).

    That is PEFT's ``fan_in_fan_out=True``; passing it avoids PEFT's per-module correction warning.
    """
    from transformers.pytorch_utils import Conv1D

    base = _base_model(hf_model)
    matched = [m for n, m in base.named_modules() if _is_projection(m) and any(_matches(n, t) for t in targets)]
    return bool(matched) and all(isinstance(m, Conv1D) for m in matched)


# ---------------------------------------------------------------- names under the bridge


def _hf_named_modules(root: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    """Modules under their Hugging Face names, however the bridge has re-parented them.

    A bridge component is entered only through its ``_original_component`` (the HF module it
    wraps), and that segment is dropped from the name; the bridge's own submodules (renamed
    aliases such as ``attn.o`` or split copies such as ``attn.q``) are skipped.
    """
    seen: set[int] = set()
    stack: list[tuple[str, torch.nn.Module]] = [("", root)]
    while stack:
        prefix, module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        yield prefix, module
        children = module._modules
        original = children.get(ORIGINAL)
        if original is not None:
            stack.append((prefix, original))
            continue
        for name, child in reversed(list(children.items())):
            if child is not None:
                stack.append((f"{prefix}.{name}" if prefix else name, child))


def hf_adapter_state_dict(peft_model: Any, adapter_name: str = "default") -> dict[str, StateTensor]:
    """The adapter weights with PEFT's standard keys and Hugging Face module names.

    Loads into a plain HF model with ``PeftModel.from_pretrained`` whatever the bridge did to
    the module tree. Tensors are detached, contiguous and on the CPU.
    """
    from peft import get_peft_model_state_dict

    # PEFT selects the adapter's entries by walking ``named_modules()`` (the bridge's names), so
    # give it a state dict under those same names, read straight from each module: the bridge's
    # components do not all report their wrapped modules in ``state_dict()``.
    modules = dict(peft_model.named_modules())
    named: dict[str, StateTensor] = {}
    for path, module in modules.items():
        for store in (module._parameters, module._buffers):
            for name, tensor in store.items():
                if tensor is not None:
                    named[f"{path}.{name}" if path else name] = tensor.detach()
    state = get_peft_model_state_dict(peft_model, state_dict=named, adapter_name=adapter_name)
    hf_names = {id(module): path for path, module in _hf_named_modules(peft_model)}
    out = {_rename(key, modules, hf_names): v.cpu().contiguous() for key, v in state.items()}
    n_layers = len(_lora_layers(peft_model, adapter_name))
    n_a = sum(1 for k in out if ".lora_A." in k)
    if n_a != n_layers or len(out) != len(state):
        raise ArtifactError(
            f"found {n_layers} LoRA layers but {n_a} distinct lora_A weights under Hugging Face "
            "names; refusing to write an incomplete adapter"
        )
    return out


def _rename(key: str, modules: dict[str, torch.nn.Module], hf_names: dict[int, str]) -> str:
    """Swap the longest module path at the start of ``key`` for that module's HF name."""
    head, rest = key, ""
    while head:
        module = modules.get(head)
        if module is not None and id(module) in hf_names:
            return hf_names[id(module)] + rest
        head, dot, tail = head.rpartition(".")
        if not dot:
            break
        rest = f".{tail}{rest}"
    return key.replace(f".{ORIGINAL}", "")


def _lora_layers(peft_model: Any, adapter_name: str | None = None) -> list[tuple[str, Any, str]]:
    """(HF module name, LoRA layer, adapter name) for every active LoRA adapter module, or for
    every module holding adapter ``adapter_name`` (active or not)."""
    from peft.tuners.lora import LoraLayer

    out = []
    for path, module in _hf_named_modules(peft_model):
        if isinstance(module, LoraLayer):
            name = path.removeprefix("base_model.model.")
            for adapter in module.active_adapters if adapter_name is None else [adapter_name]:
                if adapter in module.lora_A:
                    out.append((name, module, adapter))
    return out


# ---------------------------------------------------------------- the check


def probe_input_ids(n_vocab: int, length: int = 8) -> TokenIds:
    """A fixed, tokenizer-independent probe sequence ``[1, length]`` for :func:`check_adapter_runs`."""
    return (torch.arange(1, length + 1, dtype=torch.long) * 7919 % max(n_vocab, 1))[None, :]


def check_adapter_runs(loaded_model: Any, input_ids: TokenIds | None = None) -> None:
    """Prove the LoRA adapter of ``loaded_model`` (a booted ``LoadedModel``) does something.

    Runs one forward pass with the adapter on (eval mode: no dropout, no RNG use) and, when its
    weights are trainable, one backward pass of the next-token loss on ``input_ids``. Checks:

    * every LoRA module is *called* (a forward hook on each ``lora_A``);
    * every trainable ``lora_B`` gets a finite, non-zero gradient;
    * every trainable ``lora_A`` gets a gradient (not ``None``), non-zero once its ``lora_B``
      is non-zero.

    Why not "non-zero for A" at step 0: PEFT initialises ``lora_B`` to zero, and
    ``dL/dA = scale * B^T (dL/dy) x^T``, so A's gradient is exactly zero until B has moved;
    ``dL/dB = scale * (dL/dy) (A x)^T`` is non-zero because A starts random. So "A is called and
    B gets a gradient" is the strongest check that holds for a fresh adapter, and together they
    prove the LoRA output reaches the loss. Existing ``.grad`` values are restored afterwards.

    Raises :class:`TrainingError` naming the modules that never run or get no gradient.
    """
    peft_model = getattr(loaded_model, "peft_model", None)
    if peft_model is None:
        raise TrainingError(f"{loaded_model.name!r} has no LoRA adapter to check; attach one first")
    if input_ids is None:
        input_ids = probe_input_ids(int(loaded_model.bridge.cfg.d_vocab))
    if input_ids.shape[-1] < 2:
        raise ConfigError("check_adapter_runs needs at least 2 tokens per row (a next-token loss)")
    layers = _lora_layers(peft_model)
    if not layers:
        raise TrainingError(f"{loaded_model.name!r} has a PEFT wrapper but no active LoRA layer")
    params = [
        (name, kind, getattr(module, kind)[adapter].weight)
        for name, module, adapter in layers
        for kind in ("lora_A", "lora_B")
    ]
    trainable = [(n, k, p) for n, k, p in params if p.requires_grad]
    saved = [(p, p.grad) for _, _, p in trainable]
    called: set[str] = set()
    handles = [
        module.lora_A[adapter].register_forward_hook(lambda *_, name=name: called.add(name))
        for name, module, adapter in layers
    ]
    hf_model = loaded_model.hf_model
    was_training = hf_model.training
    hf_model.eval()
    try:
        for _, _, p in trainable:
            p.grad = None
        ids = input_ids.to(loaded_model.device)
        with torch.enable_grad():
            logits = loaded_model.logits(ids)
            if trainable:
                predicted = rearrange(logits[:, :-1], "batch pos d_vocab -> (batch pos) d_vocab")
                loss = F.cross_entropy(predicted.float(), rearrange(ids[:, 1:], "batch pos -> (batch pos)"))
                loss.backward()
        grads = {(n, k): (None if p.grad is None else p.grad.detach().clone()) for n, k, p in trainable}
        b_nonzero = {n: bool(p.detach().count_nonzero()) for n, k, p in params if k == "lora_B"}
    finally:
        for handle in handles:
            handle.remove()
        for p, grad in saved:
            p.grad = grad
        hf_model.train(was_training)
    _report(loaded_model, [n for n, _, _ in layers], called, grads, b_nonzero)


def _report(
    loaded_model: Any,
    names: list[str],
    called: set[str],
    grads: dict[tuple[str, str], StateTensor | None],
    b_nonzero: dict[str, bool],
) -> None:
    never = sorted(set(names) - called)
    no_grad = []
    for (name, kind), grad in sorted(grads.items()):
        if name in never:
            continue
        unusable = grad is None or not torch.isfinite(grad).all()
        # B must move at once; A only once its B is non-zero (dL/dA = scale * B^T dL/dy x^T).
        silent = grad is not None and (kind == "lora_B" or b_nonzero[name]) and not grad.count_nonzero()
        if unusable or silent:
            no_grad.append(f"{name}.{kind}")
    if never:
        arch = getattr(loaded_model, "architecture", "this model")
        raise TrainingError(
            f"{len(never)} of {len(names)} LoRA modules of {arch} never run under the "
            f"TransformerBridge, so training them would change nothing: {_shorten(never)}. "
            "The bridge splits fused projections (e.g. GPT-2 c_attn, GPT-NeoX query_key_value, "
            "Phi-3 qkv_proj / gate_up_proj) into copies at boot; target the other projections, or "
            "use AdapterConfig(target_modules=('all-linear',)), which leaves known fused ones out"
        )
    if no_grad:
        raise TrainingError(
            f"{len(no_grad)} LoRA weights get no usable gradient (None, zero or non-finite): "
            f"{_shorten(no_grad)}; their output does not reach the loss"
        )


def _shorten(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" ... and {len(names) - limit} more" if len(names) > limit else "")
