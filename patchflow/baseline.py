"""Baseline a database that has the schema but no migration history.

Installs made before migrations were tracked (or restored from a plain dump) hold the tables of
their migrations but no ``_prisma_migrations`` table: every migration looks pending, and applying
them would fail on "already exists" after the services stopped. :func:`history_missing` finds that
state (the plan refuses on it before anything stops); :func:`baseline` records the migrations of
the installed tree as applied, with their checksums — what ``prisma migrate resolve --applied``
does for each — after the operator has seen the list.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from patchflow.commands import postgres as pg
from patchflow.database import Database
from patchflow.errors import DatabaseError
from patchflow.migrations import (
    MIGRATIONS_TABLE,
    Migration,
    MigrationHistory,
    create_table_sql,
    find_migrations,
    table_name,
)


@dataclass(frozen=True)
class BaselinePlan:
    """What :func:`baseline` would record: ``record`` (not yet in the history), ``already``
    (recorded as applied), ``tables`` (user tables found in the schema)."""

    record: list[Migration]
    already: list[str]
    tables: int


def user_tables(database: Database) -> int:
    """How many tables (other than ``_prisma_migrations``) the database's schema holds."""
    rows = database.query(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE c.relkind IN ('r', 'p') AND n.nspname = {pg.quote_literal(database.target.schema)} "
        f"AND c.relname <> {pg.quote_literal(MIGRATIONS_TABLE)}"
    )
    return int(rows[0][0]) if rows else 0


def history_missing(database: Database) -> bool:
    """True when the schema holds tables but there is no ``_prisma_migrations`` table: migrations
    were applied without being recorded (applying them again would fail)."""
    return not MigrationHistory(database).exists() and user_tables(database) > 0


def plan_baseline(database: Database, root: Path) -> BaselinePlan:
    """The migrations of the tree at ``root`` that a baseline would record as applied."""
    history = MigrationHistory(database)
    done = {r["name"] for r in history.rows() if r["finished"] and not r["rolled_back"]}
    migrations = find_migrations(root)
    return BaselinePlan([m for m in migrations if m.name not in done], sorted(done), user_tables(database))


def baseline(database: Database, plan: BaselinePlan) -> list[str]:
    """Record ``plan.record`` as applied (one transaction, the table created when missing);
    returns their names.

    Raises:
        DatabaseError: the database refused the inserts (nothing is recorded then).
    """
    if not plan.record:
        return []
    schema = database.target.schema
    rows = [
        f"INSERT INTO {table_name(schema)} (id, checksum, finished_at, migration_name, logs, rolled_back_at, "
        f"started_at, applied_steps_count) VALUES ({pg.quote_literal(str(uuid.uuid4()))}, "
        f"{pg.quote_literal(m.checksum)}, now(), {pg.quote_literal(m.name)}, NULL, NULL, now(), 0);"
        for m in plan.record
    ]
    script = "\n".join(["BEGIN;", create_table_sql(schema), *rows, "COMMIT;", ""])
    try:
        database.run_script(script, what="baseline migrations")
    except DatabaseError as exc:
        raise DatabaseError(f"The baseline was not recorded: {exc.message}", exc.hint) from None
    return [m.name for m in plan.record]
