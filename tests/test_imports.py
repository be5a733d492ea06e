"""The package's import graph: no cycles, no imports from the package root, no hidden imports.

Walks the source of every module of :mod:`forecast` (AST, nothing is imported) and
collects the imports that run when a module is loaded (those under
``if TYPE_CHECKING:`` are for type checkers only and are left out). Function-level
imports would hide a cycle from this walk, so they are allowed only for optional
dependencies, which must not be needed to import the package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import forecast

PACKAGE = Path(forecast.__file__).parent
#: Third-party packages a function may import on demand (extras, not install requirements).
OPTIONAL = {"matplotlib", "distributed", "dask", "pandas"}
#: Install requirements a function may import on demand because importing them costs
#: start-up time that most commands never need (each with the reason).
DEFERRED = {
    "scipy.stats": "half a second at import; only the synthetic generator uses it",
    "pyarrow.dataset": "imports pandas (about a second); only reading a forecast back uses it",
    "scipy.optimize": "imports scipy.linalg and scipy.sparse (about 0.3 s); only the opt-in "
    "calendar trend uses it (forecast._solvers has the root finder and 1-d minimiser)",
    "pyarrow.parquet": "loads OpenSSL for its file systems (about 0.1 s); only writing a "
    "forecast's tables and comparing forecasts use it",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _targets(node: ast.Import | ast.ImportFrom, module: str) -> list[str]:
    """Absolute names a statement imports (``from a import b`` gives ``a.b`` if a module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:  # relative import
        pkg = module.split(".")
        is_pkg = MODULES[module].name == "__init__.py"
        anchor = pkg if is_pkg else pkg[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, base] if base else anchor)
    out = []
    for a in node.names:
        sub = f"{base}.{a.name}"
        out.append(sub if sub in MODULES else base)
    return out


def _imports(module: str) -> tuple[list[tuple[int, str]], list[tuple[int, str]], list[int]]:
    """(module-level imports, function-level imports, lines importing the root) of ``module``."""
    tree = ast.parse(MODULES[module].read_text())
    top: list[tuple[int, str]] = []
    local: list[tuple[int, str]] = []
    root: list[int] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub, in_function)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                for name in _targets(child, module):
                    (local if in_function else top).append((child.lineno, name))
                    if name == "forecast":
                        root.append(child.lineno)
                continue
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            visit(child, inner)

    visit(tree, False)
    return top, local, root


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module in MODULES:
        top, _, _ = _imports(module)
        graph[module] = {name for _, name in top if name in MODULES and name != "forecast"}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a self-import)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return out


def test_the_walk_sees_the_package():
    graph = _graph()
    assert "forecast.fit.fitting" in graph and "forecast._kernels.api" in graph
    assert "forecast.fit.model" in graph["forecast.fit.fitting"]
    assert "forecast.simulate" in graph["forecast.fit.model"]


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_cycle_detection_finds_a_planted_cycle():
    graph = _graph()
    graph["forecast.calendar"] = graph["forecast.calendar"] | {"forecast.fit.model"}
    assert any("forecast.calendar" in c and "forecast.fit.model" in c for c in _cycles(graph))


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "forecast"))
def test_no_import_from_the_package_root(module):
    _, _, root = _imports(module)
    assert root == [], f"{module} imports the package root on line(s) {root}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_function_level_imports_only_for_optional_dependencies(module):
    _, local, _ = _imports(module)
    bad = [
        (line, name)
        for line, name in local
        if name.split(".")[0] not in OPTIONAL and name not in DEFERRED
    ]
    assert bad == [], f"{module}: function-level imports {bad}; import them at the top"


def test_optional_dependencies_are_not_imported_at_load():
    for module in MODULES:
        top, _, _ = _imports(module)
        assert not [n for _, n in top if n.split(".")[0] in OPTIONAL], module
