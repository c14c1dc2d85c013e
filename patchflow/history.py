"""Does the migration history cover the schema it sits next to? Checked by the plan, before stop.

``_prisma_migrations`` says which migrations ran; the schema says what exists. When the two
disagree, the pending migrations fail on objects that exist, after the services stopped. Real
PrimeFlow databases were migrated by scripts running flat ``prisma/migrations/NNN_name.sql`` files
(Prisma ignores those), so they hold the whole schema next to an **empty** ``_prisma_migrations``.
:func:`check_history` finds every such state:

* no ``_prisma_migrations`` table, or an empty one, while the schema holds tables and the
  installed version's own migrations are not recorded;
* a history that records fewer migrations than the schema shows: a pending migration creates a
  table, view, sequence, index, type, enum value, schema, extension, function, trigger, policy or
  constraint that exists, adds a column that exists, or renames something onto a name that exists
  (statements with ``IF NOT EXISTS`` / ``OR REPLACE`` are fine; objects dropped or renamed away by
  an earlier pending statement are followed).

Objects are read from each pending migration with PostgreSQL's own parser (:mod:`patchflow.ddl`)
and looked up in the catalogs in one query. Rows of failed migrations, edited checksums and drift
of the live schema are other checks' business.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from patchflow.commands import postgres as pg
from patchflow.database import Database
from patchflow.ddl import Effect, Key, SqlUnreadable, schema_effects
from patchflow.errors import MigrationError
from patchflow.migrations import MIGRATIONS_TABLE, Migration, MigrationHistory, find_migrations, from_manifest

if TYPE_CHECKING:
    from patchflow.context import Context
    from patchflow.verify import VerifyReport

QUERY_CHUNK = 200
SHOWN = 6


@dataclass(frozen=True)
class Conflict:
    """A pending migration's statement that would fail: it creates ``what``, which exists."""

    migration: str
    path: str
    line: int
    what: str

    def describe(self) -> str:
        return f"{self.migration} creates {self.what} (line {self.line}), which exists"


@dataclass
class HistoryCheck:
    """What :func:`check_history` found. ``recorded``: rows of applied migrations; ``table``: the
    history table exists; ``tables``: user tables of the schema; ``pending``: names of the
    pending migrations; ``installed_unrecorded``: pending migrations that the installed tree
    already has; ``unreadable``: ``(name, reason)`` of migrations the parser rejected."""

    schema: str
    table: bool
    recorded: int
    tables: list[str]
    pending: list[str]
    installed_unrecorded: list[str]
    conflicts: list[Conflict] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    installed: frozenset[str] = frozenset()

    @property
    def empty_history(self) -> bool:
        """No migration recorded (no table, or an empty one) beside a schema with tables, while
        the installed version's own migrations are pending."""
        return self.recorded == 0 and bool(self.tables) and bool(self.installed_unrecorded)

    @property
    def covered(self) -> bool:
        return not self.conflicts and not self.empty_history

    def warnings(self) -> list[str]:
        """Plan warnings for what does not refuse: unreadable migrations, and installed migrations
        a partial history does not record (they will run)."""
        lines = [
            f"migration {name} could not be read ({reason}): its objects were not compared with the database"
            for name, reason in self.unreadable
        ]
        if self.recorded and self.installed_unrecorded and self.covered:
            lines.append(
                f"{MIGRATIONS_TABLE} does not record {_listed(self.installed_unrecorded)} of the installed version: "
                "they will run now (if they were applied by hand, record them first with `inv baseline-migrations`)"
            )
        return lines

    def refusal(self) -> MigrationError:
        """The error that refuses the apply (call only when not :attr:`covered`)."""
        if not self.table:
            state = f"there is no {MIGRATIONS_TABLE} table"
        elif self.recorded == 0:
            state = f"{MIGRATIONS_TABLE} is empty"
        else:
            state = f"{MIGRATIONS_TABLE} records {self.recorded} applied migration(s)"
        tables = f'schema "{self.schema}" holds {len(self.tables)} table(s) ({_listed(self.tables)})'
        lines = [
            f"The database's migration history does not cover its schema: {state} while {tables}. "
            f"{len(self.pending)} migration(s) of the patch look pending ({_listed(self.pending)}), and they would "
            "fail after the services stopped"
        ]
        if self.conflicts:
            shown = "; ".join(c.describe() for c in self.conflicts[:SHOWN])
            more = f" (and {len(self.conflicts) - SHOWN} more)" if len(self.conflicts) > SHOWN else ""
            lines[0] += f": {shown}{more}."
        else:
            lines[0] += f" on what the installed version's migrations ({_listed(self.installed_unrecorded)}) made."
        foreign = sorted({c.migration for c in self.conflicts if c.migration not in self.installed})
        hint = ""
        if self.empty_history or any(c.migration in self.installed for c in self.conflicts):
            hint = (
                "If the database already holds what the installed version's migrations create (it was migrated "
                "without Prisma's record, e.g. by scripts running the .sql files), record them as applied: "
                "`inv baseline-migrations` (it lists what it records and asks), then apply again."
            )
        if foreign:
            hint += (
                f" {_listed(foreign)} {'is' if len(foreign) == 1 else 'are'} not among the installed version's "
                "migrations: the objects named were made outside the migrations (by hand or another tool); drop "
                "them, or change the migration in a new patch."
            )
        return MigrationError(" ".join(lines), hint.strip() + " Nothing was stopped or changed.")


