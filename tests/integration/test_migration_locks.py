"""Migrations that never hold production hostage (issue 21, fault 1): a transaction holding a
lock the migration needs makes the builtin runner give up after lock_timeout x retries (not
migrate_timeout), roll back and name the blocking session; the plan refuses before the stop while
an old transaction holds a conflicting lock on a table the pending migrations change. Real
PostgreSQL; the blocking session is a real client connection (psycopg) of another application.

The apply is held before its migrate step by the kill hook's SIGSTOP, so the blocking transaction
opens after the plan (which would refuse it) and before the migration: no race decides the test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import psycopg
import pytest
from support.exact import app_processes, assert_exactly_old
from support.installs import Install, health, inv_popen, wait_until
from support.killing import wait_stopped

pytestmark = pytest.mark.integration

FAST = {
    "PATCHFLOW_MIGRATION_LOCK_TIMEOUT": "1",
    "PATCHFLOW_MIGRATION_LOCK_RETRIES": "2",
    "PATCHFLOW_MIGRATE_TIMEOUT": "300",
}


def _out(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout + done.stderr


def _flat(text: str) -> str:
    return " ".join(text.split())


@contextmanager
def holding(install: Install, sql: str, app: str = "reports-job") -> Iterator[psycopg.Connection]:
    """A session of another application that ran ``sql`` in a transaction it keeps open."""
    conn = psycopg.connect(install.url.split("?")[0], application_name=app)
    try:
        conn.execute(sql)
        yield conn
    finally:
        try:
            conn.rollback()
        except psycopg.Error:
            pass  # the rollback's database swap ended it
        conn.close()


def _xact_age(install: Install, pid: int) -> float:
    found = install.sql(f"SELECT extract(epoch FROM now() - xact_start) FROM pg_stat_activity WHERE pid = {pid}")
    return float(found or 0)


def test_a_client_that_connects_after_the_stop_refuses_the_migration(install: Install) -> None:
    """Issue 24: a client that connects while the services are stopped (another app server started
    meanwhile, a job) is found again right before the migrations: none runs, the live database and
    the client's rows are kept, the old version serves again."""
    install.release(install.root.parent, "2.3.0")
    tree_before, db_before = install.state(), install.pg_dump()
    proc = inv_popen(
        install, "apply-patch", "--version", "2.3.0", "--yes", env={"PATCHFLOW_TEST_KILL_AT": "migrate=SIGSTOP"}
    )
    wait_stopped(proc.pid)  # stopped, checked alone at the stop; the migrate step is next
    with holding(install, 'SELECT count(*) FROM "User"'):
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, out + err
    flat = " ".join(err.split())
    assert "failed at migrate: Refusing to migrate database" in flat and "inv deploy" in flat, flat
    assert "migration 20250301090000_audit_log (1 of 1)" not in out, "no migration ran"
    assert_exactly_old(install, tree_before, db_before)


def test_a_blocking_transaction_makes_the_migration_give_up_fast_and_name_it(install: Install) -> None:
    install.release(install.root.parent, "2.3.0")
    tree_before, db_before = install.state(), install.pg_dump()
    env = {**FAST, "PATCHFLOW_TEST_KILL_AT": "migrate=SIGSTOP"}
    # --others-stopped: the blocker is a client the operator knows (without it the migrate step refuses
    # a client that connected after the stop: test_a_client_that_connects_after_the_stop_refuses_the_migration)
    proc = inv_popen(install, "apply-patch", "--version", "2.3.0", "--yes", "--others-stopped", env=env)
    wait_stopped(proc.pid)  # the plan passed, the services are stopped, the migrate step is next
    with holding(install, 'SELECT count(*) FROM "User"') as blocker:
        started = time.monotonic()
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=300)
        elapsed = time.monotonic() - started
        pid = blocker.info.backend_pid
    assert proc.returncode == 2, out + err
    flat = _flat(err)
    assert "Migration 20250301090000_audit_log could not get its locks: 3 attempt(s)" in flat, flat
    assert "gave up after lock_timeout (1 s)" in flat
    assert "its statement at prisma/migrations/20250301090000_audit_log/migration.sql line 10" in flat, flat
    assert (
        'waited for ACCESS EXCLUSIVE on "User", held by pid ' + str(pid) + " (reports-job, idle in transaction" in flat
    )
    assert 'query: SELECT count(*) FROM "User")' in flat
    assert "rolled back automatically" in flat
    assert "attempt 2 of 3 in 1 s" in out and "attempt 3 of 3 in 2 s" in out
    # 3 x 1 s of lock_timeout + 1 + 2 s of backoff, then the rollback: far from migrate_timeout (300 s)
    assert elapsed < 150, elapsed
    assert_exactly_old(install, tree_before, db_before)


def test_migrate_timeout_bounds_the_retries(install: Install) -> None:
    install.release(install.root.parent, "2.3.0")
    tree_before, db_before = install.state(), install.pg_dump()
    env = {
        "PATCHFLOW_MIGRATION_LOCK_TIMEOUT": "1",
        "PATCHFLOW_MIGRATION_LOCK_RETRIES": "50",
        "PATCHFLOW_MIGRATE_TIMEOUT": "5",
        "PATCHFLOW_TEST_KILL_AT": "migrate=SIGSTOP",
    }
    proc = inv_popen(install, "apply-patch", "--version", "2.3.0", "--yes", "--others-stopped", env=env)
    wait_stopped(proc.pid)
    with holding(install, 'SELECT count(*) FROM "User"'):
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, out + err
    flat = _flat(err)
    # 1 s + 1 s pause + 1 s + 2 s pause + 1 s > 5 s: at most 3 attempts of the 51 allowed
    attempts = int(flat.split("could not get its locks: ")[1].split(" attempt(s)")[0])
    assert 1 <= attempts <= 3, flat
    assert 'waited for ACCESS EXCLUSIVE on "User"' in flat
    assert_exactly_old(install, tree_before, db_before)


