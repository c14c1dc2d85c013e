"""A role that owns its database but may not create databases (issue 26, "the fallback path"): the
most common PrimeFlow set-up, ``CREATE USER primeflow; CREATE DATABASE primeflow OWNER primeflow;``
with ``DATABASE_URL`` naming that role and no admin URL.

Such a role can neither snapshot the database nor restore a dump beside it. The plan says so with
the cost (the dump, of the database's size, inside the stopped window) and the fix, and does not
refuse; a failed apply and ``rollback-patch`` restore the dump in place, in one transaction
(:mod:`patchflow.restore_in_place`), after keeping the live database as a dump in the backup
folder. Every comparison is a full ``pg_dump`` (schema, owners, grants and rows: the schema-only
dump is part of it). A kill while the restore's transaction is open leaves the database exactly as
it was, and the recovery patch-status names ends the orphaned session and finishes the restore; a
script cut short never commits; a kill after the commit is restored again, the first dump kept.
A role that owns nothing, and what a restore in place could not undo, are refused before anything
stops. Real PostgreSQL, real services.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.exact import NEW, patchflow_sessions, status_json
from support.installs import Install, get, history, inv_popen, set_dotenv, wait_until
from support.killing import kill
from support.pgbin import wrapped_pg_bindir
from support.trials import recover

from patchflow.restore_in_place import MARK

pytestmark = pytest.mark.integration

ROLE = "inplaceapp"
APPLY = ("apply-patch", "--version", NEW, "--yes")
FAST_HEALTH = ("--health-timeout", "3")
# the sample's migration, and rows it changes: a failed apply must undo both
MIGRATION = """CREATE TABLE "AuditLog" (
    "id" SERIAL NOT NULL,
    "action" TEXT NOT NULL,
    CONSTRAINT "AuditLog_pkey" PRIMARY KEY ("id")
);
ALTER TABLE "User" ADD COLUMN "nickname" TEXT;
INSERT INTO "AuditLog" ("action") VALUES ('upgrade to 2.3.0');
UPDATE "User" SET "name" = upper("name");
INSERT INTO "User" ("email", "name", "role", "updatedAt") VALUES ('dana@primeflow.test', 'Dana', 'MEMBER', now());
CREATE SCHEMA "reporting";
CREATE TABLE "reporting"."Daily" ("day" DATE PRIMARY KEY);
"""


def _out(done: Any) -> str:
    return str(done.stdout) + str(done.stderr)


def _flat(done: Any) -> str:
    return " ".join(_out(done).split())


def _own_everything(install: Install, role: str) -> None:
    """Make ``role`` (LOGIN, no CREATEDB) own the install's database and everything in public, as
    when it created them; public itself stays as initdb makes it (owned by pg_database_owner). A
    superuser's extension (citext, trusted) lives in public too."""
    install.cluster.psql(
        "postgres",
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN "
        f"CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE; END IF; END $$;\n"
        f'ALTER DATABASE "{install.dbname}" OWNER TO {role};\n',
    )
    install.cluster.psql(
        install.dbname,
        f"""DO $$ DECLARE r record; BEGIN
  FOR r IN SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
  LOOP EXECUTE format('ALTER TABLE public.%I OWNER TO {role}', r.relname); END LOOP;
  FOR r IN SELECT t.typname FROM pg_type t WHERE t.typnamespace = 'public'::regnamespace AND t.typtype = 'e'
  LOOP EXECUTE format('ALTER TYPE public.%I OWNER TO {role}', r.typname); END LOOP;
END $$;
CREATE EXTENSION IF NOT EXISTS citext;
""",
    )
    set_dotenv(install, "DATABASE_URL", install.cluster.url(install.dbname, user=role))


@pytest.fixture
def owner_install(install: Install) -> Install:
    """The sample install whose database ``inplaceapp`` owns and is connected as."""
    _own_everything(install, ROLE)
    return install


