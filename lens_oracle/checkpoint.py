"""Training checkpoints that survive a crash: safetensors + JSON, atomic, checksummed.

A checkpoint is a folder ``step-00000042/`` holding ``state.safetensors`` (adapter weights,
optimiser moments, torch RNG state) and ``meta.json`` (step, position in the data stream,
scheduler and optimiser hyper-parameters, Python RNG state, and the SHA-256 of the tensors).
It is written to a temporary folder and renamed into place, so a kill leaves either the whole
checkpoint or nothing. A checkpoint whose checksum or JSON does not verify is skipped on resume.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lens_oracle.errors import ArtifactError
from lens_oracle.io import atomic_folder, atomic_write_json, sha256_file

log = logging.getLogger(__name__)

STATE_FILE = "state.safetensors"
META_FILE = "meta.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TrainingState:
    """Everything needed to continue a run exactly where it stopped."""

    step: int
    """Optimiser steps completed."""
    adapter: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    torch_rng: torch.Tensor
    python_rng: Any
    losses: list[float]


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimiser state dict -> (tensors for safetensors, JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for index, entry in rest["scalars"].items():
        state.setdefault(int(index), {}).update(entry)
    return {"state": state, "param_groups": rest["param_groups"]}


def _to_json(value: Any) -> Any:
    """Python RNG state (nested tuples) as JSON lists."""
    return [_to_json(v) for v in value] if isinstance(value, (tuple, list)) else value


def _from_json(value: Any) -> Any:
    return tuple(_from_json(v) for v in value) if isinstance(value, list) else value


def save_checkpoint(folder: Path, state: TrainingState, *, keep: int = 2) -> Path:
    """Write ``folder/step-XXXXXXXX`` atomically and keep only the newest ``keep`` checkpoints."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{state.step:08d}"
    with atomic_folder(final, owned=(STATE_FILE, META_FILE), what="checkpoint") as tmp:
        opt_tensors, opt_rest = _split_optimizer(state.optimizer)
        tensors = {f"adapter.{k}": v.detach().cpu().contiguous() for k, v in state.adapter.items()}
        tensors.update(opt_tensors)
        tensors["rng.torch"] = state.torch_rng.cpu().contiguous()
        save_file(tensors, str(tmp / STATE_FILE))
        meta = {
            "format": FORMAT_VERSION,
            "step": state.step,
            "optimizer": opt_rest,
            "scheduler": state.scheduler,
            "python_rng": _to_json(state.python_rng),
            "losses": state.losses,
            "sha256": sha256_file(tmp / STATE_FILE),
        }
        atomic_write_json(tmp / META_FILE, meta)
    for old in list_checkpoints(folder)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoint folders, newest first."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.glob("step-*") if p.is_dir()), reverse=True)


def load_checkpoint(path: Path) -> TrainingState:
    """Read and verify one checkpoint; :class:`ArtifactError` if anything is off."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"checkpoint {path} has no readable {META_FILE} ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        raise ArtifactError(f"checkpoint {path} has an unknown format; expected {FORMAT_VERSION}")
    state_path = path / STATE_FILE
    if not state_path.is_file() or sha256_file(state_path) != meta.get("sha256"):
        raise ArtifactError(f"checkpoint {path} is truncated or corrupt (checksum mismatch)")
    try:
        tensors = load_file(str(state_path))
    except (SafetensorError, OSError) as exc:
        raise ArtifactError(f"checkpoint {path} cannot be read ({exc})") from None
    adapter = {k.removeprefix("adapter."): v for k, v in tensors.items() if k.startswith("adapter.")}
    return TrainingState(
        step=int(meta["step"]),
        adapter=adapter,
        optimizer=_join_optimizer(tensors, meta["optimizer"]),
        scheduler=meta["scheduler"],
        torch_rng=tensors["rng.torch"],
        python_rng=_from_json(meta["python_rng"]),
        losses=[float(x) for x in meta["losses"]],
    )


def latest_valid_checkpoint(folder: Path) -> TrainingState | None:
    """The newest checkpoint that verifies; corrupt ones are skipped with a warning."""
    for path in list_checkpoints(folder):
        try:
            return load_checkpoint(path)
        except ArtifactError as exc:
            log.warning("skipping checkpoint: %s", exc)
    return None


def capture_rng() -> tuple[torch.Tensor, Any]:
    return torch.get_rng_state(), random.getstate()


def restore_rng(torch_rng: torch.Tensor, python_rng: Any) -> None:
    torch.set_rng_state(torch_rng)
    random.setstate(python_rng)
