"""Say what is happening (issue 19, fault 6): live lines with counts and elapsed time on a terminal,
one line per step with its duration without one, and a clean-up that never keeps the operator
waiting. Real ``inv`` processes on real installs; the terminal is a real pseudo-terminal."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
from support.exact import NEW, OLD, assert_exactly_new, assert_exactly_old, read_manifest
from support.installs import INV, Install, process_cmdline, status_json, wait_until
from support.terminal import Terminal

from patchflow.lifecycle.apply import APPLY_STEPS as APPLY_SPECS
from patchflow.lifecycle.rollback import ROLLBACK_STEPS as ROLLBACK_SPECS

pytestmark = pytest.mark.integration

HOOK = "PATCHFLOW_TEST_KILL_AT"
APPLY_STEPS = tuple(s.name for s in APPLY_SPECS if s.journaled)  # lock, stage, dump, stop, ... cleanup
ROLLBACK_STEPS = tuple(s.name for s in ROLLBACK_SPECS if s.journaled)
ELAPSED = r"\d+\.\d s"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != HOOK}
    env.update(extra)
    return env


def _stopped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except OSError:
        return False


def test_live_lines_on_a_terminal_show_counts_and_elapsed_time(install: Install, tmp_path: Path) -> None:
    """On a terminal every long step has a live line with what it did so far and its elapsed
    time: held in the middle of the switch (a real SIGSTOP), the screen shows the files switched
    so far; the dump shows bytes, the migration its number and name; a rollback counts the files
    it restores."""
    install.release(tmp_path, NEW)
    before_tree, before_db = install.state(), install.pg_dump()
    term = Terminal(
        [*INV, "apply-patch", "--root", str(install.root), "--version", NEW, "--yes"],
        env=_env(**{HOOK: "switch-file#2=SIGSTOP"}),
    )
    with term:
        # held with the second switched file written: the live line says how far the switch is
        held = term.expect(rf"switch\s+(\d+)/(\d+) files switched\s+{ELAPSED}", timeout=120)
        assert 0 < int(held.group(1)) < int(held.group(2)), held.group(0)
        wait_until(lambda: _stopped(term.process.pid), 30, "the apply to stop itself")
        os.kill(term.process.pid, signal.SIGCONT)
        assert term.wait(timeout=180) == 0, term.screen
    text = term.screen
    assert re.search(rf"dump-snapshot\s+[\d.]+ (?:B|KiB|MiB) dumped\s+{ELAPSED}", text), text
    assert re.search(rf"migrate\s+migration 1 of 1: 20250301090000_audit_log\s+{ELAPSED}", text), text
    assert re.search(rf"health\s+{ELAPSED}", text), text  # a step without counts: its elapsed time
    assert "applied" in text

    with Terminal([*INV, "rollback-patch", "--root", str(install.root), "--version", NEW, "--yes"], env=_env()) as term:
        assert term.wait(timeout=180) == 0, term.screen
    restored = re.findall(rf"restore-code\s+(\d+)/(\d+) files restored\s+{ELAPSED}", term.screen)
    assert restored and restored[-1][0] == restored[-1][1], term.screen  # drawn as it goes, and at its end
    assert_exactly_old(install, before_tree, before_db)


def _step_lines(output: str, steps: tuple[str, ...]) -> dict[str, list[str]]:
    return {step: re.findall(rf"^\s+{re.escape(step)} done in \d+\.\d s$", output, re.MULTILINE) for step in steps}


def test_without_a_terminal_one_line_per_step_with_its_duration_and_no_escape_codes(
    install: Install, tmp_path: Path
) -> None:
    """Without a terminal (cron, CI, a pipe) apply, rollback and an automatic rollback print one
    line per step (and per undo) with its duration, and not one escape code."""
    install.release(tmp_path, NEW)
    applied = install.inv("apply-patch", "--version", NEW, "--yes")
    assert applied.returncode == 0, applied.stderr + applied.stdout
    rolled = install.inv("rollback-patch", "--version", NEW, "--yes")
    assert rolled.returncode == 0, rolled.stderr + rolled.stdout
    install.release(tmp_path, NEW, health_status=500)
    failed = install.inv("apply-patch", "--version", NEW, "--yes", "--health-timeout", "3")
    assert failed.returncode == 2, failed.stderr + failed.stdout
    for done in (applied, rolled, failed):
        assert "\x1b" not in done.stdout + done.stderr, repr(done.stdout)
    assert all(len(found) == 1 for found in _step_lines(applied.stdout, APPLY_STEPS).values()), applied.stdout
    assert all(len(found) == 1 for found in _step_lines(rolled.stdout, ROLLBACK_STEPS).values()), rolled.stdout
    undos = ("stop-new", "restore-database", "restore-code", "drop-backup", "start-old", "drop-dump", "drop-staging")
    assert all(len(found) == 1 for found in _step_lines(failed.stdout, undos).values()), failed.stdout


def test_the_clean_up_after_the_commit_never_keeps_the_operator_waiting(install: Install, tmp_path: Path) -> None:
    """The staging a committed apply renamed aside is deleted by a detached process: the command
    returns while that process is held (a real SIGSTOP before it deletes anything); patch-status
    does not call its folder left by a killed run; killed, it leaves only ``trash-*``, which the
    command patch-status names removes."""
    install.release(tmp_path, NEW)
    before = install.state()
    done = install.inv("apply-patch", "--version", NEW, "--yes", env={HOOK: "trash-deleter=SIGSTOP"}, timeout=120)
    assert done.returncode == 0, done.stderr + done.stdout
    found = re.search(r"(trash-staging-\S+) is deleted in the background \(pid (\d+)\)", done.stdout)
    assert found, done.stdout
    trash, pid = install.root / ".patchflow" / found.group(1), int(found.group(2))
    assert "patchflow.trash" in process_cmdline(pid)
    wait_until(lambda: _stopped(pid), 30, "the deleter to hold")
    assert trash.is_dir()  # the command returned before anything of it was deleted
    status = status_json(install)
    assert status["leftovers"] == [] and status["recovery"] is None, status

    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not process_cmdline(pid), 30, "the deleter to end")
    status = status_json(install)
    assert status["leftovers"] == [trash.name], status
    assert status["recovery"]["args"] == ["apply-patch", "--version", NEW, "--yes"], status["recovery"]
    text = install.inv("patch-status")
    assert f"left by a killed run: {trash.name}" in text.stdout, text.stdout
    recovered = install.inv(*status["recovery"]["args"])
    assert recovered.returncode == 0 and f"removed {trash.name}" in recovered.stdout, recovered.stdout
    assert_exactly_new(install, before, read_manifest(install, OLD), read_manifest(install, NEW))
