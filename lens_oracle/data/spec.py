"""The ``data build`` spec: a JSON file naming mixture components and their builders.

Format (JSON, version 1; the ``#`` comments are explanations, not part of the file)::

    {
      "version": 1,                        # optional; must be 1
      "tokenizer": "path/to/model",        # local tokenizer folder (or give --tokenizer)
      "n_layers": 32,                      # read layers = layers_from_fractions(n_layers, ...)
      "layer_fractions": [0.25, 0.5, 0.75],#   optional, with n_layers (AO's default shown)
      "layers": [8, 16, 24],               # ... or the read layers themselves (not both)
      "seed": 0,                           # mixture seed; component i defaults to seed + i
      "total": 1000,                       # optional: size of the weighted part
      "max_tokens": 512,                   # optional: drop longer examples
      "drop_quantile": 0.999,              # optional: drop above this length quantile
      "components": [
        {"name": "context", "builder": "context_prediction", "source": "docs.txt",
         "weight": 2, "config": {"k_max": 20, "j_max": 20}},
        {"name": "sst2", "builder": "classification", "source": "sst2.csv", "size": 300,
         "config": {"kind": "sentiment", "text_field": "sentence"}},
        {"name": "spqa", "builder": "spqa", "source": "spqa.jsonl", "limit": 200},
        {"name": "old", "builder": "examples", "source": "earlier_mix.jsonl"},
        {"name": "hf", "builder": "classification", "hf_dataset": {"path": "stanfordnlp/sst2"},
         "config": {"kind": "sentiment", "text_field": "sentence",
                    "labels": ["negative", "positive"]}}
      ]
    }

Per component:

* ``name`` (distinct) and ``builder``: ``context_prediction`` | ``classification`` | ``spqa`` |
  ``examples`` (a JSONL written by ``write_jsonl``, taken as it is);
* the data: ``source``, a local file (relative to the spec file's folder), or ``hf_dataset``,
  ``{"path": ..., "split": "train", "name": <config>, ...}`` passed to
  :func:`~lens_oracle.data.load_hf_dataset` (needs network or the HF cache);
* ``size`` or ``weight`` or neither (take all), as in :class:`~lens_oracle.data.MixtureComponent`;
* ``limit``: the most examples the builder makes;
* ``config``: the builder's config fields (:class:`ContextPredictionConfig`,
  :class:`ClassificationConfig`, :class:`SPQAConfig`); ``seed`` defaults to spec seed + index;
* ``text_field``: the document field of JSONL/CSV/dataset rows, for ``context_prediction``
  (default ``text``; classification has ``config.text_field``).

``"config": {"on_policy": true}`` on a ``context_prediction`` component takes its "next" answers
from the target's own greedy continuations: the target is loaded from the ``tokenizer`` folder,
which must then hold the model (``config.json`` and weights), and generates on the CPU.

Unknown keys are errors. The command-line
``--tokenizer``, ``--layers``/``--n-layers`` and ``--seed`` override the spec. The same spec
and seed always write byte-identical files.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lens_oracle.errors import ConfigError

Builder = Literal["context_prediction", "classification", "spqa", "examples"]
BUILDERS: tuple[str, ...] = ("context_prediction", "classification", "spqa", "examples")
SPEC_VERSION = 1
SPEC_KEYS = (
    "version", "tokenizer", "n_layers", "layer_fractions", "layers", "seed", "total",
    "max_tokens", "drop_quantile", "components",
)
COMPONENT_KEYS = (
    "name", "builder", "source", "hf_dataset", "text_field", "size", "weight", "limit", "config",
)


def existing_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise ConfigError(f"{what} file {str(path)!r} does not exist; check the path")
    return path


@dataclass(frozen=True)
class ComponentSpec:
    """One validated component of a build spec."""

    name: str
    builder: str
    source: Path | None
    hf_dataset: Mapping[str, Any] | None
    size: int | None
    weight: float | int | None
    limit: int | None
    config: Any
    """The builder's config object (``None`` for ``examples``)."""
    text_field: str = "text"
    """Document field of JSONL/CSV/dataset rows (``context_prediction`` only)."""


@dataclass(frozen=True)
class BuildPlan:
    """A validated ``data build`` spec with the command-line overrides applied."""

    tokenizer: Path | None
    layers: tuple[int, ...]
    seed: int
    total: int | None
    max_tokens: int | None
    drop_quantile: float | None
    components: tuple[ComponentSpec, ...] = field(default_factory=tuple)


def spec_int(spec: Mapping[str, Any], key: str, where: str, *, minimum: int) -> int | None:
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: {key!r} must be an integer >= {minimum}, got {value!r}")
    return value


