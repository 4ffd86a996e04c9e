"""The package's shape: no import cycle, layers that only point down, imports at module level.

Read from the source (ast) for the graph, and checked for real by importing every module first in
a fresh interpreter (a cycle that only holds because of import order fails there).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "mlxedge"
# Imports allowed inside functions: heavy optional dependencies, and mlxedge/__init__'s `load`
# (kept lazy so that `mlxedge.cli` can set OPENBLAS_NUM_THREADS before NumPy loads).
DEFERRED = {"mlx", "mlx_lm", "onnx", "matplotlib",
            "coremltools",  # only the export command needs it (mlxedge/export.py, mlxedge/coreml/)
            "onnxruntime"}  # only the NumPy backend's MLAS products (backends/numpy/gemm.py), at load
LAZY_OK = {("mlxedge", "mlxedge.api")}
# Lower layers and what they may import (besides themselves): pure maths and readers never reach
# up into conversion, calibration, runtime or commands.
LAYERS = {
    "mlxedge.quant": {"mlxedge.errors", "mlxedge.dtypes"},
    "mlxedge.archs": {"mlxedge.errors"},
    "mlxedge.formats": {"mlxedge.errors", "mlxedge.dtypes", "mlxedge.files", "mlxedge.safetensors",
                        "mlxedge.archs", "mlxedge.quant"},
    "mlxedge.safetensors": {"mlxedge.errors", "mlxedge.dtypes"},
    "mlxedge.dtypes": set(),
    "mlxedge.metrics": set(),
    "mlxedge.files": {"mlxedge.errors"},
    "mlxedge.pipeline": {"mlxedge", "mlxedge.errors", "mlxedge.dtypes", "mlxedge.safetensors",
                         "mlxedge.formats", "mlxedge.quant", "mlxedge.progress", "mlxedge.rowblocks"},
    "mlxedge.rowblocks": {"mlxedge.quant"},
}
MAX_LINES = 400


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported mlxedge module or top-level package, at module level?) for every import in `path`."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    known = modules()
    tree = ast.parse(path.read_text(), str(path))
    top = {id(n) for n in tree.body}
    for node in tree.body:  # `if TYPE_CHECKING:` / try blocks at module level count as module level
        for child in ast.walk(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)) and not _in_function(node, child):
                top.add(id(child))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            for a in node.names:  # `from . import x` imports the submodule x when there is one
                sub = f"{mod}.{a.name}"
                out.append((sub if sub in known else mod, id(node) in top))
    return out


def _in_function(root: ast.AST, target: ast.AST) -> bool:
    for node in ast.walk(root):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            if any(child is target for child in ast.walk(node)):
                return True
    return False


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: {i for i, top in imports(p) if top and i in known and i != m} for m, p in known.items()}


def test_no_import_cycle():
    g = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(g[m]):
            if state.get(n) == 1:
                cycle = stack[stack.index(n):] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)


def test_layers_only_point_down():
    g = graph()
    for m, deps in g.items():
        layer = next((k for k in sorted(LAYERS, key=len, reverse=True) if m == k or m.startswith(k + ".")), None)
        if layer is None:
            continue
        allowed = LAYERS[layer]
        bad = [d for d in deps if not (d == layer or d.startswith(layer + ".") or
                                       any(d == a or d.startswith(a + ".") for a in allowed))]
        assert not bad, f"{m} (layer {layer}) imports {bad}"


def test_imports_at_module_level():
    late = []
    for m, p in modules().items():
        for name, top in imports(p):
            if not top and name.split(".")[0] not in DEFERRED and (m, name) not in LAZY_OK:
                late.append(f"{m}: {name}")
    assert not late, "imports inside functions: " + ", ".join(late)


def test_modules_stay_small():
    big = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_every_module_imports_first_in_a_fresh_interpreter():
    names = [m for m in modules() if m != "mlxedge.__main__"]
    bad = []
    for i in range(0, len(names), 2):  # two at a time: a 2-core box
        procs = [(n, subprocess.Popen([sys.executable, "-c", f"import {n}"], cwd=PKG.parent,
                                      stderr=subprocess.PIPE, text=True)) for n in names[i:i + 2]]
        for n, proc in procs:
            err = proc.communicate(timeout=120)[1]
            if proc.returncode:
                bad.append(f"{n}: {err.strip().splitlines()[-1]}")
    assert not bad, bad


def test_the_checker_finds_a_cycle(tmp_path, monkeypatch):
    """The cycle test can fail: two modules importing each other are reported."""
    pkg = tmp_path / "mlxedge"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("from .a import x\n\ndef f():\n    from . import a\n")
    monkeypatch.setattr(sys.modules[__name__], "PKG", pkg)
    assert graph()["mlxedge.a"] == {"mlxedge.b"} and graph()["mlxedge.b"] == {"mlxedge.a"}
    with pytest.raises(pytest.fail.Exception, match="import cycle"):
        test_no_import_cycle()
    with pytest.raises(AssertionError, match="imports inside functions"):
        test_imports_at_module_level()
