"""An apply with a pending migration snapshots the database inside the stopped window and dumps the
snapshot after the restart (issue 26, "snapshot inside the window, dump outside it").

The ``snapshot`` step copies the database on its own server (``CREATE DATABASE ... TEMPLATE``,
``STRATEGY FILE_COPY``); a failed apply and ``rollback-patch`` put it back by the rename swap (the
live database displaced, kept and named); the ``dump-snapshot`` step takes the backup's proven
dump from it after the commit and never turns a success into a failure; ``snapshot_keep_hours``
and ``prune-backups`` drop it; where no snapshot is possible the plan says so and the dump is taken
inside the window as before. Every comparison of databases is a full ``pg_dump``. Real PostgreSQL
and real node services throughout; the kills at the new boundaries are in test_snapshot_kills.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.exact import NEW, assert_exactly_old, status_json
from support.installs import Install, get, history, inv_popen, set_dotenv, wait_until
from support.killing import wait_stopped
from support.pgbin import wrapped_pg_bindir

from patchflow.lifecycle.apply import APPLY_STEPS
from patchflow.stopped_window import STOPPED_STEPS

pytestmark = pytest.mark.integration

APPLY = ("apply-patch", "--version", NEW, "--yes")
FAST_HEALTH = ("--health-timeout", "3")


def _out(done: Any) -> str:
    return str(done.stdout) + str(done.stderr)


def _flat(done: Any) -> str:
    return " ".join(_out(done).split())


def _backup(install: Install, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((install.root / "backups" / name / "backup.json").read_text())
    return data


def _databases(install: Install, mark: str) -> list[str]:
    rows = install.cluster.psql(
        "postgres", f"SELECT datname FROM pg_database WHERE datname LIKE '{install.dbname}\\{mark}%' ORDER BY 1;\n"
    )
    return rows.split()


def _dump_of(install: Install, database: str) -> str:
    url = install.cluster.url(database)
    return subprocess.run(
        [str(install.cluster.bin("pg_dump")), "--restrict-key=patchflowtest", "--dbname", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def _late_row(install: Install) -> None:
    install.sql(
        'INSERT INTO "User" ("email", "name", "role", "updatedAt") '
        "VALUES ('late@primeflow.test', 'Written after the apply', 'MEMBER', CURRENT_TIMESTAMP)"
    )


def _has_late_row(install: Install, database: str) -> bool:
    rows = install.cluster.psql(database, "SELECT count(*) FROM \"User\" WHERE email = 'late@primeflow.test';\n")
    return rows.strip() == "1"


def test_the_snapshot_is_inside_the_window_and_its_dump_after_the_commit() -> None:
    names = [s.name for s in APPLY_STEPS]
    snapshot = next(s for s in APPLY_STEPS if s.name == "snapshot")
    dump = next(s for s in APPLY_STEPS if s.name == "dump-snapshot")
    assert names.index("stop") < names.index("snapshot") < names.index("backup")
    assert snapshot.stopped and snapshot.undo_label == "drop-snapshot" and "snapshot" in STOPPED_STEPS
    assert names.index("commit") < names.index("dump-snapshot") < names.index("cleanup")
    assert not dump.stopped and not dump.undo and "dump-snapshot" not in STOPPED_STEPS


def test_an_apply_with_a_migration_snapshots_then_dumps_after_the_restart_and_rollback_renames_it_back(
    install: Install, tmp_path: Path
) -> None:
    install.release(tmp_path, NEW)
    tree_before, db_before = install.state(), install.pg_dump()
    checkpoints = int(install.sql("SELECT checkpoints_req FROM pg_stat_bgwriter"))
    done = install.inv(*APPLY)
    assert done.returncode == 0, _out(done)
    flat = _flat(done)
    assert "taken after the restart, from a snapshot: 1 migration(s) pending" in flat, flat  # the plan
    # a CHECKPOINT while the services still ran, then the two of the snapshot's file copy (before and
    # after it): the one inside the window has only the pages written since to flush
    assert "no checkpoint before the stop" not in flat, flat
    wait_until(  # the checkpointer reports its counts once each checkpoint has ended
        lambda: int(install.sql("SELECT checkpoints_req FROM pg_stat_bgwriter")) >= checkpoints + 3,
        30,
        "three requested checkpoints counted",
    )
    assert "database copy the snapshot in the stopped window:" in flat, flat
    for before, after in (("-> stop", "-> snapshot"), ("-> snapshot", "-> backup"), ("-> commit", "-> dump-snapshot")):
        assert flat.index(before) < flat.index(after), (before, after)
    assert flat.index("-> dump-snapshot") < flat.index("dump proven") < flat.index("-> cleanup")
    assert "database (after the stop)" not in flat, "nothing is dumped inside the window"

    last = history(install)[-1]
    name = last["backup"]
    record = _backup(install, name)
    snapshot = record["snapshot"]["name"]
    assert snapshot == f"{install.dbname}_snap_{name.split('_', 1)[1]}"
    assert record["database"]["taken"] == f"from the snapshot {snapshot}, after the restart", record["database"]
    assert record["database"]["properties"]["name"] == install.dbname
    assert f"dumped from the snapshot {snapshot} after the restart (proven); the snapshot is kept until" in flat
    # the dump is of the database as it was at the stop: the snapshot's own dump
    assert _dump_of(install, snapshot) == db_before
    assert last["steps"]["snapshot"] > 0 and "dump-snapshot" not in last["steps"]
    assert last["work"]["snapshot_bytes"] > last["work"]["backup_bytes"], last["work"]

    status = status_json(install)
    [listed] = status["snapshots"]
    assert listed["name"] == snapshot and listed["backup"] == name and listed["dump"] == "proven", listed
    assert listed["exists"] is True and listed["size_bytes"] > 0 and listed["expires_at"] > listed["created_at"]
    assert "Snapshots of the database" in install.inv("patch-status").stdout

    _late_row(install)
    rolled = install.inv("rollback-patch", "--yes")
    assert rolled.returncode == 0, _out(rolled)
    assert f"putting the snapshot {snapshot} back in place of {install.dbname}" in rolled.stdout, rolled.stdout
    assert "restoring the dump" not in rolled.stdout
    displaced = re.search(r"kept as (\S+_before_rollback_\d{8}T\d{6}Z)", rolled.stdout)
    assert displaced, rolled.stdout
    assert_exactly_old(install, tree_before, db_before)  # the full pg_dump, compared
    assert _has_late_row(install, displaced.group(1)), "the database it replaced is kept, with the late row"
    status = status_json(install)
    assert status["snapshots"] == [] and _databases(install, "_snap_") == [], "the snapshot is the live one now"
    assert [d["name"] for d in status["displaced_databases"]] == [displaced.group(1)]


def test_a_failed_apply_with_a_migration_puts_the_snapshot_back_and_keeps_the_displaced_database(
    install: Install, tmp_path: Path
) -> None:
    install.release(tmp_path, NEW, health_status=500)
    tree_before, db_before = install.state(), install.pg_dump()
    done = install.inv(*APPLY, *FAST_HEALTH)
    assert done.returncode == 2, _out(done)
    flat = _flat(done)
    assert "rolled back automatically" in flat and "<- restore-database" in flat and "<- drop-snapshot" in flat
    assert "putting the snapshot" in flat and "restoring the dump" not in flat, flat
    kept = re.search(r"the one it replaced is kept as (\S+_before_rollback_\d{8}T\d{6}Z)\.", flat)
    assert kept, flat
    assert_exactly_old(install, tree_before, db_before)
    # the displaced database is the migrated one, kept as it was
    assert "AuditLog" in install.cluster.psql(kept.group(1), "SELECT tablename FROM pg_tables;\n")
    assert _databases(install, "_snap_") == [] and status_json(install)["snapshots"] == []
    backups = [b for b in status_json(install)["backups"] if b["version"] == NEW]
    assert [b["database"] for b in backups] == [False], "no dump was taken: the apply never committed"


def test_rollback_patch_takes_the_dump_once_the_snapshot_is_gone(install: Install, tmp_path: Path) -> None:
    """snapshot_keep_hours = 0: the snapshot is dropped as soon as its dump is proven (time driven
    by the setting); rollback-patch then restores the dump beside the live database."""
    set_dotenv(install, "PATCHFLOW_SNAPSHOT_KEEP_HOURS", "0")
    install.release(tmp_path, NEW)
    tree_before, db_before = install.state(), install.pg_dump()
    done = install.inv(*APPLY)
    assert done.returncode == 0, _out(done)
    assert "dropped once its dump was proven (snapshot_keep_hours = 0)" in _flat(done), _flat(done)
    assert _databases(install, "_snap_") == [] and status_json(install)["snapshots"] == []
    name = history(install)[-1]["backup"]
    assert _backup(install, name)["database"]["taken"].startswith("from the snapshot")

    rolled = install.inv("rollback-patch", "--yes")
    assert rolled.returncode == 0, _out(rolled)
    assert "restoring the dump into" in rolled.stdout and "putting the snapshot" not in rolled.stdout
    tree_after = install.state()
    tree_after.pop(".env")
    tree_before.pop(".env")  # the setting was added
    assert tree_after == tree_before
    assert install.pg_dump() == db_before


def test_prune_backups_drops_a_snapshot_once_it_expired(install: Install, tmp_path: Path) -> None:
    install.release(tmp_path, NEW)
    assert install.inv(*APPLY).returncode == 0
    [snapshot] = status_json(install)["snapshots"]
    kept = install.inv("prune-backups")
    assert kept.returncode == 0 and "dropped 0 snapshot(s)" in kept.stdout, _out(kept)
    assert _databases(install, "_snap_") == [snapshot["name"]], "6 h by default: not expired yet"

    expired = {"PATCHFLOW_SNAPSHOT_KEEP_HOURS": "0"}
    listed = install.inv("prune-backups", "--dry-run", env=expired)
    assert f"would drop snapshot {snapshot['name']}" in listed.stdout, _out(listed)
    assert _databases(install, "_snap_") == [snapshot["name"]]
    pruned = install.inv("prune-backups", env=expired)
    assert pruned.returncode == 0 and f"dropped snapshot {snapshot['name']}" in pruned.stdout, _out(pruned)
    assert _databases(install, "_snap_") == [] and status_json(install)["snapshots"] == []


def test_a_failed_dump_of_the_snapshot_leaves_the_apply_applied_and_the_snapshot_kept(
    install: Install, tmp_path: Path
) -> None:
    failing = wrapped_pg_bindir(
        tmp_path / "pgbin", install.cluster.bindir, "pg_dump", 'echo "pg_dump: error: disk on fire" >&2\nexit 1\n'
    )
    set_dotenv(install, "PATCHFLOW_PG_BINDIR", str(failing))
    install.release(tmp_path, NEW)
    tree_before, db_before = install.state(), install.pg_dump()
    done = install.inv(*APPLY)
    assert done.returncode == 0, _out(done)
    flat = _flat(done)
    assert "applied 2.2.0 -> 2.3.0" in flat and "warning: the dump of the snapshot failed" in flat, flat
    assert "disk on fire" in flat and "is kept as backup" in flat, flat
    code, body = get(install.health_url)
    assert code == 200 and json.loads(body)["version"] == NEW
    last = history(install)[-1]
    assert last["result"] == "success"
    assert _backup(install, last["backup"]).get("database") is None
    [snapshot] = status_json(install)["snapshots"]
    assert snapshot["dump"] == "failed" and "disk on fire" in snapshot["dump_error"] and snapshot["expires_at"] is None
    assert "failed" in install.inv("patch-status").stdout

    # its backup's only copy of the database: no retention drops it
    pruned = install.inv("prune-backups", env={"PATCHFLOW_SNAPSHOT_KEEP_HOURS": "0"})
    assert pruned.returncode == 0 and "dropped 0 snapshot(s)" in pruned.stdout, _out(pruned)
    # and rollback-patch puts it back
    rolled = install.inv("rollback-patch", "--yes")
    assert rolled.returncode == 0, _out(rolled)
    assert "putting the snapshot" in rolled.stdout
    assert install.state() == tree_before and install.pg_dump() == db_before


# -- where no snapshot is possible: the dump inside the stopped window, said so -------------------------------


def test_with_database_snapshot_off_the_dump_is_inside_the_window_and_undoes_a_failed_apply(
    install: Install, tmp_path: Path
) -> None:
    set_dotenv(install, "PATCHFLOW_DATABASE_SNAPSHOT", "off")
    install.release(tmp_path, NEW, health_status=500)
    dry = install.inv(*APPLY, "--dry-run")
    assert dry.returncode == 0, _out(dry)
    flat = _flat(dry)
    assert "after the stop, inside the stopped window: 1 migration(s) pending" in flat, flat
    assert "no snapshot: database_snapshot = off" in flat and "the dump (with the files, the backup step)" in flat
    tree_before, db_before = install.state(), install.pg_dump()
    done = install.inv(*APPLY, *FAST_HEALTH)
    assert done.returncode == 2 and "rolled back automatically" in done.stderr, _out(done)
    assert "database dump (after the stop)" in done.stdout and "-> snapshot" in done.stdout
    assert "restoring the dump into" in done.stdout and "putting the snapshot" not in done.stdout
    assert_exactly_old(install, tree_before, db_before)
    assert _databases(install, "_snap_") == []


@pytest.fixture
def app_role(install: Install) -> str:
    """The install's database owned by ``snapapp``, a role without CREATEDB, which DATABASE_URL
    names (tables, types and the migration history owned by it too)."""
    db = install.dbname
    install.cluster.psql(
        "postgres",
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'snapapp') THEN "
        "CREATE ROLE snapapp LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE; END IF; END $$;\n"
        "ALTER ROLE snapapp NOCREATEDB;\n"
        f'ALTER DATABASE "{db}" OWNER TO snapapp;\n',
    )
    install.cluster.psql(
        db,
        """DO $$ DECLARE r record; BEGIN
  FOR r IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' LOOP
    EXECUTE format('ALTER TABLE public.%I OWNER TO snapapp', r.tablename);
  END LOOP;
  FOR r IN SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
           WHERE n.nspname = 'public' AND t.typtype = 'e' LOOP
    EXECUTE format('ALTER TYPE public.%I OWNER TO snapapp', r.typname);
  END LOOP;
