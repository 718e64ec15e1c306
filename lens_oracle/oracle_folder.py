"""An oracle folder on disk: what it may hold, and the checks made before saving into one and
before loading from one (safetensors and JSON only; complete; nothing of the user's replaced)."""

from __future__ import annotations

import json
from pathlib import Path

from lens_oracle.config import OracleConfig
from lens_oracle.errors import ArtifactError
from lens_oracle.io import check_replaceable
from lens_oracle.projector import PROJECTOR_WEIGHTS
from lens_oracle.published import SIDECAR_NAMES

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ORACLE_CONFIG = "oracle_config.json"
ORACLE_FILES = (
    ADAPTER_CONFIG, ADAPTER_WEIGHTS, ORACLE_CONFIG, PROJECTOR_WEIGHTS, *SIDECAR_NAMES, "README.md", "*.stamp.json",
)
"""What an oracle folder (ours, or a published AO adapter) may hold: ``save(overwrite=True)``
replaces a folder only when it holds nothing else. ``*.stamp.json``: provenance sidecars."""
UNSAFE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def check_oracle_destination(folder: Path, *, overwrite: bool) -> None:
    """Raise :class:`ArtifactError` unless an oracle may be saved to ``folder`` (see
    :meth:`ActivationOracle.save`); cheap, so callers check before training."""
    check_replaceable(folder, ORACLE_FILES, "saved oracle")
    if folder.is_dir() and any(folder.iterdir()):
        if not overwrite:
            raise ArtifactError(f"{folder} already holds an oracle; pass overwrite=True to replace it")
        if not ((folder / ORACLE_CONFIG).is_file() or (folder / ADAPTER_CONFIG).is_file()):
            raise ArtifactError(
                f"{folder} is not an oracle folder (no {ORACLE_CONFIG} or {ADAPTER_CONFIG}); "
                "refusing to replace it: choose a new or empty folder"
            )


def read_oracle_folder(folder: Path) -> OracleConfig | None:
    """Check an oracle folder is complete and safe; its config, or None for a plain PEFT adapter."""
    if not folder.is_dir():
        raise ArtifactError(f"oracle folder {str(folder)!r} does not exist")
    unsafe = sorted(p.name for p in folder.iterdir() if p.suffix in UNSAFE_SUFFIXES)
    if unsafe:
        raise ArtifactError(
            f"{folder} holds pickle-based files {unsafe}; lens_oracle loads safetensors and JSON "
            "only, because pickle can run arbitrary code. Convert the adapter to safetensors"
        )
    for needed in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (folder / needed).is_file():
            raise ArtifactError(f"{folder} has no {needed}; it is not a saved adapter")
    verify_safetensors(folder / ADAPTER_WEIGHTS)
    path = folder / ORACLE_CONFIG
    has_projector = (folder / PROJECTOR_WEIGHTS).is_file()
    if not path.is_file():
        if has_projector:
            raise ArtifactError(f"{folder} holds {PROJECTOR_WEIGHTS} but no {ORACLE_CONFIG} to describe it")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); the file is corrupt") from None
    config = OracleConfig.from_json_dict(data)
    if has_projector and config.projector is None:
        raise ArtifactError(f"{folder} holds {PROJECTOR_WEIGHTS} but its {ORACLE_CONFIG} names no projector")
    return config


def verify_safetensors(path: Path) -> None:
    """Open a safetensors file and read every tensor; :class:`ArtifactError` if it is damaged."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                handle.get_tensor(key)
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise ArtifactError(f"{path} is truncated or corrupt ({exc}); save or download it again") from None


def adapter_base_model(folder: Path) -> str | None:
    try:
        data = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{folder / ADAPTER_CONFIG} is not valid JSON ({exc})") from None
    base = data.get("base_model_name_or_path")
    return str(base) if base else None