def unknown_keys(row: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    unknown = sorted(k for k in row if k not in allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; valid keys: {list(allowed)}")


def parse_component(row: Any, index: int, base: Path, seed: int) -> ComponentSpec:
    from lens_oracle.data.classification import ClassificationConfig, load_templates
    from lens_oracle.data.context_prediction import ContextPredictionConfig
    from lens_oracle.data.spqa import SPQAConfig

    where = f"spec component {index}"
    if not isinstance(row, Mapping):
        raise ConfigError(f"{where} should be a JSON object, got {type(row).__name__}")
    unknown_keys(row, COMPONENT_KEYS, where)
    name, builder = row.get("name"), row.get("builder")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}: 'name' must be a non-empty string")
    where = f"spec component {name!r}"
    if builder not in BUILDERS:
        raise ConfigError(f"{where}: 'builder' must be one of {list(BUILDERS)}, got {builder!r}")
    source, hf = row.get("source"), row.get("hf_dataset")
    if (source is None) == (hf is None):
        raise ConfigError(f"{where}: give exactly one of 'source' (a file) or 'hf_dataset'")
    path = None
    if source is not None:
        if not isinstance(source, str) or not source.strip():
            raise ConfigError(f"{where}: 'source' must be a file path")
        path = existing_file(base / source, f"{where}: source")
    if hf is not None:
        if builder == "examples":
            raise ConfigError(f"{where}: the 'examples' builder reads a local JSONL 'source' only")
        if not isinstance(hf, Mapping) or not isinstance(hf.get("path"), str):
            raise ConfigError(
                f"{where}: 'hf_dataset' must be an object like {{\"path\": ..., \"split\": ...}}"
            )
    size = spec_int(row, "size", where, minimum=1)
    limit = spec_int(row, "limit", where, minimum=1)
    weight = row.get("weight")
    if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float))):
        raise ConfigError(f"{where}: 'weight' must be a number, got {weight!r}")
    config_row = row.get("config", {})
    if not isinstance(config_row, Mapping):
        raise ConfigError(f"{where}: 'config' must be a JSON object of builder settings")
    config: Any = None
    if builder == "examples":
        if config_row or limit is not None:
            raise ConfigError(f"{where}: the 'examples' builder takes no 'config' or 'limit'")
    else:
        kind = {
            "context_prediction": ContextPredictionConfig,
            "classification": ClassificationConfig,
            "spqa": SPQAConfig,
        }[builder]
        try:
            config = kind.from_dict({"seed": seed + index, **config_row})
        except TypeError as exc:  # a wrongly typed value the dataclass could not take
            raise ConfigError(f"{where}: bad 'config' ({exc})") from None
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if size is not None and weight is not None:
        raise ConfigError(f"{where}: give 'size' or 'weight', not both")
    if weight is not None and not weight > 0:
        raise ConfigError(f"{where}: 'weight' must be positive, got {weight!r}")
    text_field = row.get("text_field", "text")
    if "text_field" in row and builder != "context_prediction":
        raise ConfigError(
            f"{where}: 'text_field' is for context_prediction; classification takes "
            "config.text_field"
        )
    if not isinstance(text_field, str) or not text_field.strip():
        raise ConfigError(f"{where}: 'text_field' must be a field name")
    if builder == "classification":
        kinds = sorted(load_templates())
        if config.kind not in kinds:
            raise ConfigError(f"{where}: unknown config.kind {config.kind!r}; choose from {kinds}")
    return ComponentSpec(name, builder, path, hf, size, weight, limit, config, text_field)


def _component_source(spec: ComponentSpec) -> Any:
    if spec.hf_dataset is None:
        return spec.source
    from lens_oracle.data import sources

    options = dict(spec.hf_dataset)
    path = options.pop("path")
    split = options.pop("split", "train")
    return sources.load_hf_dataset(path, split=split, **options)


def _builder(
    spec: ComponentSpec, tokenizer: Any, layers: tuple[int, ...], target: Callable[[], Any]
) -> Callable[[], list[Any]]:
    """A zero-argument builder for :class:`MixtureComponent` (called once at ``build``)."""
    from lens_oracle.data.classification import build_classification
    from lens_oracle.data.context_prediction import build_context_prediction
    from lens_oracle.data.example import read_jsonl
    from lens_oracle.data.sources import read_texts
    from lens_oracle.data.spqa import build_spqa

    def build() -> list[Any]:
        source = _component_source(spec)
        if spec.builder == "examples":
            return list(read_jsonl(source))
        if spec.builder == "context_prediction":
            texts = read_texts(source, text_field=spec.text_field)
            model = target() if spec.config.on_policy else None
            return build_context_prediction(
                texts, tokenizer, layers, spec.config, limit=spec.limit, model=model, progress=model is not None
            )
        if spec.builder == "classification":
            return build_classification(source, tokenizer, layers, spec.config, limit=spec.limit)
        return build_spqa(source, tokenizer, layers, spec.config, limit=spec.limit)

    return build


def build_mixture(plan: BuildPlan, tokenizer: Any, out: Path) -> list[Any]:
    """Build the spec's mixture with ``tokenizer`` and write it to ``out`` as JSONL."""
    from lens_oracle.data.example import write_jsonl
    from lens_oracle.data.mixture import Mixture, MixtureComponent

    @functools.cache
    def target() -> Any:  # the model itself, for on-policy components only; loaded once
        from lens_oracle.models import load_model

        return load_model(str(plan.tokenizer), check_lora=False)

    mixture = Mixture(
        [
            MixtureComponent(c.name, _builder(c, tokenizer, plan.layers, target), size=c.size, weight=c.weight)
            for c in plan.components
        ],
        total=plan.total, seed=plan.seed, max_tokens=plan.max_tokens,
        drop_quantile=plan.drop_quantile,
    )
    examples = mixture.build()
    write_jsonl(examples, out)
    return examples
