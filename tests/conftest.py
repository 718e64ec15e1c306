"""Shared fixtures: a tiny tokenizer on disk and builders for tiny random models."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402

from helpers import build_tokenizer  # noqa: E402

# Tiny models: one thread is faster than two fighting over small matmuls, and it makes
# results independent of the machine's core count.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def toy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One toy-world cache for the session: the quick base model and organisms are trained once
    and shared by the toy-model tests and the demo test."""
    return tmp_path_factory.mktemp("toy_cache")


@pytest.fixture()
def tokenizer(tokenizer_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
