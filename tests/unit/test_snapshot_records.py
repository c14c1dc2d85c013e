"""The snapshot of an apply with migrations (issue 26), without a server: its name, its record in
``.patchflow/snapshots.json``, when it expires, the work it adds to the stopped window's estimate
and what the plan says. The server side is in tests/integration/test_snapshot_window.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from patchflow.lifecycle.apply_dump import dump_place
from patchflow.lifecycle.planning import Plan
from patchflow.manifest import Entry, TreeDiff
from patchflow.paths import ProjectPaths
from patchflow.snapshot import (
    FAILED,
    PROVEN,
    SnapshotRecord,
    expires_at,
    expiry_reason,
    forget_snapshots,
    read_snapshots,
    record_snapshot,
    snapshot_name,
    update_snapshot,
)
from patchflow.space import Need
from patchflow.stopped_window import estimate_window, plan_work, step_estimate

BACKUP = "pre-patch-v2.3.0_20250101T143022Z_3f9a1c"


def test_the_name_comes_from_the_backup_and_fits_postgresql() -> None:
    assert snapshot_name("primeflow", BACKUP) == "primeflow_snap_20250101T143022Z_3f9a1c"
    assert snapshot_name("primeflow", BACKUP) == snapshot_name("primeflow", BACKUP), "deterministic"
    long = snapshot_name("d" * 60, BACKUP)
    assert len(long.encode()) <= 63 and long.endswith("_snap_20250101T143022Z_3f9a1c")
    assert snapshot_name("d" * 60, BACKUP) != snapshot_name("d" * 59 + "e", BACKUP), "cut names keep a hash"
    odd = snapshot_name("primeflow", "hand-made")
    assert odd.startswith("primeflow_snap_") and len(odd) == len("primeflow_snap_") + 12


def _paths(tmp_path: Path) -> ProjectPaths:
    return ProjectPaths(tmp_path, tmp_path / "patches", tmp_path / "backups", tmp_path / ".patchflow")


def test_the_record_is_written_before_the_copy_and_follows_it(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    assert read_snapshots(paths) == []
    record_snapshot(paths, "db_snap_a", "db", BACKUP)
    [item] = read_snapshots(paths)
    assert item["created_at"] == "" and item["dump"] == "pending" and item["recorded_at"]
    update_snapshot(paths, "db_snap_a", created_at="2025-01-01T14:30:23.000000Z")
    update_snapshot(paths, "db_snap_a", dump=FAILED, dump_error="disk on fire")
    [item] = read_snapshots(paths)
    assert (item["created_at"], item["dump"], item["dump_error"]) == (
        "2025-01-01T14:30:23.000000Z",
        FAILED,
        "disk on fire",
    )
    record_snapshot(paths, "db_snap_b", "db", "pre-patch-v2.4.0_20250102T000000Z_aaaaaa")
    forget_snapshots(paths, {"db_snap_a"})
    assert [i["name"] for i in read_snapshots(paths)] == ["db_snap_b"]
    paths.snapshots.write_text("not json")
    assert read_snapshots(paths) == []


def _record(dump: str, created_at: str = "2025-01-01T12:00:00.000000Z", backup: str = BACKUP) -> SnapshotRecord:
    return {
        "name": "db_snap_x",
        "database": "db",
        "backup": backup,
        "recorded_at": created_at,
        "created_at": created_at,
        "dump": dump,
        "dump_error": "",
    }


NOON = 1735732800.0  # 2025-01-01T12:00:00Z


@pytest.mark.parametrize(
    ("record", "hours", "now", "reason"),
    [
        (_record(PROVEN), 6.0, NOON + 5 * 3600, ""),
        (_record(PROVEN), 6.0, NOON + 6 * 3600, "its dump is proven and it was kept 6 h"),
        (_record(PROVEN), 0.0, NOON, "its dump is proven and it was kept 0 h"),
        (_record("pending"), 0.0, NOON + 99 * 3600, ""),  # its backup's only copy of the database
        (_record(FAILED), 0.0, NOON + 99 * 3600, ""),
        (_record(PROVEN, created_at=""), 0.0, NOON, ""),  # never made: its run's undo drops it
        (_record(FAILED, backup="gone"), 6.0, NOON, "its backup gone is gone"),
    ],
    ids=["young", "expired", "zero-hours", "dump-pending", "dump-failed", "never-made", "backup-pruned"],
)
def test_a_snapshot_expires_only_once_its_dump_is_proven_or_its_backup_is_gone(
    record: SnapshotRecord, hours: float, now: float, reason: str
) -> None:
    assert (
        expiry_reason(record, hours, {BACKUP}, now).startswith(reason)
        if reason
        else not expiry_reason(record, hours, {BACKUP}, now)
    )
    if record["dump"] == PROVEN and record["created_at"]:
        assert expires_at(record, hours) == NOON + hours * 3600
    else:
        assert expires_at(record, hours) is None


def _plan(*, pending: list[str] | None, snapshot: bool, no_snapshot: str = "", database: int = 5000) -> Plan:
    diff = TreeDiff([], ["b.js"], ["d.js"])
    needs = [Need(Path("/srv"), "database dump", database, 1)]
    plan = Plan("2.3.0", "2.2.0", diff, [], [], pending, "builtin", [], "none", [], needs, "")
    plan.old_entries = {p: Entry(p, "file", size=100) for p in diff.changed + diff.deleted}
    plan.snapshot, plan.no_snapshot = snapshot, no_snapshot
    return plan


def test_with_a_snapshot_the_database_is_snapshot_work_not_backup_work() -> None:
    snap = _plan(pending=["m1"], snapshot=True)
    assert plan_work(snap) == {"files": 2, "backup_bytes": 200, "migrations": 1, "snapshot_bytes": 5000}
    assert dump_place(snap).startswith("after the restart, from a snapshot: 1 migration(s) pending")
    inside = _plan(pending=["m1"], snapshot=False, no_snapshot="role app may not create databases (no CREATEDB)")
    assert plan_work(inside) == {"files": 2, "backup_bytes": 5200, "migrations": 1}
    place = dump_place(inside)
    assert place.startswith("after the stop, inside the stopped window: 1 migration(s) pending")
    assert place.endswith("; no snapshot: role app may not create databases (no CREATEDB)")


def _apply(steps: dict[str, float], work: dict[str, int]) -> dict[str, Any]:
    return {
        "action": "apply",
        "result": "success",
        "stopped_seconds": sum(steps.values()),
        "steps": steps,
        "work": work,
    }


OLD_STEPS = {"stop": 1.0, "backup": 10.0, "switch": 1.0, "migrate": 0.5, "start": 3.0, "health": 0.5}
OLD_WORK = {"files": 100, "backup_bytes": 10_000, "migrations": 1}  # the database dumped inside the window


def test_a_snapshot_never_timed_here_is_estimated_at_the_dump_rate_then_by_its_own() -> None:
    work: Any = {"files": 100, "backup_bytes": 0, "migrations": 1, "snapshot_bytes": 10_000}
    older = [_apply(OLD_STEPS, OLD_WORK)]
    assert step_estimate(older, work, "snapshot") == pytest.approx(10.0), "the dump's rate: an upper bound"
    assert step_estimate([], work, "snapshot") is None
    estimate = estimate_window(older, work)
    assert "snapshot 10.0 s" in estimate.describe()
    timed = [
        *older,
        _apply(
            {**OLD_STEPS, "snapshot": 0.5, "backup": 0.1},
            {**OLD_WORK, "backup_bytes": 100, **{"snapshot_bytes": 10_000}},
        ),
    ]
    assert step_estimate(timed, work, "snapshot") == pytest.approx(0.5)
    # an older record without the step is still a detailed one; a patch without a snapshot omits it
    assert "snapshot" not in estimate_window(older, OLD_WORK).describe()
    assert estimate_window(older, OLD_WORK).seconds == pytest.approx(sum(OLD_STEPS.values()))