END $$;
ALTER SCHEMA public OWNER TO snapapp;
""",
    )
    set_dotenv(install, "DATABASE_URL", install.cluster.url(db, user="snapapp"))
    return "snapapp"


def test_a_role_without_createdb_is_planned_without_a_snapshot_and_a_role_that_may_snapshots_as_itself(
    install: Install, app_role: str, tmp_path: Path
) -> None:
    """Without CREATEDB the role can neither snapshot the database nor restore it beside the live
    one: the plan says so and falls back to the dump inside the window and a restore in place
    (test_in_place_restore runs it). Given CREATEDB, the same role (no superuser) snapshots, and a
    failed apply is undone from the snapshot exactly."""
    install.release(tmp_path, NEW, health_status=500)
    tree_before, db_before = install.state(), install.pg_dump()
    planned = install.inv(*APPLY, "--dry-run")
    assert planned.returncode == 0, _out(planned)
    flat = _flat(planned)
    assert "taken after the stop, inside the stopped window: 1 migration(s) pending" in flat, flat
    assert f"no snapshot: role {app_role} may not create databases (no CREATEDB)" in flat, flat
    assert f"database undo in place, in one transaction (role {app_role} may not create databases" in flat, flat

    install.cluster.psql("postgres", f"ALTER ROLE {app_role} CREATEDB;\n")
    try:
        dry = install.inv(*APPLY, "--dry-run")
        assert "taken after the restart, from a snapshot" in _flat(dry), _flat(dry)
        failed = install.inv(*APPLY, *FAST_HEALTH)
        assert failed.returncode == 2 and "rolled back automatically" in failed.stderr, _out(failed)
        assert "putting the snapshot" in failed.stdout, failed.stdout
        # CREATEDB but neither superuser nor pg_checkpoint: no checkpoint before the stop, said once
        assert "no checkpoint before the stop (the role is not superuser nor pg_checkpoint)" in failed.stdout
        assert install.pg_dump() == db_before
        assert install.sql(f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{install.dbname}'") == (
            app_role
        )
        after = install.state()
        after.pop(".env"), tree_before.pop(".env")
        assert after == tree_before and _databases(install, "_snap_") == []
    finally:
        install.cluster.psql("postgres", f"ALTER ROLE {app_role} NOCREATEDB;\n")


def test_a_snapshot_the_server_refuses_falls_back_to_the_dump_inside_the_window(
    install: Install, app_role: str, tmp_path: Path
) -> None:
    """A session of another role the (non-superuser) role may not end keeps the live database
    busy: the copy is refused, the apply says so and dumps inside the window instead, and ends
    applied, with a proven dump and no snapshot."""
    install.cluster.psql("postgres", f"ALTER ROLE {app_role} CREATEDB;\n")
    install.cluster.psql(
        "postgres",
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'snapreader') THEN "
        "CREATE ROLE snapreader LOGIN; END IF; END $$;\n",
    )
    reader = subprocess.Popen(
        [str(install.cluster.bin("psql")), "--dbname", install.cluster.url(install.dbname, user="snapreader"),
         "-c", "SELECT pg_sleep(300)"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        install.release(tmp_path, NEW)
        refused = install.inv(*APPLY)  # a client of the database it does not know: refused, nothing changed
        assert refused.returncode == 2 and "Refusing to migrate database" in _flat(refused), _out(refused)
        done = install.inv(*APPLY, "--others-stopped")  # the operator knows it: the snapshot is tried
        assert done.returncode == 0, _out(done)
        flat = _flat(done)
        assert "taken after the restart, from a snapshot" in flat  # planned: the role may
        assert "being accessed by other users" in flat and "dumped inside the stopped window instead" in flat, flat
        assert "database dump (after the stop)" in flat and "-> dump-snapshot" in flat
        last = history(install)[-1]
        assert _backup(install, last["backup"])["database"]["taken"] == "after the stop"
        assert "snapshot" not in _backup(install, last["backup"])
        assert _databases(install, "_snap_") == [] and status_json(install)["snapshots"] == []
    finally:
        reader.kill()
        reader.wait()
        install.cluster.psql("postgres", f"ALTER ROLE {app_role} NOCREATEDB;\n")


# -- error paths ------------------------------------------------------------------------------------------------


def _apply_with_a_failed_dump(install: Install, tmp_path: Path) -> str:
    """Apply 2.3.0 with a pg_dump that fails: applied, the snapshot kept as the backup's only copy
    of the database; the working pg_dump is put back. Returns the snapshot's name."""
    failing = wrapped_pg_bindir(tmp_path / "pgbin", install.cluster.bindir, "pg_dump", "exit 1\n")
    set_dotenv(install, "PATCHFLOW_PG_BINDIR", str(failing))
    install.release(tmp_path, NEW)
    assert install.inv(*APPLY).returncode == 0
    set_dotenv(install, "PATCHFLOW_PG_BINDIR", str(install.cluster.bindir))
    [snapshot] = status_json(install)["snapshots"]
    assert snapshot["dump"] == "failed"
    return str(snapshot["name"])


