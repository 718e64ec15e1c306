"""Training checkpoints that survive a crash: safetensors + JSON, atomic, checksummed.

A checkpoint is a folder ``step-00000042/`` (42 optimiser steps done; steps are counted from 1
everywhere: names, messages, progress) holding ``state.safetensors`` (adapter weights, optimiser
moments, torch RNG state), ``meta.json`` (step, scheduler and optimiser hyper-parameters, Python
RNG state, losses, the run's ``TrainConfig``) and ``checksums.json`` (the SHA-256 of both).
It is written to a temporary folder and renamed into place, so a kill leaves either the whole
checkpoint or nothing; the temporaries of a killed write are removed by the next save or resume.
A checkpoint with any file changed, or whose step disagrees with its name, its losses or its
scheduler, does not verify and is skipped on resume.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lens_oracle.errors import ArtifactError
from lens_oracle.io import atomic_folder, atomic_write_json, remove_stale_staging, sha256_file
from lens_oracle.typing import RngState, StateTensor

log = logging.getLogger(__name__)

STATE_FILE = "state.safetensors"
META_FILE = "meta.json"
CHECKSUMS_FILE = "checksums.json"
FORMAT_VERSION = 2
"""2: every file checksummed (``checksums.json``) and the run's config recorded."""
NAME_PATTERN = r"step-\d{8}"


@dataclass(frozen=True)
class TrainingState:
    """Everything needed to continue a run exactly where it stopped."""

    step: int
    """Optimiser steps completed."""
    adapter: dict[str, StateTensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    torch_rng: RngState
    python_rng: Any
    losses: list[float]
    config: dict[str, Any] = field(default_factory=dict)
    """The run's ``TrainConfig.to_dict()``, compared with the resuming run's."""


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, StateTensor], dict[str, Any]]:
    """Optimiser state dict -> (tensors for safetensors, JSON-able rest)."""
    tensors: dict[str, StateTensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, StateTensor], rest: dict[str, Any]) -> dict[str, Any]:
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
    remove_stale_checkpoint_staging(folder)
    final = folder / f"step-{state.step:08d}"
    with atomic_folder(final, owned=(STATE_FILE, META_FILE, CHECKSUMS_FILE), what="checkpoint") as tmp:
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
            "config": state.config,
        }
        atomic_write_json(tmp / META_FILE, meta)
        atomic_write_json(tmp / CHECKSUMS_FILE, {name: sha256_file(tmp / name) for name in (STATE_FILE, META_FILE)})
    for old in list_checkpoints(folder)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoint folders, newest first."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.glob("step-*") if p.is_dir() and re.fullmatch(NAME_PATTERN, p.name)), reverse=True)


def load_checkpoint(path: Path) -> TrainingState:
    """Read and verify one checkpoint; :class:`ArtifactError` if anything is off."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    _verify_checksums(path)
    meta = _read_json(path / META_FILE)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        raise ArtifactError(f"checkpoint {path} has an unknown format; expected {FORMAT_VERSION}")
    try:
        tensors = load_file(str(path / STATE_FILE))
    except (SafetensorError, OSError) as exc:
        raise ArtifactError(f"checkpoint {path} cannot be read ({exc})") from None
    try:
        state = TrainingState(
            step=int(meta["step"]),
            adapter={k.removeprefix("adapter."): v for k, v in tensors.items() if k.startswith("adapter.")},
            optimizer=_join_optimizer(tensors, meta["optimizer"]),
            scheduler=meta["scheduler"],
            torch_rng=tensors["rng.torch"],
            python_rng=_from_json(meta["python_rng"]),
            losses=[float(x) for x in meta["losses"]],
            config=dict(meta.get("config") or {}),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ArtifactError(f"checkpoint {path} is incomplete ({type(exc).__name__}: {exc})") from None
    # The step has one meaning, read from meta.json and checked against every other record of it.
    named = int(path.name.removeprefix("step-")) if re.fullmatch(NAME_PATTERN, path.name) else None
    scheduled = state.scheduler.get("last_epoch") if isinstance(state.scheduler, dict) else None
    if (named, len(state.losses), scheduled) != (state.step, state.step, state.step):
        raise ArtifactError(
            f"checkpoint {path} disagrees with itself: step {state.step} in {META_FILE}, "
            f"{named} in its name, {len(state.losses)} losses, scheduler at {scheduled}"
        )
    return state


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"checkpoint file {path} is missing or unreadable ({exc})") from None


def _verify_checksums(path: Path) -> None:
    """Every file of the checkpoint matches ``checksums.json`` (which itself must parse and
    name exactly the checkpoint's files): a one-byte change anywhere is caught."""
    sums = _read_json(path / CHECKSUMS_FILE)
    if not isinstance(sums, dict) or sorted(sums) != sorted((STATE_FILE, META_FILE)):
        raise ArtifactError(f"checkpoint {path} has a corrupt {CHECKSUMS_FILE}")
    for name, digest in sums.items():
        file = path / name
        if not file.is_file() or sha256_file(file) != digest:
            raise ArtifactError(f"checkpoint {path} is truncated or corrupt (checksum mismatch in {name})")


def remove_stale_checkpoint_staging(folder: Path) -> list[Path]:
    """Temporaries that killed checkpoint writes left in ``folder`` (see :func:`remove_stale_staging`)."""
    return remove_stale_staging(folder, NAME_PATTERN)


def latest_valid_checkpoint(folder: Path) -> TrainingState | None:
    """The newest checkpoint that verifies; corrupt ones are skipped with a warning."""
    for path in list_checkpoints(folder):
        try:
            return load_checkpoint(path)
        except ArtifactError as exc:
            log.warning("skipping checkpoint: %s", exc)
    return None


def capture_rng() -> tuple[RngState, Any]:
    return torch.get_rng_state(), random.getstate()


def restore_rng(torch_rng: RngState, python_rng: Any) -> None:
    torch.set_rng_state(torch_rng)
    random.setstate(python_rng)
