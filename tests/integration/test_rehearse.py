"""``inv rehearse`` (issue 21, rehearsal): the pending migrations run on a copy of the install's
database while its services keep running, each timed; the copy is dropped whatever happens and
the live database is only read. Real PostgreSQL, real services, a real client session of another
application for the case where ``CREATE DATABASE ... TEMPLATE`` is refused."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import psycopg
import pytest
from support.exact import app_processes
from support.installs import Install, build_release, health

pytestmark = pytest.mark.integration

AUDIT = "20250301090000_audit_log"


def _out(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout + done.stderr


def _databases(install: Install) -> list[str]:
    rows = install.cluster.psql(
        "postgres", f"SELECT datname FROM pg_database WHERE datname LIKE '{install.dbname}%';\n"
    )
    return sorted(rows.split())


def test_rehearse_times_the_pending_migrations_on_a_copy_and_drops_it(install: Install) -> None:
    install.release(install.root.parent, "2.3.0")
    db_before, pids, databases = install.pg_dump(), app_processes(install.root), _databases(install)
    done = install.inv("rehearse", "--version", "2.3.0", "--json")
    assert done.returncode == 0, _out(done)
    report = json.loads(done.stdout)
    assert report["copied_by"] == "template" and report["copy"].startswith(f"{install.dbname}_rehearse_")
    assert [m["name"] for m in report["migrations"]] == [AUDIT]
    audit = report["migrations"][0]
    assert audit["seconds"] > 0 and report["error"] == ""
    # observed in pg_locks before its COMMIT: the table it creates and the one it alters
    assert audit["locks"] == {"public.AuditLog": "AccessExclusiveLock", "public.User": "AccessExclusiveLock"}
    assert audit["locks_observed"] is True
    users = int(install.sql('SELECT count(*) FROM "User"'))
    assert audit["rows"] == {"public.User": users}, "counted before it ran; AuditLog did not exist"
    # the apply's backup (a dump of the copy) and the rollback's restore-and-swap, each timed
    assert report["dump_seconds"] > 0 and report["restore_seconds"] > 0
    assert _databases(install) == databases, "the copy and the restore's databases are dropped"
    assert install.pg_dump() == db_before, "the live database is only read"
    assert app_processes(install.root) == pids and health(install) == (200, "2.2.0"), "nothing stopped"
    text = install.inv("rehearse", "--version", "2.3.0")
    assert text.returncode == 0 and f"s  {AUDIT}" in text.stdout and "in all" in text.stdout, _out(text)
    assert "took: public.AuditLog ACCESS EXCLUSIVE, public.User ACCESS EXCLUSIVE" in text.stdout
    assert f"rows before: public.User {users}" in text.stdout
    assert "s  the rollback's restore-and-swap" in text.stdout and "the backup dump" in text.stdout
    record = json.loads((install.root / ".patchflow" / "rehearsals.json").read_text())["2.3.0"]
    assert record["migrations"][0]["locks"] == audit["locks"] and record["restore_seconds"] > 0
    plan = install.inv("apply-patch", "--version", "2.3.0", "--dry-run")
    assert plan.returncode == 0, _out(plan)
    assert "before stop    rehearsed: the 1 pending migration(s) took" in plan.stdout, plan.stdout
    assert "on a copy of this database" in plan.stdout and "a rollback's database restore took" in plan.stdout
    window = next(line for line in plan.stdout.splitlines() if line.strip().startswith("stopped window"))
    assert "migrate as rehearsed on a copy of this database" in window, window


def test_a_rehearsal_of_other_migrations_is_not_shown(install: Install, tmp_path: Path) -> None:
    sql = 'CREATE TABLE "AuditLog" (id int);\n'
    build_release(install, tmp_path, "2.3.0", migration=sql)
    done = install.inv("apply-patch", "--version", "2.3.0", "--dry-run", "--rehearse")  # the plan's option
    assert done.returncode == 0, _out(done)
    assert "rehearsing the pending migrations of 2.3.0 on a copy of the database" in done.stdout
    assert "before stop    rehearsed: the 1 pending migration(s) took" in done.stdout, done.stdout
    install.sql(
        f"{sql}INSERT INTO _prisma_migrations (id, checksum, migration_name, logs, started_at, finished_at) "
        f"VALUES ('x', '{hashlib.sha256(sql.encode()).hexdigest()}', '{AUDIT}', '', now(), now())"
    )  # applied meanwhile by someone else
    plan = install.inv("apply-patch", "--version", "2.3.0", "--dry-run")
    assert plan.returncode == 0 and "rehearsed" not in plan.stdout, _out(plan)


def test_with_the_application_connected_the_copy_is_made_from_a_dump(install: Install) -> None:
    install.release(install.root.parent, "2.3.0")
    databases = _databases(install)
    with psycopg.connect(install.url.split("?")[0], application_name="primeflow-api", autocommit=True):
        done = install.inv("rehearse", "--version", "2.3.0", "--json")
    assert done.returncode == 0, _out(done)
    report = json.loads(done.stdout)
    assert report["copied_by"] == "dump" and [m["name"] for m in report["migrations"]] == [AUDIT]
    assert report["restore_seconds"] > 0, "the rollback's restore is rehearsed from the live database's dump"
    assert "copying it by dump and restore instead" in done.stderr, "progress on stderr: stdout is the JSON"
    assert _databases(install) == databases


def test_a_failing_migration_is_reported_and_the_copy_dropped(install: Install, tmp_path: Path) -> None:
    build_release(install, tmp_path, "2.3.0", migration='CREATE TABLE "AuditLog" (id int);\nSELECT 1/0;\n')
    db_before, databases = install.pg_dump(), _databases(install)
    done = install.inv("rehearse", "--version", "2.3.0")
    assert done.returncode == 1, _out(done)
    flat = " ".join(done.stderr.split())
    assert f"The rehearsal failed: P3018: migration {AUDIT} failed and was not applied" in flat, flat
    assert f"prisma/migrations/{AUDIT}/migration.sql line 2: ERROR: division by zero" in flat
    assert "The copy was dropped" in flat
    assert _databases(install) == databases and install.pg_dump() == db_before
    pids = app_processes(install.root)
    refused = install.inv("apply-patch", "--version", "2.3.0", "--yes", "--rehearse")
    assert refused.returncode == 1, _out(refused)
    flat = " ".join(refused.stderr.split())
    assert "The rehearsal on a copy of the database failed: P3018" in flat and "Nothing was stopped" in flat, flat
    assert "-> stop" not in refused.stdout and install.pg_dump() == db_before
    assert app_processes(install.root) == pids and _databases(install) == databases


def test_nothing_pending_and_bad_input(install: Install) -> None:
    install.release(install.root.parent, "2.3.0", migration=None)
    done = install.inv("rehearse", "--version", "2.3.0")
    assert done.returncode == 0 and "nothing to rehearse" in done.stdout, _out(done)
    missing = install.inv("rehearse", "--version", "9.9.9")
    assert missing.returncode == 1 and "9.9.9" in missing.stderr, _out(missing)
    unnamed = install.inv("rehearse")
    assert unnamed.returncode == 1 and "rehearse needs the version to act on" in unnamed.stderr, _out(unnamed)
    none = install.inv("rehearse", "--version", "2.3.0", env={"PATCHFLOW_DATABASE_MODE": "none"})
    assert none.returncode == 1 and "No database is configured" in none.stderr, _out(none)
    # the plan option has nothing to rehearse without a database: the apply goes on without it
    plan = install.inv(
        "apply-patch", "--version", "2.3.0", "--dry-run", "--rehearse", env={"PATCHFLOW_DATABASE_MODE": "none"}
    )
    assert plan.returncode == 0 and "not rehearsed: no database is configured" in plan.stdout, _out(plan)


def test_a_migration_outside_a_transaction_reports_the_locks_postgresql_documents(
    install: Install, tmp_path: Path
) -> None:
    sql = 'CREATE INDEX CONCURRENTLY "User_name_idx" ON "User"("name");\n'
    build_release(install, tmp_path, "2.3.0", migration=sql)
    databases = _databases(install)
    done = install.inv("rehearse", "--version", "2.3.0", "--json")
    assert done.returncode == 0, _out(done)
    (audit,) = json.loads(done.stdout)["migrations"]
    # no transaction to read pg_locks in before a COMMIT: what PostgreSQL documents for the statement
    assert audit["locks"] == {"public.User": "ShareUpdateExclusiveLock"} and audit["locks_observed"] is False
    assert audit["rows"] == {"public.User": int(install.sql('SELECT count(*) FROM "User"'))}
    assert _databases(install) == databases and install.sql("SELECT to_regclass('\"User_name_idx\"')") == ""


def test_a_restore_that_leaves_the_migrations_applied_is_reported(install: Install) -> None:
    # the restore-and-swap is proved by the migrations being pending again: a dump taken after
    # them (a backup of the wrong moment) is caught
    from patchflow.config import load_settings
    from patchflow.context import Context
    from patchflow.errors import MigrationError
    from patchflow.migrations import MigrationHistory, find_migrations
    from patchflow.rehearse import restore_on_copy

    folder = install.root / "prisma/migrations" / AUDIT
    folder.mkdir()
    (folder / "migration.sql").write_text('CREATE TABLE "AuditLog" (id int);\n')
    ctx = Context.create(load_settings(install.root))
    assert ctx.database is not None
    databases, name = _databases(install), f"{install.dbname}_rehearse_test"
    ctx.database.execute(f'CREATE DATABASE "{name}" TEMPLATE "{install.dbname}"', database="postgres", admin=True)
    try:
        copy = ctx.database.beside(name)
        history = MigrationHistory(copy)
        pending = history.pending(find_migrations(install.root))
        history.apply(install.root, pending[0], timeout=60)
        after = copy.dump(install.root.parent / "after.dump").path
        with pytest.raises(
            MigrationError, match=f"The rollback's restore on the copy left migration.s. {AUDIT} applied"
        ):
            restore_on_copy(copy, after, pending, "20990101T000000Z", lambda line: None)
    finally:
        for left in set(_databases(install)) - set(databases):
            ctx.database.execute_quietly(f'DROP DATABASE IF EXISTS "{left}" WITH (FORCE)')
    assert _databases(install) == databases


def test_the_plan_option_leaves_an_interrupted_run_to_its_recovery(install: Install) -> None:
    # an apply killed after its switch: the next apply finishes or undoes it first, so the database
    # is not rehearsed in between (a half-done run is no state to measure, nor to refuse on)
    install.release(install.root.parent, "2.3.0")
    killed = install.inv("apply-patch", "--version", "2.3.0", "--yes", env={"PATCHFLOW_TEST_KILL_AT": "switch:after"})
    assert killed.returncode in (-9, 137), _out(killed)
    done = install.inv("apply-patch", "--version", "2.3.0", "--yes", "--rehearse", "--break-lock")
    assert done.returncode == 0, _out(done)
    assert "not rehearsed: the interrupted run is finished or undone first (inv rehearse afterwards)" in done.stdout
    assert not (install.root / ".patchflow" / "rehearsals.json").exists()
    assert health(install) == (200, "2.3.0")
