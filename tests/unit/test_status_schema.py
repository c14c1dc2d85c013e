"""patch-status --json: the README's table, the TypedDicts of patchflow.status_schema and the JSON
collect_status emits name the same fields (a renamed key fails here); and what the history says
about applies (installed by, rolled back), table-driven. Real files in a real state folder; the
states a real process leaves (running, killed, restored) are in
tests/integration/test_patch_status_truth.py."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any, get_type_hints

import pytest
from support.status_schema import assert_matches_readme, children, documented, problems

from patchflow.config import load_settings
from patchflow.installed import InstalledRecord
from patchflow.status import collect_status
from patchflow.status_runs import annotate_history, installing_apply
from patchflow.status_schema import (
    SCHEMA_VERSION,
    BackupItem,
    DisplacedDatabase,
    HealthRecordJson,
    HistoryItem,
    InstalledRecordJson,
    InterruptedRun,
    LockInfo,
    PatchItem,
    RecoveryAdvice,
    RolledBack,
    RunningRun,
    StatusReport,
)
from patchflow.tasks.status_view import render_status

SHAPES = {
    "": StatusReport,
    "patches[]": PatchItem,
    "backups[]": BackupItem,
    "running": RunningRun,
    "interrupted": InterruptedRun,
    "lock": LockInfo,
    "recovery": RecoveryAdvice,
    "installed_record": InstalledRecordJson,
    "installed_record.health": HealthRecordJson,
    "displaced_databases[]": DisplacedDatabase,
    "history[]": HistoryItem,
    "history[].rolled_back": RolledBack,
}


@pytest.mark.parametrize("parent", sorted(SHAPES))
def test_the_typed_shapes_are_the_documented_ones(parent: str) -> None:
    assert set(get_type_hints(SHAPES[parent])) == set(children(documented(), parent))


def _apply(to: str, start: str, result: str = "success", backup: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"action": "apply", "from_version": None, "to_version": to, "started_at": start, "result": result,
            "backup": backup, "run_id": f"run-{start}", "user": "op", "host": "h", **extra}  # fmt: skip


def _rollback(frm: str, to: str, start: str, backup: str | None) -> dict[str, Any]:
    return {"action": "rollback", "from_version": frm, "to_version": to, "started_at": start, "result": "success",
            "backup": backup, "run_id": f"run-{start}", "user": "op", "host": "h"}  # fmt: skip


def _state(project: Path, history: list[dict[str, Any]], record: dict[str, Any] | None = None) -> None:
    state = project / ".patchflow"
    state.mkdir(parents=True, exist_ok=True)
    (state / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history), encoding="utf-8")
    if record is not None:
        (state / "installed.json").write_text(json.dumps(record), encoding="utf-8")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "VERSION").write_text("2.2.0\n", encoding="utf-8")
    (root / ".env").write_text("PATCHFLOW_DATABASE_MODE=none\nPATCHFLOW_SERVICE_MANAGER=none\n", encoding="utf-8")
    return root


def _status(project: Path) -> dict[str, Any]:
    data = collect_status(load_settings(project, environ={}))
    return json.loads(json.dumps(data))  # exactly what --json prints


def test_an_apply_rolled_back_by_rollback_patch_is_not_the_install(project: Path) -> None:
    """2.2.0 installed, 2.3.0 applied then rolled back: the install's record is 2.2.0's apply, and
    2.3.0's apply is shown rolled back, by rollback-patch, when."""
    history = [
        _apply("2.2.0", "2025-01-01T10:00:00.000000Z", backup="pre-patch-v2.2.0_a"),
        _apply("2.3.0", "2025-01-02T10:00:00.000000Z", backup="pre-patch-v2.3.0_b", from_version="2.2.0"),
        _rollback("2.3.0", "2.2.0", "2025-01-02T11:00:00.000000Z", "pre-patch-v2.3.0_b"),
    ]
    _state(project, history, {"version": "2.2.0", "backup": "pre-patch-v2.2.0_a"})
    status = _status(project)
    assert_matches_readme(status)
    assert status["schema_version"] == SCHEMA_VERSION
    assert status["last_apply"]["to_version"] == "2.2.0"
    assert status["latest_apply"]["to_version"] == "2.3.0"
    assert status["latest_apply"]["rolled_back"] == {"by": "rollback-patch", "at": "2025-01-02T11:00:00.000000Z"}
    assert [h.get("rolled_back") for h in status["history"]][:2] == [None, status["latest_apply"]["rolled_back"]]
    from io import StringIO

    from rich.console import Console

    out = StringIO()
    render_status(status, Console(file=out, width=200))
    text = " ".join(out.getvalue().split())
    assert "installed by: apply ? -> 2.2.0 at 2025-01-01 10:00:00Z" in text
    latest = "latest apply: 2.2.0 -> 2.3.0 at 2025-01-02 10:00:00Z: rolled back by rollback-patch at 2025-01-02 11:00"
    assert latest in text
    assert "success, rolled back later" in text


