"""One database, several app servers (issue 24): who else uses the database, and what they wrote.

* :func:`database_identity`: which database this install uses, the same answer on every host that
  uses it (the server's ``system_identifier`` from ``pg_control_system()`` and start time, plus the
  database's name): ``deploy`` groups hosts by it.
* :func:`other_clients`: the sessions on the live database that are neither patchflow's nor this
  process's, once this host's application services are stopped: another host's app, a worker
  elsewhere, a pooler, somebody's ``psql``. An apply that would migrate, or a rollback that would
  restore, a database with such clients refuses (:func:`refuse_other_clients`) unless told the
  clients are known and may be ended (``--others-stopped``; ``deploy``'s group window stops them instead): their
  rows would be moved out of the live database by a restore, and their code would run on a
  schema it does not know.
* :func:`record_group_window`, :func:`read_group_window`, :func:`clear_group_window`: the record
  ``.patchflow/group-window.json`` (``version``, ``first``: the host that migrates, ``hosts``,
  ``stopped_at`` UTC, ``by``) that deploy's group window leaves on a host it stopped, until the
  host's next apply or rollback commits or its services are started again: a deploy killed
  mid-window leaves it, ``patch-status --hosts`` shows it, and deploy again finishes the group.
* :func:`write_counters` and :func:`writes_since`: the rows inserted, updated and deleted per table
  (PostgreSQL's cumulative statistics, ``pg_stat_user_tables``), so a restore can name the tables
  whose rows written since the new version started are kept only in the displaced database.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from patchflow.database import Database
from patchflow.errors import DatabaseError, PreconditionError
from patchflow.paths import ProjectPaths

if TYPE_CHECKING:
    from patchflow.context import Context
    from patchflow.lifecycle.journal import Journal

#: seconds the sessions of this host's stopped services have to close before they count as others'
CLIENTS_GONE_SECONDS = 5.0


@dataclass(frozen=True)
class Client:
    """A session on the live database: its server pid, client address (``local`` for a unix
    socket), application name, role and when it connected (the server's time, text)."""

    pid: int
    address: str
    application: str
    role: str
    since: str

    def describe(self) -> str:
        """``pid 123 from 10.0.0.7 (app "api", role app) since 2026-12-07 21:00:01``."""
        app = f'app "{self.application}", ' if self.application else ""
        since = f" since {self.since[:19]}" if self.since else ""
        return f"pid {self.pid} from {self.address} ({app}role {self.role}){since}"


def database_identity(database: Database) -> str:
    """``<system_identifier>-<server start, epoch seconds>/<database name>``: the same text on every
    host whose settings name this database, whatever host name, port, socket or role each uses to
    reach it. The start time tells apart servers cloned from one data folder (a VM image, a copied
    volume: the same ``system_identifier``); a restart between two hosts' readings only splits a
    group, and then the refusal of other clients still guards each host.

    Raises:
        DatabaseError: the server cannot be asked.
    """
    rows = database.query(
        "SELECT (SELECT system_identifier FROM pg_control_system()), "
        "floor(extract(epoch FROM pg_postmaster_start_time()))::bigint, current_database()"
    )
    if not rows or len(rows[0]) < 3 or not rows[0][0]:
        raise DatabaseError("The database did not say which server it is on (pg_control_system()).")
    return f"{rows[0][0]}-{rows[0][1]}/{rows[0][2]}"


def other_clients(database: Database) -> list[Client]:
    """The client sessions on the live database other than patchflow's (``application_name``
    patchflow*) and this query's own, oldest first.

    Raises:
        DatabaseError: the server cannot be asked.
    """
    # a role without pg_read_all_stats sees another role's session with backend_type, client_addr and
    # backend_start NULL (its name and application_name stay visible): such a session counts too
    rows = database.query(
        "SELECT pid, coalesce(host(client_addr), CASE WHEN backend_type IS NULL THEN 'an address hidden from "
        "this role' ELSE 'local' END), coalesce(application_name, ''), coalesce(usename, ''), "
        "coalesce(backend_start::text, '') FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND (backend_type = 'client backend' OR (backend_type IS NULL AND usename IS "
        "NOT NULL)) AND coalesce(application_name, '') NOT LIKE 'patchflow%' ORDER BY backend_start NULLS LAST, pid",
        admin=True,
    )
    return [Client(int(r[0]), r[1], r[2], r[3], r[4]) for r in rows if r and r[0].isdigit()]


def refuse_other_clients(
    database: Database,
    doing: str,
    *,
    wait: float = CLIENTS_GONE_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Wait up to ``wait`` seconds for the sessions of this host's just-stopped services to close,
    then refuse when clients remain on the database: it is used from elsewhere.

    Args:
        database: the live database.
        doing: what would be done to it ("migrate", "restore"), for the message.

    Raises:
        PreconditionError: other clients remain (the message names them and the two ways on).
        DatabaseError: the server cannot be asked.
    """
    until = time.monotonic() + wait
    clients = other_clients(database)
    while clients and time.monotonic() < until:
        sleep(0.2)
        clients = other_clients(database)
    if not clients:
        return
    more = f"; and {len(clients) - 5} more" if len(clients) > 5 else ""
    shown = "; ".join(c.describe() for c in clients[:5]) + more
    raise PreconditionError(
        f"Refusing to {doing} database {database.target.dbname}: {len(clients)} other client session(s) are still "
        f"connected after this host's services stopped ({shown}). Another app server, worker or program uses this "
        "database; migrating or restoring it under them would run their code on a schema it does not know or move "
        "their rows out of the live database.",
        "Deploy to every host that uses this database with `inv deploy` (one stopped window for the group: all "
        "stopped, migrated once, started), or stop those clients and run again with --others-stopped (their "
        "sessions are then ended).",
    )


def restore_alone(ctx: Context, journal: Journal, *, others_stopped: bool) -> None:
    """A rollback's check once its services are stopped: when it is to restore the database
    (``restore_database`` in ``journal``'s notes) and ``others_stopped`` is not given, other
    clients refuse it (:func:`refuse_other_clients`); the services are then started again and the
    journal cleared before the refusal is raised, so nothing has changed. A recovery finishing a
    rollback that a killed run started (its journal written by another process) is not refused.

    Raises:
        PreconditionError: other clients use the database (nothing changed).
        DatabaseError: the server cannot be asked.
    """
    from patchflow.services import start_with_retries

    if not journal.notes.get("restore_database") or ctx.database is None or others_stopped:
        return
    if journal.pid != os.getpid():  # a recovery finishing a rollback a killed run decided: never refused midway
        return
    try:
        refuse_other_clients(ctx.database, "restore")
    except PreconditionError:
        start_with_retries(ctx.services, ctx.settings.start_retries)
        journal.clear()
        raise


def record_group_window(paths: ProjectPaths, version: str, first: str, hosts: Sequence[str], by: str) -> None:
    """Write the group-window record (see the module docstring).

    Raises:
        OSError: it cannot be written.
    """
    from patchflow.lifecycle.journal import utc_now, write_json_atomic

    record = {"version": version, "first": first, "hosts": list(hosts), "stopped_at": utc_now(), "by": by}
    write_json_atomic(paths.group_window, record, mode=0o644)


def read_group_window(paths: ProjectPaths) -> dict[str, Any] | None:
    """The group-window record, None when there is none (or it cannot be read)."""
    try:
        data = json.loads(paths.group_window.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("version"), str) or not isinstance(data.get("first"), str):
        return None
    return data


def clear_group_window(paths: ProjectPaths) -> None:
    """Remove the group-window record (nothing when there is none)."""
    try:
        paths.group_window.unlink()
    except FileNotFoundError:
        pass


def write_counters(database: Database, name: str | None = None) -> dict[str, list[int]]:
    """``schema.table -> [inserted, updated, deleted]`` rows since the statistics began, for every
    user table of the database (``name``: another on the same server) (``pg_stat_user_tables``; a
    session's counts arrive when it ends or reports).

    Raises:
        DatabaseError: the server cannot be asked.
    """
    rows = database.query(
        "SELECT schemaname || '.' || relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables ORDER BY 1",
        database=name,
        admin=True,
    )
    return {r[0]: [int(v or 0) for v in r[1:4]] for r in rows if len(r) >= 4}


def writes_since(before: dict[str, list[int]], after: dict[str, list[int]]) -> list[str]:
    """Lines ``table: 3 inserted, 1 updated, 0 deleted`` for each table whose counters grew from
    ``before`` to ``after`` (a table new since ``before`` counts from zero); counters that went
    down (statistics reset) are shown as unknown."""
    lines = []
    for table, now in sorted(after.items()):
        then = before.get(table, [0, 0, 0])
        grew = [n - t for n, t in zip(now, then, strict=False)]
        if any(g < 0 for g in grew):
            lines.append(f"{table}: unknown (its statistics were reset)")
        elif any(grew):
            lines.append(f"{table}: {grew[0]} inserted, {grew[1]} updated, {grew[2]} deleted")
    return lines
