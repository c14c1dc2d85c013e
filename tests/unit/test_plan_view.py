"""The plan of a large patch (issue 19, fault 6): paths summarised by folder, the stopped window
estimated from this install's history of the same steps, what a run records for the next
estimate. Table-driven; the real apply's plan is in tests/integration/test_plan_summary.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from patchflow.lifecycle.apply_dump import dump_place
from patchflow.lifecycle.planning import Plan
from patchflow.manifest import Entry, TreeDiff
from patchflow.space import Need
from patchflow.stopped_window import STOPPED_STEPS, estimate_window, plan_work, step_record
from patchflow.tasks.plan_view import FILE_LIST_LIMIT, file_lines, folder_lines


def _diff(added: tuple[str, ...] | list[str] = (), changed: tuple[str, ...] | list[str] = (),
          deleted: tuple[str, ...] | list[str] = ()) -> TreeDiff:  # fmt: skip
    return TreeDiff(sorted(added), sorted(changed), sorted(deleted))


def test_a_small_patch_lists_each_path() -> None:
    assert folder_lines(_diff(added=[f"src/{n}.js" for n in range(FILE_LIST_LIMIT)])) is None


def test_a_large_patch_is_summarised_by_folder_busiest_first() -> None:
    diff = _diff(
        added=[f"src/components/new{n}.js" for n in range(4)] + ["README.md"],
        changed=[f"src/components/c{n}.js" for n in range(312)] + [f"apps/api/r{n}.js" for n in range(7)],
        deleted=["apps/api/old/x.js"],
    )
    assert folder_lines(diff) == [
        "src/components/  312 changed, 4 added",
        "apps/api/        7 changed, 1 deleted",
        "(top level)      1 added",
    ]


def test_too_many_folders_are_cut_one_level_up_and_the_rest_counted() -> None:
    many = _diff(changed=[f"pkg{n}/sub{m}/f.js" for n in range(3) for m in range(15)])
    assert folder_lines(many) == ["pkg0/  15 changed", "pkg1/  15 changed", "pkg2/  15 changed"]
    wide = _diff(changed=[f"pkg{n:02}/f.js" for n in range(FILE_LIST_LIMIT + 5)])
    lines = folder_lines(wide)
    assert lines is not None and len(lines) == FILE_LIST_LIMIT + 1
    assert lines[-1] == "... 5 more folders (5 paths)"


def _plan(diff: TreeDiff, *, pending: list[str] | None = None, database: int = 0) -> Plan:
    old = {p: Entry(p, "file", size=100) for p in diff.changed + diff.deleted}
    needs = [Need(Path("/srv"), "database dump", database, 1)]
    plan = Plan("2.3.0", "2.2.0", diff, [], [], pending, "builtin", [], "none", [], needs, "")
    plan.old_entries = old
    return plan


def test_the_summary_still_names_pyproject_and_where_the_whole_list_is() -> None:
    diff = _diff(added=[f"src/x/{n}.js" for n in range(30)], changed=["pyproject.toml"])
    lines = file_lines(_plan(diff))
    assert lines[0].startswith("31 paths, by folder (each path: apply-patch --dry-run --list-files")
    assert "  src/x/       30 added" in lines
    assert lines[-1] == "C pyproject.toml  (patchflow's release settings unchanged)"
    every = file_lines(_plan(diff), every=True)
    assert len(every) == 31 and "A src/x/7.js" in every


def test_the_work_a_run_records_for_the_next_estimate() -> None:
    plan = _plan(_diff(added=["a.js"], changed=["b.js", "c.js"], deleted=["d.js"]), pending=["m1"], database=5000)
    assert plan_work(plan) == {"files": 4, "backup_bytes": 3 * 100 + 5000, "migrations": 1}
    assert step_record({"stop": 1.0}, plan) == {"steps": {"stop": 1.0}, "work": plan_work(plan)}
    assert step_record({}, None) == {}


def test_a_dump_before_the_stop_is_not_work_of_the_stopped_window() -> None:
    """No pending migration: the database is dumped before the stop (the ``dump`` step), so the
    stopped backup step's work is the files alone; the plan says where the dump is taken and why."""
    diff = _diff(changed=["b.js"], deleted=["d.js"])
    quiet = _plan(diff, pending=[], database=5000)
    assert quiet.dump_before_stop
    assert plan_work(quiet) == {"files": 2, "backup_bytes": 2 * 100, "migrations": 0}
    assert dump_place(quiet).startswith("before the stop")
    migrating = _plan(diff, pending=["m1", "m2"], database=5000)
    assert not migrating.dump_before_stop
    assert dump_place(migrating).startswith("after the stop, inside the stopped window: 2 migration(s) pending")
    no_database = _plan(diff, pending=None, database=0)
    assert not no_database.dump_before_stop and dump_place(no_database) == ""