def _listed(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def user_tables(database: Database) -> list[str]:
    """Names of the tables in the database's schema that belong to the application: not
    ``_prisma_migrations``, not a partition, not an extension's own table (PostGIS's
    ``spatial_ref_sys``...), sorted."""
    schema = database.target.schema
    rows = database.query(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND n.nspname = {pg.quote_literal(schema)} "
        f"AND c.relname <> {pg.quote_literal(MIGRATIONS_TABLE)} AND NOT EXISTS (SELECT 1 FROM pg_depend d "
        "WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e') ORDER BY 1"
    )
    return [str(r[0]) for r in rows]


def _in(schema: str, name: str) -> str:
    return f"n.nspname = {pg.quote_literal(schema)} AND {name}"


def existence_sql(ident: Key, kind: str = "") -> str:
    """An SQL boolean: the object ``ident`` (see :attr:`patchflow.ddl.Effect.ident`) exists.
    ``kind`` (``table``, ``index``...) decides whether a type of the same name counts too (a table
    or view also makes a row type of its name; an index or sequence does not)."""
    namespace, schema, name, parent, detail = ident
    lit = pg.quote_literal
    rel = "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    of_table = f"{rel} WHERE {_in(schema, f'c.relname = {lit(parent)}')}"
    if namespace == "relation":
        found = f"EXISTS (SELECT 1 {rel} WHERE {_in(schema, f'c.relname = {lit(name)}')})"
        if kind not in ("index", "sequence"):
            found += f" OR {existence_sql(('type', schema, name, '', ''))}"
        return found
    if namespace == "type":
        return (
            "EXISTS (SELECT 1 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
            f"WHERE {_in(schema, f't.typname = {lit(name)}')})"
        )
    if namespace == "column":
        return (
            "EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attnum > 0 AND NOT a.attisdropped "
            f"AND a.attname = {lit(name)} AND a.attrelid IN (SELECT c.oid {of_table}))"
        )
    if namespace in ("constraint", "trigger", "policy"):
        table, column, relcol = {
            "constraint": ("pg_constraint", "conname", "conrelid"),
            "trigger": ("pg_trigger", "tgname", "tgrelid"),
            "policy": ("pg_policy", "polname", "polrelid"),
        }[namespace]
        return (
            f"EXISTS (SELECT 1 FROM {table} x WHERE x.{column} = {lit(name)} "
            f"AND x.{relcol} IN (SELECT c.oid {of_table}))"
        )
    if namespace == "schema":
        return f"EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = {lit(name)})"
    if namespace == "extension":
        return f"EXISTS (SELECT 1 FROM pg_extension WHERE extname = {lit(name)})"
    if namespace == "function":
        types = [t.strip() for t in _split_types(detail)]
        wanted = ", ".join(f"to_regtype({lit(t)})" for t in types)
        array = f"ARRAY[{wanted}]::oid[]" if types else "ARRAY[]::oid[]"
        # an oidvector's text is its oids separated by spaces; a type not found never matches
        return (
            "EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            f"WHERE {_in(schema, f'p.proname = {lit(name)}')} "
            f"AND p.proargtypes::text = array_to_string({array}, ' ', '?'))"
        )
    if namespace == "enum value":
        return (
            "EXISTS (SELECT 1 FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid JOIN pg_namespace n "
            f"ON n.oid = t.typnamespace WHERE {_in(schema, f't.typname = {lit(parent)}')} "
            f"AND e.enumlabel = {lit(name)})"
        )
    return "false"


def _split_types(signature: str) -> list[str]:
    """Split ``numeric(10, 2), text[]`` at the commas outside parentheses and quotes."""
    parts: list[str] = []
    depth = 0
    quoted = False
    current = ""
    for char in signature:
        if char == '"':
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
        elif not quoted and depth == 0 and char == ",":
            parts.append(current)
            current = ""
            continue
        current += char
    if current.strip():
        parts.append(current)
    return parts


def existing(database: Database, wanted: Sequence[tuple[Key, str]]) -> set[Key]:
    """Which of ``wanted`` (``(ident, kind)``) exist in the database (one query per 200).

    Raises:
        DatabaseError: the catalogs cannot be queried.
    """
    found: set[Key] = set()
    for start in range(0, len(wanted), QUERY_CHUNK):
        chunk = wanted[start : start + QUERY_CHUNK]
        values = ", ".join(f"({i}, {existence_sql(ident, kind)})" for i, (ident, kind) in enumerate(chunk))
        rows = database.query(f"SELECT i FROM (VALUES {values}) AS v(i, hit) WHERE hit")
        found |= {chunk[int(r[0])][0] for r in rows}
    return found


def find_conflicts(
    database: Database, sources: Sequence[tuple[Migration, str]], schema: str
) -> tuple[list[Conflict], list[tuple[str, str]]]:
    """The statements of ``sources`` (pending migrations in apply order, with their SQL) that would
    create what already exists, following what earlier pending statements drop, rename and create;
    and the migrations that could not be parsed, with the reason.

    Raises:
        DatabaseError: the catalogs cannot be queried.
    """
    parsed: list[tuple[Migration, list[Effect]]] = []
    unreadable: list[tuple[str, str]] = []
    for migration, sql in sources:
        try:
            parsed.append((migration, schema_effects(sql, schema)))
        except SqlUnreadable as exc:
            unreadable.append((migration.name, f"line {exc.line}: {exc.message}" if exc.line else exc.message))
    wanted: dict[Key, str] = {}
    for _, effects in parsed:
        for effect in effects:
            if effect.action == "create" and not effect.guarded:
                wanted.setdefault(effect.ident, effect.key[4])
    present = existing(database, list(wanted.items())) if wanted else set()
    changed: dict[Key, bool] = {}  # objects an earlier pending statement created (True) or dropped
    gone_tables: set[tuple[str, str]] = set()
    gone_schemas: set[str] = set()
    conflicts: list[Conflict] = []
    failing: set[tuple[str, int]] = set()
    for migration, effects in parsed:
        for effect in effects:
            namespace, obj_schema, name, parent, _ = effect.ident
            if effect.action == "drop":
                changed[effect.ident] = False
                if namespace == "relation":
                    gone_tables.add((obj_schema, name))
                elif namespace == "schema":
                    gone_schemas.add(name)
                continue
            table_changed = bool(parent) and (
                (obj_schema, parent) in gone_tables or ("relation", obj_schema, parent, "", "") in changed
            )
            replaced = effect.ident in changed or obj_schema in gone_schemas or table_changed
            if (
                not effect.guarded
                and not replaced
                and effect.ident in present
                and ((migration.name, effect.statement) not in failing)
            ):
                # a statement fails on its first object that exists: one conflict per statement
                failing.add((migration.name, effect.statement))
                conflicts.append(Conflict(migration.name, migration.path, effect.line, effect.describe()))
            if not effect.guarded or effect.ident in changed:
                # IF NOT EXISTS leaves an existing object as it is (and with its parts)
                changed[effect.ident] = True
    return conflicts, unreadable


def check_history(
    database: Database,
    patch_migrations: Sequence[Migration],
    installed: Sequence[Migration],
    load: Callable[[Sequence[Migration]], Mapping[str, bytes]],
) -> HistoryCheck:
    """Compare the history of ``database`` with its schema for the migrations of a patch
    (``patch_migrations``, in apply order); ``installed`` are the installed tree's migrations,
    ``load(pending)`` returns the SQL of the pending ones as ``{path: bytes}`` (a migration left
    out is reported unreadable).

    Raises:
        DatabaseError: the database cannot be queried.
    """
    history = MigrationHistory(database)
    table = history.exists()
    rows = history.rows() if table else []
    done = {r["name"] for r in rows if r["finished"] and not r["rolled_back"]}
    pending = [m for m in patch_migrations if m.name not in done]
    installed_names = frozenset(m.name for m in installed)
    check = HistoryCheck(
        schema=history.schema,
        table=table,
        recorded=len(done),
        tables=user_tables(database) if pending else [],
        pending=[m.name for m in pending],
        installed_unrecorded=[m.name for m in pending if m.name in installed_names],
        installed=installed_names,
    )
    if not pending:
        return check
    contents = load(pending)
    sources: list[tuple[Migration, str]] = []
    for migration in pending:
        data = contents.get(migration.path)
        if data is None:
            check.unreadable.append((migration.name, "its SQL is not in the patch"))
        else:
            sources.append((migration, data.decode("utf-8", errors="replace")))
    conflicts, unreadable = find_conflicts(database, sources, history.schema)
    check.conflicts = conflicts
    check.unreadable += unreadable
    return check


def patch_sql(ctx: Context, report: VerifyReport) -> Callable[[Sequence[Migration]], dict[str, bytes]]:
    """A ``load`` for :func:`check_history` reading a patch's migrations: from its archive, or (a
    delta that does not carry an unchanged file) from the install when the file there has the
    manifest's sha256."""

    def load(migrations: Sequence[Migration]) -> dict[str, bytes]:
        from patchflow.archive.reader import read_member_bytes

        members = set(report.archive_entries())
        inside = {m.path for m in migrations if m.path in members}
        found = read_member_bytes(ctx.paths.archive(report.version), inside) if inside else {}
        for migration in migrations:
            local = ctx.paths.root / migration.path
            if migration.path not in found and local.is_file() and not local.is_symlink():
                data = local.read_bytes()
                if hashlib.sha256(data).hexdigest() == migration.checksum:
                    found[migration.path] = data
        return found

    return load


def refuse_uncovered_history(ctx: Context, report: VerifyReport) -> list[str]:
    """The plan's check: refuse a patch whose pending migrations the database's history does not
    cover (see the module); returns warnings for the plan.

    Raises:
        MigrationError: the history does not cover the schema (names what exists, the migrations
            that look pending and ``inv baseline-migrations``); nothing was changed.
        DatabaseError: the database cannot be queried.
    """
    assert ctx.database is not None
    check = check_history(
        ctx.database, from_manifest(report.manifest), find_migrations(ctx.paths.root), patch_sql(ctx, report)
    )
    if not check.covered:
        raise check.refusal()
    return check.warnings()
