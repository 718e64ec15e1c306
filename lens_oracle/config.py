"""Frozen configuration records with validation, ``to_dict``/``from_dict`` and a version stamp."""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, get_args, get_origin

from lens_oracle.errors import ArtifactError, ConfigError

CONFIG_VERSION = 2
"""Version of ``oracle_config.json``; a file with a newer version is refused.
Version 2 added the optional ``projector`` (cross-model oracles); version 1 files load as
oracles without one."""

Site = Literal["resid_pre", "resid_mid", "resid_post"]
InjectionMode = Literal["add", "replace"]
PromptFormat = Literal["ao", "plain"]
ActivationConvention = Literal["hf", "hooked_transformer"]
ProjectorKind = Literal["linear", "mlp"]
ProjectorNorm = Literal["none", "rms"]

T = TypeVar("T")


def _check_choice(name: str, value: str, kind: Any) -> None:
    choices = get_args(kind)
    if value not in choices:
        raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}")


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` has the type ``hint`` names (bool is not an int; Literal values are
    left to :func:`_check_choice`, which lists the choices)."""
    origin = get_origin(hint)
    if origin is Literal:
        return isinstance(value, str)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in get_args(hint))
    if origin is tuple:
        item = get_args(hint)[0]
        return isinstance(value, tuple) and all(_fits(v, item) for v in value)
    if hint is type(None):
        return value is None
    if hint in (int, float):
        return isinstance(value, hint) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in get_args(hint))
    if origin is tuple:
        return f"a tuple of {_describe(get_args(hint)[0])}"
    if origin is Literal:
        return "a string"
    return "None" if hint is type(None) else getattr(hint, "__name__", str(hint))


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


class _Record:
    """Shared ``to_dict``/``from_dict`` for the frozen config dataclasses below."""

    def _check_types(self) -> None:
        """Every field holds a value of its annotated type (each ``__post_init__`` calls this
        first, so range checks below can trust the types)."""
        for name, hint in _field_types(type(self)).items():
            value = getattr(self, name)
            if not _fits(value, hint):
                raise ConfigError(
                    f"{type(self).__name__}.{name} must be {_describe(hint)}, got {value!r} "
                    f"({type(value).__name__})"
                )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]  # subclasses are dataclasses

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__} must be a JSON object, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(f"{cls.__name__} has no fields {unknown}; known: {sorted(fields)}")
        kwargs = {}
        for name, value in data.items():
            nested = _NESTED.get((cls.__name__, name))
            if nested is not None and isinstance(value, dict):
                value = nested.from_dict(value)
            elif isinstance(value, list):
                value = tuple(value)
            kwargs[name] = value
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"{cls.__name__}: {exc}") from None


@dataclass(frozen=True)
class AdapterConfig(_Record):
    """LoRA adapter settings (Activation Oracles defaults)."""

    rank: int = 64
    """LoRA rank r."""
    alpha: float | int = 128.0
    """LoRA scaling alpha (effective scale alpha / rank)."""
    dropout: float | int = 0.05
    """Dropout on the LoRA input."""
    target_modules: tuple[str, ...] = ("all-linear",)
    """Module names to adapt; ``("all-linear",)`` = every linear projection but the LM head."""

    def __post_init__(self) -> None:
        self._check_types()
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"LoRA rank must be a positive integer, got {self.rank!r}")
        if not math.isfinite(self.alpha) or self.alpha <= 0:
            raise ConfigError(f"LoRA alpha must be positive and finite, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        if not self.target_modules:
            raise ConfigError("LoRA target_modules is empty; use ('all-linear',) for the default")


@dataclass(frozen=True)
class InjectionConfig(_Record):
    """Where and how activation vectors enter the oracle."""

    layer: int = 2
    """Inject at ``blocks.{layer}.hook_resid_pre`` (AO: 2, the output of block 1)."""
    mode: InjectionMode = "add"
    """``add``: norm-matched addition (AO); ``replace``: overwrite the residual (LatentQA)."""
    scale: float | int = 1.0
    """Coefficient c in ``h + c * ||h|| * v / ||v||``."""

    def __post_init__(self) -> None:
        self._check_types()
        _check_choice("injection mode", self.mode, InjectionMode)
        if not isinstance(self.layer, int) or self.layer < 0:
            raise ConfigError(f"injection layer must be a non-negative integer, got {self.layer!r}")
        if not math.isfinite(self.scale) or self.scale <= 0:
            raise ConfigError(f"injection scale must be positive and finite, got {self.scale!r}")


@dataclass(frozen=True)
class PromptConfig(_Record):
    """How the oracle prompt is written."""

    format: PromptFormat = "ao"
    """``ao``: the Activation Oracles chat-template prompt; ``plain``: no chat template."""
    placeholder: str = " ?"
    """Placeholder text; must encode to exactly one token."""

    def __post_init__(self) -> None:
        self._check_types()
        _check_choice("prompt format", self.format, PromptFormat)
        if not self.placeholder:
            raise ConfigError("placeholder text is empty; the AO preset uses ' ?'")


@dataclass(frozen=True)
class ProjectorConfig(_Record):
    """A learned map from a source model's residual width to the oracle's (Meta-Models).

    Records the source model's identity, so activations of another model are refused.
    """

    source_model: str
    """Name or path of the model whose activations the projector reads."""
    source_architecture: str
    """HF architecture class of the source model, e.g. ``LlamaForCausalLM``."""
    source_d_model: int
    """Residual width of the source model (the projector's input)."""
    source_n_layers: int
    """Number of decoder blocks of the source model."""
    layers: tuple[int, ...] = ()
    """Source read layers served. A per-layer projector has one map each and refuses others;
    a shared one records the layers it was built for (empty: any layer)."""
    kind: ProjectorKind = "linear"
    """``linear`` (Meta-Models) or ``mlp`` (linear, GELU, linear)."""
    shared: bool = True
    """One map for every layer (Meta-Models), or one per entry of ``layers``."""
    hidden: int = 0
    """MLP hidden width; 0 means ``max(source_d_model, oracle d_model)``."""
    norm: ProjectorNorm = "none"
    """Input normalisation: ``rms`` rescales each vector to unit RMS before the map."""

    def __post_init__(self) -> None:
        self._check_types()
        _check_choice("projector kind", self.kind, ProjectorKind)
        _check_choice("projector norm", self.norm, ProjectorNorm)
        for name in ("source_d_model", "source_n_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"projector {name} must be a positive integer, got {value!r}")
        bad = [x for x in self.layers if not isinstance(x, int) or not 0 <= x < self.source_n_layers]
        if bad or len(set(self.layers)) != len(self.layers):
            raise ConfigError(
                f"projector layers {list(self.layers)} must be distinct blocks of the source "
                f"model, 0..{self.source_n_layers - 1}"
            )
        if not self.shared and not self.layers:
            raise ConfigError("a per-layer projector (shared=False) needs its layers=(...)")
        if not isinstance(self.hidden, int) or self.hidden < 0:
            raise ConfigError(f"projector hidden width must be >= 0, got {self.hidden!r}")
        if self.hidden and self.kind != "mlp":
            raise ConfigError("projector hidden width applies to kind='mlp' only")


@dataclass(frozen=True)
class OracleConfig(_Record):
    """Everything needed to rebuild an oracle around its adapter; saved as oracle_config.json."""

    base_model: str
    """Name or path of the oracle's base model."""
    architecture: str
    """HF architecture class of the base model, e.g. ``LlamaForCausalLM``."""
    d_model: int
    """Residual width the oracle expects for injected vectors."""
    n_layers: int
    """Number of decoder blocks of the base model."""
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    injection: InjectionConfig = field(default_factory=InjectionConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    convention: ActivationConvention = "hf"
    """Residual-stream convention the oracle was trained on (raw HF weights)."""
    read_site: Site = "resid_post"
    """Site that the layer tag refers to (AO: output of block L)."""
    projector: ProjectorConfig | None = None
    """Cross-model oracles: the projector from the source model's width (``None``: the oracle
    reads its own base model's activations)."""
    read_layers: tuple[int, ...] = ()
    """Layers the oracle was trained to read together, as one multi-layer query in this order,
    where its training fixed them (the AO authors' multi-layer adapters); empty: any layer.
    :meth:`~lens_oracle.oracle.ActivationOracle.capture_layers` reads these by default."""
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        self._check_types()
        _check_choice("activation convention", self.convention, ActivationConvention)
        _check_choice("read site", self.read_site, Site)
        if self.d_model < 1 or self.n_layers < 1:
            raise ConfigError(f"d_model and n_layers must be positive, got {self.d_model} and {self.n_layers}")
        source_layers = self.n_layers if self.projector is None else self.projector.source_n_layers
        if len(set(self.read_layers)) != len(self.read_layers) or not all(
            0 <= layer < source_layers for layer in self.read_layers
        ):
            raise ConfigError(
                f"read_layers {list(self.read_layers)} must be distinct blocks of the read model "
                f"(0..{source_layers - 1})"
            )
        if self.injection.layer >= self.n_layers:
            raise ConfigError(
                f"injection layer {self.injection.layer} does not exist in a model with "
                f"{self.n_layers} blocks; choose 0..{self.n_layers - 1}"
            )

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> OracleConfig:
        """Validate a loaded ``oracle_config.json``: version first, then every field."""
        version = data.get("version") if isinstance(data, dict) else None
        if not isinstance(version, int):
            raise ArtifactError("oracle_config.json has no integer 'version'; the file is not ours or is corrupt")
        if version > CONFIG_VERSION:
            raise ArtifactError(
                f"oracle_config.json has version {version}, newer than this lens_oracle "
                f"understands ({CONFIG_VERSION}); upgrade lens_oracle to load it"
            )
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ArtifactError(f"oracle_config.json is invalid: {exc}") from None


@dataclass(frozen=True)
class TrainConfig(_Record):
    """Oracle training hyper-parameters (AO defaults where they apply)."""

    learning_rate: float | int = 1e-5
    batch_size: int = 16
    grad_accum_steps: int = 1
    epochs: int = 1
    warmup_fraction: float | int = 0.1
    max_grad_norm: float | int = 1.0
    weight_decay: float | int = 0.0
    seed: int = 0
    eval_every: int = 0
    """Call the evaluation callback every N optimiser steps (0: never)."""
    progress: bool = True
    """Show a tqdm progress bar."""
    checkpoint_every: int = 0
    """Write a checkpoint every N optimiser steps and at the end (0: only at the end, if a
    checkpoint folder is given)."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep."""
    gradient_checkpointing: bool = False
    """Recompute block activations in the backward pass (AO trains this way): much less
    memory for about a third more compute. Same gradients; see
    :meth:`lens_oracle.models.LoadedModel.gradient_checkpointing`."""

    def __post_init__(self) -> None:
        self._check_types()
        if not isinstance(self.learning_rate, (int, float)) or not math.isfinite(self.learning_rate) or self.learning_rate <= 0:
            raise ConfigError(f"learning rate must be positive and finite, got {self.learning_rate!r}")
        for name in ("batch_size", "grad_accum_steps", "epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 <= self.warmup_fraction <= 1.0:
            raise ConfigError(f"warmup_fraction must be in [0, 1], got {self.warmup_fraction!r}")
        if not math.isfinite(self.max_grad_norm) or self.max_grad_norm <= 0:
            raise ConfigError(f"max_grad_norm must be positive, got {self.max_grad_norm!r}")
        for name in ("eval_every", "checkpoint_every", "weight_decay"):
            if getattr(self, name) < 0 or not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.keep_checkpoints < 1:
            raise ConfigError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints!r}")


_NESTED: dict[tuple[str, str], type[_Record]] = {
    ("OracleConfig", "adapter"): AdapterConfig,
    ("OracleConfig", "injection"): InjectionConfig,
    ("OracleConfig", "prompt"): PromptConfig,
    ("OracleConfig", "projector"): ProjectorConfig,
}
