"""Crash safety: a real SIGKILL at every step boundary of apply-patch (and of the rollbacks),
then ``patch-status`` must report the interrupted operation and ``apply-patch`` or
``rollback-patch`` (with ``--break-lock``) must end on *exactly* the new or *exactly* the old version.

The kill comes from patchflow's own test hook (``PATCHFLOW_TEST_KILL_AT=<step>`` kills the process
just before the step is journaled as started, ``<step>:after`` just after it is journaled done),
so the dead process leaves what a power cut or ``kill -9`` at that instant would leave: a journal,
a stale lock, services possibly stopped or running the new code, a half-switched database.

"Exactly the new version" is checked against what a clean apply produces, computed independently
of patchflow from the two patch manifests (:func:`expected_tree_after_apply`; the helper itself is
checked against a real clean apply in :func:`test_expected_tree_matches_a_clean_apply`). "Exactly
the old version" is the tree state and the full ``pg_dump`` taken before the apply.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support.exact import (
    NEW,
    OLD,
    assert_clean_after,
    assert_exactly_new,
    assert_exactly_old,
    read_manifest,
    status_json,
)
from support.installs import Install, get

from patchflow.lifecycle.apply import APPLY_STEPS as APPLY_SPECS
from patchflow.lifecycle.rollback import ROLLBACK_STEPS as ROLLBACK_SPECS

pytestmark = pytest.mark.integration

KILL_HOOK = "PATCHFLOW_TEST_KILL_AT"
KILLED = (-9, 137)  # SIGKILL as seen by subprocess (-9) or through a shell (128 + 9)

# the journaled steps, read from the real lists: a step added or moved is killed here too
APPLY_STEPS = tuple(s.name for s in APPLY_SPECS if s.journaled)
# Nothing happens between one step's ":after" hook and the next step's "before" hook, so those two
# kills leave the same state: the distinct states are the first step's "before" and every ":after".
APPLY_BOUNDARIES = ("stage", *(f"{step}:after" for step in APPLY_STEPS[1:]))
ROLLBACK_STEPS = tuple(s.name for s in ROLLBACK_SPECS if s.journaled)
ROLLBACK_BOUNDARIES = ("stop", *(f"{step}:after" for step in ROLLBACK_STEPS[1:]))
# the automatic rollback of an apply whose health check failed: the undos, in order
UNDO_STEPS = tuple(
    s.undo_label for s in reversed(APPLY_SPECS[: APPLY_STEPS.index("health") + 2]) if s.undo
)  # stop-new, restore-database, restore-code, drop-backup, start-old, drop-dump, drop-staging
AUTO_ROLLBACK_BOUNDARIES = (UNDO_STEPS[0], *(f"{step}:after" for step in UNDO_STEPS))


def boundaries(points: tuple[str, ...], *in_make_test: str) -> list[Any]:
    """Every boundary as a parameter; those not in ``in_make_test`` are marked ``stress`` (run by
    ``nox -s stress``): make test keeps a spread of them, and the kill matrix
    (tests/integration/test_kill_matrix.py) kills at random instants of every step."""
    assert set(in_make_test) <= set(points), set(in_make_test) - set(points)
    return [p if p in in_make_test else pytest.param(p, marks=pytest.mark.stress) for p in points]


# -- helpers ----------------------------------------------------------------------------------


def last_journaled_step(boundary: str, steps: tuple[str, ...]) -> str | None:
    """The step the journal names after a kill at ``boundary``: a kill *before* a step leaves the
    previous step as the last one; a kill *after* leaves that step."""
    name, _, moment = boundary.partition(":")
    if moment == "after":
        return name
    index = steps.index(name)
    return steps[index - 1] if index else None


def reached(boundary: str, step: str) -> bool:
    """True when a kill at ``boundary`` happens after ``step`` finished."""
    name, _, moment = boundary.partition(":")
    index, wanted = APPLY_STEPS.index(name), APPLY_STEPS.index(step)
    return index > wanted or (index == wanted and moment == "after")


def killed_run(install: Install, boundary: str, *args: str) -> None:
    """Run ``inv <args>`` with the kill hook at ``boundary`` and check it died of SIGKILL."""
    done = install.inv(*args, env={KILL_HOOK: boundary})
    assert done.returncode in KILLED, (
        f"expected a SIGKILL at {boundary}, got exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    )


def assert_interrupted(
    install: Install,
    *,
    action: str,
    phase: str,
    step: str | None,
    step_state: str = "done",
    installed: str | None = None,
) -> dict[str, Any]:
    """patch-status (JSON and text) reports the interrupted operation, its last step and whether
    that step had finished, and a stale lock."""
    status = status_json(install)
    interrupted = status["interrupted"]
    assert interrupted is not None, status
    assert interrupted["action"] == action
    assert interrupted["version"] == NEW
    assert interrupted["phase"] == phase
    assert interrupted["step"] == step
    assert interrupted["step_state"] == (step_state if step else None)
    if installed is not None:
        assert status["installed_version"] == installed
    assert status["lock"] is not None and status["lock"]["state"] == "stale", status["lock"]
    text = install.inv("patch-status")
    assert text.returncode == 0, text.stderr + text.stdout
    flat = " ".join(text.stdout.split())
    assert f"{action} of {NEW}" in flat, text.stdout
    assert "--break-lock" in flat and "lock stale" in flat, text.stdout
    if step is not None:
        assert f"step {step} ({step_state})" in flat, text.stdout
    else:
        assert "before its first step" in flat, text.stdout
    return status


def apply_cmd(*extra: str) -> tuple[str, ...]:
    return ("apply-patch", "--version", NEW, "--yes", *extra)


def rollback_cmd(*extra: str) -> tuple[str, ...]:
    return ("rollback-patch", "--version", NEW, "--yes", *extra)


# -- the tests --------------------------------------------------------------------------------


def test_expected_tree_matches_a_clean_apply(install: Install, tmp_path: Path) -> None:
    """The reference used below is right: a clean apply gives exactly the computed tree."""
    before = install.state()
    install.release(tmp_path, NEW)
    done = install.inv(*apply_cmd())
    assert done.returncode == 0, done.stderr + done.stdout
    assert_exactly_new(install, before, read_manifest(install, OLD), read_manifest(install, NEW))


@pytest.mark.parametrize(
    "boundary", boundaries(APPLY_BOUNDARIES, "stage", "switch:after", "migrate:after", "commit:after")
)
def test_kill_during_apply_then_apply_finishes_it(install: Install, tmp_path: Path, boundary: str) -> None:
    """Killed at ``boundary``; apply-patch --break-lock then ends on exactly 2.3.0 (the
    interrupted apply is finished when it reached commit, otherwise undone and applied again)."""
    before = install.state()
    install.release(tmp_path, NEW)

    killed_run(install, boundary, *apply_cmd())
    assert_interrupted(
        install,
        action="apply",
        phase="forward",
        step=last_journaled_step(boundary, APPLY_STEPS),
        installed=NEW if reached(boundary, "switch") else OLD,
    )
    refused = install.inv(*apply_cmd())
    assert refused.returncode != 0 and "Stale lock" in refused.stderr, refused.stderr + refused.stdout

    done = install.inv(*apply_cmd("--break-lock"))
    assert done.returncode == 0, done.stderr + done.stdout
    assert "recovering an interrupted apply" in done.stdout + done.stderr
    assert_exactly_new(install, before, read_manifest(install, OLD), read_manifest(install, NEW))


@pytest.mark.parametrize("boundary", boundaries(APPLY_BOUNDARIES, "stage:after", "backup:after", "health:after"))
def test_kill_during_apply_then_rollback_undoes_it(install: Install, tmp_path: Path, boundary: str) -> None:
    """Killed at ``boundary``; rollback-patch --break-lock then ends on exactly 2.2.0.

    Expected per boundary: until the commit, the interrupted apply is undone (its own undos,
    reported as "from no backup" before its backup was complete, else from its backup); killed
    after the commit, the apply is finished first and then rolled back from that backup."""
    tree_before = install.state()
    db_before = install.pg_dump()
    install.release(tmp_path, NEW)

    killed_run(install, boundary, *apply_cmd())
    assert_interrupted(install, action="apply", phase="forward", step=last_journaled_step(boundary, APPLY_STEPS))

    done = install.inv(*rollback_cmd("--break-lock"))
    assert done.returncode == 0, done.stderr + done.stdout
    out = " ".join(done.stdout.split())
    assert f"rolled back {NEW} -> {OLD}" in out, done.stdout
    if reached(boundary, "backup"):
        assert "from backup pre-patch-v2.3.0_" in out, done.stdout
    else:
        assert "from no backup (the interrupted apply had changed nothing)" in out, done.stdout
    assert_exactly_old(install, tree_before, db_before)


@pytest.mark.parametrize(
    "boundary", boundaries(AUTO_ROLLBACK_BOUNDARIES, "stop-new", "restore-database:after", "start-old:after")
)
def test_kill_during_automatic_rollback_then_rollback_finishes_it(
    install: Install, tmp_path: Path, boundary: str
) -> None:
    """2.3.0 fails its health check; the automatic rollback is killed at ``boundary``;
    patch-status shows the rollback in progress; rollback-patch --break-lock ends on exactly 2.2.0."""
    tree_before = install.state()
    db_before = install.pg_dump()
    install.release(tmp_path, NEW, health_status=500)

    killed_run(install, boundary, *apply_cmd("--health-timeout", "3"))
    step = last_journaled_step(boundary, ("health", *UNDO_STEPS))
    status = assert_interrupted(
        install,
        action="apply",
        phase="rolling_back",
        step=step,
        step_state="failed" if step == "health" else "done",
    )
    assert status["interrupted"]["state"].startswith("rollback incomplete")
    assert status["interrupted"]["failed_step"] == "health"

    done = install.inv(*rollback_cmd("--break-lock"))
    assert done.returncode == 0, done.stderr + done.stdout
    assert_exactly_old(install, tree_before, db_before)


@pytest.mark.parametrize("boundary", boundaries(ROLLBACK_BOUNDARIES, "stop", "restore-code:after", "health:after"))
def test_kill_during_rollback_patch_then_rollback_finishes_it(install: Install, tmp_path: Path, boundary: str) -> None:
    """2.3.0 applied cleanly; rollback-patch is killed at ``boundary``; a second rollback-patch
    --break-lock ends on exactly 2.2.0."""
    tree_before = install.state()
    db_before = install.pg_dump()
    install.release(tmp_path, NEW)
    applied = install.inv(*apply_cmd())
    assert applied.returncode == 0, applied.stderr + applied.stdout

    killed_run(install, boundary, *rollback_cmd())
    assert_interrupted(
        install, action="rollback", phase="rolling_back", step=last_journaled_step(boundary, ROLLBACK_STEPS)
    )

    done = install.inv(*rollback_cmd("--break-lock"))
    assert done.returncode == 0, done.stderr + done.stdout
    assert_exactly_old(install, tree_before, db_before)


def test_rollback_of_apply_killed_before_its_backup_ignores_an_older_backup(install: Install, tmp_path: Path) -> None:
    """An older backup taken before 2.3.0 (restoring 2.2.0) must not be restored when the
    interrupted 2.3.0 apply, killed before its own backup, came from 2.2.1: rollback-patch
    undoes the interrupted apply and ends on exactly 2.2.1."""
    install.release(tmp_path, NEW)
    for args in (apply_cmd(), rollback_cmd()):
        done = install.inv(*args)
        assert done.returncode == 0, done.stderr + done.stdout
    install.release(tmp_path, "2.2.1", migration=None)
    done = install.inv("apply-patch", "--version", "2.2.1", "--yes")
    assert done.returncode == 0, done.stderr + done.stdout
    tree_before = install.state()
    db_before = install.pg_dump()

    killed_run(install, "stop:after", *apply_cmd())
    assert_interrupted(install, action="apply", phase="forward", step="stop", installed="2.2.1")

    done = install.inv(*rollback_cmd("--break-lock"))
    assert done.returncode == 0, done.stderr + done.stdout
    assert "from no backup" in " ".join(done.stdout.split()), done.stdout
    status = assert_clean_after(install)
    assert status["installed_version"] == "2.2.1"
    assert install.state() == tree_before
    assert install.pg_dump() == db_before
    code, body = get(install.health_url)
    assert code == 200 and json.loads(body)["version"] == "2.2.1", body


def test_recovery_without_a_terminal_needs_yes_and_changes_nothing_until_then(install: Install, tmp_path: Path) -> None:
    install.release(tmp_path, "2.3.0")
    killed_run(install, "migrate:after", *apply_cmd())
    tree_after_kill = install.state()
    journal_before = (install.root / ".patchflow" / "journal.json").read_bytes()

    refused = install.inv("apply-patch", "--version", "2.3.0", "--break-lock")
    assert refused.returncode == 5
    assert "interrupted apply of 2.3.0" in refused.stderr and "--yes" in refused.stderr
    assert install.state() == tree_after_kill
    assert (install.root / ".patchflow" / "journal.json").read_bytes() == journal_before
