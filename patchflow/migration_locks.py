"""Lock-aware migrations: lock_timeout with bounded retries, and the sessions that block them.

A migration's ``ALTER TABLE`` waits for every transaction holding a lock on its table, and every
later reader of the table queues behind the waiting ``ALTER``: one forgotten ``idle in
transaction`` session stalls the application. So the builtin runner runs each migration with
``SET lock_timeout`` (``migration_lock_timeout`` seconds): a statement that cannot get its lock in
that time fails at once, its transaction rolls back, and the migration is tried again after a
backoff (1, 2, 4... seconds), at most ``migration_lock_retries`` more times and never past
``migrate_timeout``. While a migration runs, a watcher reads ``pg_locks`` and
``pg_stat_activity`` (every ``lock_timeout / 4`` seconds, at most 0.5) for the lock it waits for
and the sessions ``pg_blocking_pids`` names; when the runner gives up, the error names the table,
the lock mode and those sessions (pid, application, state, transaction age, start of query).

Before the stop, :func:`refuse_lock_blockers` reads the pending migrations with PostgreSQL's
parser (pglast), works out the lock each statement takes on each table it names (PostgreSQL's
documented modes: ``ALTER TABLE`` ACCESS EXCLUSIVE, ``CREATE INDEX`` SHARE, ``... CONCURRENTLY``
SHARE UPDATE EXCLUSIVE, a foreign key SHARE ROW EXCLUSIVE on both tables, DML ROW EXCLUSIVE,
reads ACCESS SHARE...) and refuses the apply when a transaction older than the lock timeout holds
a lock that conflicts with one of them (PostgreSQL's conflict table), naming it.

The lock timeout is PostgreSQL's, so the error text matched is the server's English
``canceling statement due to lock timeout`` (SQLSTATE 55P03).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pglast import ast, parse_sql
from pglast.enums import AlterTableType, ConstrType, ObjectType
from pglast.parser import ParseError, scan

from patchflow.commands import postgres as pg
from patchflow.errors import DatabaseError, MigrationError
from patchflow.pg_target import MIGRATE_APP_NAME

if TYPE_CHECKING:
    from patchflow.context import Context
    from patchflow.database import Database
    from patchflow.migrations import Migration
    from patchflow.verify import VerifyReport

LOCK_TIMEOUT_TEXT = "canceling statement due to lock timeout"
#: PostgreSQL's table-level lock modes, weakest first (pg_locks.mode spelling).
MODES = (
    "AccessShareLock",
    "RowShareLock",
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
)
#: Which held modes conflict with a requested one (PostgreSQL's "Conflicting Lock Modes" table).
CONFLICTS: dict[str, frozenset[str]] = {
    "AccessShareLock": frozenset(MODES[7:]),
    "RowShareLock": frozenset(MODES[6:]),
    "RowExclusiveLock": frozenset(MODES[4:]),
    "ShareUpdateExclusiveLock": frozenset(MODES[3:]),
    "ShareLock": frozenset({MODES[2], MODES[3], *MODES[5:]}),
    "ShareRowExclusiveLock": frozenset(MODES[2:]),
    "ExclusiveLock": frozenset(MODES[1:]),
    "AccessExclusiveLock": frozenset(MODES),
}


def words(mode: str) -> str:
    """``AccessExclusiveLock`` -> ``ACCESS EXCLUSIVE`` (as PostgreSQL's documentation names it)."""
    name = mode.removesuffix("Lock")
    return "".join(f" {c}" if c.isupper() else c for c in name).strip().upper()


# -- what a migration locks -------------------------------------------------------------------------


@dataclass(frozen=True)
class Touch:
    """A table a statement locks: ``schema``, ``name``, the ``mode`` it takes (pg_locks spelling)
    and the 1-based ``line`` where the statement starts."""

    schema: str
    name: str
    mode: str
    line: int

    @property
    def qualified(self) -> str:
        return f"{pg.quote_ident(self.schema)}.{pg.quote_ident(self.name)}"


def _range_vars(node: Any) -> Iterator[ast.RangeVar]:
    """Every RangeVar under ``node`` (pglast nodes, tuples of them)."""
    if isinstance(node, ast.RangeVar):
        yield node
    if isinstance(node, ast.Node):
        for name in node:
            yield from _range_vars(getattr(node, name))
    elif isinstance(node, (tuple, list)):
        for item in node:
            yield from _range_vars(item)


def _alter_mode(node: ast.AlterTableStmt) -> str:
    cmds = [c for c in node.cmds or () if isinstance(c, ast.AlterTableCmd)]
    if cmds and all(c.subtype == AlterTableType.AT_ValidateConstraint for c in cmds):
        return "ShareUpdateExclusiveLock"
    foreign = [
        c
        for c in cmds
        if c.subtype == AlterTableType.AT_AddConstraint
        and isinstance(c.def_, ast.Constraint)
        and c.def_.contype == ConstrType.CONSTR_FOREIGN
    ]
    if cmds and len(foreign) == len(cmds):
        return "ShareRowExclusiveLock"
    return "AccessExclusiveLock"


def _statement_modes(node: ast.Node) -> list[tuple[ast.RangeVar, str]]:
    """The tables ``node`` names and the lock it takes on each (the strongest lock a statement of
    its kind takes; a table it only reads: ACCESS SHARE)."""
    found: list[tuple[ast.RangeVar, str]] = []
    target: ast.RangeVar | None = None
    mode = "AccessShareLock"
    if isinstance(node, ast.AlterTableStmt) and node.objtype in (ObjectType.OBJECT_TABLE, ObjectType.OBJECT_MATVIEW):
        target, mode = node.relation, _alter_mode(node)
    elif isinstance(node, ast.IndexStmt):
        target, mode = node.relation, "ShareUpdateExclusiveLock" if node.concurrent else "ShareLock"
    elif isinstance(node, (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)):
        target, mode = node.relation, "RowExclusiveLock"
    elif isinstance(node, ast.CreateTrigStmt):
        target, mode = node.relation, "ShareRowExclusiveLock"
    elif isinstance(node, (ast.CreatePolicyStmt, ast.RuleStmt)):
        target = node.table if isinstance(node, ast.CreatePolicyStmt) else node.relation
        mode = "AccessExclusiveLock"
    elif isinstance(node, ast.RenameStmt) and node.relation is not None:
        target, mode = node.relation, "AccessExclusiveLock"
    elif isinstance(node, ast.TruncateStmt):
        found += [(r, "AccessExclusiveLock") for r in node.relations or () if isinstance(r, ast.RangeVar)]
    elif isinstance(node, ast.LockStmt):
        lock = MODES[node.mode - 1] if node.mode and 1 <= node.mode <= len(MODES) else "AccessExclusiveLock"
        found += [(r, lock) for r in node.relations or () if isinstance(r, ast.RangeVar)]
    elif isinstance(node, ast.DropStmt) and node.removeType in (
        ObjectType.OBJECT_TABLE,
        ObjectType.OBJECT_VIEW,
        ObjectType.OBJECT_MATVIEW,
        ObjectType.OBJECT_SEQUENCE,
        ObjectType.OBJECT_FOREIGN_TABLE,
    ):
        for obj in node.objects or ():
            names = [n.sval or "" for n in obj if isinstance(n, ast.String)] if isinstance(obj, tuple) else []
            if names:
                var = ast.RangeVar(relname=names[-1], schemaname=names[-2] if len(names) > 1 else None, inh=True)
                found.append((var, "AccessExclusiveLock"))
    if target is not None:
        found.append((target, mode))
    for var in _range_vars(node):
        if var is target:
            continue
        # the table a foreign key references: SHARE ROW EXCLUSIVE; anything else named is read
        referenced = isinstance(node, (ast.AlterTableStmt, ast.CreateStmt)) and any(
            var is getattr(c, "pktable", None) for c in _constraints(node)
        )
        found.append((var, "ShareRowExclusiveLock" if referenced else "AccessShareLock"))
    return found


def _constraints(node: ast.Node) -> Iterator[ast.Constraint]:
    if isinstance(node, ast.AlterTableStmt):
        for cmd in node.cmds or ():
            if isinstance(cmd, ast.AlterTableCmd) and isinstance(cmd.def_, ast.Constraint):
                yield cmd.def_
            elif isinstance(cmd, ast.AlterTableCmd) and isinstance(cmd.def_, ast.ColumnDef):
                yield from (c for c in cmd.def_.constraints or () if isinstance(c, ast.Constraint))
    elif isinstance(node, ast.CreateStmt):
        for element in node.tableElts or ():
            if isinstance(element, ast.Constraint):
                yield element
            elif isinstance(element, ast.ColumnDef):
                yield from (c for c in element.constraints or () if isinstance(c, ast.Constraint))


def locked_tables(sql: str, default_schema: str = "public") -> list[Touch]:
    """The tables the top-level statements of ``sql`` lock, with the mode and line of each (a
    table named twice by one statement: its strongest mode). SQL that does not parse locks
    nothing that can be known (the lint and the history check report it).
    """
    try:
        statements = parse_sql(sql)
        # where each statement starts: its first token (its location may include comments before it)
        starts = [t.start for t in scan(sql) if t.name not in ("SQL_COMMENT", "C_COMMENT")]
    except ParseError:
        return []
    touches: list[Touch] = []
    for raw in statements:
        if raw.stmt is None:
            continue
        first = next((s for s in starts if s >= (raw.stmt_location or 0)), raw.stmt_location or 0)
        line = sql.count("\n", 0, first) + 1
        strongest: dict[tuple[str, str], str] = {}
        for var, mode in _statement_modes(raw.stmt):
            if not var.relname:
                continue
            key = (var.schemaname or default_schema, var.relname)
            if key not in strongest or MODES.index(mode) > MODES.index(strongest[key]):
                strongest[key] = mode
        touches += [Touch(schema, name, mode, line) for (schema, name), mode in strongest.items()]
    return touches


# -- who blocks -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    """A server session holding a lock: ``pid``, ``application`` name, ``state`` (``idle in
    transaction``...), ``age`` seconds its transaction has been open, ``query`` its last query
    (start), ``mode`` the lock it holds (pg_locks spelling; "" when unknown), ``table`` it holds it
    on."""

    pid: int
    application: str
    state: str
    age: float
    query: str
    mode: str = ""
    table: str = ""

    def describe(self) -> str:
        held = f", holding {words(self.mode)}" if self.mode else ""
        on = f" on {self.table}" if self.table and self.mode else ""
        query = " ".join(self.query.split())
        return (
            f"pid {self.pid} ({self.application or 'no application_name'}, {self.state or 'state unknown'}, "
            f"transaction open {self.age:.0f} s{held}{on}, query: {query[:80] or 'unknown'})"
        )


def _session_json(a: str, extra: str = "") -> str:
    """SQL building a session's JSON object from ``pg_stat_activity`` aliased ``a`` (``extra``:
    more ``'key', value`` pairs)."""
    return (
        f"jsonb_build_object('pid', {a}.pid, 'app', coalesce({a}.application_name, ''), "
        f"'state', coalesce({a}.state, ''), 'age', coalesce(extract(epoch FROM now() - {a}.xact_start), 0), "
        f"'query', left(coalesce({a}.query, ''), 200){extra})"
    )


def _session(item: Mapping[str, Any], mode: str = "", table: str = "") -> Session:
    return Session(
        int(item.get("pid", 0)),
        str(item.get("app", "")),
        str(item.get("state", "")),
        float(item.get("age", 0) or 0),
        str(item.get("query", "")),
        mode,
        table,
    )


@dataclass(frozen=True)
class Wait:
    """What the migration waited for when last seen: ``table`` (or the lock type when it is not a
    table's), the ``mode`` requested and the ``blockers``."""

    table: str
    mode: str
    blockers: tuple[Session, ...] = ()


WAIT_SQL = (
    "SELECT coalesce(jsonb_agg(jsonb_build_object('table', coalesce(l.relation::regclass::text, l.locktype), "
    "'mode', l.mode, 'blockers', (SELECT coalesce(jsonb_agg(" + _session_json("b") + "), '[]'::jsonb) "
    "FROM pg_stat_activity b WHERE b.pid = ANY (pg_blocking_pids(a.pid))))), '[]'::jsonb)::text "
    "FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid AND NOT l.granted "
    f"WHERE a.application_name = '{MIGRATE_APP_NAME}' AND a.datname = current_database() AND a.pid <> pg_backend_pid()"
)


def _one_json(rows: list[list[str]]) -> Any:
    return json.loads("|".join(rows[0]) if rows else "[]")


def waiting_now(database: Database) -> Wait | None:
    """The lock the migration's session waits for now (None when it waits for none).

    Raises:
        DatabaseError: the database cannot be queried.
    """
    for item in _one_json(database.query(WAIT_SQL)):
        blockers = tuple(_session(b) for b in item.get("blockers") or [])
        return Wait(str(item.get("table", "")), str(item.get("mode", "")), blockers)
    return None


class Watcher:
    """Reads :func:`waiting_now` every ``interval`` seconds in a thread while a migration runs;
    ``last`` is the last wait seen (None: none seen). Use as a context manager."""

    def __init__(self, database: Database, interval: float) -> None:
        self.database = database
        self.interval = interval
        self.last: Wait | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="patchflow-lock-watcher", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                seen = waiting_now(self.database)
            except DatabaseError:
                continue
            if seen is not None:
                self.last = seen

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@dataclass(frozen=True)
class LockPolicy:
    """``timeout`` seconds of ``lock_timeout`` per statement (0: none), ``retries`` more attempts
    after the first, within ``deadline`` seconds in all."""

    timeout: float
    retries: int
    deadline: float

    def set_sql(self) -> str:
        """The statement setting the lock timeout for the session (empty when 0)."""
        if self.timeout <= 0:
            return ""
        return f"SET lock_timeout = '{max(1, round(self.timeout * 1000))}ms';"


class LockWaitError(MigrationError):
    """The migration gave up waiting for a lock: ``attempts`` made, the ``wait`` last seen."""

    def __init__(self, message: str, hint: str, *, migration: str, attempts: int, wait: Wait | None) -> None:
        super().__init__(message, hint, migration=migration)
        self.attempts = attempts
        self.wait = wait


def is_lock_timeout(message: str) -> bool:
    """True when PostgreSQL's error says a statement's lock timeout expired (SQLSTATE 55P03)."""
    return LOCK_TIMEOUT_TEXT in message


def describe_wait(wait: Wait | None, where: str) -> str:
    """``<where> waited for <MODE> on <table>, held by <sessions>`` (or what is known of it)."""
    if wait is None:
        return f"{where} waited for a lock (the watcher did not see which: the wait was shorter than its interval)"
    holders = "; ".join(b.describe() for b in wait.blockers) or "sessions patchflow may not see (another role)"
    return f"{where} waited for {words(wait.mode)} on {wait.table}, held by {holders}"


def run_with_lock_retries(
    database: Database,
    attempt: Callable[[float], None],
    policy: LockPolicy,
    *,
    migration: str,
    where: Callable[[str], str],
    log: Callable[[str], None] = lambda line: None,
) -> None:
    """Call ``attempt(timeout_seconds)`` (one run of a migration in its transaction) until it does
    not fail on the lock timeout, at most ``policy.retries`` more times, waiting 1, 2, 4... s
    between, all within ``policy.deadline`` seconds. ``where(error)`` names the statement of an
    error (file and line).

    Raises:
        LockWaitError: every attempt ran out of lock time, or the deadline came first (names the
            table, the lock mode and the blocking sessions seen).
        DatabaseError: an attempt failed for another reason (as ``attempt`` raised it), or ran
            past the deadline (``timed out``).
    """
    start = time.monotonic()
    waits: list[Wait | None] = []
    interval = max(0.05, min(0.5, policy.timeout / 4)) if policy.timeout > 0 else 0.5
    number = 0
    last_error = ""
    while True:
        number += 1
        left = policy.deadline - (time.monotonic() - start)
        try:
            with Watcher(database, interval) as watcher:
                attempt(max(1.0, left))
            return
        except DatabaseError as exc:
            if not is_lock_timeout(exc.message):
                raise
            waits.append(watcher.last)
            last_error = exc.message
        pause = float(2 ** (number - 1))
        left = policy.deadline - (time.monotonic() - start)
        if number > policy.retries or left < pause + policy.timeout:
            break
        log(
            f"   {migration}: lock not granted within {policy.timeout:g} s; "
            f"attempt {number + 1} of {policy.retries + 1} in {pause:g} s"
        )
        time.sleep(pause)
    seen = next((w for w in reversed(waits) if w is not None), None)
    elapsed = time.monotonic() - start
    raise LockWaitError(
        f"Migration {migration} could not get its locks: {number} attempt(s) in {elapsed:.0f} s each gave up after "
        f"lock_timeout ({policy.timeout:g} s): {describe_wait(seen, where(last_error))}. Nothing of it was applied.",
        "End or finish those sessions (SELECT pg_terminate_backend(pid) as a role that may), or apply when they "
        "are gone; migration_lock_timeout and migration_lock_retries set how long the migration waits. "
        "The patch is rolled back.",
        migration=migration,
        attempts=number,
        wait=seen,
    )


# -- the plan's check -------------------------------------------------------------------------------


def strongest(touches: Sequence[Touch]) -> dict[str, str]:
    """The strongest mode taken on each table of ``touches`` (keys: quoted qualified names)."""
    wanted: dict[str, str] = {}
    for touch in touches:
        current = wanted.get(touch.qualified)
        if current is None or MODES.index(touch.mode) > MODES.index(current):
            wanted[touch.qualified] = touch.mode
    return wanted


def old_holders(database: Database, touches: Sequence[Touch], older_than: float) -> list[Session]:
    """Sessions (not this one, nor an autovacuum worker, which yields its lock) whose transaction
    is older than ``older_than`` seconds and that hold a lock conflicting with the mode a migration
    takes on one of ``touches``' tables (each session and table once, in pid order).

    Raises:
        DatabaseError: the database cannot be queried.
    """
    wanted = strongest(touches)
    if not wanted:
        return []
    values = ", ".join(f"({pg.quote_literal(name)})" for name in wanted)
    rows = database.query(
        "SELECT coalesce(jsonb_agg(" + _session_json("a", ", 'mode', l.mode, 'want', w.name") + " "
        "ORDER BY a.pid, w.name), '[]'::jsonb)::text "
        f"FROM (VALUES {values}) AS w(name) JOIN pg_locks l ON l.granted AND l.relation = to_regclass(w.name) "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "JOIN pg_stat_activity a ON a.pid = l.pid "
        # an autovacuum worker gives its lock up to a DDL that waits for it (it cancels itself)
        "WHERE a.pid <> pg_backend_pid() AND a.backend_type IS DISTINCT FROM 'autovacuum worker' "
        f"AND a.xact_start < now() - make_interval(secs => {older_than:.3f})"
    )
    found: dict[tuple[int, str], Session] = {}
    for item in _one_json(rows):
        table, mode = str(item.get("want", "")), str(item.get("mode", ""))
        if mode in CONFLICTS.get(wanted.get(table, ""), frozenset()):
            key = (int(item.get("pid", 0)), table)
            if key not in found or MODES.index(mode) > MODES.index(found[key].mode):
                found[key] = _session(item, mode, table)
    return list(found.values())


def refuse_lock_blockers(ctx: Context, report: VerifyReport, pending: Sequence[str]) -> None:
    """The plan's check (builtin runner or not): refuse while a transaction older than
    ``migration_lock_timeout`` (at least 1 s) holds a lock conflicting with what the ``pending``
    migrations of ``report``'s patch take, after waiting up to ``migration_blocker_wait`` seconds
    for such transactions to end (polled every second, said on the log).

    Raises:
        MigrationError: names each such session and the table; nothing was changed.
        DatabaseError: the database cannot be queried.
    """
    from patchflow.history import patch_sql
    from patchflow.migrations import from_manifest

    assert ctx.database is not None
    migrations: list[Migration] = [m for m in from_manifest(report.manifest) if m.name in set(pending)]
    contents = patch_sql(ctx, report)(migrations)
    touches: list[Touch] = []
    for migration in migrations:
        data = contents.get(migration.path)
        if data is not None:
            touches += locked_tables(data.decode("utf-8", errors="replace"), ctx.database.target.schema)
    older = max(1.0, float(ctx.settings.migration_lock_timeout))
    holders = old_holders(ctx.database, touches, older)
    wait = float(ctx.settings.migration_blocker_wait)
    if holders and wait > 0:
        pids = ", ".join(str(h.pid) for h in holders)
        ctx.log(f"   waiting up to {wait:g} s for old transactions holding locks the migrations need (pid {pids})")
        started = time.monotonic()
        while holders and time.monotonic() - started < wait:
            time.sleep(min(1.0, max(0.05, wait - (time.monotonic() - started))))
            holders = old_holders(ctx.database, touches, older)
        if not holders:
            ctx.log(f"   they ended after {time.monotonic() - started:.0f} s")
    if not holders:
        return
    needs = strongest(touches)
    listed = "; ".join(
        f"{h.describe()}, which conflicts with the {words(needs.get(h.table, h.mode))} the migrations take"
        for h in holders[:6]
    )
    more = f" (and {len(holders) - 6} more)" if len(holders) > 6 else ""
    raise MigrationError(
        f"{len(holders)} transaction(s) older than the lock timeout ({older:g} s) hold locks on tables the pending "
        f"migrations change: {listed}{more}. The migrations would wait for them after the services stopped.",
        "Finish or end those sessions (SELECT pg_terminate_backend(pid)), then apply again; migration_blocker_wait "
        "makes the plan wait for them. Nothing was stopped or changed.",
    )
