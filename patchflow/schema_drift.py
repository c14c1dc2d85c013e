"""Drift of the live schema: the live database against what its recorded migrations produce.

A hand-made change (an ``ALTER TABLE ... ADD COLUMN`` run in psql, an index made during an
incident) is in no migration: the pending migrations were written against the schema the
migrations produce, ``prisma migrate diff`` and a fresh install do not have it, and it is easily
lost (a rollback to a backup taken before it undoes it). So before the stop the plan builds a
scratch database on the same server (``<live>_schema_<stamp>``, from ``template0`` with the live
database's encoding and locale, as the admin role) from the installed migrations recorded as
applied in ``_prisma_migrations``, run with the builtin runner, reads the same catalog facts from
both (:data:`CATALOG_SQL`: relations, columns with type, NOT NULL and default, constraints,
indexes, enum types, view definitions, triggers and functions of the migrations' schema; objects
of extensions and the history tables of migration tools, :data:`HISTORY_TABLES`, left out) and
names each difference. The
scratch database is always dropped.

What the recorded migrations produce changes only when the history does: the scratch database's
catalog is kept in ``<state>/schema-expected.json`` under the names and checksums of the
migrations that built it (and the server's version), so planning again reads only the live
catalog.

``schema_drift_check``: ``warn`` (the plan lists the differences), ``refuse`` (the apply is
refused before the stop), ``off``. No history (no table or no applied row), a recorded migration
missing from the install, or a scratch database that cannot be built: the plan says the check was
not made, and why.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from patchflow.commands import postgres as pg
from patchflow.database import Database, derived_name, stamp_now
from patchflow.errors import DatabaseError, MigrationError
from patchflow.migrations import MIGRATIONS_TABLE, Migration, MigrationHistory, find_migrations

if TYPE_CHECKING:
    from pathlib import Path

    from patchflow.context import Context

SCRATCH_MARK = "_schema_"
#: History tables of migration tools, left out of the comparison: Prisma's (patchflow's), and those
#: a database migrated by other means keeps after ``baseline-migrations`` (PrimeFlow's own
#: ``scripts/db/migrate.sh``, golang-migrate and Rails: ``schema_migrations``; Flyway, Knex,
#: Sequelize, goose).
HISTORY_TABLES = (
    MIGRATIONS_TABLE,
    "schema_migrations",
    "flyway_schema_history",
    "knex_migrations",
    "knex_migrations_lock",
    "SequelizeMeta",
    "goose_db_version",
)
CACHE = "schema-expected.json"
LISTED = 8

#: The catalog facts compared, as one JSON object ``{"<kind> <name>": "<definition>"}``; ``:s`` is
#: the schema (a quoted literal), ``:history`` the :data:`HISTORY_TABLES` left out (quoted literals).
#: Names are unqualified: both databases use the same schema.
CATALOG_SQL = """
WITH ns AS (SELECT oid FROM pg_namespace WHERE nspname = :s),
ext AS (SELECT objid FROM pg_depend WHERE deptype = 'e'),
rel AS (
  SELECT c.oid, c.relname, c.relkind FROM pg_class c
  WHERE c.relnamespace = (SELECT oid FROM ns) AND c.relname NOT IN (:history)
    AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND c.oid NOT IN (SELECT objid FROM ext)
)
SELECT coalesce(json_object_agg(k, v ORDER BY k), '{}') FROM (
  SELECT CASE relkind WHEN 'S' THEN 'sequence ' WHEN 'v' THEN 'view ' WHEN 'm' THEN 'materialized view '
         WHEN 'f' THEN 'foreign table ' ELSE 'table ' END || relname AS k,
         CASE WHEN relkind IN ('v', 'm') THEN pg_get_viewdef(oid) ELSE '' END AS v
  FROM rel
  UNION ALL
  SELECT 'column ' || r.relname || '.' || a.attname,
         format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END
         || coalesce(' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid), '')
  FROM rel r JOIN pg_attribute a ON a.attrelid = r.oid
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
  WHERE a.attnum > 0 AND NOT a.attisdropped AND r.relkind <> 'S'
  UNION ALL
  SELECT 'constraint ' || r.relname || '.' || con.conname, pg_get_constraintdef(con.oid)
  FROM pg_constraint con JOIN rel r ON r.oid = con.conrelid
  UNION ALL
  SELECT 'index ' || ci.relname, pg_get_indexdef(i.indexrelid)
  FROM pg_index i JOIN rel r ON r.oid = i.indrelid JOIN pg_class ci ON ci.oid = i.indexrelid
  UNION ALL
  SELECT 'trigger ' || r.relname || '.' || tg.tgname, pg_get_triggerdef(tg.oid)
  FROM pg_trigger tg JOIN rel r ON r.oid = tg.tgrelid WHERE NOT tg.tgisinternal
  UNION ALL
  SELECT 'type ' || t.typname, 'ENUM (' || string_agg(quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder) || ')'
  FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid
  WHERE t.typnamespace = (SELECT oid FROM ns) AND t.oid NOT IN (SELECT objid FROM ext) GROUP BY t.typname
  UNION ALL
  SELECT 'function ' || p.oid::regprocedure::text, md5(pg_get_functiondef(p.oid))
  FROM pg_proc p WHERE p.pronamespace = (SELECT oid FROM ns) AND p.prokind IN ('f', 'p')
    AND p.oid NOT IN (SELECT objid FROM ext)
) facts
"""


def read_catalog(database: Database, schema: str) -> dict[str, str]:
    """The catalog facts of ``schema`` in ``database`` (see :data:`CATALOG_SQL`).

    Raises:
        DatabaseError: the database cannot be queried.
    """
    history = ", ".join(pg.quote_literal(name) for name in HISTORY_TABLES)
    rows = database.query(CATALOG_SQL.replace(":s", pg.quote_literal(schema)).replace(":history", history))
    found = json.loads("".join(r[0] for r in rows) or "{}") if rows else {}
    return {str(k): str(v) for k, v in found.items()}


def differences(live: Mapping[str, str], expected: Mapping[str, str]) -> list[str]:
    """Each fact of ``live`` not in ``expected`` or different, and each one live lacks, as a
    phrase (``column User.nickname (text) only in the live database``), in name order."""
    found = []
    for key in sorted(live.keys() | expected.keys()):
        if key not in expected:
            found.append(f"{key}{_shown(live[key])} only in the live database")
        elif key not in live:
            found.append(f"{key}{_shown(expected[key])} missing from the live database")
        elif live[key] != expected[key]:
            found.append(f"{key} differs (live: {_short(live[key])}; migrations: {_short(expected[key])})")
    return found


def _shown(definition: str) -> str:
    return f" ({_short(definition)})" if definition else ""


def _short(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= 100 else flat[:97] + "..."


def applied_migrations(history: MigrationHistory, installed: Sequence[Migration]) -> tuple[list[Migration], list[str]]:
    """The ``installed`` migrations recorded as applied (in apply order), and the names of
    applied rows no installed migration has."""
    applied = {r["name"] for r in history.rows() if r["finished"] and not r["rolled_back"]}
    have = {m.name for m in installed}
    return [m for m in installed if m.name in applied], sorted(applied - have)


def build_expected(ctx: Context, migrations: Sequence[Migration]) -> dict[str, str]:
    """Build a scratch database on the live one's server from ``migrations`` (files of the
    install), read its catalog and drop it.

    Raises:
        DatabaseError: the scratch database cannot be made or read.
        MigrationError: a migration fails on it.
    """
    assert ctx.database is not None
    database = ctx.database
    scratch = derived_name(database.target.dbname, SCRATCH_MARK, stamp_now())
    database.create_empty_like(scratch, what="create the scratch database")
    try:
        target = database.beside(scratch)
        history = MigrationHistory(target)
        for migration in migrations:
            history.apply(ctx.paths.root, migration, timeout=float(ctx.settings.migrate_timeout))
        return read_catalog(target, database.target.schema)
    finally:
        database.execute_quietly(f"DROP DATABASE IF EXISTS {pg.quote_ident(scratch)} WITH (FORCE)")


def _cache_key(migrations: Sequence[Migration], version: str, schema: str) -> dict[str, Any]:
    return {"server": version, "schema": schema, "migrations": [[m.name, m.checksum] for m in migrations]}


def expected_catalog(ctx: Context, migrations: Sequence[Migration]) -> dict[str, str]:
    """The catalog ``migrations`` produce: from ``<state>/schema-expected.json`` when it was built
    from the same migrations on the same server version, else built (:func:`build_expected`) and
    kept there.

    Raises:
        DatabaseError, MigrationError: as :func:`build_expected`.
    """
    from patchflow.lifecycle.journal import write_json_atomic

    assert ctx.database is not None
    version = "".join(r[0] for r in ctx.database.query("SHOW server_version_num"))
    key = _cache_key(migrations, version, ctx.database.target.schema)
    path: Path = ctx.paths.state / CACHE
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cached = None
    if isinstance(cached, dict) and cached.get("key") == key and isinstance(cached.get("catalog"), dict):
        return {str(k): str(v) for k, v in cached["catalog"].items()}
    catalog = build_expected(ctx, migrations)
    try:
        write_json_atomic(path, {"key": key, "catalog": catalog})
    except OSError:
        pass  # a cache: the next plan builds it again
    return catalog


def plan_schema_drift(ctx: Context) -> list[str]:
    """The plan's check (see the module): returns the plan's warnings.

    Raises:
        MigrationError: the schema differs and ``schema_drift_check = refuse``; nothing changed.
    """
    setting = ctx.settings.schema_drift_check
    if setting == "off" or ctx.database is None:
        return []
    history = MigrationHistory(ctx.database)
    if not history.exists():
        return []  # no history to compare with: baseline-migrations records one
    migrations, unknown = applied_migrations(history, find_migrations(ctx.paths.root))
    if unknown:
        return [
            f"schema drift not checked: {MIGRATIONS_TABLE} records applied migration(s) this install does not have "
            f"({', '.join(unknown[:LISTED])}), so what the migrations produce cannot be rebuilt"
        ]
    if not migrations:
        return []
    started = time.monotonic()
    try:
        expected = expected_catalog(ctx, migrations)
        live = read_catalog(ctx.database, ctx.database.target.schema)
    except (DatabaseError, MigrationError) as exc:
        return [
            f"schema drift not checked: a scratch database built from the recorded migrations failed: {exc.message}"
        ]
    ctx.log(
        f"   live schema compared with its {len(migrations)} recorded migration(s) "
        f"in {time.monotonic() - started:.1f} s"
    )
    found = differences(live, expected)
    if not found:
        return []
    listed = "; ".join(found[:LISTED]) + (f"; and {len(found) - LISTED} more" if len(found) > LISTED else "")
    message = (
        f"The live schema differs from what its {len(migrations)} recorded migration(s) produce "
        f"({len(found)} difference(s)): {listed}."
    )
    hint = (
        "A change made by hand is in no migration: the pending ones were written without it, and a fresh "
        "install or a rollback to a backup older than it lacks it. Put it in a migration (prisma migrate diff "
        "--from-migrations ... --to-url ...) or undo it"
    )
    if setting == "refuse":
        raise MigrationError(
            message, f"{hint}; schema_drift_check = warn lets the apply go on. Nothing was stopped or changed."
        )
    return [f"{message} {hint} (schema_drift_check = warn)"]