def test_the_plan_refuses_while_an_old_transaction_holds_a_lock_on_a_touched_table(install: Install) -> None:
    install.release(install.root.parent, "2.3.0")
    db_before, pids = install.pg_dump(), app_processes(install.root)
    with holding(install, 'SELECT count(*) FROM "User"') as blocker:
        pid = blocker.info.backend_pid
        wait_until(lambda: _xact_age(install, pid) > 1.2, 30, "the blocking transaction older than the lock timeout")
        for flags in (("--yes",), ("--dry-run",)):
            done = install.inv("apply-patch", "--version", "2.3.0", *flags, env=FAST)
            assert done.returncode == 1, _out(done)
            flat = _flat(done.stderr)
            assert "1 transaction(s) older than the lock timeout (1 s) hold locks on tables" in flat, flat
            assert f"pid {pid} (reports-job, idle in transaction, transaction open" in flat
            assert 'holding ACCESS SHARE on "public"."User"' in flat
            assert "conflicts with the ACCESS EXCLUSIVE the migrations take" in flat, flat
            assert "Nothing was stopped or changed" in flat and "-> stop" not in done.stdout
        # told to wait for it (migration_blocker_wait), the plan still refuses once the wait is over
        waited = install.inv(
            "apply-patch", "--version", "2.3.0", "--yes", env={**FAST, "PATCHFLOW_MIGRATION_BLOCKER_WAIT": "2"}
        )
        assert waited.returncode == 1, _out(waited)
        assert f"waiting up to 2 s for old transactions holding locks the migrations need (pid {pid})" in waited.stdout
        assert "migration_blocker_wait makes the plan wait for them" in _flat(waited.stderr)
        assert "they ended after" not in waited.stdout
        assert install.pg_dump() == db_before
        assert app_processes(install.root) == pids and health(install) == (200, "2.2.0")
    # the audit migration creates AuditLog and alters User: an old reader of Project blocks none of it
    with holding(install, 'SELECT count(*) FROM "Project"') as other:
        wait_until(lambda: _xact_age(install, other.info.backend_pid) > 1.2, 30, "the transaction on Project")
        done = install.inv("apply-patch", "--version", "2.3.0", "--dry-run", env=FAST)
        assert done.returncode == 0, _out(done)


def test_squawk_asks_for_a_lock_timeout_only_when_the_runner_does_not_set_one(install: Install) -> None:
    install.release(install.root.parent, "2.3.0")
    for env, advised in (
        ({}, False),  # the builtin runner sets lock_timeout
        ({"PATCHFLOW_MIGRATION_LOCK_TIMEOUT": "0"}, True),
        ({"PATCHFLOW_MIGRATE_COMMAND": "node scripts/migrate.js"}, True),  # another runner: the SQL must set it
    ):
        done = install.inv("apply-patch", "--version", "2.3.0", "--dry-run", "--list-files", env=env)
        assert done.returncode == 0, _out(done)
        assert ("require-lock-timeout" in done.stdout) is advised, (env, done.stdout)


def _drain(stream: IO[str], into: list[str]) -> threading.Thread:
    """A thread appending ``stream``'s lines to ``into`` as they come (the plan logs before the
    operation log is on disk: a refused run writes nothing there)."""
    thread = threading.Thread(target=lambda: into.extend(iter(stream.readline, "")), daemon=True)
    thread.start()
    return thread


def test_the_plan_waits_for_old_transactions_when_told_to(install: Install) -> None:
    install.release(install.root.parent, "2.3.0")
    env = {**FAST, "PATCHFLOW_MIGRATION_BLOCKER_WAIT": "120"}
    pids = app_processes(install.root)
    out: list[str] = []
    err: list[str] = []
    with holding(install, 'SELECT count(*) FROM "User"') as blocker:
        pid = blocker.info.backend_pid
        wait_until(lambda: _xact_age(install, pid) > 1.2, 30, "the blocking transaction older than the lock timeout")
        # the report's session stays connected once it commits: --others-stopped says the operator knows
        # this client (the snapshot ends its session); without it the apply refuses (test_shared_database)
        apply = inv_popen(install, "apply-patch", "--version", "2.3.0", "--yes", "--others-stopped", env=env)
        assert apply.stdout is not None and apply.stderr is not None
        readers = [_drain(apply.stdout, out), _drain(apply.stderr, err)]
        try:
            wait_until(
                lambda: apply.poll() is not None or f"(pid {pid})" in "".join(out),
                120,
                "the plan waiting for the old transaction",
            )
            assert apply.poll() is None, "".join(out + err)
            assert app_processes(install.root) == pids and health(install) == (200, "2.2.0")  # serving while it waits
            blocker.commit()  # the report finishes
            apply.wait(timeout=300)
        finally:
            if apply.poll() is None:
                apply.kill()
            for reader in readers:
                reader.join(timeout=30)
    text = "".join(out)
    assert apply.returncode == 0, text + "".join(err)
    assert f"waiting up to 120 s for old transactions holding locks the migrations need (pid {pid})" in text
    assert "they ended after" in text
    assert "lock not granted" not in text, "with no blocker left, lock_timeout changes nothing"
    assert health(install) == (200, "2.3.0")
