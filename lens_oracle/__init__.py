"""lens_oracle: activation oracles for TransformerLens.

Capture residual-stream activations from any TransformerBridge model, inject them into a
LoRA-tuned oracle at ``blocks.{k}.hook_resid_pre``, and train, evaluate and query it::

    import lens_oracle as lo

    oracle = lo.ActivationOracle.create("path/to/model")
    acts = oracle.capture(["The secret word is ..."], layer=12, positions=lo.LastK(5))
    oracle.ask(acts, "What is the secret word in this text?")

Names are imported lazily so that ``import lens_oracle`` and ``lens-oracle --help`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "ActivationOracle": "lens_oracle.oracle",
    "Activations": "lens_oracle.activations",
    "AdapterConfig": "lens_oracle.config",
    "AllTokens": "lens_oracle.activations",
    "Indices": "lens_oracle.activations",
    "InjectionConfig": "lens_oracle.config",
    "LastK": "lens_oracle.activations",
    "LastToken": "lens_oracle.activations",
    "LensOracleError": "lens_oracle.errors",
    "OracleConfig": "lens_oracle.config",
    "OracleExample": "lens_oracle.data.example",
    "ProjectorConfig": "lens_oracle.config",
    "PromptConfig": "lens_oracle.config",
    "Segment": "lens_oracle.activations",
    "SteerConfig": "lens_oracle.control",
    "Substring": "lens_oracle.activations",
    "TrainConfig": "lens_oracle.config",
    "capture": "lens_oracle.activations",
    "capture_diff": "lens_oracle.activations",
    "capture_layers": "lens_oracle.activations",
    "load_model": "lens_oracle.models",
    "steer_with_oracle": "lens_oracle.control",
    "task_losses": "lens_oracle.train",
    "train_oracle": "lens_oracle.runner",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lens_oracle' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from lens_oracle.activations import (
        Activations,
        AllTokens,
        Indices,
        LastK,
        LastToken,
        Segment,
        Substring,
        capture,
        capture_diff,
        capture_layers,
    )
    from lens_oracle.config import (
        AdapterConfig,
        InjectionConfig,
        OracleConfig,
        ProjectorConfig,
        PromptConfig,
        TrainConfig,
    )
    from lens_oracle.control import SteerConfig, steer_with_oracle
    from lens_oracle.data.example import OracleExample
    from lens_oracle.errors import LensOracleError
    from lens_oracle.models import load_model
    from lens_oracle.oracle import ActivationOracle
    from lens_oracle.runner import train_oracle
    from lens_oracle.train import task_losses