def test_a_rollback_with_neither_the_snapshot_nor_a_dump_is_refused_before_anything_changes(
    install: Install, tmp_path: Path
) -> None:
    snapshot = _apply_with_a_failed_dump(install, tmp_path)
    install.cluster.drop_database(snapshot)  # by hand
    tree, db = install.state(), install.pg_dump()
    refused = install.inv("rollback-patch", "--yes")
    assert refused.returncode == 1, _out(refused)
    flat = _flat(refused)
    assert "holds no database dump and its snapshot is gone from the server" in flat and "Nothing was changed" in flat
    assert install.state() == tree and install.pg_dump() == db
    code, body = get(install.health_url)
    assert code == 200 and json.loads(body)["version"] == NEW
    assert status_json(install)["interrupted"] is None


def test_a_failed_apply_whose_snapshot_was_dropped_meanwhile_keeps_the_live_database(
    install: Install, tmp_path: Path
) -> None:
    """Held before its restore-database undo, the snapshot is dropped by hand: the undo cannot put
    it back and the backup has no dump (the apply never committed), so the automatic rollback stops
    there, saying so, the live (migrated) database untouched, and the journal kept."""
    install.release(tmp_path, NEW, health_status=500)
    proc = inv_popen(install, *APPLY, *FAST_HEALTH, env={"PATCHFLOW_TEST_KILL_AT": "restore-database=SIGSTOP"})
    try:
        wait_stopped(proc.pid)
        [snapshot] = _databases(install, "_snap_")
        install.cluster.drop_database(snapshot)
        migrated = install.pg_dump()
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 4, out + err
    flat = " ".join((out + err).split())
    assert "holds no database dump and its snapshot" in flat and "is gone from the server" in flat, flat
    assert "automatic rollback did not complete" in flat, flat
    assert install.pg_dump() == migrated, "the live database is never dropped or changed"
    status = status_json(install)
    assert status["interrupted"] is not None and status["interrupted"]["failed_step"] == "restore-database"


def test_prune_backups_never_drops_the_snapshot_a_running_rollback_puts_back(install: Install, tmp_path: Path) -> None:
    install.release(tmp_path, NEW)
    tree_before, db_before = install.state(), install.pg_dump()
    assert install.inv(*APPLY).returncode == 0
    [snapshot] = _databases(install, "_snap_")
    proc = inv_popen(install, "rollback-patch", "--yes", env={"PATCHFLOW_TEST_KILL_AT": "restore-database=SIGSTOP"})
    try:
        wait_stopped(proc.pid)
        refused = install.inv("prune-backups", env={"PATCHFLOW_SNAPSHOT_KEEP_HOURS": "0"})
        assert refused.returncode == 3 and "rollback of 2.3.0" in _flat(refused), _out(refused)
        assert _databases(install, "_snap_") == [snapshot]
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    assert f"putting the snapshot {snapshot} back" in out
    assert_exactly_old(install, tree_before, db_before)
