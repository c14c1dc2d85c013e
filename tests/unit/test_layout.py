"""The shape of the tree: no import cycle among patchflow's modules, no module over 600 lines.

The import graph is read from the source (the AST of every module under ``patchflow/``), not by
importing it, so a cycle that Python happens to survive (a late import, a name read only at call
time) is still found. Edges are the **module-level** imports only (anywhere outside a function or
method body: the top of the file, a ``try:`` around an optional import, a class body): those run
when the module is imported, so a cycle among them can break an import depending on which module
is loaded first. An import inside a function runs only when the function is called, after every
module has loaded; it is how a module reaches one that depends on it (``database`` calls
``dbwait``, which takes a ``Database``), and counting it would call every such deliberate
late edge a cycle. Imports under ``if TYPE_CHECKING:`` never run and are not edges either.

Importing ``patchflow.a.b`` also runs ``patchflow/a/__init__.py``: that package is an edge too,
unless it is a package of the importing module itself (already being imported by then).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "patchflow"
MAX_LINES = 600


def module_name(path: Path) -> str:
    """``patchflow/a/b.py`` -> ``patchflow.a.b``; ``patchflow/a/__init__.py`` -> ``patchflow.a``."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level_imports(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """The import statements that run when a module with ``body`` is imported: every statement
    outside function bodies and ``if TYPE_CHECKING:`` blocks (its ``else:`` does run)."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            found += _module_level_imports(node.orelse)
        else:
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                children = getattr(node, field, None)
                if not children:
                    continue
                for child in children:
                    found += _module_level_imports(child.body if hasattr(child, "pattern") else [child])
    return found


def _resolve(name: str, importer: str, is_package: bool, level: int) -> str:
    if not level:
        return name
    base = importer.split(".")
    if not is_package:
        base.pop()
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def import_graph() -> dict[str, set[str]]:
    """Module -> the patchflow modules its module-level imports load (see the module docstring)."""
    modules = all_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        targets: set[str] = set()
        for node in _module_level_imports(tree.body):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            base = _resolve(node.module or "", name, is_package, node.level)
            targets.add(base)
            # ``from patchflow.a import b`` loads the submodule patchflow.a.b when there is one
            targets.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules)
        for target in targets:
            parts = target.split(".")
            for depth in range(2, len(parts) + 1):  # the package itself and every subpackage on the way
                loaded = ".".join(parts[:depth])
                if loaded in modules and loaded != name and not name.startswith(loaded + "."):
                    graph[name].add(loaded)
    return graph


