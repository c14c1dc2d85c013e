"""Prisma's row states of ``_prisma_migrations``, checked by the plan, and ``migrate resolve``.

Every rule here is Prisma's schema engine's (prisma/prisma-engines, ``schema-engine/core``):

* a row is **failed** when ``finished_at`` and ``rolled_back_at`` are both NULL: ``migrate
  deploy`` refuses to run anything while one exists (P3009, ``commands/apply_migrations.rs``
  ``detect_failed_migrations``);
* a migration is **applied** when it has a row with ``rolled_back_at`` NULL (and, not failed,
  ``finished_at`` set); a row with ``rolled_back_at`` set is ignored but for the audit trail, so
  the migration counts as unapplied and runs again;
* the **checksum** is the sha256 hex of ``migration.sql``; a file matches a recorded checksum when
  the sha256 of the file as it is, with CRLF turned to LF, or with LF turned to CRLF equals it,
  zero-padded or not (old engines dropped leading zeros of each byte: prisma-engines issue 1887)
  (``connectors/schema-connector/src/checksum.rs`` ``script_matches_checksum``);
* ``migrate resolve --rolled-back N`` (``commands/mark_migration_rolled_back.rs``): refused when
  no row names N (P3011) or every row of N is finished (P3012); else each failed row of N gets
  ``rolled_back_at = now()`` (none may be left: then nothing is written, and it succeeds);
* ``migrate resolve --applied N`` (``commands/mark_migration_applied.rs``): refused when the
  migrations folder has no N (P3017) or a row of N is finished (P3008); the table is created when
  missing; failed rows of N get ``rolled_back_at``; then one row is inserted as
  ``mark_migration_applied_impl`` does (``sql_migration_persistence.rs``): a random UUID v4,
  the checksum of the file, ``logs`` ``''``, ``started_at = finished_at = now``,
  ``applied_steps_count`` 0. Both take Prisma's migrate advisory lock.

:func:`check_rows` compares the rows with the migrations of a patch; :func:`refuse_row_states`
is the plan's check (before the stop): failed rows and edited applied migrations refuse the apply
(``migration_checksum_check = warn`` turns the latter into a warning); applied migrations the
patch does not have are named in the plan's warnings.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from patchflow.commands import postgres as pg
from patchflow.errors import ConfigError, MigrationError
from patchflow.migrations import MIGRATIONS_TABLE, Migration, MigrationHistory, create_table_sql, table_name

if TYPE_CHECKING:
    from patchflow.context import Context
    from patchflow.database import Database
    from patchflow.verify import VerifyReport

#: Prisma Migrate's advisory lock key (prisma-engines, flavour/postgres.rs ``acquire_lock``).
PRISMA_LOCK_KEY = 72707369
LISTED = 6


@dataclass(frozen=True)
class Row:
    """One row of ``_prisma_migrations``: ``started_at`` as PostgreSQL prints it, ``logs`` ("" for
    NULL), ``finished`` / ``rolled_back``: the timestamp columns are not NULL."""

    id: str
    name: str
    checksum: str
    started_at: str
    finished: bool
    rolled_back: bool
    logs: str = ""

    @property
    def failed(self) -> bool:
        """Prisma's failed state: neither finished nor rolled back."""
        return not self.finished and not self.rolled_back

    @property
    def applied(self) -> bool:
        """Counts as applied: finished and not rolled back."""
        return self.finished and not self.rolled_back


def read_rows(database: Database) -> list[Row]:
    """The rows of ``_prisma_migrations`` in ``started_at`` order (empty when there is no table).

    Raises:
        DatabaseError: the database cannot be queried.
    """
    history = MigrationHistory(database)
    if not history.exists():
        return []
    # one line of JSON whatever the logs hold (jsonb's text form escapes newlines and '|')
    found = database.query(
        "SELECT coalesce(jsonb_agg(jsonb_build_array(id, migration_name, checksum, started_at::text, "
        "finished_at IS NOT NULL, rolled_back_at IS NOT NULL, coalesce(logs, '')) "
        f"ORDER BY started_at, migration_name), '[]'::jsonb)::text FROM {table_name(history.schema)}"
    )
    text = "|".join(found[0]) if found else "[]"
    return [Row(str(a), str(b), str(c), str(d), bool(e), bool(f), str(g)) for a, b, c, d, e, f, g in json.loads(text)]


def prisma_checksum(script: bytes) -> str:
    """Prisma's checksum of a migration script: the sha256 hex (64 characters) of its bytes."""
    return hashlib.sha256(script).hexdigest()


def _unpadded(script: bytes) -> str:
    return "".join(f"{byte:x}" for byte in hashlib.sha256(script).digest())


def checksum_matches(script: bytes, recorded: str) -> bool:
    """Prisma's ``script_matches_checksum``: the script as it is, with CRLF as LF, or with LF as
    CRLF has the ``recorded`` checksum (compared unpadded when ``recorded`` is not 64 long)."""
    variants = (script, script.replace(b"\r\n", b"\n"), script.replace(b"\n", b"\r\n"))
    render = _unpadded if recorded and len(recorded) != 64 else prisma_checksum
    return any(render(variant) == recorded for variant in variants)


@dataclass(frozen=True)
class Edited:
    """An applied migration whose file in the patch no longer has the recorded checksum."""

    name: str
    path: str
    recorded: str
    actual: str


@dataclass
class RowStates:
    """What :func:`check_rows` found: ``failed`` rows (P3009), ``edited`` applied migrations and
    the applied migrations ``absent`` from the patch (names, in history order)."""

    failed: list[Row] = field(default_factory=list)
    edited: list[Edited] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)


def check_rows(
    rows: Sequence[Row], migrations: Sequence[Migration], load: Callable[[Sequence[Migration]], Mapping[str, bytes]]
) -> RowStates:
    """Compare the history ``rows`` with a patch's ``migrations`` (``checksum``: the sha256 of the
    file the patch carries); ``load(migrations)`` gives ``{path: bytes}`` of those whose sha256
    differs, to judge them by Prisma's line-ending rule (a file it does not give is judged by its
    sha256)."""
    states = RowStates(failed=[r for r in rows if r.failed])
    applied: dict[str, list[str]] = {}
    for row in rows:
        if row.applied:
            applied.setdefault(row.name, []).append(row.checksum)
    differing = [m for m in migrations if m.name in applied and m.checksum not in applied[m.name]]
    contents = load(differing) if differing else {}
    for migration in differing:
        data = contents.get(migration.path)
        recorded = applied[migration.name]
        if data is not None and any(checksum_matches(data, checksum) for checksum in recorded):
            continue
        states.edited.append(Edited(migration.name, migration.path, recorded[-1], migration.checksum))
    names = {m.name for m in migrations}
    states.absent = [name for name in applied if name not in names]
    return states


def _listed(items: Sequence[str]) -> str:
    more = f" and {len(items) - LISTED} more" if len(items) > LISTED else ""
    return ", ".join(items[:LISTED]) + more


def failed_refusal(failed: Sequence[Row]) -> tuple[str, str]:
    """The message and hint for failed rows (Prisma's P3009), with the commands that resolve them."""
    first = failed[0]
    logs = " ".join(first.logs.split())
    logs = f"; its logs: {logs[:200]}" if logs else ""
    others = (
        f" (and {len(failed) - 1} more failed row(s): {_listed([r.name for r in failed[1:]])})" if failed[1:] else ""
    )
    message = (
        f"P3009: migration {first.name} is recorded as failed in {MIGRATIONS_TABLE} (started {first.started_at}, "
        f"never finished nor rolled back{logs}){others}; Prisma and patchflow run no migration while a failed one "
        "is recorded."
    )
    hint = (
        f"Look at the database: if the migration's changes are not there (or you undid them), run `inv "
        f"resolve-migration --name {first.name} --rolled-back` and apply again (it runs again); if you "
        f"completed it by hand, run `inv resolve-migration --name {first.name} --applied`."
    )
    return message, hint


def edited_refusal(edited: Sequence[Edited]) -> tuple[str, str]:
    """The message and hint for applied migrations whose file changed since they ran."""
    described = "; ".join(
        f"{e.path} has sha256 {e.actual} in the patch, {MIGRATIONS_TABLE} recorded {e.recorded} when {e.name} ran"
        for e in edited[:LISTED]
    )
    more = f" (and {len(edited) - LISTED} more)" if len(edited) > LISTED else ""
    message = (
        f"{len(edited)} applied migration(s) were edited after they ran: {described}{more}; the change would never "
        "reach this database."
    )
    hint = (
        "Put the applied file back as it was and make the change in a new migration; if this database already "
        "has what the edited file makes, set migration_checksum_check = warn (PATCHFLOW_MIGRATION_CHECKSUM_CHECK)."
    )
    return message, hint


def refuse_row_states(ctx: Context, report: VerifyReport) -> list[str]:
    """The plan's check of ``_prisma_migrations`` against the patch of ``report`` (see the
    module); returns warnings for the plan.

    Raises:
        MigrationError: a failed row, or an edited applied migration under
            ``migration_checksum_check = refuse`` (all named in one paragraph); nothing changed.
        DatabaseError: the database cannot be queried.
    """
    from patchflow.history import patch_sql
    from patchflow.migrations import from_manifest

    assert ctx.database is not None
    states = check_rows(read_rows(ctx.database), from_manifest(report.manifest), patch_sql(ctx, report))
    warnings: list[str] = []
    problems: list[tuple[str, str]] = []
    if states.failed:
        problems.append(failed_refusal(states.failed))
    if states.edited:
        message, hint = edited_refusal(states.edited)
        if ctx.settings.migration_checksum_check == "refuse":
            problems.append((message, hint))
        elif ctx.settings.migration_checksum_check == "warn":
            warnings.append(f"{message} (migration_checksum_check = warn)")
    if states.absent:
        warnings.append(
            f"{MIGRATIONS_TABLE} records {len(states.absent)} applied migration(s) the patch does not have: "
            f"{_listed(states.absent)} (renamed or deleted from prisma/migrations/, or applied from another "
            "branch); nothing is run or undone for them"
        )
    if states.failed:
        # a history that lost rows beside the failed one: name that too (its way out differs)
        from patchflow.history import refuse_uncovered_history

        try:
            refuse_uncovered_history(ctx, report)
        except MigrationError as exc:
            problems.append((exc.message, exc.hint.replace("Nothing was stopped or changed.", "").strip()))
    if problems:
        code = "P3009" if states.failed else ""
        raise MigrationError(
            " ".join(m for m, _ in problems),
            " ".join(h for _, h in problems) + " Nothing was stopped or changed.",
            migration=states.failed[0].name if states.failed else states.edited[0].name,
            code=code,
        )
    return warnings


# -- migrate resolve ----------------------------------------------------------------------------


def resolve_rolled_back(database: Database, name: str) -> int:
    """Mark the failed rows of migration ``name`` rolled back, as ``prisma migrate resolve
    --rolled-back`` does; returns how many rows it marked (0 when its unfinished rows are all
    rolled back already: Prisma then succeeds without writing).

    Raises:
        MigrationError: no table or no row of ``name`` (P3011), or none failed (P3012).
        DatabaseError: the database refused the statements.
    """
    rows = [r for r in read_rows(database) if r.name == name]
    if not rows:
        raise MigrationError(
            f"P3011: migration {name} cannot be rolled back because it was never applied to the database "
            f"({MIGRATIONS_TABLE} has no row of it).",
            "Pass the whole folder name (e.g. 20250101120000_init); nothing was changed.",
            migration=name,
            code="P3011",
        )
    failed = [r for r in rows if r.failed]
    if all(r.finished for r in rows):
        raise MigrationError(
            f"P3012: migration {name} cannot be rolled back because it is not in a failed state (its rows are "
            "finished or already rolled back).",
            "To undo an applied migration, roll back the patch that ran it (rollback-patch restores the database); "
            "nothing was changed.",
            migration=name,
            code="P3012",
        )
    table = table_name(database.target.schema)
    script = "\n".join(
        [
            "BEGIN;",
            f"SELECT pg_advisory_xact_lock({PRISMA_LOCK_KEY});",
            f"UPDATE {table} SET rolled_back_at = now() WHERE migration_name = {pg.quote_literal(name)} "
            "AND finished_at IS NULL AND rolled_back_at IS NULL;",
            "COMMIT;",
            "",
        ]
    )
    database.run_script(script, what=f"resolve {name} as rolled back", app="patchflow-resolve")
    return len(failed)


def resolve_applied(database: Database, root: Path, name: str, migrations: Sequence[Migration]) -> Migration:
    """Record migration ``name`` of the tree at ``root`` (one of ``migrations``) as applied, as
    ``prisma migrate resolve --applied`` does; returns it.

    Raises:
        MigrationError: the tree has no migration ``name`` (P3017), or a row of it is finished
            (P3008).
        DatabaseError: the database refused the statements.
    """
    migration = next((m for m in migrations if m.name == name), None)
    if migration is None:
        raise MigrationError(
            f"P3017: the migration {name} could not be found in {root / 'prisma/migrations'}.",
            "Pass the whole folder name (e.g. 20250101120000_init); nothing was changed.",
            migration=name,
            code="P3017",
        )
    rows = [r for r in read_rows(database) if r.name == name]
    if any(r.finished for r in rows):
        raise MigrationError(
            f"P3008: the migration {name} is already recorded as applied in the database.",
            "Nothing to resolve; nothing was changed.",
            migration=name,
            code="P3008",
        )
    schema = database.target.schema
    table = table_name(schema)
    quoted = pg.quote_literal(name)
    checksum = prisma_checksum((root / migration.path).read_bytes())
    script = "\n".join(
        [
            "BEGIN;",
            f"SELECT pg_advisory_xact_lock({PRISMA_LOCK_KEY});",
            create_table_sql(schema),
            f"UPDATE {table} SET rolled_back_at = now() WHERE migration_name = {quoted} "
            "AND finished_at IS NULL AND rolled_back_at IS NULL;",
            f"INSERT INTO {table} (id, checksum, logs, started_at, finished_at, migration_name) "
            f"SELECT {pg.quote_literal(str(uuid.uuid4()))}, {pg.quote_literal(checksum)}, '', t, t, {quoted} "
            "FROM (SELECT clock_timestamp() AS t) AS now;",
            "COMMIT;",
            "",
        ]
    )
    database.run_script(script, what=f"resolve {name} as applied", app="patchflow-resolve")
    return migration


def check_resolve_flags(applied: bool, rolled_back: bool) -> str:
    """``applied`` or ``rolled-back``: exactly one of the two flags.

    Raises:
        ConfigError: none or both given.
    """
    if applied == rolled_back:
        raise ConfigError(
            "resolve-migration needs exactly one of --applied and --rolled-back.",
            "--rolled-back when the failed migration's changes are not in the database (it runs again at the next "
            "apply), --applied when they are (completed by hand); nothing was changed.",
        )
    return "applied" if applied else "rolled-back"
