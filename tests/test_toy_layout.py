"""The toy package's imports run one way: world <- organisms <- demo; lies uses only the world.

Checked on the source (every ``import``/``from ... import`` of every module), so a new import
against the grain fails here rather than as a circular import somewhere later."""

from __future__ import annotations

import ast
from pathlib import Path

import lens_oracle.toy as toy

ROOT = Path(toy.__file__).parent
ALLOWED = {
    "world": {"world"},
    "organisms": {"world", "organisms"},
    "demo": {"world", "organisms", "demo"},
    "lies": {"world", "lies"},
}


def _toy_imports(path: Path) -> set[str]:
    """The toy subpackages a module imports (``lens_oracle.toy.<sub>...``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[:2] == ["lens_oracle", "toy"] and len(parts) > 2:
                found.add(parts[2])
    return found


def test_each_story_imports_only_what_comes_before_it() -> None:
    assert {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()} == set(ALLOWED)
    for package, allowed in ALLOWED.items():
        for module in (ROOT / package).glob("*.py"):
            wrong = _toy_imports(module) - allowed - {"tiny"}
            assert not wrong, f"{module.relative_to(ROOT)} imports toy.{sorted(wrong)}"


def test_the_checker_sees_imports_against_the_grain(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from lens_oracle.toy.demo.sweep import spread\nimport lens_oracle.toy.lies.data\n")
    assert _toy_imports(module) == {"demo", "lies"}
