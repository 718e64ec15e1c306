"""Atomic file writes and JSON helpers: nothing half-written is ever left on disk."""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lens_oracle.errors import ArtifactError


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


@contextlib.contextmanager
def atomic_folder(folder: Path, *, owned: Sequence[str] = (), what: str = "folder") -> Iterator[Path]:
    """Write a whole folder atomically: fill the yielded staging folder, and on success it
    replaces ``folder``; on failure nothing changes.

    An existing ``folder`` is replaced only if :func:`check_replaceable` allows it (empty, or
    holding only files matching ``owned``); otherwise :class:`ArtifactError` is raised before
    anything is written. The old folder is swapped out and removed only after the new one is
    complete.
    """
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
