"""Runs ``boundary_cases.py`` (the issue #16 catalogue and the hypothesis fuzz of every public
entry point) in a child pytest without the jaxtyping/beartype import hook.

Why a child process: the main run type-checks every lens_oracle function, so a wrong type is
stopped by the test-time checker before lens_oracle's own validation ever runs. Users have no
such hook; the child checks what they get: a ``LensOracleError`` and nothing left on disk.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def test_bad_input_at_the_public_boundary_raises_only_our_errors(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", str(HERE / "boundary_cases.py"), "-q", "-p", "no:cacheprovider",
         "-o", "addopts=", "--basetemp", str(tmp_path / "basetemp"), "-W", "error::DeprecationWarning:transformer_lens.*"],
        cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=900, check=False,
    )
    tail = (run.stdout + run.stderr)[-6000:]
    assert run.returncode == 0, tail
    assert " passed" in tail and "failed" not in tail, tail
