"""The recovery decision, table-driven: every journaled step of apply and rollback, killed before
it started, inside it (started, not done) and after it (done), gives exactly one decision.

The step lists are the real ones, read as data (:data:`patchflow.lifecycle.apply.APPLY_STEPS`,
:data:`patchflow.lifecycle.rollback.ROLLBACK_STEPS`): no run is built and nothing runs; the journal
records a killed run would leave are built here, and
:func:`patchflow.lifecycle.recovery.decide_recovery` (pure) is asked what to do.
"""

from __future__ import annotations

from typing import Any

import pytest

from patchflow.lifecycle.apply import APPLY_STEPS
from patchflow.lifecycle.recovery import decide_recovery
from patchflow.lifecycle.rollback import ROLLBACK_STEPS
from patchflow.lifecycle.steps import ROLLING_BACK, Decision, StepSpec

UNDO_ALL = ("start", "migrate", "switch", "backup", "snapshot", "stop", "dump", "stage")

# (step, moment) -> the decision after an apply killed there
APPLY_TABLE: dict[tuple[str, str], Decision] = {
    ("lock", "inside"): Decision("nothing"),
    ("lock", "after"): Decision("nothing"),
    ("stage", "before"): Decision("nothing"),
    ("stage", "inside"): Decision("undo", ("stage",)),
    ("stage", "after"): Decision("undo", ("stage",)),
    # the dump before the stop (no migration pending): nothing is stopped yet, its folder is dropped
    ("dump", "before"): Decision("undo", ("stage",)),
    ("dump", "inside"): Decision("undo", ("dump", "stage")),
    ("dump", "after"): Decision("undo", ("dump", "stage")),
    ("stop", "before"): Decision("undo", ("dump", "stage")),
    ("stop", "inside"): Decision("undo", ("stop", "dump", "stage")),
    ("stop", "after"): Decision("undo", ("stop", "dump", "stage")),
    # the snapshot on the database server (pending migrations): its name is noted before it exists
    ("snapshot", "before"): Decision("undo", ("stop", "dump", "stage")),
    ("snapshot", "inside"): Decision("undo", ("snapshot", "stop", "dump", "stage")),
    ("snapshot", "after"): Decision("undo", ("snapshot", "stop", "dump", "stage")),
    ("backup", "before"): Decision("undo", ("snapshot", "stop", "dump", "stage")),
    ("backup", "inside"): Decision("undo", ("backup", "snapshot", "stop", "dump", "stage")),
    ("backup", "after"): Decision("undo", ("backup", "snapshot", "stop", "dump", "stage")),
    ("switch", "before"): Decision("undo", ("backup", "snapshot", "stop", "dump", "stage")),
    ("switch", "inside"): Decision("undo", ("switch", "backup", "snapshot", "stop", "dump", "stage")),
    ("switch", "after"): Decision("undo", ("switch", "backup", "snapshot", "stop", "dump", "stage")),
    ("migrate", "before"): Decision("undo", ("switch", "backup", "snapshot", "stop", "dump", "stage")),
    ("migrate", "inside"): Decision("undo", ("migrate", "switch", "backup", "snapshot", "stop", "dump", "stage")),
    ("migrate", "after"): Decision("undo", ("migrate", "switch", "backup", "snapshot", "stop", "dump", "stage")),
    ("start", "before"): Decision("undo", ("migrate", "switch", "backup", "snapshot", "stop", "dump", "stage")),
    ("start", "inside"): Decision("undo", UNDO_ALL),
    ("start", "after"): Decision("undo", UNDO_ALL),
    ("health", "before"): Decision("undo", UNDO_ALL),
    ("health", "inside"): Decision("undo", UNDO_ALL),
    ("health", "after"): Decision("undo", UNDO_ALL),
    # killed before the commit started: the new version was healthy but never committed: undone
    ("commit", "before"): Decision("undo", UNDO_ALL),
    # the commit was reached: it is finished (both steps are idempotent)
    ("commit", "inside"): Decision("finish", ("commit", "dump-snapshot", "cleanup")),
    ("commit", "after"): Decision("finish", ("dump-snapshot", "cleanup")),
    # the dump of the snapshot after the commit (it never fails the apply): taken again, then clean-up
    ("dump-snapshot", "before"): Decision("finish", ("dump-snapshot", "cleanup")),
    ("dump-snapshot", "inside"): Decision("finish", ("dump-snapshot", "cleanup")),
    ("dump-snapshot", "after"): Decision("finish", ("cleanup",)),
    ("cleanup", "before"): Decision("finish", ("cleanup",)),
    ("cleanup", "inside"): Decision("finish", ("cleanup",)),
    ("cleanup", "after"): Decision("nothing"),
}

ROLLBACK_ORDER = ("lock", "stop", "restore-code", "restore-database", "start", "health", "commit")


def rollback_expected(step: str, moment: str) -> Decision:
    """A rollback is always finished: from the step that was not done; never from lock (its last
    act writes the journal, and the recovering run holds the lock: running it again would find
    the lock held, a failure the kill matrix found)."""
    index = ROLLBACK_ORDER.index(step)
    start = max(1, index + 1 if moment == "after" else index)
    rest = ROLLBACK_ORDER[start:]
    return Decision("finish", rest) if rest else Decision("nothing")


