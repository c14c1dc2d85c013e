"""Step lists as data: the specs of apply, rollback and create-patch are checked against their run
class when their module is imported (a spec naming a missing method fails the import), read
without building a run, and bound to a run's own methods."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path
from typing import cast

import pytest

from patchflow.context import Context
from patchflow.lifecycle.apply import APPLY_STEPS, ApplyRun
from patchflow.lifecycle.create import CREATE_STEPS, CreateRun
from patchflow.lifecycle.rollback import ROLLBACK_STEPS, RollbackRun
from patchflow.lifecycle.steps import StepSpec, bind, checked_specs
from patchflow.version import parse_version


def _import_file(path: Path) -> None:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(path.stem, None)


DECLARING_MODULE = """
from patchflow.lifecycle.steps import StepSpec, checked_specs


class Run:
    def lock(self) -> None: ...
    def stage(self) -> None: ...
    def drop_staging(self) -> None: ...


STEPS = checked_specs(Run, (StepSpec("lock", "lock"), {spec}))
"""


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ('StepSpec("stage", "stgae", undo="drop_staging")', "do='stgae'"),
        ('StepSpec("stage", "stage", undo="drop_stagin")', "undo='drop_stagin'"),
    ],
)
def test_a_spec_naming_a_missing_method_fails_the_import_of_its_module(tmp_path: Path, spec: str, named: str) -> None:
    module = tmp_path / "declares_a_typo.py"
    module.write_text(textwrap.dedent(DECLARING_MODULE.format(spec=spec)), encoding="utf-8")
    with pytest.raises(TypeError, match=f"step 'stage' names {named}, which is not a method of Run"):
        _import_file(module)


def test_a_well_formed_module_imports(tmp_path: Path) -> None:
    module = tmp_path / "declares_well.py"
    module.write_text(
        textwrap.dedent(DECLARING_MODULE.format(spec='StepSpec("stage", "stage", undo="drop_staging")')),
        encoding="utf-8",
    )
    _import_file(module)


def test_a_step_name_declared_twice_is_refused() -> None:
    class Run:
        def lock(self) -> None: ...

    with pytest.raises(TypeError, match="step 'lock' is declared twice"):
        checked_specs(Run, (StepSpec("lock", "lock"), StepSpec("lock", "lock")))


def test_an_attribute_that_is_not_a_method_is_refused() -> None:
    class Run:
        lock = "not callable"

    with pytest.raises(TypeError, match="do='lock', which is not a method"):
        checked_specs(Run, (StepSpec("lock", "lock"),))


@pytest.mark.parametrize(
    ("specs", "owner"), [(APPLY_STEPS, ApplyRun), (ROLLBACK_STEPS, RollbackRun), (CREATE_STEPS, CreateRun)]
)
def test_the_lifecycles_are_data_bound_to_a_runs_own_methods(specs: tuple[StepSpec, ...], owner: type) -> None:
    assert all(isinstance(s, StepSpec) for s in specs), "read without building a run"
    run = object.__new__(owner)  # no state is needed to bind: nothing runs
    for spec, step in zip(specs, bind(specs, run), strict=True):
        assert step.spec is spec
        assert step.do.__func__ is getattr(owner, spec.do)  # type: ignore[attr-defined]
        assert step.do.__self__ is run  # type: ignore[attr-defined]
        if spec.undo:
            assert step.undo is not None and step.undo.__func__ is getattr(owner, spec.undo)  # type: ignore[attr-defined]
        else:
            assert step.undo is None


def test_a_run_binds_the_declared_list() -> None:
    run = ApplyRun(cast(Context, None), parse_version("2.3.0"))
    assert [s.name for s in run.steps()] == [s.name for s in APPLY_STEPS]
    assert [s.undo_label for s in run.steps() if s.undo is not None] == [s.undo_label for s in APPLY_STEPS if s.undo]


def test_the_readme_step_table_is_the_declared_apply() -> None:
    """The docs read the lifecycle from the specs: the README's table of apply steps names every
    step of APPLY_STEPS in order, each with its undo's journal name (and none for a step without)."""
    import patchflow

    readme = (Path(patchflow.__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    lines = readme.split("## Apply, rollback, crash safety", 1)[1].splitlines()
    start = lines.index("| step | does | undo (automatic rollback, in reverse) |") + 2
    table = []
    for line in lines[start:]:
        if not line.startswith("| "):
            break
        step, _, undo = (cell.strip() for cell in line.split("|")[1:-1])
        table.append((step, undo.split(":")[0].split(" ")[0]))
    assert table == [(s.name, s.undo_label if s.undo else "") for s in APPLY_STEPS]
