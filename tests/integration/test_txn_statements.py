"""Statements PostgreSQL refuses inside a transaction block (issue 21, fault 2), with a real
PostgreSQL: a migration made only of them runs without the builtin runner's BEGIN/COMMIT and rolls
back with the patch; a migration mixing them with others is warned of by create-patch and refused
by the plan before anything stops; a failure part-way is reported at the file's own line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from support.exact import app_processes, assert_exactly_old
from support.installs import Install, build_release, health, run_inv

pytestmark = pytest.mark.integration

AUDIT = "20250301090000_audit_log"
CONCURRENT = (
    "-- CreateIndex\n"
    'CREATE INDEX CONCURRENTLY "User_name_idx" ON "User"("name");\n\n'
    'DROP INDEX CONCURRENTLY "Project_ownerId_idx";\n'
    'VACUUM (ANALYZE) "User";\n'
)


def _out(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout + done.stderr


def _flat(text: str) -> str:
    return " ".join(text.split())


def _index(install: Install, name: str) -> str:
    return install.sql(
        "SELECT coalesce(string_agg(i.indisvalid::text, ','), 'none') FROM pg_index i "
        f"JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = '{name}'"
    )


def test_a_concurrent_index_migration_applies_without_a_transaction_and_rolls_back(
    install: Install, tmp_path: Path
) -> None:
    tree_before, db_before = install.state(), install.pg_dump()
    build_release(install, tmp_path, "2.3.0", migration=CONCURRENT)
    plan = install.inv("apply-patch", "--version", "2.3.0", "--dry-run")
    assert plan.returncode == 0, _out(plan)
    assert (
        f"migration {AUDIT} runs outside a transaction (CREATE INDEX CONCURRENTLY (line 2), DROP INDEX "
        "CONCURRENTLY (line 4), VACUUM (line 5))" in _flat(plan.stdout)
    )
    done = install.inv("apply-patch", "--version", "2.3.0", "--yes")
    assert done.returncode == 0, _out(done)
    assert _index(install, "User_name_idx") == "true", "built, and valid"
    assert _index(install, "Project_ownerId_idx") == "none"
    assert (
        install.sql(
            f"SELECT count(*) FROM _prisma_migrations WHERE migration_name = '{AUDIT}' AND finished_at IS NOT NULL"
        )
        == "1"
    )
    assert health(install) == (200, "2.3.0")
    back = install.inv("rollback-patch", "--version", "2.3.0", "--yes")
    assert back.returncode == 0, _out(back)
    assert _index(install, "User_name_idx") == "none" and _index(install, "Project_ownerId_idx") == "true"
    assert_exactly_old(install, tree_before, db_before)


def test_a_failure_part_way_names_the_file_s_line_and_the_apply_rolls_back(install: Install, tmp_path: Path) -> None:
    tree_before, db_before = install.state(), install.pg_dump()
    failing = (
        'CREATE INDEX CONCURRENTLY "User_name_idx" ON "User"("name");\n\nCREATE INDEX CONCURRENTLY "x" ON "Nope"(id);\n'
    )
    build_release(install, tmp_path, "2.3.0", migration=failing)
    done = install.inv("apply-patch", "--version", "2.3.0", "--yes")
    assert done.returncode == 2, _out(done)
    flat = _flat(done.stderr)
    assert f"P3018: migration {AUDIT} failed part-way (it runs outside a transaction)" in flat, flat
    assert f'prisma/migrations/{AUDIT}/migration.sql line 3: ERROR: relation "Nope" does not exist' in flat, flat
    assert "set-up" not in flat
    assert_exactly_old(install, tree_before, db_before)


def test_a_mixed_migration_is_warned_at_create_patch_and_refused_before_the_stop(
    install: Install, tmp_path: Path
) -> None:
    mixed = 'CREATE TABLE "AuditLog" ("id" SERIAL PRIMARY KEY);\nCREATE INDEX CONCURRENTLY "a_idx" ON "AuditLog"(id);\n'

    def edit(source: Path) -> None:
        folder = source / "prisma/migrations" / AUDIT
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "migration.sql").write_text(mixed)
        made = run_inv("create-patch", "--root", str(source), "--version", "2.3.0-rc.1")
        assert made.returncode == 0, _out(made)
        assert (
            f"migration {AUDIT} mixes statements PostgreSQL refuses inside a transaction block "
            "(CREATE INDEX CONCURRENTLY (line 2)) with other statements" in _flat(made.stdout)
        ), made.stdout

    build_release(install, tmp_path, "2.3.0", migration=None, edit=edit)
    db_before, pids = install.pg_dump(), app_processes(install.root)
    for flags in (("--yes",), ("--dry-run",)):
        done = install.inv("apply-patch", "--version", "2.3.0", *flags)
        assert done.returncode == 1, _out(done)
        flat = _flat(done.stderr)
        assert f"Migration {AUDIT} (prisma/migrations/{AUDIT}/migration.sql) mixes statements" in flat, flat
        assert "error 25001" in flat and "Move CREATE INDEX CONCURRENTLY into a migration of its own" in flat
        assert "Nothing was stopped or changed" in flat and "-> stop" not in done.stdout
    assert install.pg_dump() == db_before and app_processes(install.root) == pids
    assert health(install) == (200, "2.2.0")


def test_the_runner_itself_refuses_a_mixed_migration_before_running_any_of_it(install: Install) -> None:
    # the plan refuses first; the runner does not rely on it (a tree changed behind the plan)
    from patchflow.config import load_settings
    from patchflow.context import Context
    from patchflow.errors import MigrationError
    from patchflow.migrations import MigrationHistory, find_migrations

    folder = install.root / "prisma/migrations" / AUDIT
    folder.mkdir()
    (folder / "migration.sql").write_text('CREATE TABLE "Mixed" (id int);\nVACUUM "Mixed";\n')
    ctx = Context.create(load_settings(install.root))
    assert ctx.database is not None
    history = MigrationHistory(ctx.database)
    db_before = install.pg_dump()
    migration = history.pending(find_migrations(install.root))[0]
    with pytest.raises(MigrationError, match=r"mixes statements PostgreSQL refuses .* \(VACUUM \(line 2\)\)"):
        history.apply(install.root, migration, timeout=60)
    assert install.pg_dump() == db_before
