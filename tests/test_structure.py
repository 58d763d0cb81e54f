"""The package's shape: no import cycles (lazy ones included), no submodule that shadows an API name,
and no marks left on the user's tensors."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gradaudit

PACKAGE = Path(gradaudit.__file__).resolve().parent


def _module_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its text (function bodies and
    TYPE_CHECKING blocks too); the implicit import of a parent package is not an edge."""
    files = {_module_of(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        edges = graph.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in files
                         else node.module for alias in node.names]
            else:
                continue
            edges.update(n for n in names if n in files and n != module)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
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
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_lazy_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    assert "gradaudit.gradcheck" in graph["gradaudit.caseaudit"]  # imported inside a method
    assert "gradaudit.api" in graph["gradaudit"]  # the package face's lazy API


def test_the_package_has_no_import_cycles():
    assert cycles(import_graph()) == []


def test_no_submodule_shadows_a_name_of_the_package():
    """`import gradaudit.audit` once replaced the function `gradaudit.audit` with a module."""
    submodules = {p.stem for p in PACKAGE.glob("*.py")} | {p.name for p in PACKAGE.iterdir() if p.is_dir()}
    assert not submodules & set(gradaudit.__all__)


@pytest.mark.slow  # a fresh Python that imports torch
def test_gradaudit_audit_works_on_every_call():
    code = ("import gradaudit\n"
            "for _ in range(2):\n"
            "    r = gradaudit.audit(lambda x: (x ** 2).sum(), {'x': gradaudit.Spec(shape=(3,))}, devices=['cpu'])\n"
            "    assert r.ok, r\n"
            "import gradaudit.caseaudit, gradaudit.losscall, gradaudit.draws\n"
            "assert gradaudit.audit(lambda x: x.sum(), {'x': gradaudit.Spec(shape=(2,))}, devices=['cpu']).ok\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


class _Scaled(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)

    def forward(self, x, t):
        return ((self.linear(x) - t) ** 2).mean()


def test_an_audit_leaves_no_mark_on_the_users_tensors():
    module = _Scaled()
    target = torch.randn(8, 4)
    result = gradaudit.audit(module, {"x": gradaudit.Spec(shape=(8, 4)), "t": target}, devices=["cpu"])
    assert result.ok, result
    for name, p in module.named_parameters():
        assert p.__dict__ == {}, (name, p.__dict__)
        assert p.grad is None, name  # the caller's .grad (none) is put back
    assert target.__dict__ == {}