def journal_records(
    steps: tuple[StepSpec, ...], step: str, moment: str, phase: str = "forward"
) -> list[dict[str, Any]]:
    """The step records of a journal whose run was killed at ``step`` ``moment``."""
    records = []
    for candidate in (s for s in steps if s.journaled):
        if candidate.name == step:
            if moment == "inside":
                records.append({"name": step, "state": "started", "phase": phase})
            elif moment == "after":
                records.append({"name": step, "state": "done", "phase": phase})
            break
        records.append({"name": candidate.name, "state": "done", "phase": phase})
    return records


def test_the_lists_are_the_documented_ones() -> None:
    assert [s.name for s in APPLY_STEPS] == [
        "verify", "plan", "lock", "stage", "dump", "stop", "snapshot", "backup", "switch", "migrate", "start",
        "health", "commit", "dump-snapshot", "cleanup",
    ]  # fmt: skip
    assert [s.name for s in ROLLBACK_STEPS] == ["choose", *ROLLBACK_ORDER]
    assert [s.name for s in APPLY_STEPS if s.undo] == list(reversed(UNDO_ALL))
    assert all(not s.undo for s in ROLLBACK_STEPS), "a rollback is finished, never undone"
    assert [s.name for s in APPLY_STEPS if s.no_return] == ["commit"]
    assert [s.name for s in APPLY_STEPS if not s.journaled] == ["verify", "plan"]
    assert [s.undo_label for s in APPLY_STEPS if s.undo] == [
        "drop-staging", "drop-dump", "start-old", "drop-snapshot", "drop-backup", "restore-code", "restore-database",
        "stop-new",
    ]  # fmt: skip


@pytest.mark.parametrize(("step", "moment"), sorted(APPLY_TABLE))
def test_apply_killed_at(step: str, moment: str) -> None:
    records = journal_records(APPLY_STEPS, step, moment)
    assert decide_recovery("apply", APPLY_STEPS, records, "forward") == APPLY_TABLE[(step, moment)]


@pytest.mark.parametrize("step", ROLLBACK_ORDER)
@pytest.mark.parametrize("moment", ["before", "inside", "after"])
def test_rollback_killed_at(step: str, moment: str) -> None:
    records = journal_records(ROLLBACK_STEPS, step, moment, phase=ROLLING_BACK)
    assert decide_recovery("rollback", ROLLBACK_STEPS, records, ROLLING_BACK) == rollback_expected(step, moment)


@pytest.mark.parametrize(
    ("failed", "undone", "killed_inside", "expected"),
    [
        # health failed; the automatic rollback was killed before its first undo
        ("health", (), None, UNDO_ALL),
        # ... after stopping the new version
        ("health", ("start",), None, ("migrate", "switch", "backup", "snapshot", "stop", "dump", "stage")),
        # ... inside the database restore (the undo of migrate started, not done): it runs again
        ("health", ("start",), "migrate", ("migrate", "switch", "backup", "snapshot", "stop", "dump", "stage")),
        # ... after everything but the restart of the old version
        ("health", ("start", "migrate", "switch", "backup", "snapshot"), None, ("stop", "dump", "stage")),
        # the migration failed; its own undo (the restore) had not started
        ("migrate", (), None, ("migrate", "switch", "backup", "snapshot", "stop", "dump", "stage")),
        # every undo done: nothing is left but to clear the journal
        ("health", UNDO_ALL, None, ()),
    ],
)
def test_apply_killed_during_its_automatic_rollback(
    failed: str, undone: tuple[str, ...], killed_inside: str | None, expected: tuple[str, ...]
) -> None:
    records = journal_records(APPLY_STEPS, failed, "inside")
    records[-1]["state"] = "failed"
    label = {s.name: s.undo_label for s in APPLY_STEPS}
    records += [{"name": label[name], "state": "done", "phase": ROLLING_BACK} for name in undone]
    if killed_inside:
        records.append({"name": label[killed_inside], "state": "started", "phase": ROLLING_BACK})
    decision = decide_recovery("apply", APPLY_STEPS, records, ROLLING_BACK)
    assert decision == (Decision("undo", expected) if expected else Decision("nothing"))


def test_a_failed_rollback_is_finished_from_its_failed_step() -> None:
    records = journal_records(ROLLBACK_STEPS, "start", "inside", phase=ROLLING_BACK)
    records[-1]["state"] = "failed"
    assert decide_recovery("rollback", ROLLBACK_STEPS, records, ROLLING_BACK) == Decision(
        "finish", ("start", "health", "commit")
    )


def test_the_decision_reads_nothing_but_its_arguments() -> None:
    records = journal_records(APPLY_STEPS, "switch", "after")
    frozen = [dict(r) for r in records]
    first = decide_recovery("apply", APPLY_STEPS, records, "forward")
    assert decide_recovery("apply", APPLY_STEPS, records, "forward") == first
    assert records == frozen, "the journal records are not modified"
