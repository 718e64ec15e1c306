"""The Hugging Face and PEFT seam: tokenizers and causal LMs from local folders, GGUF files or
the HF cache (never the network), and LoRA adapters attached or loaded with PEFT.

A LoRA adapter is attached *before* the TransformerBridge boots on the model (the other order
fails); :func:`lens_oracle.models.load_model` puts the pieces together in that order.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from lens_oracle.config import AdapterConfig
from lens_oracle.errors import ModelLoadError

ModelSource = str | os.PathLike[str] | Any
"""A local folder, a name in the HF cache, or an in-memory ``PreTrainedModel``."""


def model_architecture(hf_model: Any) -> str:
    """The HF architecture class name, e.g. ``LlamaForCausalLM``."""
    archs = getattr(hf_model.config, "architectures", None) or [type(hf_model).__name__]
    return str(archs[0])


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


def ensure_pad_token(tokenizer: Any) -> Any:
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError("the tokenizer has neither a pad nor an eos token; add a pad token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
