"""Baseline: record the installed tree's migrations as applied, exactly as
``prisma migrate resolve --applied <name>`` records one.

A database migrated without Prisma's record (flat ``prisma/migrations/NNN_name.sql`` files run by
scripts, a restore of a plain dump, ``prisma db push``) holds the schema beside a missing, empty or
partial ``_prisma_migrations``; the plan refuses it (:mod:`patchflow.history`) and names
``inv baseline-migrations``, which runs :func:`plan_baseline` then :func:`baseline`.

What Prisma's schema engine does for ``migrate resolve --applied`` (prisma/prisma-engines,
``schema-engine/core/src/commands/mark_migration_applied.rs``; the rows are written by
``schema-engine/connectors/sql-schema-connector/src/sql_migration_persistence.rs``
``mark_migration_applied_impl`` / ``mark_migration_rolled_back_by_id``; the table by
``.../src/flavour/postgres.rs`` ``create_migrations_table``; the lock by its ``acquire_lock``; the
checksum by ``schema-engine/connectors/schema-connector/src/checksum.rs``; the provider check by
``.../schema-connector/src/migrations_directory.rs`` ``error_on_changed_provider``), and so this:

* refuses when ``prisma/migrations/migration_lock.toml`` names a provider other than
  ``postgresql`` (Prisma's P3019);
* takes Prisma's migrate advisory lock, ``pg_advisory_lock(72707369)`` (here the transaction
  form, released at commit), so no ``prisma migrate`` runs meanwhile;
* creates ``_prisma_migrations`` when it is missing, with Prisma's columns, without asking whether
  the schema is empty (``baseline_initialize``);
* a migration with a row whose ``finished_at`` is set is already applied: Prisma refuses it
  (P3008); in a batch it is skipped and listed as recorded, except a row that is finished *and*
  rolled back, which Prisma would still refuse and ``migrate deploy`` would run again: refused here,
  nothing recorded;
* rows of that migration that failed (``finished_at`` and ``rolled_back_at`` both NULL) get
  ``rolled_back_at = now()``, then one new row is inserted;
* the new row: ``id`` a random UUID v4, ``checksum`` the sha256 hex of the migration file's bytes,
  ``logs`` ``''`` (an empty string, not NULL), ``started_at`` and ``finished_at`` the same
  timestamp, ``migration_name``, ``rolled_back_at`` NULL, ``applied_steps_count`` 0.

Prisma marks one migration per call; a baseline marks every migration of the tree not yet
recorded, in one transaction (all or nothing), each with its own timestamp (``clock_timestamp()``,
so ``ORDER BY started_at`` keeps the tree's order). Flat ``.sql`` files, which Prisma ignores, are
recorded like folders under their file name without ``.sql`` (what patchflow's runner records).
"""

from __future__ import annotations

import tomllib
import uuid
from dataclasses import dataclass
from pathlib import Path

from patchflow.commands import postgres as pg
from patchflow.database import Database
from patchflow.errors import DatabaseError, MigrationError
from patchflow.history import user_tables
from patchflow.migrations import (
    MIGRATIONS_DIR,
    MIGRATIONS_TABLE,
    Migration,
    MigrationHistory,
    create_table_sql,
    find_migrations,
    table_name,
)

#: Prisma Migrate's advisory lock key (flavour/postgres.rs, acquire_lock).
PRISMA_LOCK_KEY = 72707369
PROVIDER = "postgresql"


@dataclass(frozen=True)
class BaselinePlan:
    """What :func:`baseline` would record: ``record`` (not yet recorded as applied), ``already``
    (recorded as applied), ``failed`` (of ``record``: those with failed rows that get
    ``rolled_back_at``), ``tables`` (user tables found in the schema), ``table`` (the history
    table exists)."""

    record: list[Migration]
    already: list[str]
    tables: int
    failed: tuple[str, ...] = ()
    table: bool = True


