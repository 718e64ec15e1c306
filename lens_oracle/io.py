"""Atomic file writes and JSON helpers: nothing half-written is ever left on disk."""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from lens_oracle.errors import ArtifactError, ConfigError

log = logging.getLogger(__name__)


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def check_replaceable(folder: Path, owned: Sequence[str], what: str) -> None:
    """Raise unless writing ``folder`` anew can destroy nothing but a ``what`` written before.

    Fine: no such path, an empty folder, or a folder whose every entry's name matches one of the
    ``owned`` glob patterns (the files this writer writes). Refused with :class:`ArtifactError`:
    a file at that path, or a folder holding anything else (lens_oracle never deletes what it did
    not write). Call it before expensive work; :func:`atomic_folder` calls it again on entry.
    """
    if not folder.exists() and not folder.is_symlink():
        return
    if not folder.is_dir() or folder.is_symlink():
        raise ArtifactError(
            f"{folder} exists and is not a folder; a {what} is a folder: choose a new path "
            "(nothing was written)"
        )
    foreign = sorted(
        entry.name for entry in folder.iterdir()
        if entry.is_symlink() or not any(fnmatch.fnmatchcase(entry.name, pattern) for pattern in owned)
    )
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ArtifactError(
            f"{folder} already holds files that a {what} does not write ({shown}); lens_oracle never "
            "deletes files it did not write: choose a new or empty folder (nothing was written)"
        )


STAGING_TAIL = r"(?:[a-z0-9_]{8}|old)"
"""What :func:`atomic_folder` appends to ``.NAME.``: ``mkdtemp``'s 8 random characters (its
staging folder) or ``old`` (the previous version, swapped out while the new one moves in)."""


def remove_stale_staging(parent: Path, name_pattern: str) -> list[Path]:
    """Clean up after atomic-folder writes that were killed, for targets in ``parent`` whose
    name matches the regex ``name_pattern``; returns the folders removed.

    A target that a kill left missing between the two renames gets its previous version back
    from ``.NAME.old``. Then every ``.NAME.XXXXXXXX`` staging folder and ``.NAME.old`` is
    removed: only names of exactly that shape, only folders, nothing else in ``parent``.
    """
    if not parent.is_dir():
        return []
    shape = re.compile(rf"\.({name_pattern})\.{STAGING_TAIL}")
    entries = [e for e in parent.iterdir() if e.is_dir() and not e.is_symlink()]
    for entry in entries:
        match = shape.fullmatch(entry.name)
        if match and entry.name.endswith(".old") and not (parent / match.group(1)).exists():
            os.replace(entry, parent / match.group(1))
            log.warning("restored %s from the previous version an interrupted write left", parent / match.group(1))
    removed = [e for e in entries if e.exists() and shape.fullmatch(e.name)]
    for entry in removed:
        shutil.rmtree(entry, ignore_errors=True)
    if removed:
        log.info("removed %d temporary folder(s) left by interrupted writes in %s", len(removed), parent)
    return removed


@contextlib.contextmanager
def atomic_folder(folder: Path, *, owned: Sequence[str] = (), what: str = "folder") -> Iterator[Path]:
    """Write a whole folder atomically: fill the yielded staging folder, and on success it
    replaces ``folder``; on failure nothing changes.

    An existing ``folder`` is replaced only if :func:`check_replaceable` allows it (empty, or
    holding only files matching ``owned``); otherwise :class:`ArtifactError` is raised before
    anything is written. The old folder is swapped out and removed only after the new one is
    complete. What an earlier, killed write of the same folder left is cleaned up first
    (:func:`remove_stale_staging`).
    """
    remove_stale_staging(folder.parent, re.escape(folder.name))
    check_replaceable(folder, owned, what)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        yield staging
        for path in staging.rglob("*"):  # durable before it becomes visible
            if path.is_file():
                with path.open("rb") as handle:
                    os.fsync(handle.fileno())
        check_replaceable(folder, owned, what)  # nothing foreign appeared meanwhile
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            os.replace(folder, old)
        os.replace(staging, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_root() -> Path:
    """Where lens_oracle caches what it builds (toy models, converted GGUF models, fetched
    models): ``$LENS_ORACLE_CACHE`` or ``~/.cache/lens_oracle``."""
    configured = os.environ.get("LENS_ORACLE_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "lens_oracle"


MAX_SEED = 2**31 - 1


def digest(obj: Any) -> str:
    """A short stable hash of JSON-able ``obj`` (for the stamps of cached artifacts)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def read_json_stamp(folder: str | os.PathLike[str], name: str) -> dict[str, Any] | None:
    """The JSON stamp ``name`` in ``folder`` (settings a cached artifact was built with), or
    ``None`` if absent or unreadable."""
    path = Path(folder) / name
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def check_run_arguments(out: str | os.PathLike[str], seed: int, cache: str | os.PathLike[str]) -> None:
    """Refuse a bad seed or an unwritable output or cache folder before a pipeline (the toy or the
    real demo) starts any work."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed is {seed!r}; give an integer from 0 to {MAX_SEED}")
    for label, folder in (("output", Path(out)), ("cache", Path(cache))):
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"the {label} folder {folder} is a file; give a folder path")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as exc:
            raise ConfigError(
                f"cannot write to the {label} folder {folder} ({exc.strerror or exc}); "
                "choose a folder you can write to"
            ) from None


T = TypeVar("T")


def timed_stage(timings: dict[str, Any], stage: str, fn: Callable[[], T], *, digits: int = 2) -> T:
    """Run one pipeline stage, recording its wall-clock seconds as ``timings[stage]``."""
    start = time.perf_counter()
    out = fn()
    timings[stage] = round(time.perf_counter() - start, digits)
    return out
