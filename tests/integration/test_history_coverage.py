"""A migration history that does not cover the schema is refused by the plan, before anything
stops, and ``baseline-migrations`` records what ``prisma migrate resolve --applied`` would
(issue 18, fault 3): on a running sample install and on a PrimeFlow-shaped checkout whose database
was migrated by scripts running flat .sql files, with a real PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.exact import app_processes
from support.installs import REPO, Install, build_release, get, health, run_inv, wait_until
from support.services import PostgresCluster

sys.path.insert(0, str(REPO / "scripts"))

from primeflow_checkout import MIGRATIONS, make_checkout_release, prepare_checkout

pytestmark = pytest.mark.integration

PRISMA_TABLE = """CREATE TABLE _prisma_migrations (
    id                      VARCHAR(36) PRIMARY KEY NOT NULL,
    checksum                VARCHAR(64) NOT NULL,
    finished_at             TIMESTAMPTZ,
    migration_name          VARCHAR(255) NOT NULL,
    logs                    TEXT,
    rolled_back_at          TIMESTAMPTZ,
    started_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    applied_steps_count     INTEGER NOT NULL DEFAULT 0
);"""
ROW = (
    "SELECT migration_name, checksum, logs IS NOT NULL AND logs = '', started_at = finished_at, "
    "rolled_back_at IS NULL, applied_steps_count, id FROM _prisma_migrations "
)


def _out(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout + done.stderr


def _flat(text: str) -> str:
    return " ".join(text.split())


def _apply(install: Install, *extra: str) -> subprocess.CompletedProcess[str]:
    return install.inv("apply-patch", "--version", "2.3.0", "--yes", *extra)


def _assert_refused_untouched(install: Install, done: subprocess.CompletedProcess[str], db_before: str) -> str:
    assert done.returncode == 1, _out(done)
    assert "-> stop" not in done.stdout and "-> lock" not in done.stdout
    assert install.pg_dump() == db_before
    assert health(install) == (200, "2.2.0")
    return _flat(done.stderr)


def _sha(install: Install, name: str) -> str:
    return hashlib.sha256((install.root / "prisma/migrations" / name / "migration.sql").read_bytes()).hexdigest()


def test_an_empty_history_beside_the_schema_is_refused_by_the_plan_then_baselined(install: Install) -> None:
    install.sql("DELETE FROM _prisma_migrations")  # what `prisma migrate deploy` over flat files leaves
    install.release(install.root.parent, "2.3.0")
    db_before, pids = install.pg_dump(), app_processes(install.root)
    for extra in ((), ("--dry-run",)):
        done = _apply(install, *extra)
        message = _assert_refused_untouched(install, done, db_before)
        assert '_prisma_migrations is empty while schema "public" holds 2 table(s) (Project, User)' in message
        assert "4 migration(s) of the patch look pending (20250101120000_init, 20250115093000_add_projects" in message
        assert 'creates type "public"."Role" (line 2), which exists' in message
        assert 'creates table "public"."User" (line 5), which exists' in message
        assert "`inv baseline-migrations`" in message and "Nothing was stopped or changed" in message
    assert app_processes(install.root) == pids, "the services were never touched"

    baselined = install.inv("baseline-migrations", "--yes")
    assert baselined.returncode == 0, _out(baselined)
    assert "recorded 3 migrations as applied" in baselined.stdout
    rows = [r.split("|") for r in install.sql(ROW + "ORDER BY started_at").splitlines()]
    names = ["20250101120000_init", "20250115093000_add_projects", "20250201101500_seed_defaults"]
    assert [r[0] for r in rows] == names, "recorded in the tree's order (started_at)"
    for row in rows:
        assert row[1] == _sha(install, row[0])
        assert row[2:6] == ["t", "t", "t", "0"], row  # logs '', started_at = finished_at, not rolled back, 0 steps
        assert uuid.UUID(row[6]).version == 4
    done = _apply(install)
    assert done.returncode == 0, _out(done)
    assert health(install) == (200, "2.3.0")
    assert install.sql("SELECT count(*) FROM _prisma_migrations WHERE finished_at IS NOT NULL") == "4"


def test_a_partial_history_is_refused_naming_what_exists_and_a_failed_row_is_resolved_like_prisma(
    install: Install,
) -> None:
    # the history lost the row of add_projects; a failed attempt of it is recorded instead
    install.sql(
        "DELETE FROM _prisma_migrations WHERE migration_name = '20250115093000_add_projects';\n"
        "INSERT INTO _prisma_migrations (id, checksum, migration_name, logs, started_at) VALUES "
        "('failed-attempt', 'x', '20250115093000_add_projects', 'relation exists', now() - interval '1 day')"
    )
    install.release(install.root.parent, "2.3.0")
    db_before = install.pg_dump()
    message = _assert_refused_untouched(install, _apply(install), db_before)
    assert "_prisma_migrations records 2 applied migration(s)" in message
    assert "look pending (20250115093000_add_projects, 20250301090000_audit_log)" in message
    assert 'add_projects creates table "public"."Project" (line 2), which exists' in message, message
    assert "Project_pkey" not in message, "one conflict per statement: the table's own key is not repeated"
    assert 'index "public"."Project_slug_key" (line 15), which exists' in message, message
    assert "audit_log creates" not in message, "the new migration's objects do not exist: it is fine"

    listed = install.inv("baseline-migrations")
    assert listed.returncode == 5, _out(listed)
    assert "record as applied: 20250115093000_add_projects" in listed.stdout
    assert "its failed row is marked rolled back" in listed.stdout
    assert "already recorded: 20250101120000_init, 20250201101500_seed_defaults" in listed.stdout
    done = install.inv("baseline-migrations", "--yes")
    assert done.returncode == 0 and "recorded 1 migrations as applied" in done.stdout, _out(done)
    failed = install.sql(
        "SELECT finished_at IS NULL, rolled_back_at IS NOT NULL FROM _prisma_migrations WHERE id = 'failed-attempt'"
    )
    assert failed == "t|t", "the failed row is kept and marked rolled back, as `migrate resolve --applied` does"
    row = install.sql(ROW + "WHERE migration_name = '20250115093000_add_projects' AND id <> 'failed-attempt'")
    assert row.split("|")[1:6] == [_sha(install, "20250115093000_add_projects"), "t", "t", "t", "0"]
    applied = _apply(install)
    assert applied.returncode == 0, _out(applied)
    assert health(install) == (200, "2.3.0")


def test_objects_made_by_hand_are_named_and_if_not_exists_or_earlier_drops_are_followed(
    install: Install, tmp_path: Path
) -> None:
    sql = (
        'CREATE TABLE IF NOT EXISTS "User" (id int);\n'  # guarded: fine
        'DROP INDEX "User_email_key";\nCREATE UNIQUE INDEX "User_email_key" ON "User"("email");\n'  # dropped first
        '-- CREATE TABLE "Project" (id int);\n'  # a comment
        'ALTER TABLE "User" ADD COLUMN "name" TEXT;\n'  # exists: made by hand, not by a migration
        'CREATE TABLE "AuditLog" ("id" SERIAL PRIMARY KEY, "action" TEXT NOT NULL);\n'
    )
    build_release(install, tmp_path, "2.3.0", migration=sql)
    db_before = install.pg_dump()
    message = _assert_refused_untouched(install, _apply(install), db_before)
    assert "_prisma_migrations records 3 applied migration(s)" in message
    assert 'audit_log creates column "name" of "public"."User" (line 5), which exists' in message
    found = message.split("stopped:", 1)[1]
    assert "User_email_key" not in found and "Project" not in found
    assert "20250301090000_audit_log is not among the installed version's migrations" in message
    assert "baseline-migrations" not in message, "recording the installed migrations would not help here"
    assert "audit_log creates table" not in message


# -- a PrimeFlow checkout: flat migrations run by its scripts, an empty _prisma_migrations -------------------------


@pytest.fixture
def scripted_checkout(tmp_path: Path, pg_cluster: PostgresCluster) -> Iterator[tuple[Path, str]]:
    """A PrimeFlow checkout at 3.0.0 whose database was migrated as PrimeFlow's servers were: the
    flat migrations run by its own `make db-migrate` (psql), and `prisma migrate deploy` left an
    empty _prisma_migrations (Prisma ignores flat files); patchflow set up with `inv init`, the
    services running."""
    dbname = f"pf_test_{uuid.uuid4().hex[:12]}"
    pg_cluster.create_database(dbname)
    url = pg_cluster.url(dbname)
    root = prepare_checkout(tmp_path / "primeflow", database_url=url)
    env = {"PATH": f"{pg_cluster.bindir}:/usr/bin:/bin"}
    migrated = subprocess.run(
        ["make", "-s", "db-migrate"], cwd=root, capture_output=True, text=True, env=env, check=False
    )
    assert migrated.returncode == 0, migrated.stderr + migrated.stdout
    pg_cluster.psql(dbname, PRISMA_TABLE + "\n")
    done = run_inv("init", "--root", str(root), "--yes")
    assert done.returncode == 0, _out(done)
    port = next(line.split("=", 1)[1] for line in (root / ".env").read_text().splitlines() if line.startswith("PORT="))
    with open(root / ".env", "a", encoding="utf-8") as handle:
        handle.write(
            "PATCHFLOW_SERVICE_MANAGER=command\n"
            "PATCHFLOW_COMMANDS=api=node apps/api/server.js;worker=node apps/worker/index.js\n"
            f"PATCHFLOW_HEALTH_URL=http://127.0.0.1:{port}/health\nPATCHFLOW_DATABASE_MODE=url\n"
        )
    up = run_inv("up", "--root", str(root))
    assert up.returncode == 0, _out(up)
    try:
        yield root, dbname
    finally:
        run_inv("down", "--root", str(root))
        rows = pg_cluster.psql("postgres", f"SELECT datname FROM pg_database WHERE datname LIKE '{dbname}%';\n")
        for name in rows.split():
            pg_cluster.drop_database(name)


def test_a_scripted_primeflow_database_is_refused_then_baselined_and_patched(
    scripted_checkout: tuple[Path, str], pg_cluster: PostgresCluster, tmp_path: Path
) -> None:
    root, dbname = scripted_checkout
    lines = (root / ".env").read_text().splitlines()
    health_url = next(line.split("=", 1)[1] for line in lines if line.startswith("PATCHFLOW_HEALTH_URL="))
    wait_until(lambda: get(health_url)[0] == 200, 60, "the 3.0.0 api")
    release = make_checkout_release(root, tmp_path / "release", "3.1.0")
    made = run_inv("create-patch", "--root", str(release))
    assert made.returncode == 0, _out(made)
    shutil.copytree(release / "patches" / "v3.1.0", root / "patches" / "v3.1.0")

    def dump() -> str:
        return subprocess.run(
            [str(pg_cluster.bin("pg_dump")), "--restrict-key=patchflowtest", "--dbname", pg_cluster.url(dbname)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    before, pids = dump(), app_processes(root)
    refused = run_inv("apply-patch", "--root", str(root), "--version", "3.1.0", "--yes")
    assert refused.returncode == 1, _out(refused)
    message = _flat(refused.stderr)
    assert '_prisma_migrations is empty while schema "public" holds 4 table(s)' in message
    assert "(Project, Session, User, schema_migrations)" in message
    assert "look pending (001_init, 002_add_projects, 003_add_sessions, 004_add_audit_log)" in message
    assert 'creates type "public"."Role" (line 4), which exists' in message
    assert "`inv baseline-migrations`" in message and "-> stop" not in refused.stdout
    assert dump() == before and app_processes(root) == pids and get(health_url)[0] == 200

    baselined = run_inv("baseline-migrations", "--root", str(root), "--yes")
    assert baselined.returncode == 0, _out(baselined)
    recorded = pg_cluster.psql(dbname, "SELECT migration_name, checksum FROM _prisma_migrations ORDER BY started_at")
    expected = [
        f"{Path(name).stem}|{hashlib.sha256((root / 'prisma/migrations' / name).read_bytes()).hexdigest()}"
        for name in MIGRATIONS
    ]
    assert recorded.split() == expected
    # rehearsed on a copy of its database while it serves: the locks and rows of PrimeFlow's own migration
    baselined_db = dump()
    rehearsed = run_inv("rehearse", "--root", str(root), "--version", "3.1.0", "--json")
    assert rehearsed.returncode == 0, _out(rehearsed)
    (audit,) = json.loads(rehearsed.stdout)["migrations"]
    assert audit["name"] == "004_add_audit_log" and audit["seconds"] > 0
    assert audit["locks"] == {"public.AuditLog": "AccessExclusiveLock", "public.User": "AccessExclusiveLock"}
    assert audit["rows"] == {"public.User": int(pg_cluster.psql(dbname, 'SELECT count(*) FROM "User"').strip())}
    assert pg_cluster.psql("postgres", f"SELECT datname FROM pg_database WHERE datname LIKE '{dbname}%'").split() == [
        dbname
    ]
    assert dump() == baselined_db and app_processes(root) == pids and get(health_url)[0] == 200
    applied = run_inv("apply-patch", "--root", str(root), "--version", "3.1.0", "--yes")
    assert applied.returncode == 0, _out(applied)
    # its schema is what the flat migrations make; the old scripts' schema_migrations is no drift
    assert "live schema compared with its 3 recorded migration(s)" in applied.stdout, applied.stdout
    assert "The live schema differs" not in _out(applied)
    assert pg_cluster.psql(dbname, 'SELECT count(*) FROM "AuditLog"').strip() == "0"
    assert pg_cluster.psql(dbname, "SELECT count(*) FROM _prisma_migrations").strip() == "4"
    assert get(health_url.replace("/health", "/audit"))[0] == 200


def test_baseline_refuses_what_prisma_refuses_and_records_nothing(install: Install) -> None:
    lock = install.root / "prisma/migrations/migration_lock.toml"
    original = lock.read_bytes()
    install.sql("DELETE FROM _prisma_migrations")
    lock.write_text('# Please do not edit this file manually\nprovider = "mysql"\n')
    refused = install.inv("baseline-migrations", "--yes")
    assert refused.returncode == 1 and "P3019" in refused.stderr and "'mysql'" in refused.stderr, _out(refused)
    lock.write_bytes(original)
    # a migration finished and then rolled back: `migrate resolve --applied` refuses it (P3008)
    install.sql(
        "INSERT INTO _prisma_migrations (id, checksum, migration_name, logs, started_at, finished_at, rolled_back_at) "
        "VALUES ('undone', 'x', '20250101120000_init', '', now(), now(), now())"
    )
    refused = install.inv("baseline-migrations", "--yes")
    assert refused.returncode == 1 and "P3008: 20250101120000_init is recorded" in refused.stderr, _out(refused)
    assert install.sql("SELECT count(*) FROM _prisma_migrations") == "1", "nothing was recorded"


def test_what_the_plan_cannot_prove_is_shown_as_warnings(install: Install, tmp_path: Path) -> None:
    # a data-only installed migration the history lost: nothing in the schema shows it, it will run again
    install.sql("DELETE FROM _prisma_migrations WHERE migration_name = '20250201101500_seed_defaults'")
    # psql runs meta-commands, PostgreSQL's parser does not read them
    build_release(install, tmp_path, "2.3.0", migration='\\set ON_ERROR_STOP on\nCREATE TABLE "AuditLog" (id int);\n')
    done = install.inv("apply-patch", "--version", "2.3.0", "--dry-run")
    assert done.returncode == 0, _out(done)
    flat = _flat(done.stdout)
    assert "_prisma_migrations does not record 20250201101500_seed_defaults of the installed version" in flat, flat
    assert "migration 20250301090000_audit_log could not be read (line 1: syntax error" in flat
