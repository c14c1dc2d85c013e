"""Only the task layer prints (issue 20): patch-status's core, ``patchflow.status`` and
``patchflow.status_runs``, returns data and imports no terminal module, directly or through
another module; :mod:`patchflow.tasks.status_view` shows it. Checked in a fresh interpreter (this
one has rich loaded by other tests)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import patchflow

CORE = ("patchflow.status", "patchflow.status_runs")
TERMINAL = ("rich", "patchflow.console", "patchflow.live", "patchflow.progress", "patchflow.tasks")


def _loaded_after_import(modules: tuple[str, ...]) -> list[str]:
    code = f"import json, sys\nfor m in {list(modules)!r}: __import__(m)\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return list(json.loads(out))


def test_the_status_core_imports_no_terminal_module() -> None:
    loaded = _loaded_after_import(CORE)
    assert set(CORE) <= set(loaded)  # the check imported them
    terminal = [m for m in loaded if any(m == t or m.startswith(f"{t}.") for t in TERMINAL)]
    assert terminal == [], f"patch-status's core pulls in terminal modules: {terminal}"


def test_the_check_sees_a_terminal_import() -> None:
    """The check above would fail for a module that imports the console (here the task view)."""
    loaded = _loaded_after_import(("patchflow.tasks.status_view",))
    assert "rich" in loaded and "patchflow.console" in loaded


@pytest.mark.parametrize("module", CORE)
def test_the_status_core_calls_no_print(module: str) -> None:
    path = Path(patchflow.__file__).parent / f"{module.rsplit('.', 1)[1]}.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    calls = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (
            (isinstance(node.func, ast.Name) and node.func.id == "print")
            or (isinstance(node.func, ast.Attribute) and node.func.attr == "print")
        )
    ]
    assert calls == [], f"{path.name} prints at lines {calls}"
