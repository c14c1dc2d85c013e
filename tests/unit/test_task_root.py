"""The checkout a task acts on (patchflow.tasks.edge.project_root): the folder of the tasks.py
invoke loaded, except patchflow's own package folder, where invoke finds the ``patchflow.tasks``
package itself as its tasks module (it is no checkout's tasks.py). Real invoke configs, real
folders; the full commands run in tests/e2e/test_embedded.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from invoke.config import Config
from invoke.context import Context

from patchflow.errors import ConfigError
from patchflow.tasks.edge import PACKAGE_DIR, project_root


def _context(prefix: Path | None) -> Context:
    config = Config()
    if prefix is not None:
        config.set_project_location(str(prefix))
    return Context(config=config)


def test_the_folder_of_the_loaded_tasks_py_is_the_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkout = tmp_path / "checkout"
    (checkout / "src").mkdir(parents=True)
    (checkout / "tasks.py").write_text("from patchflow.cli import ns\n", encoding="utf-8")
    monkeypatch.chdir(checkout / "src")
    assert project_root(_context(checkout), None) == checkout.resolve()
    assert project_root(_context(checkout), str(tmp_path)) == tmp_path, "--root wins"


def test_patchflows_own_task_package_is_not_a_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    """inv started in the package folder loads patchflow/tasks/: the checkout is looked for from
    the working folder upwards, which here finds patchflow's own repository and refuses."""
    assert (PACKAGE_DIR / "tasks" / "__init__.py").is_file()
    monkeypatch.chdir(PACKAGE_DIR)
    with pytest.raises(ConfigError, match="patchflow's own repository"):
        project_root(_context(PACKAGE_DIR), None)


def test_from_the_package_folder_of_an_installed_patchflow_no_checkout_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside any checkout (the working folder has no VERSION or tasks.py above it), the package's
    own tasks module does not make one."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="No PrimeFlow checkout found"):
        project_root(_context(PACKAGE_DIR), None)
