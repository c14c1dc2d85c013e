"""The database restarting under an apply or a rollback, and database checks that answer fast
(issue 19, faults 3 and 4), with a real PostgreSQL stopped and started (``pg_ctl`` as the postgres
user) and real password authentication.

* a restart during the migrate step: the automatic undo waits for the server (bounded by
  ``db_wait_timeout``, with a line saying so), restores, and the install ends exactly old with
  exit 2, not 4;
* a restart while a rollback restores the database: the rollback waits and completes;
* in the plan, a wrong password, an unknown database or role fail at once naming the URL with its
  password masked; a server that does not accept connections is waited for only briefly, visibly.

Nothing waits a fixed time: the moments come from the server's own activity, the kill hook's
SIGSTOP and the operation log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from support.exact import assert_exactly_old
from support.installs import Install, build_release, health, inv_popen, set_dotenv, wait_until
from support.killing import wait_stopped
from support.services import refusing_port

pytestmark = pytest.mark.integration

SLEEPY = 'CREATE TABLE "AuditLog" ("id" SERIAL PRIMARY KEY, "action" TEXT NOT NULL);\nSELECT pg_sleep(300);\n'


def _out(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout + done.stderr


def _logged(install: Install, text: str) -> bool:
    log = install.root / ".patchflow" / "logs" / "patchflow.log"
    return log.is_file() and text in log.read_text(errors="replace")


def _migrating(install: Install) -> bool:
    rows = install.cluster.psql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'patchflow-migrate' "
        f"AND datname = '{install.dbname}' AND query LIKE '%pg_sleep%';\n",
    )
    return rows.strip() not in ("", "0")


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def test_a_database_restart_during_migrate_is_waited_for_and_undone_exactly(install: Install, tmp_path: Path) -> None:
    build_release(install, tmp_path, "2.3.0", migration=SLEEPY)
    tree_before, db_before = install.state(), install.pg_dump()
    proc = inv_popen(install, "apply-patch", "--version", "2.3.0", "--yes", env={"PATCHFLOW_DB_WAIT_TIMEOUT": "120"})
    try:
        wait_until(lambda: _migrating(install), 180, "the migration running on the server")
        install.cluster.stop_server()  # a crash or a fail-over: the migration's session ends
        wait_until(lambda: _logged(install, "waiting up to 120 s"), 120, "the undo waiting for the database")
    finally:
        if not install.cluster.is_running():
            install.cluster.start_server()
    code, out, err = _finish(proc)
    assert code == 2, out + err
    flat = " ".join(err.split())
    assert "The connection to the database was lost while migration 20250301090000_audit_log ran" in flat, flat
    assert "P3018" not in flat and "Fix the migration" not in flat, "not the migration's fault"
    assert "rolled back automatically" in flat
    assert "to accept connections" in out and "database accepted connections after" in out
    assert_exactly_old(install, tree_before, db_before)


def test_a_database_restart_before_a_rollback_restores_is_waited_for(install: Install) -> None:
    tree_before, db_before = install.state(), install.pg_dump()
    install.release(install.root.parent, "2.3.0")
    applied = install.inv("apply-patch", "--version", "2.3.0", "--yes")
    assert applied.returncode == 0, _out(applied)
    held = {"PATCHFLOW_TEST_KILL_AT": "restore-database=SIGSTOP", "PATCHFLOW_DB_WAIT_TIMEOUT": "120"}
    proc = inv_popen(install, "rollback-patch", "--version", "2.3.0", "--yes", env=held)
    try:
        wait_stopped(proc.pid)
        install.cluster.stop_server()
        os.kill(proc.pid, signal.SIGCONT)
        wait_until(lambda: _logged(install, "waiting up to 120 s"), 120, "the rollback waiting for the database")
    finally:
        if not install.cluster.is_running():
            install.cluster.start_server()
    code, out, err = _finish(proc)
    assert code == 0, out + err
    assert_exactly_old(install, tree_before, db_before)


# -- the plan: answers fast ---------------------------------------------------------------------------------------


def _plan(install: Install, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    began = time.monotonic()
    env = {"PATCHFLOW_DB_WAIT_TIMEOUT": "120", **env}
    done = install.inv("apply-patch", "--version", "2.3.0", "--dry-run", env=env)
    return done, time.monotonic() - began


@pytest.mark.parametrize("which", ["DATABASE_URL", "PATCHFLOW_DATABASE_ADMIN_URL"])
def test_a_wrong_password_fails_at_once_with_the_url_masked(install: Install, which: str) -> None:
    role = f"pf_pw_{uuid.uuid4().hex[:8]}"
    install.cluster.add_password_role(role, "right-secret")
    install.release(install.root.parent, "2.3.0")
    port = install.cluster.port
    url = f"postgresql://{role}:%s@127.0.0.1:{port}/{install.dbname}"
    set_dotenv(install, "DATABASE_URL", url % "right-secret")
    done, seconds = _plan(install, {which: url % "wrong-secret"})
    assert done.returncode == 1, _out(done)
    flat = " ".join(done.stderr.split())
    assert f"postgresql://{role}:***@127.0.0.1:{port}/{install.dbname} refused the credentials" in flat, flat
    assert "password authentication failed" in flat and "waiting cannot fix this" in flat
    assert "wrong-secret" not in _out(done) and "right-secret" not in _out(done)
    assert "waiting up to" not in done.stdout and seconds < 60, "no wait: waiting cannot fix a password"
    assert health(install) == (200, "2.2.0")
    right, _ = _plan(install, {})
    assert right.returncode == 0, _out(right)


@pytest.mark.parametrize("missing", ["database", "role"])
def test_an_unknown_database_or_role_fails_at_once(install: Install, missing: str) -> None:
    install.release(install.root.parent, "2.3.0")
    name = f"pf_nope_{uuid.uuid4().hex[:8]}"
    url = install.cluster.url(name) if missing == "database" else install.cluster.url(install.dbname, user=name)
    done, seconds = _plan(install, {"DATABASE_URL": url})
    assert done.returncode == 1, _out(done)
    flat = " ".join(done.stderr.split())
    assert f'{missing} "{name}" does not exist' in flat and "cannot be used" in flat, flat
    assert "Check the database name and the user in DATABASE_URL" in flat
    assert "waiting up to" not in done.stdout and seconds < 60


def test_a_database_that_is_down_is_waited_for_briefly_and_visibly(install: Install) -> None:
    install.release(install.root.parent, "2.3.0")
    with refusing_port() as port:
        url = f"postgresql://postgres@127.0.0.1:{port}/{install.dbname}"
        done, seconds = _plan(install, {"DATABASE_URL": url})
    assert done.returncode == 1, _out(done)
    assert f"waiting up to 15 s for the database {url} to accept connections" in done.stdout, done.stdout
    flat = " ".join(done.stderr.split())
    assert "does not accept connections (waited 15 s)" in flat and "should answer now" in flat, flat
    assert seconds < 60, "a brief wait, not db_wait_timeout (120 s here)"
    assert health(install) == (200, "2.2.0")


@pytest.mark.parametrize(
    ("point", "snapshot"),
    [
        ("restore-created", "off"),
        ("restore-loaded", "off"),
        ("restore-checked", "off"),
        ("snapshot-swap", "auto"),
    ],
    ids=["after-create", "after-pg_restore", "before-swap", "before-snapshot-swap"],
)
def test_a_database_that_goes_away_inside_a_rollbacks_restore_is_waited_for_and_the_restore_completes(
    install: Install, point: str, snapshot: str
) -> None:
    """Issue 22, fault 4: the server stops inside the restore (after the copy is created, after
    pg_restore filled it, after its checks, just before a snapshot's rename swap); the restore
    waits for it, finds out from the server what was done, and completes: exit 0, exactly old."""
    tree_before, db_before = install.state(), install.pg_dump()
    install.release(install.root.parent, "2.3.0")
    applied = install.inv("apply-patch", "--version", "2.3.0", "--yes", env={"PATCHFLOW_DATABASE_SNAPSHOT": snapshot})
    assert applied.returncode == 0, _out(applied)
    held = {"PATCHFLOW_TEST_KILL_AT": f"{point}=SIGSTOP", "PATCHFLOW_DB_WAIT_TIMEOUT": "120"}
    proc = inv_popen(install, "rollback-patch", "--version", "2.3.0", "--yes", env=held)
    try:
        wait_stopped(proc.pid)
        install.cluster.stop_server()
        os.kill(proc.pid, signal.SIGCONT)
        wait_until(lambda: _logged(install, "waiting up to 120 s"), 120, "the restore waiting for the database")
    finally:
        if not install.cluster.is_running():
            install.cluster.start_server()
    code, out, err = _finish(proc)
    assert code == 0, out + err
    assert "stopped answering during the restore" in out, out
    assert_exactly_old(install, tree_before, db_before)
    leftovers = install.cluster.psql(
        "postgres", f"SELECT datname FROM pg_database WHERE datname LIKE '{install.dbname}\\_restoring%';\n"
    )
    assert leftovers.strip() == "", f"half-restored copies left: {leftovers}"
