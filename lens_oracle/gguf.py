"""GGUF checkpoints as model sources: converted once to a float safetensors folder, then cached.

A ``.gguf`` file (or a folder holding exactly one) is what llama.cpp-style packages ship. transformers
reads it with ``gguf_file=`` (the optional ``gguf`` package; ``pip install 'lens-oracle[gguf]'``),
de-quantising every tensor to float32, which takes tens of seconds and refuses ``save_pretrained``
until the quantisation attributes are cleared. :func:`converted_folder` does that once and
keeps the result in ``<cache>/gguf/<name>-<sha256 prefix>/``, stamped with the source file's
SHA-256, so later loads are a plain safetensors folder (seconds) and a changed source converts anew.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from lens_oracle.errors import ModelLoadError
from lens_oracle.io import atomic_folder, atomic_write_json, cache_root, sha256_file

log = logging.getLogger(__name__)

STAMP = "gguf_source.stamp.json"
CONVERTED_FILES = (
    "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "chat_template.jinja", STAMP,
)
"""What a converted folder holds (as transformers saves a model and its tokenizer) and its stamp."""


def gguf_file(source: str | os.PathLike[str]) -> Path | None:
    """The GGUF file ``source`` names (the file, or the only one in a folder without a
    ``config.json``), else ``None``. Two or more in one folder is a :class:`ModelLoadError`."""
    path = Path(source)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {str(path)!r} does not exist")
        return path
    if not path.is_dir() or (path / "config.json").is_file():
        return None
    found = sorted(path.glob("*.gguf"))
    if len(found) > 1:
        raise ModelLoadError(
            f"{path} holds {len(found)} GGUF files ({', '.join(p.name for p in found)}); name one of them"
        )
    return found[0] if found else None


def converted_folder(gguf: Path, cache: Path | None = None) -> Path:
    """The float safetensors folder of ``gguf`` (model and tokenizer), converting it on first use."""
    digest = sha256_file(gguf)
    folder = (cache or cache_root()) / "gguf" / f"{gguf.stem}-{digest[:16]}"
    if _stamp_matches(folder, digest):
        return folder
    log.warning("converting %s to a float safetensors folder (once; about 30 s)", gguf.name)
    model, tokenizer = _load_gguf(gguf)
    with atomic_folder(folder, owned=CONVERTED_FILES, what="converted GGUF model") as staging:
        model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        atomic_write_json(staging / STAMP, {"source": gguf.name, "sha256": digest})
    return folder


def _stamp_matches(folder: Path, digest: str) -> bool:
    try:
        stamp = json.loads((folder / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(stamp, dict) and stamp.get("sha256") == digest and (folder / "model.safetensors").is_file()


def _load_gguf(gguf: Path) -> tuple[Any, Any]:
    """Model (float32, quantisation attributes cleared so it can be saved) and tokenizer."""
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError(
            f"loading {gguf.name} needs the 'gguf' package: pip install 'lens-oracle[gguf]'"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"transformers cannot read {gguf} ({type(exc).__name__}: {exc})") from None
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer
