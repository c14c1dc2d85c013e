"""Rehearsal: run a patch's pending migrations on a copy of this install's database, never stopping.

``inv rehearse --version X`` verifies the patch, copies the live database on the same server
(``CREATE DATABASE <live>_rehearse_<stamp> TEMPLATE <live>``; PostgreSQL refuses that while other
sessions are connected to the live database, so then a dump of it is restored into the copy
instead), and on the copy does what the apply and its rollback would do to the database:

- the backup: a dump of the copy (the dump of the live database when the copy was made from one);
- each pending migration with the builtin runner and the same ``migrate_timeout``,
  ``migration_lock_timeout`` and retries, timed; before its COMMIT the locks its transaction holds
  are read from ``pg_locks`` (a migration run outside a transaction: the locks PostgreSQL
  documents for its statements, :func:`patchflow.migration_locks.locked_tables`), and the rows of
  the tables it names are counted before it runs;
- the rollback's restore-and-swap (:meth:`patchflow.database.Database.restore_beside` on the copy:
  restored beside it, checked, names swapped), timed, and proved by the migrations being pending
  again on the restored copy.

Then every database it made is dropped (also when a step fails). The services keep running and
the live database is only read.

A rehearsal whose migrations all ran is recorded in ``<state>/rehearsals.json`` (per version: when,
the migrations with their seconds, locks and rows, the dump's and the restore's seconds); the plan
of that version shows it while its pending migrations are the same (:func:`rehearsed_line`), as
the migrate step to expect in the stopped window.

Not rehearsed: a ``migrate_command`` other than builtin (the rehearsal runs the builtin runner and
says so).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from patchflow.commands import postgres as pg
from patchflow.database import DISPLACED_MARK, RESTORING_MARK, Database, derived_name, stamp_now
from patchflow.errors import ConfigError, DatabaseError, MigrationError
from patchflow.migration_locks import MODES, LockPolicy, Touch, locked_tables
from patchflow.migrations import Migration, MigrationHistory, from_manifest, migrate_command
from patchflow.txn_statements import transaction_mode

if TYPE_CHECKING:
    from patchflow.context import Context
    from patchflow.version import PatchVersion

REHEARSE_MARK = "_rehearse_"
RECORD = "rehearsals.json"


@dataclass
class Rehearsed:
    """One migration on the copy: its ``name``, ``seconds``, the ``locks`` it took (``schema.table``
    -> strongest pg_locks mode; ``observed`` False: the documented ones, it ran outside a
    transaction) and the ``rows`` of the tables it names, counted before it ran (a table it
    creates is absent)."""

    name: str
    seconds: float
    locks: dict[str, str] = field(default_factory=dict)
    observed: bool = True
    rows: dict[str, int] = field(default_factory=dict)


@dataclass
class Rehearsal:
    """What a rehearsal did: the ``copy`` database it made (dropped since) and ``how`` (``template``
    or ``dump``), seconds the copy, the backup dump and the rollback's restore-and-swap took, each
    pending migration in apply order (``migrations``), the ``runner`` the real apply would use,
    and the ``error`` that stopped it ("" when every step ran)."""

    version: str
    copy: str = ""
    how: str = ""
    copy_seconds: float = 0.0
    dump_seconds: float = 0.0
    restore_seconds: float = 0.0
    migrations: list[Rehearsed] = field(default_factory=list)
    runner: str = "builtin"
    error: str = ""

    @property
    def durations(self) -> list[tuple[str, float]]:
        """``(name, seconds)`` of each migration run, in order."""
        return [(m.name, m.seconds) for m in self.migrations]

    @property
    def total(self) -> float:
        """Seconds the migrations took in all."""
        return sum(m.seconds for m in self.migrations)


#: psql lines run before a rehearsed migration's COMMIT: the tables its transaction holds locks on
#: (patchflow's own history table left out), one JSON line after a marker.
LOCKS_MARK = "patchflow-locks "
LOCKS_PROBE = (
    "\\pset tuples_only on\n\\pset format unaligned\n"
    f"SELECT {pg.quote_literal(LOCKS_MARK)} || coalesce(json_agg(json_build_object("
    "'table', n.nspname || '.' || c.relname, 'mode', l.mode))::text, '[]') "
    "FROM pg_locks l JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation' AND l.granted AND c.relkind IN ('r', 'p', 'm') "
    "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND c.relname <> '_prisma_migrations';\n"
)


def held_locks(output: str) -> dict[str, str]:
    """The strongest mode per table in the probe's line of psql ``output`` ({} when absent)."""
    found: dict[str, str] = {}
    for line in output.splitlines():
        if not line.startswith(LOCKS_MARK):
            continue
        for item in json.loads(line[len(LOCKS_MARK) :]):
            table, mode = str(item["table"]), str(item["mode"])
            if mode in MODES and (table not in found or MODES.index(mode) > MODES.index(found[table])):
                found[table] = mode
    return found


def count_rows(database: Database, touches: Sequence[Touch]) -> dict[str, int]:
    """Exact row counts of the existing tables among ``touches`` (``schema.table`` -> rows).

    Raises:
        DatabaseError: the database cannot be queried.
    """
    tables = sorted({(t.schema, t.name) for t in touches})
    if not tables:
        return {}
    names = ", ".join(pg.quote_literal(pg.quote_ident(s) + "." + pg.quote_ident(n)) for s, n in tables)
    existing = database.query(
        f"SELECT n.nspname, c.relname FROM unnest(ARRAY[{names}]) AS q(name) "
        "JOIN pg_class c ON c.oid = to_regclass(q.name) JOIN pg_namespace n ON n.oid = c.relnamespace"
    )
    counts: dict[str, int] = {}
    for schema, name in existing:
        rows = database.query(f"SELECT count(*) FROM {pg.quote_ident(schema)}.{pg.quote_ident(name)}")
        counts[f"{schema}.{name}"] = int(rows[0][0])
    return counts


def copy_database(database: Database, copy: str, work: Path, log: Callable[[str], None]) -> tuple[str, Path | None]:
    """Make ``copy`` equal to the live database without touching it; returns how (``template`` or
    ``dump``) and the dump of the live database it restored (None for a template copy).

    Raises:
        DatabaseError: neither way worked (a half-made copy is dropped by the caller).
    """
    live = database.target.dbname
    try:
        database.execute(
            f"CREATE DATABASE {pg.quote_ident(copy)} TEMPLATE {pg.quote_ident(live)}",
            database="postgres",
            admin=True,
            what="copy the database",
        )
        return "template", None
    except DatabaseError as exc:
        if "being accessed by other users" not in exc.message:
            raise
    log(f"   {live} has other sessions (the application): copying it by dump and restore instead")
    dump = work / "rehearsal.dump"
    database.dump(dump)
    props = database.properties(admin=True)
    database.create_empty_like(copy, what="create the copy")
    # the restore of restore_beside, into the copy, without its swap
    database._restore_into(dump, copy, bool(props["superuser"]))
    return "dump", dump


def _run_one(
    history: MigrationHistory, tree: Path, migration: Migration, policy: LockPolicy, log: Callable[[str], None]
) -> Rehearsed:
    """Run ``migration`` (its file under ``tree``) on the copy ``history`` is of: timed, with the
    locks it took and the rows of the tables it names.

    Raises:
        MigrationError: it failed.
    """
    database = history.database
    sql = (tree / migration.path).read_text(encoding="utf-8")
    touches = locked_tables(sql, database.target.schema)
    outside = transaction_mode(sql, database.server_version()).kind == "none"
    rows = count_rows(database, touches)
    began = time.monotonic()
    probe = "" if outside else LOCKS_PROBE
    output = history.apply(tree, migration, timeout=policy.deadline, lock=policy, log=log, probe=probe)
    seconds = time.monotonic() - began
    if not outside:
        return Rehearsed(migration.name, seconds, held_locks(output), True, rows)
    documented: dict[str, str] = {}
    for touch in touches:  # the strongest mode PostgreSQL documents for each table
        table, current = f"{touch.schema}.{touch.name}", documented.get(f"{touch.schema}.{touch.name}")
        if current is None or MODES.index(touch.mode) > MODES.index(current):
            documented[table] = touch.mode
    return Rehearsed(migration.name, seconds, documented, False, rows)


def restore_on_copy(
    copy: Database, dump: Path, pending: Sequence[Migration], stamp: str, log: Callable[[str], None]
) -> None:
    """The rollback's restore-and-swap on ``copy`` from ``dump`` (its state before the
    migrations), proved by ``pending`` being pending again.

    Raises:
        DatabaseError: the restore or the swap failed.
        MigrationError: the restored copy does not have the migrations pending again.
    """
    copy.restore_beside(dump, stamp, log)
    again = [m.name for m in MigrationHistory(copy).pending(pending)]
    left = [m.name for m in pending if m.name not in again]
    if left:
        raise MigrationError(
            f"The rollback's restore on the copy left migration(s) {', '.join(left)} applied.",
            "The rollback would not undo them: check the backup dump (pg_dump and pg_restore versions).",
        )


def rehearse(ctx: Context, version: PatchVersion, log: Callable[[str], None] = lambda line: None) -> Rehearsal:
    """Rehearse the pending migrations of patch ``version`` and the rollback's restore on a copy of
    the database (see the module); every database it made is dropped.

    Raises:
        ConfigError: no database is configured.
        VerifyError: the patch is missing or corrupt.
        MigrationError: the history has a failed row (P3009).
        DatabaseError: the copy could not be made, or a database it made could not be dropped.
    """
    from patchflow.history import patch_sql
    from patchflow.verify import verify_patch

    if ctx.database is None:
        raise ConfigError("No database is configured (database_mode = none).", "Nothing to rehearse.")
    report = verify_patch(ctx.paths.patches / version.tag, version, verify_key=ctx.settings.verify_key)
    migrations = from_manifest(report.manifest)
    pending = MigrationHistory(ctx.database).pending(migrations)
    result = Rehearsal(str(version), runner=migrate_command(ctx.settings, ctx.paths.root, migrations))
    if not pending:
        return result
    contents = patch_sql(ctx, report)(pending)
    missing = [m.path for m in pending if m.path not in contents]
    if missing:
        raise MigrationError(f"The patch does not carry {', '.join(missing)}.", "Nothing was changed.")
    stamp = stamp_now()
    result.copy = derived_name(ctx.database.target.dbname, REHEARSE_MARK, stamp)
    copy = ctx.database.beside(result.copy)
    made = [
        result.copy,
        derived_name(result.copy, RESTORING_MARK, stamp),
        derived_name(result.copy, DISPLACED_MARK, stamp),
    ]
    with tempfile.TemporaryDirectory(prefix="patchflow-rehearse-") as work:
        tree = Path(work) / "tree"
        for migration in pending:
            target = tree / migration.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(contents[migration.path])
        try:
            started = time.monotonic()
            log(f"   copying {ctx.database.target.dbname} to {result.copy}")
            result.how, dump = copy_database(ctx.database, result.copy, Path(work), log)
            result.copy_seconds = time.monotonic() - started
            if dump is None:  # the apply's backup: a dump of the database as it is before the migrations
                started = time.monotonic()
                dump = copy.dump(Path(work) / "backup.dump").path
                result.dump_seconds = time.monotonic() - started
            history = MigrationHistory(copy)
            policy = LockPolicy(
                ctx.settings.migration_lock_timeout,
                ctx.settings.migration_lock_retries,
                float(ctx.settings.migrate_timeout),
            )
            for number, migration in enumerate(pending, 1):
                log(f"   migration {migration.name} ({number} of {len(pending)}) on the copy")
                began = time.monotonic()
                try:
                    result.migrations.append(_run_one(history, tree, migration, policy, log))
                except MigrationError as exc:
                    result.migrations.append(Rehearsed(migration.name, time.monotonic() - began))
                    result.error = exc.message
                    break
            log("   the rollback's restore-and-swap on the copy")
            started = time.monotonic()
            try:
                restore_on_copy(copy, dump, pending, stamp, log)
                result.restore_seconds = time.monotonic() - started
            except (DatabaseError, MigrationError) as exc:
                result.error = "; ".join(
                    e for e in (result.error, f"the rollback's restore failed: {exc.message}") if e
                )
        finally:
            for name in made:
                ctx.database.execute_quietly(f"DROP DATABASE IF EXISTS {pg.quote_ident(name)} WITH (FORCE)")
    left = [name for name in made if ctx.database.exists(name)]
    if left:
        raise DatabaseError(
            f"The rehearsal's database(s) {', '.join(left)} could not be dropped.",
            "Drop them by hand: " + " ".join(f"DROP DATABASE {pg.quote_ident(n)} WITH (FORCE);" for n in left),
        )
    return result


def _records(state: Path) -> dict[str, Any]:
    try:
        data = json.loads((state / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def record_rehearsal(state: Path, result: Rehearsal) -> None:
    """Remember a complete rehearsal of ``result.version`` in ``state/rehearsals.json`` (the
    latest per version). A rehearsal that failed or ran nothing is not recorded.

    Raises:
        OSError: the file cannot be written.
    """
    from patchflow.lifecycle.journal import utc_now, write_json_atomic

    if result.error or not result.migrations:
        return
    records = _records(state)
    records[result.version] = {"at": utc_now(), **rehearsal_json(result)}
    write_json_atomic(state / RECORD, records)


def rehearsal_json(result: Rehearsal) -> dict[str, Any]:
    """``result`` as JSON (``inv rehearse --json`` and ``rehearsals.json``): seconds rounded to ms."""
    return {
        "version": result.version,
        "copy": result.copy,
        "copied_by": result.how,
        "copy_seconds": round(result.copy_seconds, 3),
        "dump_seconds": round(result.dump_seconds, 3),
        "restore_seconds": round(result.restore_seconds, 3),
        "migrations": [
            {
                "name": m.name,
                "seconds": round(m.seconds, 3),
                "locks": m.locks,
                "locks_observed": m.observed,
                "rows": m.rows,
            }
            for m in result.migrations
        ],
        "error": result.error,
    }


def _matching(state: Path, version: str, pending: Sequence[str]) -> dict[str, Any] | None:
    """The recorded rehearsal of ``version`` when it ran exactly ``pending`` (None otherwise)."""
    record = _records(state).get(version)
    if not isinstance(record, dict) or not pending:
        return None
    migrations = record.get("migrations")
    if not isinstance(migrations, list) or [m.get("name") for m in migrations if isinstance(m, dict)] != list(pending):
        return None
    return record


def rehearsed_seconds(state: Path, version: str, pending: Sequence[str]) -> float | None:
    """Seconds the ``pending`` migrations of ``version`` took in its last rehearsal (None: not
    rehearsed, or other migrations were)."""
    record = _matching(state, version, pending)
    if record is None:
        return None
    return sum(float(m.get("seconds", 0) or 0) for m in record["migrations"])


def rehearsed_line(state: Path, version: str, pending: Sequence[str]) -> str | None:
    """The plan's line for the last rehearsal of ``version`` when it ran exactly ``pending``
    (None otherwise)."""
    record = _matching(state, version, pending)
    total = rehearsed_seconds(state, version, pending)
    if record is None or total is None:
        return None
    restore = float(record.get("restore_seconds", 0) or 0)
    rollback = f"; a rollback's database restore took {restore:.1f} s there" if restore else ""
    return (
        f"rehearsed: the {len(pending)} pending migration(s) took {total:.1f} s on a copy of this database "
        f"({record.get('at', '?')}, inv rehearse): the migrate step of the stopped window{rollback}"
    )