def cycles(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """The strongly connected components of ``graph`` with more than one module, or one module
    importing itself (Tarjan's algorithm), each as a sorted tuple."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[tuple[str, ...]] = set()

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.add(tuple(sorted(component)))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_among_patchflow_modules() -> None:
    found = sorted(cycles(import_graph()))
    assert not found, "import cycles (module-level imports): " + "; ".join(" <-> ".join(c) for c in found)


def test_no_module_over_600_lines() -> None:
    sizes = {
        str(p.relative_to(PACKAGE.parent)): len(p.read_text(encoding="utf-8").splitlines())
        for p in all_modules().values()
    }
    large = sorted(path for path, lines in sizes.items() if lines > MAX_LINES)
    assert not large, f"modules over {MAX_LINES} lines: " + ", ".join(f"{p} ({sizes[p]})" for p in large)


def readme_layout() -> list[str]:
    """The bullets of the README's ``## Layout`` section, each joined into one line."""
    text = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    bullets: list[str] = []
    for line in section.splitlines():
        if line.startswith("- "):
            bullets.append(line[2:])
        elif line.startswith("  ") and bullets:
            bullets[-1] += " " + line.strip()
    return bullets


def test_the_readme_layout_names_every_module_in_its_package() -> None:
    """Every module of ``patchflow/`` is named (as `` `name` ``) in the README's layout section; a
    module of a subpackage in the bullet that names its package (``patchflow/tasks/``, or
    `` `services/` `` for a package listed inside a bullet). Also: every package is named."""
    bullets = readme_layout()
    assert bullets, "the README has a ## Layout section of bullets"
    missing = []
    for name, path in all_modules().items():
        parts = name.split(".")[1:]
        if not parts or (path.name == "__init__.py" and len(parts) == 1):
            package = parts[0] if parts else ""
            if package and not any(f"`patchflow/{package}/`" in b or f"`{package}/`" in b for b in bullets):
                missing.append(f"package {package}/")
            continue
        if len(parts) == 1:
            if not any(f"`{parts[0]}`" in b for b in bullets):
                missing.append(name)
            continue
        package, module = parts[0], parts[-1]
        home = [b for b in bullets if f"`patchflow/{package}/`" in b or f"`{package}/`" in b]
        if not any(f"`{module}`" in b for b in home):
            missing.append(name)
    assert not missing, "modules the README's ## Layout section does not name: " + ", ".join(missing)


# -- the graph builder itself, on made-up packages --------------------------------------------


@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "patchflow"
    root.mkdir()
    (root / "__init__.py").write_text("")
    monkeypatch.setattr(__import__(__name__, fromlist=["PACKAGE"]), "PACKAGE", root)
    return root


def test_a_module_level_cycle_is_found_and_late_or_type_only_imports_are_not(fake_package: Path) -> None:
    (fake_package / "a.py").write_text("from patchflow import b\n")
    (fake_package / "b.py").write_text("try:\n    import patchflow.a\nexcept ImportError:\n    pass\n")
    (fake_package / "c.py").write_text("def late():\n    from patchflow import a\n")
    (fake_package / "d.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from patchflow import c\nimport patchflow.c\n"
    )
    (fake_package / "e.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import patchflow.d\n")
    graph = import_graph()
    assert graph["patchflow.a"] == {"patchflow.b"}
    assert graph["patchflow.b"] == {"patchflow.a"}
    assert graph["patchflow.c"] == set()  # inside a function: not an edge
    assert graph["patchflow.d"] == {"patchflow.c"}  # the import after the TYPE_CHECKING block counts
    assert graph["patchflow.e"] == set()
    assert cycles(graph) == {("patchflow.a", "patchflow.b")}


def test_a_subpackage_import_also_loads_its_package(fake_package: Path) -> None:
    (fake_package / "pkg").mkdir()
    (fake_package / "pkg" / "__init__.py").write_text("from patchflow.pkg.inner import x\n")
    (fake_package / "pkg" / "inner.py").write_text("from . import sibling\nx = 1\n")
    (fake_package / "pkg" / "sibling.py").write_text("from ..user import y\n")
    (fake_package / "user.py").write_text("from patchflow.pkg.inner import x\ny = 1\n")
    graph = import_graph()
    assert graph["patchflow.pkg"] == {"patchflow.pkg.inner"}
    assert graph["patchflow.pkg.inner"] == {"patchflow.pkg.sibling"}  # its own package is no edge
    assert graph["patchflow.pkg.sibling"] == {"patchflow.user"}
    assert graph["patchflow.user"] == {"patchflow.pkg", "patchflow.pkg.inner"}
    assert cycles(graph) == {("patchflow.pkg", "patchflow.pkg.inner", "patchflow.pkg.sibling", "patchflow.user")}


#: The task layer: the only modules that print or draw (``console`` and ``live`` are its drawing
#: helpers, ``__main__`` its entry point).
TASK_LAYER = ("patchflow.tasks", "patchflow.console", "patchflow.live", "patchflow.__main__", "patchflow.cli")


def test_only_the_task_layer_prints() -> None:
    """Outside the task layer no module calls ``print`` or imports rich or the console (late imports
    included): the core returns data and reports through callables (``log``, ``show``, progress)."""
    offenders = []
    for name, path in all_modules().items():
        if any(name == top or name.startswith(top + ".") for top in TASK_LAYER):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{name}:{node.lineno} print()")
            elif isinstance(node, ast.Import):
                offenders += [f"{name}:{node.lineno} import {a.name}" for a in node.names if _draws(a.name)]
            elif isinstance(node, ast.ImportFrom) and node.module and _draws(node.module):
                offenders.append(f"{name}:{node.lineno} from {node.module}")
    assert not offenders, "printing outside the task layer: " + ", ".join(offenders)


def _draws(module: str) -> bool:
    return module == "rich" or module.startswith("rich.") or module in ("patchflow.console", "patchflow.live")


def test_no_two_test_files_share_a_name() -> None:
    """pytest imports test files by their base name (no ``__init__.py`` in the tiers): two files of
    one name in different tiers fail the collection of the whole suite ("import file mismatch"),
    while each tier run alone passes."""
    tests = PACKAGE.parent / "tests"
    seen: dict[str, list[str]] = {}
    for path in sorted(tests.rglob("test_*.py")):
        seen.setdefault(path.name, []).append(str(path.relative_to(tests)))
    assert not {n: p for n, p in seen.items() if len(p) > 1}, {n: p for n, p in seen.items() if len(p) > 1}
