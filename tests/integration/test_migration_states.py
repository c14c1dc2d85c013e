"""Prisma's row states of ``_prisma_migrations`` are judged by the plan, before anything stops
(issue 21, faults 3 and 4), and ``resolve-migration`` writes what ``prisma migrate resolve``
writes: on a running sample install with a real PostgreSQL."""

from __future__ import annotations

import hashlib
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.exact import app_processes
from support.installs import Install, InstallTemplate, build_release, health
from support.services import PostgresCluster

pytestmark = pytest.mark.integration

AUDIT = "20250301090000_audit_log"
PROJECTS = "20250115093000_add_projects"
INIT = "20250101120000_init"
ROW = (
    "SELECT checksum, logs IS NOT NULL AND logs = '', started_at = finished_at, rolled_back_at IS NULL, "
    "applied_steps_count, id FROM _prisma_migrations "
)


@pytest.fixture
def idle_install(tmp_path: Path, pg_cluster: PostgresCluster, install_template: InstallTemplate) -> Iterator[Install]:
    """The sample at 2.2.0 with its database, services not started: resolve-migration needs only
    the database (and the lock), so these tests skip starting and stopping the api and worker."""
    made = install_template.new_install(tmp_path / "install", start=False)
    try:
        yield made
    finally:
        pg_cluster.drop_database(made.dbname)