HISTORIES = [
    # (case, history, installed record (version, backup), installed version, installing start, rolled back flags)
    (
        "applied and still installed",
        [_apply("2.3.0", "t1", backup="b1")],
        ("2.3.0", "b1"),
        "2.3.0",
        "t1",
        [None],
    ),
    (
        "an automatic rollback: the apply never installed anything",
        [_apply("2.2.0", "t0", backup="b0"), _apply("2.3.0", "t1", "rolled_back", backup="b1", error="health: 500")],
        ("2.2.0", "b0"),
        "2.2.0",
        "t0",
        [None, "automatic rollback"],
    ),
    (
        "killed, undone by the recovery",
        [_apply("2.2.0", "t0", backup="b0"), _apply("2.3.0", "t1", "rolled_back", backup="b1", recovered=True)],
        ("2.2.0", "b0"),
        "2.2.0",
        "t0",
        [None, "recovery"],
    ),
    (
        "rolled back, then applied again: the second apply installed it",
        [
            _apply("2.3.0", "t1", backup="b1"),
            _rollback("2.3.0", "2.2.0", "t2", "b1"),
            _apply("2.3.0", "t3", backup="b3"),
        ],
        ("2.3.0", "b3"),
        "2.3.0",
        "t3",
        ["rollback-patch", None],
    ),
    (
        "older records without backups are matched by versions",
        [_apply("2.3.0", "t1", from_version="2.2.0"), _rollback("2.3.0", "2.2.0", "t2", None)],
        None,
        "2.2.0",
        None,
        ["rollback-patch"],
    ),
    (
        "a failed apply stopped nothing and undid nothing",
        [_apply("2.2.0", "t0", backup="b0"), _apply("2.3.0", "t1", "failed", error="stage: build failed")],
        ("2.2.0", "b0"),
        "2.2.0",
        "t0",
        [None, None],
    ),
]


@pytest.mark.parametrize(
    ("history", "record", "installed", "installing", "undone"),
    [case[1:] for case in HISTORIES],
    ids=[case[0] for case in HISTORIES],
)
def test_which_apply_installed_the_version_and_which_were_rolled_back(
    history: list[dict[str, Any]],
    record: tuple[str, str] | None,
    installed: str,
    installing: str | None,
    undone: list[str | None],
) -> None:
    annotated = annotate_history(history)
    applies = [r for r in annotated if r["action"] == "apply"]
    assert [r["rolled_back"]["by"] if r["rolled_back"] else None for r in applies] == undone
    found = installing_apply(annotated, InstalledRecord(*record) if record else None, installed)
    assert (found or {}).get("started_at") == installing


def test_an_interrupted_run_and_what_it_left_match_the_schema(project: Path) -> None:
    """A journal and a lock holder record whose process is gone (the OS lock is free): interrupted,
    stale lock, leftovers and the recovery command, every field as documented."""
    state = project / ".patchflow"
    state.mkdir()
    (state / "staging-v2.3.0").mkdir()
    journal = {
        "action": "apply", "version": "2.3.0", "from_version": "2.2.0", "started_at": "2025-01-02T10:00:00.000000Z",
        "pid": 999999, "host": socket.gethostname(), "phase": "forward", "backup": "pre-patch-v2.3.0_b",
        "steps": [{"name": "lock", "state": "done", "at": "2025-01-02T10:00:00.000000Z", "phase": "forward"},
                  {"name": "stage", "state": "started", "at": "2025-01-02T10:00:01.000000Z", "phase": "forward"}],
        "error": None, "notes": {}, "run_id": "abc",
    }  # fmt: skip
    (state / "journal.json").write_text(json.dumps(journal), encoding="utf-8")
    holder = {"pid": 999999, "host": socket.gethostname(), "user": "op", "started_at": "2025-01-02T10:00:00Z",
              "action": "apply", "version": "2.3.0"}  # fmt: skip
    (state / "apply.lock.json").write_text(json.dumps(holder), encoding="utf-8")
    (state / "displaced-databases.json").write_text(
        json.dumps([{"name": "db_before_rollback_x", "database": "db", "created_at": "2025-01-02T10:00:00.000000Z",
                     "backup": "pre-patch-v2.3.0_b", "rows_since": "2025-01-02T09:00:00.000000Z"}]),
        encoding="utf-8",
    )  # fmt: skip
    # a snapshot recorded by a run killed before the copy was made: listed, never hidden
    (state / "snapshots.json").write_text(
        json.dumps([{"name": "db_snap_20250102T100000Z_abcdef", "database": "db", "backup": "pre-patch-v2.3.0_b",
                     "recorded_at": "2025-01-02T10:00:02.000000Z", "created_at": "", "dump": "pending",
                     "dump_error": ""}]),
        encoding="utf-8",
    )  # fmt: skip
    status = _status(project)
    assert_matches_readme(status)
    [snapshot] = status["snapshots"]
    assert snapshot["created_at"] is None and snapshot["expires_at"] is None and snapshot["exists"] is None
    assert "no database is configured" in status["snapshots_note"]
    assert status["running"] is None
    assert status["interrupted"]["step"] == "stage" and status["lock"]["state"] == "stale"
    assert status["leftovers"] == ["staging-v2.3.0"]
    assert status["recovery"]["args"] == ["rollback-patch", "--version", "2.3.0", "--break-lock", "--yes"]
    [displaced] = status["displaced_databases"]
    assert displaced["exists"] is None and displaced["size_bytes"] is None and displaced["age_seconds"] > 0
    assert "no database is configured" in status["displaced_databases_note"]


def test_a_renamed_or_retyped_key_is_found() -> None:
    """The check itself: a key the README does not name, a wrong type and a missing field fail."""
    base: dict[str, Any] = {name: None for name in children(documented(), "")}
    base.update(schema_version=1, root="/srv", patches=[], backups=[], history=[], leftovers=[],
                displaced_databases=[], snapshots=[], damaged_state=[])  # fmt: skip
    assert problems(base) == []
    renamed = dict(base)
    renamed["installed"] = renamed.pop("installed_version")
    assert problems(renamed) == ["installed: not documented", "installed_version: documented, missing"]
    assert problems({**base, "schema_version": "1"}) == ["schema_version: str '1' is not integer"]
    assert problems({**base, "leftovers": [3]}) == ["leftovers: 3 is not a string"]
