"""The package's shape: typed tensors on the tensor path, shape checks that are live in the test
run, and modules that import each other one way only."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import torch
from jaxtyping import TypeCheckError

PACKAGE = Path(__file__).parent.parent / "lens_oracle"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``path`` imports, at any depth (function-level imports included;
    imports under ``if TYPE_CHECKING:`` too, so a type-only cycle counts)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full in modules:
                    found.add(full)
                elif node.module in modules:
                    found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
    return found


def import_cycles() -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    modules = _modules()
    edges = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for name in sorted(edges):
        if name not in index:
            visit(name)
    return cycles


def test_no_two_modules_import_each_other() -> None:
    assert import_cycles() == []


def test_the_cycle_finder_finds_a_cycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "lens_oracle"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from lens_oracle.b import x\n")
    (package / "b.py").write_text("def f():\n    from lens_oracle import a\n")
    (package / "c.py").write_text("from lens_oracle.a import y\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    assert import_cycles() == [["lens_oracle.a", "lens_oracle.b"]]


def _bare_tensor_annotations(path: Path) -> list[str]:
    """Annotations naming ``torch.Tensor`` / ``Tensor`` without a jaxtyping shape."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    annotations = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
            args += [a for a in (node.args.vararg, node.args.kwarg) if a is not None]
            annotations += [(a.annotation, f"{node.name}({a.arg})") for a in args if a.annotation]
            if node.returns is not None:
                annotations.append((node.returns, f"{node.name} -> "))
        elif isinstance(node, ast.AnnAssign):
            annotations.append((node.annotation, ast.unparse(node.target)))
    bare = []
    for annotation, where in annotations:
        for sub in ast.walk(annotation):
            # Float[Tensor, "..."] and friends are subscripts whose first slice element is Tensor
            if isinstance(sub, ast.Subscript) and isinstance(sub.slice, ast.Tuple):
                continue
            is_tensor = (isinstance(sub, ast.Attribute) and sub.attr == "Tensor") or (
                isinstance(sub, ast.Name) and sub.id == "Tensor"
            )
            if is_tensor and not _inside_shape(annotation, sub):
                bare.append(f"{path.relative_to(PACKAGE.parent)}:{getattr(sub, 'lineno', '?')} {where}")
    return bare


def _inside_shape(annotation: ast.AST, target: ast.AST) -> bool:
    for node in ast.walk(annotation):
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Tuple):
            if node.slice.elts and node.slice.elts[0] is target:
                return True
    return False


TENSOR_PATH = [
    "activations.py", "inject.py", "oracle.py", "asking.py", "train.py", "projector.py", "models.py",
    "checkpoint.py", "lora.py", "distributed.py", "bridge.py", "activation_cache",
    "evals/controls.py", "evals/probe.py", "evals/baselines.py", "evals/metrics.py", "evals/targets.py",
    "evals/patchscope.py", "control.py", "generation.py",
]


@pytest.mark.parametrize("where", TENSOR_PATH)
def test_tensors_on_the_tensor_path_carry_shapes(where: str) -> None:
    paths = sorted((PACKAGE / where).rglob("*.py")) if (PACKAGE / where).is_dir() else [PACKAGE / where]
    assert [b for p in paths for b in _bare_tensor_annotations(p)] == []


def test_the_bare_tensor_finder_finds_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "lens_oracle" / "m.py"
    path.parent.mkdir()
    path.write_text(
        "def f(x: torch.Tensor, y: Float[Tensor, 'a b']) -> list[Tensor]: ...\n"
        "def g(z: dict[str, Int[Tensor, ' n']] | None) -> None: ...\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "lens_oracle")
    assert _bare_tensor_annotations(path) == ["lens_oracle/m.py:1 f(x)", "lens_oracle/m.py:1 f -> "]


def test_shape_annotations_are_checked_in_the_test_run() -> None:
    """The run's type hook (pyproject: --jaxtyping-packages) checks every call: a transposed
    vector batch, or a mask of the wrong length, fails at the call instead of broadcasting."""
    from lens_oracle.inject import inject, scatter_vectors

    resid = torch.randn(2, 5, 8)
    vectors = torch.randn(2, 3, 8)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[:, 1:4] = True
    assert inject(resid, vectors, mask).shape == (2, 5, 8)
    with pytest.raises(TypeCheckError):
        scatter_vectors(vectors.transpose(0, 1), mask)  # [n_vec, batch, d_model]
    with pytest.raises(TypeCheckError):
        inject(resid, vectors, mask[:, :4])  # mask shorter than the sequence
    with pytest.raises(TypeCheckError):
        inject(resid, torch.randn(2, 3, 16), mask)  # another width than the residual's
