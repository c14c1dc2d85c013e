"""Statements PostgreSQL refuses inside a transaction block (patchflow.txn_statements), read with
its parser: which they are, on which server versions, and what create-patch says of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from patchflow.migrations import Migration
from patchflow.txn_statements import create_warnings, mixed_refusal, scan_statements, transaction_mode


@pytest.mark.parametrize(
    ("sql", "what"),
    [
        ('CREATE INDEX CONCURRENTLY "i" ON "User" ("name");', "CREATE INDEX CONCURRENTLY"),
        ('CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS "i" ON "User" ("name");', "CREATE INDEX CONCURRENTLY"),
        ('DROP INDEX CONCURRENTLY IF EXISTS "i";', "DROP INDEX CONCURRENTLY"),
        ('REINDEX INDEX CONCURRENTLY "i";', "REINDEX CONCURRENTLY"),
        ("REINDEX DATABASE app;", "REINDEX DATABASE/SYSTEM"),
        ('VACUUM (ANALYZE) "User";', "VACUUM"),
        ("CLUSTER;", "CLUSTER without a table"),
        ("CREATE DATABASE other;", "CREATE DATABASE"),
        ("DROP DATABASE other;", "DROP DATABASE"),
        ("ALTER SYSTEM SET work_mem = '8MB';", "ALTER SYSTEM"),
        ("CREATE TABLESPACE t LOCATION '/x';", "CREATE TABLESPACE"),
    ],
)
def test_statements_refused_in_a_transaction_block(sql: str, what: str) -> None:
    found, count = scan_statements(sql)
    assert [(o.what, o.line) for o in found] == [(what, 1)] and count == 1
    assert transaction_mode(sql, 170000).kind == "none"


@pytest.mark.parametrize(
    "sql",
    [
        'CREATE INDEX "i" ON "User" ("name");',
        'ANALYZE "User";',
        'CLUSTER "User" USING "User_pkey";',
        'REINDEX INDEX "i";',
        'DROP INDEX "i";',
        "DO $$ BEGIN EXECUTE 'VACUUM'; END $$;",  # runs in the DO's transaction: fails there, not ours to judge
        "not sql at all",
    ],
)
def test_statements_that_run_in_a_transaction(sql: str) -> None:
    assert transaction_mode(sql, 170000).kind == "transaction"


def test_add_value_runs_outside_a_transaction_only_before_postgresql_12() -> None:
    sql = "ALTER TYPE \"Role\" ADD VALUE 'GUEST';"
    assert transaction_mode(sql, 110022).kind == "none"
    assert transaction_mode(sql, 120000).kind == "transaction"
    assert transaction_mode(sql, None).kind == "transaction", "unknown server: counted as 12 or later"
    mixed = sql + '\nCREATE TABLE "Guest" (id int);'
    assert transaction_mode(mixed, 110022).kind == "mixed"
    assert transaction_mode(mixed, 160000).kind == "transaction"


def test_a_mix_is_refused_naming_the_statements_and_their_lines() -> None:
    sql = '-- add an index\nCREATE TABLE "A" (id int);\n\n/* big */\nCREATE INDEX CONCURRENTLY "i" ON "A" (id);\n'
    mode = transaction_mode(sql, 170000)
    assert mode.kind == "mixed" and mode.describe() == "CREATE INDEX CONCURRENTLY (line 5)"
    error = mixed_refusal("2_idx", "prisma/migrations/2_idx/migration.sql", mode)
    assert "Migration 2_idx (prisma/migrations/2_idx/migration.sql) mixes statements" in error.message
    assert "(CREATE INDEX CONCURRENTLY (line 5))" in error.message and "error 25001" in error.message
    assert "Move CREATE INDEX CONCURRENTLY into a migration of its own" in error.hint


def test_create_patch_warns_of_each_kind(tmp_path: Path) -> None:
    files = {
        "1_plain": 'CREATE TABLE "A" (id int);',
        "2_alone": 'CREATE INDEX CONCURRENTLY "i" ON "A" (id);\nVACUUM "A";',
        "3_mixed": 'CREATE TABLE "B" (id int);\nCREATE INDEX CONCURRENTLY "j" ON "B" (id);',
        "4_enum": "CREATE TYPE r AS ENUM ('a');\nALTER TYPE r ADD VALUE 'b';",
    }
    migrations = []
    for name, sql in files.items():
        path = f"prisma/migrations/{name}/migration.sql"
        (tmp_path / path).parent.mkdir(parents=True)
        (tmp_path / path).write_text(sql)
        migrations.append(Migration(name, path, ""))
    warnings = create_warnings(tmp_path, migrations)
    assert len(warnings) == 3
    assert warnings[0].startswith(
        "migration 2_alone runs outside a transaction (CREATE INDEX CONCURRENTLY (line 1), VACUUM (line 2))"
    )
    assert warnings[1].startswith("migration 3_mixed mixes statements PostgreSQL refuses inside a transaction block")
    assert "every apply refuses it" in warnings[1]
    assert "ALTER TYPE ... ADD VALUE (line 2) before PostgreSQL 12" in warnings[2]
    assert "refused by the plan on PostgreSQL before 12" in warnings[2]