def check_provider(root: Path) -> None:
    """Refuse a migrations folder locked to another provider, as Prisma does (P3019).

    Raises:
        MigrationError: ``prisma/migrations/migration_lock.toml`` names another provider, or is
            not TOML.
    """
    lock = root / MIGRATIONS_DIR / "migration_lock.toml"
    if not lock.is_file():
        return
    try:
        provider = tomllib.loads(lock.read_text(encoding="utf-8")).get("provider")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise MigrationError(
            f"{lock} is not valid TOML ({exc}).",
            'Fix it (Prisma writes provider = "postgresql"); nothing was recorded.',
        ) from None
    if provider != PROVIDER:
        raise MigrationError(
            f"P3019: {lock} says the migrations are for provider {provider!r}, not {PROVIDER!r}.",
            "These migrations were made for another database; nothing was recorded.",
            code="P3019",
        )


def plan_baseline(database: Database, root: Path) -> BaselinePlan:
    """The migrations of the tree at ``root`` that a baseline would record as applied.

    Raises:
        MigrationError: the provider lock names another database (P3019), or a migration's only
            finished row is also rolled back (Prisma's P3008: it cannot be marked applied again).
        DatabaseError: the database cannot be queried.
    """
    check_provider(root)
    history = MigrationHistory(database)
    table = history.exists()
    rows = history.rows() if table else []
    finished = {r["name"] for r in rows if r["finished"]}
    done = {r["name"] for r in rows if r["finished"] and not r["rolled_back"]}
    failed = {r["name"] for r in rows if not r["finished"] and not r["rolled_back"]}
    migrations = find_migrations(root)
    odd = sorted(m.name for m in migrations if m.name in finished - done)
    if odd:
        raise MigrationError(
            f"P3008: {', '.join(odd)} {'is' if len(odd) == 1 else 'are'} recorded in {MIGRATIONS_TABLE} as finished "
            "and then rolled back; Prisma refuses to mark such a migration applied again, and `migrate deploy` "
            "would run it again.",
            "Look at those rows and decide by hand (delete the row if the migration's changes are in the database "
            "and should stay); nothing was recorded.",
            code="P3008",
        )
    record = [m for m in migrations if m.name not in done]
    return BaselinePlan(
        record,
        sorted(done),
        len(user_tables(database)),
        tuple(m.name for m in record if m.name in failed),
        table,
    )


def baseline_sql(schema: str, plan: BaselinePlan) -> str:
    """The script :func:`baseline` runs: one transaction, Prisma's lock, the table when missing,
    failed rows marked rolled back, one row per migration."""
    table = table_name(schema)
    lines = ["BEGIN;", f"SELECT pg_advisory_xact_lock({PRISMA_LOCK_KEY});", create_table_sql(schema)]
    for migration in plan.record:
        name = pg.quote_literal(migration.name)
        if migration.name in plan.failed:
            lines.append(
                f"UPDATE {table} SET rolled_back_at = now() WHERE migration_name = {name} "
                "AND finished_at IS NULL AND rolled_back_at IS NULL;"
            )
        lines.append(
            f"INSERT INTO {table} (id, checksum, logs, started_at, finished_at, migration_name) "
            f"SELECT {pg.quote_literal(str(uuid.uuid4()))}, {pg.quote_literal(migration.checksum)}, '', t, t, {name} "
            "FROM (SELECT clock_timestamp() AS t) AS now;"
        )
    lines += ["COMMIT;", ""]
    return "\n".join(lines)


def baseline(database: Database, plan: BaselinePlan) -> list[str]:
    """Record ``plan.record`` as applied (one transaction under Prisma's migrate lock, the table
    created when missing); returns their names.

    Raises:
        DatabaseError: the database refused the statements (nothing is recorded then).
    """
    if not plan.record:
        return []
    try:
        database.run_script(baseline_sql(database.target.schema, plan), what="baseline migrations")
    except DatabaseError as exc:
        raise DatabaseError(f"The baseline was not recorded: {exc.message}", exc.hint) from None
    return [m.name for m in plan.record]