def _state(install: Install) -> tuple[dict[str, Any], str]:
    tree = install.state()
    tree.pop(".env")  # DATABASE_URL names the role
    return tree, install.pg_dump()


def _exactly_old(install: Install, before: tuple[dict[str, Any], str], owner: str = ROLE) -> None:
    tree, db = before
    after = install.state()
    after.pop(".env")
    assert after == tree
    assert install.pg_dump() == db
    assert install.sql(f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{install.dbname}'") == owner
    assert install.sql("SELECT to_regclass('public.\"AuditLog\"') IS NULL") == "t", "the added table is gone"
    code, body = get(install.health_url)
    assert code == 200 and json.loads(body)["version"] == "2.2.0", body


def _kept_dumps(install: Install, backup: str) -> list[Path]:
    return sorted((install.root / "backups" / backup).glob("displaced-*.dump"))


def _restore_of(install: Install, dump: Path, table: str) -> str:
    """The SQL of ``table`` in the custom-format ``dump`` (read with pg_restore, nothing restored)."""
    return subprocess.run(
        [str(install.cluster.bin("pg_restore")), "--file=-", "--data-only", f"--table={table}", str(dump)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_without_createdb_the_plan_names_the_fallback_and_apply_and_rollback_restore_in_place_exactly(
    owner_install: Install, tmp_path: Path
) -> None:
    install = owner_install
    install.release(tmp_path, NEW, migration=MIGRATION, health_status=500)
    before = _state(install)

    size_before = int(install.sql(f"SELECT pg_database_size('{install.dbname}')"))
    dry = install.inv(*APPLY, "--dry-run")
    assert dry.returncode == 0, _out(dry)
    flat = _flat(dry)
    assert "taken after the stop, inside the stopped window: 1 migration(s) pending" in flat, flat
    assert f"no snapshot: role {ROLE} may not create databases (no CREATEDB)" in flat, flat
    assert "so the dump runs while the services are stopped and the stopped window grows with the database" in flat
    assert f"give role {ROLE} CREATEDB, or set PATCHFLOW_DATABASE_ADMIN_URL" in flat, flat
    # the plan names the database's size as it was when it read it: between the sizes read before and
    # after the dry run (the database may grow by a page or two meanwhile: statistics, autovacuum)
    size_after = int(install.sql(f"SELECT pg_database_size('{install.dbname}')"))
    said = re.search(r"database dump ([0-9.]+ [KMG]iB), taken after the stop", flat)
    assert said is not None, flat
    low, high = sorted((size_before, size_after))
    assert _as_bytes(_human(low)) <= _as_bytes(said.group(1)) <= _as_bytes(_human(high)), (said.group(1), low, high)
    assert f"database undo in place, in one transaction (role {ROLE} may not create databases" in flat, flat
    assert "an in-place restore (a dump of the live database, a script)" in flat, flat

    # a failed apply: the migration added a table and a schema and changed rows; all undone in place
    failed = install.inv(*APPLY, *FAST_HEALTH)
    assert failed.returncode == 2 and "rolled back automatically" in failed.stderr, _out(failed)
    flat = _flat(failed)
    assert "database dump (after the stop)" in flat and "-> snapshot" in flat and "putting the snapshot" not in flat
    assert f"restoring the dump into {install.dbname} in place, in one transaction" in flat, flat
    assert "restoring the dump into" in flat and "_restoring_" not in flat, flat
    _exactly_old(install, before)
    assert install.sql("SELECT to_regnamespace('reporting') IS NULL") == "t"
    assert patchflow_sessions(install) == []
    last = history(install)[-1]
    assert last["result"] == "rolled_back", last
    backup = json.loads((install.root / "backups" / last["backup"] / "backup.json").read_text())
    assert backup["database"]["restore"] == "in-place" and "snapshot" not in backup, backup
    [kept] = _kept_dumps(install, last["backup"])
    assert f"the one it replaced is kept as the dump {kept}" in flat, flat
    assert "upgrade to 2.3.0" in _restore_of(install, kept, "AuditLog"), "the migrated database is kept as a dump"
    assert not list((install.root / "backups" / last["backup"]).glob(".restore-*")), "the restore's script is gone"

    # applied for good, a row written since, then rollback-patch: in place again, the row kept aside
    install.release(tmp_path, NEW, migration=MIGRATION)
    applied = install.inv(*APPLY)
    assert applied.returncode == 0, _out(applied)
    install.sql(
        'INSERT INTO "User" ("email", "name", "role", "updatedAt") '
        "VALUES ('late@primeflow.test', 'Late', 'MEMBER', now())"
    )
    # killed once its restore committed (the step not yet done): the recovery restores in place again
    rolled = install.inv("rollback-patch", "--yes", env={"PATCHFLOW_TEST_KILL_AT": "database-restored"})
    assert rolled.returncode in (-9, 137), _out(rolled)
    assert f"restoring the dump into {install.dbname} in place" in _flat(rolled), _flat(rolled)
    assert recover(install) == [f"rollback-patch --version {NEW} --break-lock --yes"]
    log = (install.root / ".patchflow" / "logs" / "patchflow.log").read_text()
    assert log.count(f"restoring the dump into {install.dbname} in place") == 3, "once by the failed apply's undo"
    _exactly_old(install, before)
    name = history(install)[-1]["backup"]
    [kept] = _kept_dumps(install, name)
    assert "late@primeflow.test" in _restore_of(install, kept, "User"), "rows written since are kept in the dump"
    assert history(install)[-1]["displaced_database"] == str(kept)
    assert status_json(install)["displaced_databases"] == [], "no database was displaced"


def _as_bytes(shown: str) -> float:
    """The bytes a size as the plan prints it stands for (``7.6 MiB``)."""
    number, unit = shown.split()
    return float(number) * {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}[unit]


def _human(size: int) -> str:
    from patchflow.units import human_bytes

    return human_bytes(size)


def _gated_psql(folder: Path, real: Path, gate: Path) -> Path:
    """A pg_bindir whose psql, running the in-place restore (``--single-transaction``) for the first
    time, holds its script after the emptying statements (the transaction open, the schemas dropped)
    while ``gate`` exists, and notes it (``<gate>.entered``); later runs pass."""
    hold = folder.with_name("hold.sh")
    hold.write_text(
        f'#!/bin/sh\n[ -e "{gate}.entered" ] && exit 0\ntouch "{gate}.entered"\n'
        f'while [ -e "{gate}" ]; do sleep 0.05; done\n'
    )
    hold.chmod(0o755)
    body = (
        'case "$*" in *--single-transaction*)\n'
        f'  awk \'{{ print; fflush() }} index($0, "{MARK}") == 1 {{ system("{hold}") }}\' | "$REAL" "$@"\n'
        "  exit $? ;;\n"
        "esac\n"
        'exec "$REAL" "$@"\n'
    )
    return wrapped_pg_bindir(folder, real, "psql", body)


def _restore_open(install: Install) -> bool:
    """The restore's transaction is open on the server and holds the dropped schemas' tables."""
    rows = install.cluster.psql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid "
        f"WHERE a.datname = '{install.dbname}' AND a.application_name = 'patchflow' "
        "AND a.state = 'idle in transaction' AND l.mode = 'AccessExclusiveLock' AND l.granted;\n",
    )
    return int(rows.strip() or 0) > 0


@pytest.mark.parametrize("how", ["tree", "main"])
def test_a_kill_inside_the_in_place_restore_leaves_the_database_whole_and_the_recovery_finishes_it(
    owner_install: Install, tmp_path: Path, how: str
) -> None:
    """Killed with the restore's transaction open (its schemas dropped, the dump not yet replayed):
    ``tree`` kills psql too, so the server rolls the transaction back and the database is exactly
    the migrated one; ``main`` leaves the orphaned psql holding the transaction and its locks, and
    the recovery ends that session first. Either way the recovery ends exactly old."""
    install = owner_install
    gate = tmp_path / "gate"
    gate.write_text("held")
    set_dotenv(install, "PATCHFLOW_PG_BINDIR", str(_gated_psql(tmp_path / "pgbin", install.cluster.bindir, gate)))
    install.release(tmp_path, NEW, migration=MIGRATION, health_status=500)
    before = _state(install)
    proc = inv_popen(install, *APPLY, *FAST_HEALTH)
    try:
        wait_until(lambda: gate.with_name("gate.entered").exists(), 180, "the in-place restore's transaction")
        wait_until(lambda: _restore_open(install), 60, "the schemas dropped inside the restore's transaction")
        kill(proc.pid, how)
        proc.communicate()
        if how == "main":  # the orphaned psql holds the open transaction (a pg_dump would wait on its locks)
            assert _restore_open(install)
        else:  # psql died with it: the server rolled the transaction back
            wait_until(lambda: not _restore_open(install), 60, "the transaction rolled back")
            assert install.sql('SELECT count(*) FROM "AuditLog"') == "1", "exactly the migrated database"
            assert install.sql("SELECT count(*) FROM \"User\" WHERE email = 'dana@primeflow.test'") == "1"
        status = status_json(install)
        assert status["interrupted"] is not None and status["interrupted"]["phase"] == "rolling_back", status
        recover(install)
    finally:
        gate.unlink(missing_ok=True)  # an orphaned psql (main) goes on: its session was ended
    wait_until(lambda: not patchflow_sessions(install), 60, "no session of the tool left")
    _exactly_old(install, before)
    assert status_json(install)["interrupted"] is None


def test_a_role_without_createdb_that_does_not_own_the_database_is_refused_before_anything_stops(
    install: Install, tmp_path: Path
) -> None:
    stranger = "inplacestranger"
    install.cluster.psql(
        "postgres",
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{stranger}') THEN "
        f"CREATE ROLE {stranger} LOGIN NOCREATEDB; END IF; END $$;\n",
    )
    install.cluster.psql(install.dbname, f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {stranger};\n")
    set_dotenv(install, "DATABASE_URL", install.cluster.url(install.dbname, user=stranger))
    install.release(tmp_path, NEW)
    before, runs = _state(install), len(history(install))
    for flags in (("--dry-run",), ("--yes",)):
        refused = install.inv("apply-patch", "--version", NEW, *flags)
        assert refused.returncode == 1, _out(refused)
        flat = _flat(refused)
        assert (
            f"could not be restored in place (its role may not create databases) if the apply failed: role "
            f"{stranger} may not create databases (no CREATEDB) and does not own database {install.dbname}"
        ) in flat, flat
        assert "it is owned by postgres" in flat and "PATCHFLOW_DATABASE_ADMIN_URL" in flat, flat
        assert "Nothing was stopped or changed" in flat and "-> stop" not in flat, flat
    _exactly_old(install, before, owner="postgres")
    assert len(history(install)) == runs


def test_what_an_in_place_restore_could_not_undo_is_refused_before_anything_stops(
    owner_install: Install, tmp_path: Path
) -> None:
    """Objects of another role where the restore replaces the schema, or in a schema it keeps, and
    an extension it would drop and may not create again: each named, before anything stops."""
    install = owner_install
    install.cluster.psql(
        install.dbname,
        'CREATE TABLE public."Legacy" (id integer);\nCREATE SCHEMA adm;\nCREATE TABLE adm.settings (id integer);\n'
        "CREATE EXTENSION pg_buffercache;\n",
    )
    install.release(tmp_path, NEW)
    before = _state(install)
    refused = install.inv(*APPLY, "--dry-run")
    assert refused.returncode == 1, _out(refused)
    flat = _flat(refused)
    assert "could not be restored in place (its role may not create databases) if the apply failed" in flat, flat
    assert (
        f"schema public, which the in-place restore replaces, holds Legacy (owned by postgres): role {ROLE} may not "
        "give them back to their owner"
    ) in flat, flat
    assert f"schema adm (owned by postgres, not by role {ROLE}) holds settings (owned by postgres)" in flat, flat
    assert f"extension(s) pg_buffercache would be dropped with the schema holding them and role {ROLE} may not" in flat
    assert "make it the owner of the database and of what it holds" in flat and "Nothing was stopped" in flat, flat
    _exactly_old(install, before)


def test_a_restore_script_cut_short_never_commits_and_the_recovery_restores_again(
    owner_install: Install, tmp_path: Path
) -> None:
    """psql's input ends right after the emptying statements (a wrapper cuts it): psql commits at
    the end of its input, and the restore's guard makes that commit fail, so the database stays
    exactly the migrated one (the dump the restore kept of it, compared in full); the automatic
    rollback stops there, saying so, and the recovery with the real psql ends exactly old."""
    install = owner_install
    cut = wrapped_pg_bindir(
        tmp_path / "pgbin",
        install.cluster.bindir,
        "psql",
        'case "$*" in *--single-transaction*)\n'
        f'  awk \'{{ print }} index($0, "{MARK}") == 1 {{ exit }}\' | "$REAL" "$@"\n'
        "  exit $? ;;\n"
        "esac\n"
        'exec "$REAL" "$@"\n',
    )
    set_dotenv(install, "PATCHFLOW_PG_BINDIR", str(cut))
    install.release(tmp_path, NEW, migration=MIGRATION, health_status=500)
    before = _state(install)
    done = install.inv(*APPLY, *FAST_HEALTH)
    assert done.returncode == 4, _out(done)
    flat = _flat(done)
    assert "automatic rollback did not complete" in flat, flat
    assert "failed and was rolled back, so the database is as it was" in flat and "violates foreign key" in flat, flat
    [kept] = _kept_dumps(install, history(install)[-1]["backup"])
    as_kept = subprocess.run(
        [str(install.cluster.bin("pg_restore")), "--restrict-key=patchflowtest", "--file=-", str(kept)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert install.pg_dump() == as_kept, "exactly the migrated database"
    assert install.sql('SELECT count(*) FROM "AuditLog"') == "1"
    set_dotenv(install, "PATCHFLOW_PG_BINDIR", str(install.cluster.bindir))
    recover(install)
    _exactly_old(install, before)


def test_killed_once_the_in_place_restore_committed_the_recovery_restores_again_and_keeps_the_first_dump(
    owner_install: Install, tmp_path: Path
) -> None:
    """Killed after the commit, before the journal marks the undo done: the recovery restores in
    place again (the method noted in the journal), keeps the dump of the migrated database the first
    run took (never one of the restored database), and ends exactly old."""
    install = owner_install
    install.release(tmp_path, NEW, migration=MIGRATION, health_status=500)
    before = _state(install)
    done = install.inv(*APPLY, *FAST_HEALTH, env={"PATCHFLOW_TEST_KILL_AT": "database-restored"})
    assert done.returncode in (-9, 137), _out(done)
    assert install.sql("SELECT to_regclass('public.\"AuditLog\"') IS NULL") == "t", "committed: the old database"
    journal = json.loads((install.root / ".patchflow" / "journal.json").read_text())
    assert journal["notes"]["restore_method"] == "in-place", journal["notes"]
    [kept] = _kept_dumps(install, journal["backup"])
    first = kept.read_bytes()
    ran = recover(install)
    assert ran, "patch-status named a recovery"
    log = (install.root / ".patchflow" / "logs" / "patchflow.log").read_text()
    assert log.count(f"restoring the dump into {install.dbname} in place") == 2, "the recovery restored again"
    _exactly_old(install, before)
    assert _kept_dumps(install, journal["backup"]) == [kept] and kept.read_bytes() == first
    assert "upgrade to 2.3.0" in _restore_of(install, kept, "AuditLog")
