"""The one recovery command patch-status names, table-driven over what a killed run can leave: a
journal (apply before or after its commit, automatic rollback, rollback-patch), a damaged journal,
a lock (stale or held by a live run), leftovers in the state folder, or nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from patchflow.lifecycle.journal import Journal
from patchflow.lifecycle.recovery import recovery_advice
from patchflow.lifecycle.steps import ROLLING_BACK

STALE = {"state": "stale", "action": "apply", "version": "2.3.0", "pid": 1, "host": "h"}
HELD = {"state": "held", "action": "apply", "version": "2.3.0", "pid": 1, "host": "h"}


def journal(action: str, done: list[str], phase: str = "forward", undone: tuple[str, ...] = ()) -> Journal:
    """A journal whose steps ``done`` were done in ``phase``, then (apply) ``undone`` undos done."""
    record = Journal(Path("/nonexistent/journal.json"), action, "2.3.0", "2.2.0", backup="pre-patch-x")
    record.steps = [{"name": name, "state": "done", "phase": phase} for name in done]
    record.steps += [{"name": name, "state": "done", "phase": ROLLING_BACK} for name in undone]
    record.phase = ROLLING_BACK if undone else phase
    return record


CASES: list[tuple[str, Journal | None, str | None, dict[str, Any] | None, list[str], list[str] | None]] = [
    ("nothing left", None, None, None, [], None),
    (
        "apply killed before its commit: undo it",
        journal("apply", ["lock", "stage", "stop", "backup", "switch"]),
        None,
        STALE,
        [],
        ["rollback-patch", "--version", "2.3.0", "--break-lock", "--yes"],
    ),
    (
        "apply killed inside its commit: finish it",
        journal("apply", ["lock", "stage", "stop", "backup", "switch", "migrate", "start", "health", "commit"]),
        None,
        STALE,
        [],
        ["apply-patch", "--version", "2.3.0", "--break-lock", "--yes"],
    ),
    (
        "automatic rollback killed: finish the undo",
        journal("apply", ["lock", "stage", "stop", "backup", "switch", "migrate", "start"], undone=("stop-new",)),
        None,
        STALE,
        [],
        ["rollback-patch", "--version", "2.3.0", "--break-lock", "--yes"],
    ),
    (
        "rollback killed: finish it",
        journal("rollback", ["lock", "stop"], ROLLING_BACK),
        None,
        STALE,
        [],
        ["rollback-patch", "--version", "2.3.0", "--break-lock", "--yes"],
    ),
    (
        "journal without a lock record (killed while taking the lock)",
        journal("apply", ["lock"]),
        None,
        None,
        [],
        ["rollback-patch", "--version", "2.3.0", "--yes"],
    ),
    (
        "killed after the commit, before the lock was released",
        None,
        None,
        STALE,
        ["trash-staging-v2.3.0-1"],
        ["apply-patch", "--version", "2.3.0", "--break-lock", "--yes"],
    ),
    ("killed while deleting the trash", None, None, None, ["trash-x"], ["apply-patch", "--version", "2.3.0", "--yes"]),
]


@pytest.mark.parametrize(("name", "record", "damaged", "lock", "left", "expected"), CASES, ids=[c[0] for c in CASES])
def test_the_recovery_command(
    name: str,
    record: Journal | None,
    damaged: str | None,
    lock: dict[str, Any] | None,
    left: list[str],
    expected: list[str] | None,
) -> None:
    advice = recovery_advice(record, damaged, lock, "2.3.0", left)
    if expected is None:
        assert advice is None
        return
    assert advice is not None
    assert advice["args"] == expected
    assert advice["command"] == "inv " + " ".join(expected)
    assert advice["does"]


def test_no_command_while_a_run_holds_the_lock() -> None:
    advice = recovery_advice(journal("apply", ["lock"]), None, HELD, "2.2.0", [])
    assert advice is not None and advice["command"] is None
    assert "is running" in advice["does"] and "wait" in advice["does"]


def test_no_command_for_a_damaged_journal() -> None:
    advice = recovery_advice(None, "The journal is damaged. Check by hand.", STALE, "2.2.0", [])
    assert advice is not None and advice["command"] is None
    assert "damaged" in advice["does"]


def test_no_command_when_the_installed_version_is_unknown() -> None:
    advice = recovery_advice(None, None, STALE, None, ["trash-x"])
    assert advice is not None and advice["command"] is None
    assert "by hand" in advice["does"]