def _out(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout + done.stderr


def _flat(text: str) -> str:
    return " ".join(text.split())


def _refused_untouched(install: Install, *extra: str) -> list[str]:
    """Apply and dry run: both refused with exit 1 before the stop, database and services as
    they were; returns both messages (flattened)."""
    db_before, pids = install.pg_dump(), app_processes(install.root)
    messages = []
    for flags in (("--yes",), ("--dry-run",)):
        done = install.inv("apply-patch", "--version", "2.3.0", *flags, *extra)
        assert done.returncode == 1, _out(done)
        assert "-> stop" not in done.stdout and "-> lock" not in done.stdout
        assert "Nothing was stopped or changed" in done.stderr
        messages.append(_flat(done.stderr))
    assert install.pg_dump() == db_before
    assert app_processes(install.root) == pids, "the services were never touched"
    assert health(install) == (200, "2.2.0")
    return messages


def test_a_failed_row_is_refused_before_the_stop_then_resolved_rolled_back_and_applied(install: Install) -> None:
    # what `prisma migrate deploy` leaves when audit_log failed under Prisma: a row never finished
    install.sql(
        "INSERT INTO _prisma_migrations (id, checksum, migration_name, logs, started_at, applied_steps_count) VALUES "
        f"('failed-1', 'x', '{AUDIT}', E'Database error code: 42P07\\nrelation \"AuditLog\" exists', "
        "now() - interval '1 hour', 0)"
    )
    install.release(install.root.parent, "2.3.0")
    for message in _refused_untouched(install):
        assert f"P3009: migration {AUDIT} is recorded as failed in _prisma_migrations" in message, message
        assert 'its logs: Database error code: 42P07 relation "AuditLog" exists' in message
        assert f"`inv resolve-migration --name {AUDIT} --rolled-back`" in message
        assert f"`inv resolve-migration --name {AUDIT} --applied`" in message

    resolved = install.inv("resolve-migration", "--name", AUDIT, "--rolled-back")
    assert resolved.returncode == 0, _out(resolved)
    assert f"marked 1 failed row(s) of {AUDIT} rolled back" in resolved.stdout
    row = install.sql(
        "SELECT finished_at IS NULL, rolled_back_at IS NOT NULL, checksum FROM _prisma_migrations WHERE id = 'failed-1'"
    )
    assert row == "t|t|x", "only rolled_back_at is written, as Prisma's mark_migration_rolled_back_by_id does"
    applied = install.inv("apply-patch", "--version", "2.3.0", "--yes")
    assert applied.returncode == 0, _out(applied)
    assert health(install) == (200, "2.3.0")
    assert install.sql(f"SELECT count(*) FROM _prisma_migrations WHERE migration_name = '{AUDIT}'") == "2"


def test_a_failed_row_beside_a_history_that_lost_rows_names_both(install: Install) -> None:
    install.sql(
        f"DELETE FROM _prisma_migrations WHERE migration_name = '{PROJECTS}';\n"
        "INSERT INTO _prisma_migrations (id, checksum, migration_name, logs, started_at) VALUES "
        f"('failed-2', 'x', '{PROJECTS}', '', now())"
    )
    install.release(install.root.parent, "2.3.0")
    message = _refused_untouched(install)[0]
    assert f"P3009: migration {PROJECTS} is recorded as failed" in message
    assert 'creates table "public"."Project" (line 2), which exists' in message, "the coverage check is named too"


def test_an_edited_applied_migration_is_refused_naming_the_file_and_both_checksums(
    install: Install, tmp_path: Path
) -> None:
    path = f"prisma/migrations/{PROJECTS}/migration.sql"
    recorded = hashlib.sha256((install.root / path).read_bytes()).hexdigest()

    def edit(source: Path) -> None:
        sql = source / path
        sql.write_text(sql.read_text() + '\nALTER TABLE "Project" ADD COLUMN "archived" BOOLEAN;\n')

    build_release(install, tmp_path, "2.3.0", edit=edit)
    edited = hashlib.sha256((tmp_path / "source-2.3.0" / path).read_bytes()).hexdigest()
    for message in _refused_untouched(install):
        assert f"1 applied migration(s) were edited after they ran: {path} has sha256 {edited} in the patch" in message
        assert f"_prisma_migrations recorded {recorded} when {PROJECTS} ran" in message
        assert "migration_checksum_check = warn" in message

    warned = install.inv(
        "apply-patch", "--version", "2.3.0", "--dry-run", env={"PATCHFLOW_MIGRATION_CHECKSUM_CHECK": "warn"}
    )
    assert warned.returncode == 0, _out(warned)
    assert f"{path} has sha256 {edited} in the patch" in _flat(warned.stdout)
    assert "(migration_checksum_check = warn)" in _flat(warned.stdout)


def test_a_file_packed_with_crlf_is_the_migration_prisma_recorded(install: Install, tmp_path: Path) -> None:
    path = f"prisma/migrations/{PROJECTS}/migration.sql"

    def crlf(source: Path) -> None:  # git's autocrlf on the release machine
        sql = source / path
        sql.write_bytes(sql.read_bytes().replace(b"\n", b"\r\n"))

    build_release(install, tmp_path, "2.3.0", edit=crlf)
    done = install.inv("apply-patch", "--version", "2.3.0", "--dry-run")
    assert done.returncode == 0, _out(done)
    assert "edited" not in done.stdout


def test_an_applied_migration_the_patch_does_not_have_is_named_in_the_plan(install: Install) -> None:
    install.sql(
        "INSERT INTO _prisma_migrations (id, checksum, migration_name, logs, started_at, finished_at) VALUES "
        f"('{uuid.uuid4()}', '{'0' * 64}', '20250110000000_hotfix', '', now(), now())"
    )
    install.release(install.root.parent, "2.3.0")
    done = install.inv("apply-patch", "--version", "2.3.0", "--dry-run")
    assert done.returncode == 0, _out(done)
    assert "_prisma_migrations records 1 applied migration(s) the patch does not have: 20250110000000_hotfix" in (
        _flat(done.stdout)
    )


def test_resolve_applied_writes_what_prisma_writes_and_refuses_what_prisma_refuses(idle_install: Install) -> None:
    install = idle_install
    install.sql(
        "INSERT INTO _prisma_migrations (id, checksum, migration_name, logs, started_at) VALUES "
        f"('failed-3', 'x', '{PROJECTS}', 'boom', now() - interval '1 minute');\n"
        f"UPDATE _prisma_migrations SET finished_at = NULL, started_at = now() - interval '2 minute' "
        f"WHERE migration_name = '{PROJECTS}' AND id <> 'failed-3'"
    )  # both rows of add_projects failed: it has no finished row
    before = install.sql("SELECT count(*) FROM _prisma_migrations")
    resolved = install.inv("resolve-migration", "--name", PROJECTS, "--applied")
    assert resolved.returncode == 0, _out(resolved)
    assert f"recorded {PROJECTS} as applied" in resolved.stdout
    marked = install.sql(
        f"SELECT count(*) FROM _prisma_migrations WHERE migration_name = '{PROJECTS}' AND finished_at IS NULL "
        "AND rolled_back_at IS NOT NULL"
    )
    assert marked == "2", "every failed row of it is marked rolled back"
    row = install.sql(ROW + f"WHERE migration_name = '{PROJECTS}' AND finished_at IS NOT NULL").split("|")
    sha = hashlib.sha256((install.root / f"prisma/migrations/{PROJECTS}/migration.sql").read_bytes()).hexdigest()
    assert row[:5] == [sha, "t", "t", "t", "0"], row  # logs '', started_at = finished_at, 0 steps
    assert uuid.UUID(row[5]).version == 4
    assert install.sql("SELECT count(*) FROM _prisma_migrations") == str(int(before) + 1)

    refusals = [
        (("--name", PROJECTS, "--applied"), f"P3008: the migration {PROJECTS} is already recorded as applied"),
        (("--name", "20990101000000_nope", "--applied"), "P3017: the migration 20990101000000_nope could not be"),
        (("--name", "20990101000000_nope", "--rolled-back"), "P3011: migration 20990101000000_nope cannot be rolled"),
        (("--name", INIT, "--rolled-back"), f"P3012: migration {INIT} cannot be rolled back because it is"),
    ]  # flags alone: tests/unit/test_migration_state.py
    dump = install.pg_dump()
    for args, expected in refusals:
        done = install.inv("resolve-migration", *args)
        assert done.returncode == 1, (args, _out(done))
        assert expected in _flat(done.stderr), (args, done.stderr)
    assert install.pg_dump() == dump, "a refused resolve writes nothing"
    # no failed row left, not every row finished: Prisma succeeds and writes nothing
    done = install.inv("resolve-migration", "--name", PROJECTS, "--rolled-back")
    assert done.returncode == 0 and f"marked 0 failed row(s) of {PROJECTS}" in done.stdout, _out(done)
    assert install.pg_dump() == dump


def test_resolve_applied_creates_prisma_s_table_when_missing(idle_install: Install) -> None:
    install = idle_install
    install.sql("DROP TABLE _prisma_migrations")
    done = install.inv("resolve-migration", "--name", INIT, "--applied")
    assert done.returncode == 0, _out(done)
    assert install.sql("SELECT migration_name, finished_at IS NOT NULL FROM _prisma_migrations") == (
        "20250101120000_init|t"
    )
    refused = install.inv("resolve-migration", "--name", PROJECTS, "--rolled-back")
    assert refused.returncode == 1 and "P3011" in refused.stderr, _out(refused)
