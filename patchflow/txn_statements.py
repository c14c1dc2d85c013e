"""Statements PostgreSQL refuses inside a transaction block, found in a migration's SQL.

PostgreSQL runs ``CREATE INDEX CONCURRENTLY``, ``DROP INDEX CONCURRENTLY``, ``REINDEX ...
CONCURRENTLY`` (and ``REINDEX DATABASE|SYSTEM``), ``VACUUM``, ``CLUSTER`` without a table,
``CREATE|DROP DATABASE``, ``CREATE|DROP TABLESPACE``, ``ALTER SYSTEM`` and ``CREATE|DROP
SUBSCRIPTION`` only outside a transaction block (error 25001), and before PostgreSQL 12 ``ALTER
TYPE ... ADD VALUE`` too. The builtin runner wraps a migration in ``BEGIN ... COMMIT`` with its
``_prisma_migrations`` row; such a statement would fail there, after the services stopped.

So (:func:`transaction_mode`): a migration made **only** of such statements runs without the
wrapper, each statement in its own implicit transaction as psql sends it (Prisma's own rule is
stricter: its engine sends a migration as one multi-statement query, so it accepts such a
statement only alone in its file), its row written after the last one; a migration that **mixes**
them with other statements is refused (:func:`mixed_refusal`), at create-patch as a warning and in
the plan before the stop, because no wrapper is right for it: split it into two migrations. The
statements are read with PostgreSQL's own parser (pglast); SQL it cannot read is left to the
runner (it reports the error with its line).

Statements run outside a transaction take no ``lock_timeout`` (:mod:`patchflow.migration_locks`):
what they wait for (``SHARE UPDATE EXCLUSIVE``, old snapshots) does not queue the application's
reads and writes behind them, and a ``CREATE INDEX CONCURRENTLY`` cancelled by a lock timeout
leaves an invalid index behind. ``migrate_timeout`` bounds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pglast import ast, parse_sql
from pglast.enums import ReindexObjectType
from pglast.parser import ParseError, scan

from patchflow.errors import MigrationError

if TYPE_CHECKING:
    from patchflow.context import Context
    from patchflow.migrations import Migration
    from patchflow.verify import VerifyReport

#: PostgreSQL's first version running ``ALTER TYPE ... ADD VALUE`` inside a transaction block.
ADD_VALUE_IN_TRANSACTION = 120000


@dataclass(frozen=True)
class Outside:
    """A statement that must run outside a transaction block: its 1-based ``line``, ``what`` it
    is (``CREATE INDEX CONCURRENTLY``...) and ``before_12`` (only before PostgreSQL 12)."""

    line: int
    what: str
    before_12: bool = False


def _what(node: ast.Node) -> tuple[str, bool] | None:
    """``(what, before_12)`` for a statement refused in a transaction block, else None."""
    if isinstance(node, ast.IndexStmt) and node.concurrent:
        return "CREATE INDEX CONCURRENTLY", False
    if isinstance(node, ast.DropStmt) and node.concurrent:
        return "DROP INDEX CONCURRENTLY", False
    if isinstance(node, ast.ReindexStmt):
        if any(isinstance(p, ast.DefElem) and p.defname == "concurrently" for p in node.params or ()):
            return "REINDEX CONCURRENTLY", False
        if node.kind in (ReindexObjectType.REINDEX_OBJECT_DATABASE, ReindexObjectType.REINDEX_OBJECT_SYSTEM):
            return "REINDEX DATABASE/SYSTEM", False
    if isinstance(node, ast.VacuumStmt) and node.is_vacuumcmd:
        return "VACUUM", False
    if isinstance(node, ast.ClusterStmt) and node.relation is None:
        return "CLUSTER without a table", False
    simple = {
        ast.CreatedbStmt: "CREATE DATABASE",
        ast.DropdbStmt: "DROP DATABASE",
        ast.CreateTableSpaceStmt: "CREATE TABLESPACE",
        ast.DropTableSpaceStmt: "DROP TABLESPACE",
        ast.AlterSystemStmt: "ALTER SYSTEM",
        ast.CreateSubscriptionStmt: "CREATE SUBSCRIPTION",
        ast.DropSubscriptionStmt: "DROP SUBSCRIPTION",
    }
    for kind, what in simple.items():
        if isinstance(node, kind):
            return what, False
    if isinstance(node, ast.AlterEnumStmt) and node.newVal and not node.oldVal:
        return "ALTER TYPE ... ADD VALUE", True
    return None


def scan_statements(sql: str) -> tuple[list[Outside], int]:
    """The statements of ``sql`` refused in a transaction block (any server version) and how
    many top-level statements it has; ``([], 0)`` when PostgreSQL's parser cannot read it."""
    try:
        statements = parse_sql(sql)
        starts = [t.start for t in scan(sql) if t.name not in ("SQL_COMMENT", "C_COMMENT")]
    except ParseError:
        return [], 0
    found: list[Outside] = []
    count = 0
    for raw in statements:
        if raw.stmt is None:
            continue
        count += 1
        what = _what(raw.stmt)
        if what is not None:
            first = next((s for s in starts if s >= (raw.stmt_location or 0)), raw.stmt_location or 0)
            found.append(Outside(sql.count("\n", 0, first) + 1, *what))
    return found, count


@dataclass(frozen=True)
class Mode:
    """How a migration must run on a server: ``outside`` its statements refused in a transaction
    block there; ``transaction`` (none), ``none`` (all: no wrapper) or ``mixed`` (refused)."""

    kind: str
    outside: tuple[Outside, ...] = ()

    def describe(self) -> str:
        """``CREATE INDEX CONCURRENTLY (line 3), VACUUM (line 5)``."""
        return ", ".join(f"{o.what} (line {o.line})" for o in self.outside)


def transaction_mode(sql: str, server_version: int | None) -> Mode:
    """How ``sql`` must run on a server of ``server_version`` (``server_version_num``; None:
    unknown, counted as PostgreSQL 12 or later)."""
    found, count = scan_statements(sql)
    old = server_version is not None and server_version < ADD_VALUE_IN_TRANSACTION
    outside = tuple(o for o in found if old or not o.before_12)
    if not outside:
        return Mode("transaction")
    return Mode("none" if len(outside) == count else "mixed", outside)


def mixed_refusal(name: str, path: str, mode: Mode) -> MigrationError:
    """The error for a migration mixing statements refused in a transaction block with others."""
    return MigrationError(
        f"Migration {name} ({path}) mixes statements PostgreSQL refuses inside a transaction block "
        f"({mode.describe()}) with other statements: run in one transaction it fails (error 25001), run without "
        "one a failure half-way leaves the database half migrated.",
        f"Move {', '.join(sorted({o.what for o in mode.outside}))} into a migration of its own (it then runs "
        "without a transaction, statement by statement), in a new patch.",
        migration=name,
    )


def create_warnings(root: Path, migrations: Sequence[Migration]) -> list[str]:
    """create-patch's warnings for ``migrations`` of the tree at ``root``: those that run
    without a transaction, and those mixing statements refused in a transaction block with others
    (any server version's rule)."""
    warnings = []
    for migration in migrations:
        data = (root / migration.path).read_bytes()
        found, count = scan_statements(data.decode("utf-8", errors="replace"))
        if not found:
            continue
        described = ", ".join(
            f"{o.what} (line {o.line}){' before PostgreSQL 12' if o.before_12 else ''}" for o in found
        )
        if len(found) == count:
            warnings.append(
                f"migration {migration.name} runs outside a transaction ({described}): statement by statement, "
                "without a rollback of its own (an apply that fails restores the database)"
            )
        elif all(o.before_12 for o in found):
            warnings.append(
                f"migration {migration.name} mixes {described} with other statements: refused by the plan on "
                "PostgreSQL before 12; put it in a migration of its own"
            )
        else:
            warnings.append(
                f"migration {migration.name} mixes statements PostgreSQL refuses inside a transaction block "
                f"({described}) with other statements: every apply refuses it; put them in a migration of their own"
            )
    return warnings


def plan_transactions(ctx: Context, report: VerifyReport, pending: Sequence[str]) -> list[str]:
    """The plan's check of the ``pending`` migrations of ``report``'s patch on this server;
    returns the plan's warnings (migrations that run without a transaction).

    Raises:
        MigrationError: a migration mixes statements refused in a transaction block with others
            (one paragraph per the first such migration); nothing was changed.
        DatabaseError: the database cannot be queried.
    """
    from patchflow.history import patch_sql
    from patchflow.migrations import from_manifest

    assert ctx.database is not None
    migrations = [m for m in from_manifest(report.manifest) if m.name in set(pending)]
    contents = patch_sql(ctx, report)(migrations)
    version = ctx.database.server_version()
    warnings = []
    for migration in migrations:
        data = contents.get(migration.path)
        if data is None:
            continue
        mode = transaction_mode(data.decode("utf-8", errors="replace"), version)
        if mode.kind == "mixed":
            error = mixed_refusal(migration.name, migration.path, mode)
            raise MigrationError(
                error.message, f"{error.hint} Nothing was stopped or changed.", migration=migration.name
            )
        if mode.kind == "none":
            warnings.append(
                f"migration {migration.name} runs outside a transaction ({mode.describe()}): statement by statement, "
                "without lock_timeout; if it fails, the apply's rollback restores the database"
            )
    return warnings