def _record(steps: dict[str, float], work: dict[str, int], **extra: Any) -> dict[str, Any]:
    stopped = sum(steps.get(s, 0.0) for s in STOPPED_STEPS)
    return {"action": "apply", "result": "success", "stopped_seconds": stopped, "steps": steps, "work": work, **extra}


STEPS = {"stop": 1.0, "backup": 2.0, "switch": 1.0, "migrate": 0.5, "start": 3.0, "health": 0.5}
WORK = {"files": 100, "backup_bytes": 1000, "migrations": 1}

ESTIMATES = [
    ("no history yet", [], WORK, None, "no history yet"),
    (
        "older records: the median of their stopped windows",
        [{"action": "apply", "result": "success", "stopped_seconds": s} for s in (10.0, 30.0, 12.0)],
        WORK,
        12.0,
        "median stopped window of the last 3 applies",
    ),
    ("the same work: the same steps", [_record(STEPS, WORK)], WORK, 8.0, "from the last 1 apply on this install"),
    (
        "ten times the files, bytes and migrations: switch, backup and migrate ten times longer",
        [_record(STEPS, WORK)],
        {"files": 1000, "backup_bytes": 10000, "migrations": 10},
        1.0 + 20.0 + 10.0 + 5.0 + 3.0 + 0.5,
        "scaled to this patch's paths, bytes and migrations",
    ),
    (
        "no migration this time: migrate as long as runs without one took",
        [_record(STEPS, WORK), _record({**STEPS, "migrate": 0.1}, {**WORK, "migrations": 0})],
        {**WORK, "migrations": 0},
        1.0 + 2.0 + 1.0 + 0.1 + 3.0 + 0.5,
        "from the last 2 applies",
    ),
    (
        "failed, rolled back and recovered applies are left out",
        [
            _record(STEPS, WORK),
            _record({**STEPS, "start": 99.0}, WORK, result="rolled_back"),
            _record({**STEPS, "start": 99.0}, WORK, recovered=True),
            {"action": "rollback", "result": "success", "stopped_seconds": 50.0},
        ],
        WORK,
        8.0,
        "from the last 1 apply",
    ),
]


@pytest.mark.parametrize(
    ("history", "work", "seconds", "basis"), [case[1:] for case in ESTIMATES], ids=[case[0] for case in ESTIMATES]
)
def test_the_stopped_window_is_estimated_from_this_install_s_history(
    history: list[dict[str, Any]], work: dict[str, int], seconds: float | None, basis: str
) -> None:
    estimate = estimate_window(history, work)
    assert estimate.seconds == pytest.approx(seconds) if seconds is not None else estimate.seconds is None
    assert basis in estimate.describe()


def test_a_rehearsal_replaces_the_migrate_step_s_estimate() -> None:
    # STEPS' migrate step took 0.5 s; the rehearsal on a copy of this database says 42 s
    estimate = estimate_window([_record(STEPS, WORK)], WORK, rehearsed=42.0)
    assert estimate.seconds == pytest.approx(8.0 - 0.5 + 42.0)
    assert "migrate 42.0 s" in estimate.describe() and "migrate as rehearsed on a copy of this database" in (
        estimate.describe()
    )
    alone = estimate_window([], WORK, rehearsed=3.5)
    assert alone.seconds == 3.5 and "as rehearsed on a copy of this database; no apply has completed" in (
        alone.describe()
    )
    assert estimate_window([], WORK).seconds is None
