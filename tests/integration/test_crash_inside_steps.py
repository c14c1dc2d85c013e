"""Crash safety inside steps (issue 13): one test per fault found, each killing a real apply or
rollback at the instant the fault needs, then running the recovery ``patch-status`` names.

The instants come from patchflow's kill hook (``PATCHFLOW_TEST_KILL_AT``): after the commit before
the lock is released (``release``), while the trash is deleted (``empty-trash``), between a
switched file's temporary copy and its rename (``switch-file@<path>``), between a service's spawn
and its pidfile (``spawn-<service>:after``); ``=SIGSTOP`` holds the process at a step so the test
can change the world (take a port) before it goes on. The database restore is caught in the act by
a slow ``pg_restore`` wrapper.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from support.exact import (
    NEW,
    OLD,
    app_processes,
    assert_clean_after,
    assert_exactly_new,
    assert_exactly_old,
    read_manifest,
    status_json,
)
from support.installs import Install, build_release, health, inv_popen, set_dotenv, wait_until
from support.killing import wait_stopped
from support.pgbin import wrapped_pg_bindir

pytestmark = pytest.mark.integration

HOOK = "PATCHFLOW_TEST_KILL_AT"
KILLED = (-9, 137)


def _out(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout + done.stderr


def _recover(install: Install) -> subprocess.CompletedProcess[str]:
    """Run the one command patch-status gives as the recovery."""
    advice = status_json(install)["recovery"]
    assert advice is not None and advice["command"], advice
    done = install.inv(*advice["args"])
    assert done.returncode == 0, _out(done)
    return done


# -- fault 1: killed after the commit, before the lock is released -----------------------------------


def test_killed_after_commit_the_stale_lock_is_cleared_by_break_lock_on_the_same_version(
    install: Install, tmp_path: Path
) -> None:
    install.release(tmp_path, NEW)
    before = install.state()
    done = install.inv("apply-patch", "--version", NEW, "--yes", env={HOOK: "release"})
    assert done.returncode in KILLED, _out(done)

    status = status_json(install)
    assert status["installed_version"] == NEW and status["interrupted"] is None
    assert status["lock"] is not None and status["lock"]["state"] == "stale"
    assert [n for n in status["leftovers"] if n.startswith("trash-staging-")], status["leftovers"]
    assert status["recovery"]["args"] == ["apply-patch", "--version", NEW, "--break-lock", "--yes"]
    text = install.inv("patch-status")
    assert f"recover with: inv apply-patch --version {NEW} --break-lock --yes" in text.stdout, text.stdout

    for refused in (install.inv("rollback-patch", "--yes"), install.inv("apply-patch", "--version", NEW, "--yes")):
        assert refused.returncode == 3, _out(refused)
        assert "Stale lock" in refused.stderr and "--break-lock" in refused.stderr
    done = _recover(install)
    assert "removed trash-staging-" in done.stdout and "nothing to do" in done.stdout
    assert_exactly_new(install, before, read_manifest(install, OLD), read_manifest(install, NEW))
    assert status_json(install)["recovery"] is None


def test_killed_while_deleting_the_trash_any_later_command_finishes_the_cleanup(
    install: Install, tmp_path: Path
) -> None:
    install.release(tmp_path, NEW)
    before = install.state()
    done = install.inv("apply-patch", "--version", NEW, "--yes", env={HOOK: "empty-trash"})
    assert done.returncode in KILLED, _out(done)
    status = status_json(install)
    assert status["lock"] is None and status["installed_version"] == NEW
    assert status["recovery"]["args"] == ["apply-patch", "--version", NEW, "--yes"]
    _recover(install)
    assert_exactly_new(install, before, read_manifest(install, OLD), read_manifest(install, NEW))


def test_a_rollback_clears_what_a_killed_run_left(install: Install, tmp_path: Path) -> None:
    install.release(tmp_path, NEW)
    tree_before, db_before = install.state(), install.pg_dump()
    done = install.inv("apply-patch", "--version", NEW, "--yes", env={HOOK: "empty-trash"})
    assert done.returncode in KILLED, _out(done)
    done = install.inv("rollback-patch", "--yes")
    assert done.returncode == 0, _out(done)
    assert_exactly_old(install, tree_before, db_before)


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize(
    ("action", "kill_at", "recovery", "ends"),
    [
        ("apply", "health:after", "rollback-patch", OLD),  # not committed: undone
        ("apply", "commit:after", "apply-patch", NEW),  # committed: finished
        ("rollback", "health:after", "rollback-patch", OLD),  # finished
    ],
)
def test_a_recovery_that_ends_the_killed_run_early_clears_its_temporary_files(
    install: Install, tmp_path: Path, action: str, kill_at: str, recovery: str, ends: str
) -> None:
    """Killed late with a state write half done (its temporary file left): the recovery finishes
    or undoes the run and then stops early (nothing more to do), and still clears the files."""
    install.release(tmp_path, NEW)
    tree_before, db_before = install.state(), install.pg_dump()
    old, new = read_manifest(install, OLD), read_manifest(install, NEW)
    if action == "apply":
        args: tuple[str, ...] = ("apply-patch", "--version", NEW, "--yes")
    else:
        assert install.inv("apply-patch", "--version", NEW, "--yes").returncode == 0
        args = ("rollback-patch", "--yes")
    done = install.inv(*args, env={HOOK: kill_at})
    assert done.returncode in KILLED, _out(done)
    assert status_json(install)["recovery"]["command"].split()[1] == recovery
    state = install.root / ".patchflow"
    stray = [state / f".journal.json.tmp-{_dead_pid()}", state / f".history.jsonl.tmp-{_dead_pid()}"]
    for path in stray:
        path.write_text("{half a rec")
    assert {p.name for p in stray} <= set(status_json(install)["leftovers"])
    _recover(install)
    assert not [p for p in stray if p.exists()]
    if ends == NEW:
        assert_exactly_new(install, tree_before, old, new)
    else:
        assert_exactly_old(install, tree_before, db_before)


@pytest.mark.parametrize("action", ["apply", "rollback"])
def test_killed_with_the_journal_just_opened_the_recovery_does_not_take_the_lock_twice(
    install: Install, tmp_path: Path, action: str
) -> None:
    """Killed after the lock step wrote the journal but before it was marked done (found by the
    kill matrix): the recovery holds the lock itself and must not run the lock step again."""
    install.release(tmp_path, NEW)
    tree_before, db_before = install.state(), install.pg_dump()
    old, new = read_manifest(install, OLD), read_manifest(install, NEW)
    if action == "rollback":
        assert install.inv("apply-patch", "--version", NEW, "--yes").returncode == 0
        args: tuple[str, ...] = ("rollback-patch", "--yes")
    else:
        args = ("apply-patch", "--version", NEW, "--yes")
    done = install.inv(*args, env={HOOK: "journal-opened"})
    assert done.returncode in KILLED, _out(done)
    interrupted = status_json(install)["interrupted"]
    assert (interrupted["step"], interrupted["step_state"]) == ("lock", "started"), interrupted
    _recover(install)
    assert_exactly_old(install, tree_before, db_before)
    if action == "apply":  # and the apply works after it
        assert install.inv("apply-patch", "--version", NEW, "--yes").returncode == 0
        assert_exactly_new(install, tree_before, old, new)


# -- fault 2: killed between a switched file's temporary copy and its rename ------------------------------


def _release_with_new_folder(install: Install, tmp_path: Path) -> str:
    """2.3.0 with an added folder of several files; returns the path of one in the middle."""

    def edit(source: Path) -> None:
        folder = source / "public" / "reports" / "monthly"
        folder.mkdir(parents=True)
        for index in range(6):
            (folder / f"r{index}.js").write_text(f"module.exports = {index};\n")

    build_release(install, tmp_path, NEW, edit=edit)
    return "public/reports/monthly/r3.js"


# SIGTERM takes SIGINT's path (patchflow.pipeline.HANDLED_SIGNALS): a repetition, run by nox -s stress
@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGINT", pytest.param("SIGTERM", marks=pytest.mark.stress)])
def test_killed_with_a_temporary_copy_in_place_the_rollback_leaves_no_stray(
    install: Install, tmp_path: Path, signal_name: str
) -> None:
    middle = _release_with_new_folder(install, tmp_path)
    tree_before, db_before = install.state(), install.pg_dump()
    env = {HOOK: f"switch-file@{middle}={signal_name}"}
    if signal_name == "SIGKILL":
        done = install.inv("apply-patch", "--version", NEW, "--yes", env=env)
        assert done.returncode in KILLED, _out(done)
        folder = install.root / "public" / "reports" / "monthly"
        strays = sorted(p.name for p in folder.iterdir())
        assert [n for n in strays if n.startswith(".pf-") and n.endswith(".tmp")], strays  # caught mid-write
        assert "r0.js" in strays and "r5.js" not in strays
        advice = status_json(install)["recovery"]
        assert advice["args"] == ["rollback-patch", "--version", NEW, "--break-lock", "--yes"], advice
        done = _recover(install)
    else:  # Ctrl+C or a stop: the automatic rollback
        done = install.inv("apply-patch", "--version", NEW, "--yes", env=env)
        assert done.returncode == 2, _out(done)
        assert "rolled back automatically" in done.stderr
    assert_exactly_old(install, tree_before, db_before)
    assert not (install.root / "public" / "reports").exists()


# -- fault 3: killed between a service's spawn and its pidfile ---------------------------------------------


# the worker is found the same way as the api (its pidfile left "starting", the process scan); make
# test keeps the api (also proven answering) and the killed rollback's orphan worker below
@pytest.mark.parametrize("service", ["api", pytest.param("worker", marks=pytest.mark.stress)])
def test_a_service_spawned_by_a_killed_apply_is_found_and_stopped(
    install: Install, tmp_path: Path, service: str
) -> None:
    install.release(tmp_path, NEW)
    tree_before, db_before = install.state(), install.pg_dump()
    done = install.inv("apply-patch", "--version", NEW, "--yes", env={HOOK: f"spawn-{service}:after"})
    assert done.returncode in KILLED, _out(done)
    record = json.loads((install.root / ".patchflow" / "run" / f"{service}.pid").read_text())
    assert record["state"] == "starting", record  # the pid was never written
    orphans = app_processes(install.root)
    assert orphans, "the spawned service runs on"
    if service == "api":
        wait_until(lambda: health(install) == (200, NEW), 30, "the orphaned new api to answer")
    _recover(install)
    assert_exactly_old(install, tree_before, db_before)
    assert not orphans & app_processes(install.root), "the orphan was stopped"


def test_a_service_spawned_by_a_killed_rollback_is_not_started_twice(install: Install, tmp_path: Path) -> None:
    install.release(tmp_path, NEW)
    tree_before, db_before = install.state(), install.pg_dump()
    done = install.inv("apply-patch", "--version", NEW, "--yes")
    assert done.returncode == 0, _out(done)
    done = install.inv("rollback-patch", "--yes", env={HOOK: "spawn-worker:after"})
    assert done.returncode in KILLED, _out(done)
    orphan = app_processes(install.root)
    done = _recover(install)
    assert_exactly_old(install, tree_before, db_before)
    assert len(app_processes(install.root)) == 2  # one api, one worker: the orphan worker was adopted or ended
    assert orphan


def test_a_service_that_cannot_take_its_port_says_eaddrinuse(install: Install, tmp_path: Path) -> None:
    install.release(tmp_path, NEW)
    set_dotenv(install, "PATCHFLOW_START_RETRIES", "1")  # one attempt each way is enough to see the cause
    tree_before, db_before = install.state(), install.pg_dump()
    proc = inv_popen(install, "apply-patch", "--version", NEW, "--yes", env={HOOK: "switch=SIGSTOP"})
    thief = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        wait_stopped(proc.pid)  # services are stopped: the port is free; another program takes it
        thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        thief.bind(("127.0.0.1", install.port))
        thief.listen()
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=300)
    finally:
        thief.close()
    assert proc.returncode == 4, out + err  # neither the new nor the old version could start
    assert "EADDRINUSE" in err, err
    _recover(install)  # the port is free again
    assert_exactly_old(install, tree_before, db_before)


# -- fault 4: killed while the database is restored ------------------------------------------------------


def _slow_pg_restore(folder: Path, real_bindir: Path, gate: Path) -> Path:
    """A pg_bindir whose pg_restore into a database (``--dbname=``) waits while ``gate`` holds
    ``all`` or the run marker (``PF_RUN_ID``) it was started with, then runs the real one; the
    other pg_restore calls (listing, reading to the end) run at once."""
    return wrapped_pg_bindir(
        folder,
        real_bindir,
        "pg_restore",
        f'gate="{gate}"\n'
        'case "$*" in *--dbname=*)\n'
        '  while [ -e "$gate" ] && { [ "$(cat "$gate")" = all ] || [ "$(cat "$gate")" = "$PF_RUN_ID" ]; }; do\n'
        "    sleep 0.05\n"
        "  done ;;\n"
        "esac\n"
        'exec "$REAL" "$@"\n',
    )


def _marked_processes(marker_prefix: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if any(v.startswith(f"PF_RUN_ID={marker_prefix}".encode()) for v in environ.split(b"\0")):
            found.append(int(entry))
    return found


def _waiting_restores(install: Install) -> list[int]:
    """The waiting pg_restore wrappers of this install's runs: restores into a database, not the
    short-lived listings nor the subshells a wrapper forks to read the gate (same command line)."""
    found = []
    for pid in _marked_processes(str(install.root)):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            parent_cmdline = Path(f"/proc/{parent}/cmdline").read_text(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if "pg_restore" in cmdline and "--dbname=" in cmdline and "pg_restore" not in parent_cmdline:
            found.append(pid)
    return found


def test_killed_during_the_database_restore_the_live_database_stays_and_the_orphan_is_ended(
    install: Install, tmp_path: Path
) -> None:
    install.release(tmp_path, NEW)
    gate = tmp_path / "gate"
    set_dotenv(install, "PATCHFLOW_PG_BINDIR", str(_slow_pg_restore(tmp_path / "pgbin", install.cluster.bindir, gate)))
    set_dotenv(install, "PATCHFLOW_SNAPSHOT_KEEP_HOURS", "0")  # no snapshot left: the rollback restores the dump
    tree_before, db_before = install.state(), install.pg_dump()
    done = install.inv("apply-patch", "--version", NEW, "--yes")
    assert done.returncode == 0, _out(done)
    db_new = install.pg_dump()
    gate.write_text("all")
    proc = inv_popen(install, "rollback-patch", "--yes")
    orphans = wait_until(lambda: _waiting_restores(install), 60, "the rollback's pg_restore")
    os.kill(proc.pid, signal.SIGKILL)  # the tool dies; its pg_restore waits on, then would write
    proc.communicate()
    assert install.pg_dump() == db_new, "the live database is untouched"
    assert all(Path(f"/proc/{p}").exists() for p in orphans)
    environ = Path(f"/proc/{orphans[0]}/environ").read_bytes().split(b"\0")
    marker = next(v for v in environ if v.startswith(b"PF_RUN_ID=")).split(b"=", 1)[1]
    gate.write_bytes(marker)  # the orphan keeps waiting (only an end from outside stops it); others pass
    _recover(install)
    assert not any(
        Path(f"/proc/{p}").exists() and Path(f"/proc/{p}/stat").read_text().split()[2] != "Z" for p in orphans
    )
    assert_exactly_old(install, tree_before, db_before)
    rows = install.cluster.psql(
        "postgres", f"SELECT datname FROM pg_database WHERE datname LIKE '{install.dbname}%restoring%';\n"
    )
    assert not rows.strip(), rows


# -- the stopped window printed after a recovery is the real one ------------------------------------------


def test_the_stopped_window_after_a_recovery_counts_from_the_killed_runs_stop(install: Install, tmp_path: Path) -> None:
    install.release(tmp_path, NEW)
    began = time.monotonic()
    done = install.inv("apply-patch", "--version", NEW, "--yes", env={HOOK: "migrate"})
    killed_at = time.monotonic()
    assert done.returncode in KILLED, _out(done)
    done = _recover(install)
    ended = time.monotonic()
    match = re.search(r"services down ([0-9.]+) s", done.stdout)
    assert match, done.stdout
    window = float(match.group(1))
    # it began before the kill (at the killed run's stop) and ended before the recovery exited
    assert ended - killed_at - 1.0 <= window <= ended - began, (window, ended - killed_at, ended - began)
    records = [json.loads(line) for line in (install.root / ".patchflow/history.jsonl").read_text().splitlines()]
    assert records[-1]["result"] == "rolled_back" and records[-1]["recovered"] is True
    assert abs(records[-1]["stopped_seconds"] - window) < 0.5, records[-1]
    assert_clean_after(install)
