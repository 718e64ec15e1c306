"""The Activation Oracles authors' multi-layer adapter sidecar, read when such an adapter is loaded.

Their newer training code writes a small JSON file beside a multi-layer adapter (seen as
``mlao_config.json`` in their development repository; ``ao_config.json`` is accepted too). Its
fields, as they write them:

* ``model_name``: the base model (a hub name);
* ``act_layers``: the read layers, in prompt order; ``layer_percents``: the same as depth percents;
* ``order``: ``"layer_major"`` -- the vectors are every position at the first layer, then at the
  next, which is the order of our multi-layer queries;
* ``special_token``: the placeholder text (``" ?"``);
* ``prefix_template``: ``"Layer: {layer}\\n{special_token} * {num_positions} \\n"`` once per layer --
  the prompt our ``ao`` format writes for a multi-layer tag.

A sidecar with another order or template is refused: lens_oracle would build a prompt the adapter
was not trained on, and its answers would be quietly wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lens_oracle.errors import ArtifactError

SIDECAR_NAMES = ("ao_config.json", "mlao_config.json")
LAYER_MAJOR = "layer_major"
PREFIX_TEMPLATE = "Layer: {layer}\n{special_token} * {num_positions} \n"
"""The one prefix template we write (and so accept), with its ``\\n`` escapes read as newlines."""


@dataclass(frozen=True)
class LayerSidecar:
    """What a multi-layer adapter's sidecar says about how it reads and is prompted."""

    path: Path
    model_name: str | None
    act_layers: tuple[int, ...]
    layer_percents: tuple[int, ...] | None
    placeholder: str


def find_sidecar(folder: Path) -> Path | None:
    """The sidecar file in ``folder``, if any (two names at once is ambiguous: refused)."""
    found = [folder / name for name in SIDECAR_NAMES if (folder / name).is_file()]
    if len(found) > 1:
        raise ArtifactError(f"{folder} holds both {SIDECAR_NAMES[0]} and {SIDECAR_NAMES[1]}; keep the one that belongs to the adapter")
    return found[0] if found else None


def read_sidecar(folder: Path) -> LayerSidecar | None:
    """Read and check the sidecar in ``folder``; ``None`` when there is none.

    Raises:
        ArtifactError: not JSON, a missing or mistyped field, an order other than layer-major,
            a prefix template other than the Activation Oracles one, or repeated layers.
    """
    path = find_sidecar(folder)
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); the adapter folder is corrupt") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path} must hold a JSON object, got {type(data).__name__}")
    layers = _int_list(data, "act_layers", path)
    if not layers or len(set(layers)) != len(layers) or min(layers) < 0:
        raise ArtifactError(f"{path}: act_layers must be distinct non-negative block indices, got {layers}")
    percents = _int_list(data, "layer_percents", path) if "layer_percents" in data else None
    if percents is not None and len(percents) != len(layers):
        raise ArtifactError(f"{path}: {len(percents)} layer_percents for {len(layers)} act_layers")
    order = data.get("order", LAYER_MAJOR)
    if order != LAYER_MAJOR:
        raise ArtifactError(
            f"{path}: vectors in {order!r} order; lens_oracle's multi-layer prompts are layer-major "
            "(every position at one layer, then the next), so this adapter cannot be asked correctly"
        )
    placeholder = data.get("special_token", " ?")
    if not isinstance(placeholder, str) or not placeholder:
        raise ArtifactError(f"{path}: special_token must be non-empty text, got {placeholder!r}")
    template = data.get("prefix_template")
    if template is not None and (not isinstance(template, str) or template.replace("\\n", "\n") != PREFIX_TEMPLATE):
        raise ArtifactError(
            f"{path}: prefix_template {template!r} is not the Activation Oracles prefix "
            f"{PREFIX_TEMPLATE!r}; lens_oracle would prompt this adapter differently from its training"
        )
    name = data.get("model_name")
    if name is not None and not isinstance(name, str):
        raise ArtifactError(f"{path}: model_name must be text, got {name!r}")
    return LayerSidecar(path, name or None, tuple(layers), None if percents is None else tuple(percents), placeholder)


def _int_list(data: dict[str, Any], key: str, path: Path) -> list[int]:
    value = data.get(key)
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ArtifactError(f"{path}: {key} must be a list of integers, got {value!r}")
    return value
