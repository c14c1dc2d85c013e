"""Snapshots of the database on its own server: what an apply with pending migrations copies inside
the stopped window instead of dumping it (issue 26).

:func:`create_snapshot` runs ``CREATE DATABASE <db>_snap_<backup stamp> TEMPLATE <db>`` (with
``STRATEGY FILE_COPY`` from PostgreSQL 15: a copy of the database's files, no serialisation) once
the other sessions on the live database are ended (a template copy needs it alone). The copy is
owned by the live database's owner and lies in its tablespace. What it is for:

* a failed apply, and ``rollback-patch`` while the snapshot exists, put it back by the rename swap
  a restore beside the live database ends with (:func:`restore_from_snapshot`): the live database
  is displaced and kept (``<db>_before_rollback_<stamp>``), the snapshot becomes the live one;
* the portable, proven ``pg_dump`` of the backup is taken from it once the new version is healthy
  (:func:`dump_snapshot`), outside the stopped window;
* once that dump is proven it is kept ``snapshot_keep_hours`` (a rollback in that time is a
  rename, not a restore), then dropped by the next apply or by ``prune-backups``
  (:func:`drop_expired`); a snapshot whose dump failed is kept as its backup's only copy of the
  database until its backup is pruned.

Where a snapshot is not possible (:func:`snapshot_problem`: ``database_snapshot = off``, a database
reached through ``docker compose exec``, a role that may not copy it) the apply dumps inside the
stopped window as before; the plan says which and why.

``.patchflow/snapshots.json`` records every snapshot *before* it is created, so patch-status lists
any a killed run left and its undo (``drop-snapshot``) or ``prune-backups`` drops it: a list of
:class:`SnapshotRecord`.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypedDict

from patchflow.backup import Backup
from patchflow.commands import postgres as pg
from patchflow.database import DISPLACED_MARK, Database, DumpInfo, derived_name
from patchflow.db_settings import copy_database_settings
from patchflow.errors import DatabaseError
from patchflow.lifecycle.journal import utc_now, write_json_atomic
from patchflow.paths import ProjectPaths

SNAPSHOT_MARK = "_snap_"
PENDING, PROVEN, FAILED = "pending", "proven", "failed"
_BACKUP_TAIL = re.compile(r"_(\d{8}T\d{6}Z_[0-9a-f]+)$")


class SnapshotRecord(TypedDict):
    """One snapshot in ``.patchflow/snapshots.json``: its ``name`` on the server, the live
    ``database`` it copies, the ``backup`` it belongs to, when it was ``recorded_at`` (before the
    copy) and ``created_at`` (the copy done; "" until then), its ``dump`` (``pending``, ``proven``
    or ``failed``) and why the dump failed (``dump_error``)."""

    name: str
    database: str
    backup: str
    recorded_at: str
    created_at: str
    dump: str
    dump_error: str


def snapshot_name(live: str, backup: str) -> str:
    """The snapshot of database ``live`` for backup ``backup``: ``<live>_snap_<the backup's UTC
    stamp and random suffix>`` (``pre-patch-v2.3.0_20250101T143022Z_3f9a1c`` gives
    ``<live>_snap_20250101T143022Z_3f9a1c``), within PostgreSQL's 63-byte names."""
    match = _BACKUP_TAIL.search(backup)
    tail = match.group(1) if match else hashlib.sha256(backup.encode()).hexdigest()[:12]
    return derived_name(live, SNAPSHOT_MARK, tail)


def snapshot_of(backup: Backup) -> str | None:
    """The snapshot ``backup`` records as its copy of the database (None: it has none)."""
    item = backup.data.get("snapshot")
    name = item.get("name") if isinstance(item, dict) else None
    return name if isinstance(name, str) and name else None


# -- the record -------------------------------------------------------------------------------------
def read_snapshots(paths: ProjectPaths) -> list[SnapshotRecord]:
    """The recorded snapshots, oldest first (empty when none or unreadable)."""
    try:
        data = json.loads(paths.snapshots.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(data, list):
        return []
    found: list[SnapshotRecord] = []
    for item in data:
        if isinstance(item, dict) and isinstance(item.get("name"), str) and item["name"]:
            found.append(
                {
                    "name": item["name"],
                    "database": str(item.get("database") or ""),
                    "backup": str(item.get("backup") or ""),
                    "recorded_at": str(item.get("recorded_at") or ""),
                    "created_at": str(item.get("created_at") or ""),
                    "dump": str(item.get("dump") or PENDING),
                    "dump_error": str(item.get("dump_error") or ""),
                }
            )
    return found


def _write(paths: ProjectPaths, items: list[SnapshotRecord]) -> None:
    write_json_atomic(paths.snapshots, items, mode=0o644)


def record_snapshot(paths: ProjectPaths, name: str, database: str, backup: str) -> None:
    """Record ``name`` (of ``database``, for ``backup``) as about to be created; a record of the
    same name is replaced.

    Raises:
        OSError: the record cannot be written (the snapshot must then not be made).
    """
    items = [item for item in read_snapshots(paths) if item["name"] != name]
    items.append(
        {
            "name": name,
            "database": database,
            "backup": backup,
            "recorded_at": utc_now(),
            "created_at": "",
            "dump": PENDING,
            "dump_error": "",
        }
    )
    _write(paths, items)


def update_snapshot(
    paths: ProjectPaths, name: str, *, created_at: str | None = None, dump: str | None = None, dump_error: str = ""
) -> None:
    """Set ``created_at`` and/or ``dump`` (with ``dump_error``) of the recorded snapshot ``name``
    (nothing when it is not recorded).

    Raises:
        OSError: the record cannot be written.
    """
    items = read_snapshots(paths)
    for item in items:
        if item["name"] == name:
            if created_at is not None:
                item["created_at"] = created_at
            if dump is not None:
                item["dump"], item["dump_error"] = dump, dump_error
    _write(paths, items)


def forget_snapshots(paths: ProjectPaths, names: set[str]) -> None:
    """Remove ``names`` from the record (dropped, or put in place of the live database).

    Raises:
        OSError: the record cannot be written.
    """
    items = read_snapshots(paths)
    if any(item["name"] in names for item in items):
        _write(paths, [item for item in items if item["name"] not in names])


def _epoch(text: str) -> float | None:
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def expires_at(record: SnapshotRecord, keep_hours: float) -> float | None:
    """When ``record`` may be dropped (epoch seconds): ``keep_hours`` after it was created, once its
    dump is proven; None while it is the only copy of its backup's database (dump pending or
    failed) or was never created."""
    created = _epoch(record["created_at"])
    if created is None or record["dump"] != PROVEN:
        return None
    return created + keep_hours * 3600


def expiry_reason(record: SnapshotRecord, keep_hours: float, backups: set[str], now: float) -> str:
    """Why ``record`` is to be dropped now ("" : it is kept): its backup is gone (``backups``: the
    names of the backup folders there are), or its dump is proven and ``keep_hours`` have passed."""
    if record["backup"] not in backups:
        return f"its backup {record['backup']} is gone"
    until = expires_at(record, keep_hours)
    if until is not None and until <= now:
        return f"its dump is proven and it was kept {keep_hours:g} h (snapshot_keep_hours)"
    return ""


# -- on the server ----------------------------------------------------------------------------------
def snapshot_problem(database: Database, setting: str = "auto") -> str:
    """Why the database cannot be copied by a snapshot ("": it can), with the role that copies
    (``database_admin_url`` when set): ``setting`` (``database_snapshot``) is ``off``, the database
    is reached through ``docker compose exec``, or the role may not create databases or does not
    own the live one (PostgreSQL lets only its owner copy a database that is not a template).

    Raises:
        DatabaseError: the role's rights cannot be read.
    """
    if setting == "off":
        return "database_snapshot = off"
    if database.admin.mode != "url":
        return (
            "the database is reached through docker compose exec, so the room a copy takes on its server cannot be "
            "checked"
        )
    props = database.properties(admin=True)
    role, live = props["role"], database.target.dbname
    if not (props["superuser"] or props["createdb"]):
        return f"role {role} may not create databases (no CREATEDB)"
    if not (props["superuser"] or props["owner_member"]):
        return f"role {role} does not own database {live} (only its owner may copy it)"
    return ""


def create_snapshot(
    database: Database, name: str, log: Callable[[str], None] = lambda line: None, attempts: int = 5
) -> None:
    """Copy the live database into ``name`` on its server (a snapshot of the same name is dropped
    first): ``CREATE DATABASE name OWNER <live's owner> TEMPLATE <live>``, ``STRATEGY FILE_COPY``
    from PostgreSQL 15. Every other session on the live database is ended before each of
    ``attempts`` (a copy needs the template alone).

    Raises:
        DatabaseError: the server refused (rights, room, sessions it could not end); no copy is left.
    """
    live = database.target.dbname
    props = database.properties(admin=True)
    strategy = " STRATEGY FILE_COPY" if (database.server_version(admin=True) or 0) >= 150000 else ""
    drop_snapshot(database, name)
    sql = (
        f"CREATE DATABASE {pg.quote_ident(name)} OWNER {pg.quote_ident(props['owner'])} "
        f"TEMPLATE {pg.quote_ident(live)}{strategy}"
    )
    for attempt in range(1, attempts + 1):
        ended = database.terminate_sessions(only_patchflow=False)
        if ended:
            log(f"   ended {ended} session(s) still open on {live}")
        try:
            database.execute(sql, database="postgres", admin=True, what="snapshot the database")
            return
        except DatabaseError as exc:
            if "being accessed by other users" not in exc.message or attempt == attempts:
                raise DatabaseError(
                    f"The snapshot {name} of {live} could not be made: {exc.message}", exc.hint
                ) from None
            time.sleep(0.2 * attempt)


def end_copies(database: Database, name: str, deadline: float = 30.0) -> int:
    """End the tool's server sessions still making the snapshot ``name`` (a ``CREATE DATABASE``
    whose ``psql`` was killed runs on in its backend, and would commit the copy after any drop) and
    wait until they are gone, at most ``deadline`` seconds. Returns how many were ended.

    Raises:
        DatabaseError: the server cannot be asked.
    """
    pattern = pg.quote_literal(f"%CREATE DATABASE {pg.quote_ident(name)} %")
    where = (
        "FROM pg_stat_activity WHERE application_name LIKE 'patchflow%' AND pid <> pg_backend_pid() "
        f"AND query ILIKE {pattern}"
    )
    rows = database.query(f"SELECT count(pg_terminate_backend(pid)) {where}", database="postgres", admin=True)
    ended = int(rows[0][0]) if rows and rows[0][0].isdigit() else 0
    until = time.monotonic() + deadline
    while ended and time.monotonic() < until:
        left = database.query(f"SELECT count(*) {where}", database="postgres", admin=True)
        if not left or left[0][0] == "0":
            break
        time.sleep(0.1)
    return ended


def drop_snapshot(database: Database, name: str) -> None:
    """Drop the snapshot ``name`` when it exists (its sessions ended: ``WITH (FORCE)``), after
    ending a copy into it still running on the server (:func:`end_copies`).

    Raises:
        DatabaseError: the server refused.
    """
    end_copies(database, name)
    database.execute(
        f"DROP DATABASE IF EXISTS {pg.quote_ident(name)} WITH (FORCE)",
        database="postgres",
        admin=True,
        what="drop the snapshot",
    )


def restore_from_snapshot(
    database: Database,
    name: str,
    stamp: str,
    log: Callable[[str], None] = lambda line: None,
    checkpoint: Callable[[str], None] = lambda point: None,
) -> str:
    """Put the snapshot ``name`` in place of the live database: the live database's settings and
    comment are given to it, then the names are swapped in one transaction (the swap of
    :meth:`Database.restore_beside`). Returns the name the displaced live database is kept under
    (``<live>_before_rollback_<stamp>``). Idempotent for one ``stamp``: after the swap a second call
    only returns the name (whether it happened is read from the server). ``checkpoint("snapshot-swap")``
    is called just before the swap (a test's kill hook).

    Raises:
        DatabaseError: the snapshot is gone, or the swap failed (the live database is unchanged).
    """
    live = database.target.dbname
    displaced = derived_name(live, DISPLACED_MARK, stamp)
    there = database.exists(name)
    if not there and database.exists(displaced):
        return displaced  # swapped already (an interrupted run is finished by running again)
    if not there:
        raise DatabaseError(
            f"The snapshot {name} of {live} is gone (dropped by hand?).",
            f"The live database {live} is unchanged; restore it from the backup's dump (rollback-patch).",
        )
    log(f"   putting the snapshot {name} back in place of {live}")
    copy_database_settings(database, live, name)
    checkpoint("snapshot-swap")
    database._swap(live, name, displaced)
    log(f"   database {live} is the snapshot again; the displaced one is kept as {displaced}")
    return displaced


def usable_snapshot(database: Database, paths: ProjectPaths, backup: Backup) -> str | None:
    """The snapshot a restore of ``backup`` can put back by a rename: recorded for it, created,
    and still on the server (None otherwise: the dump is restored instead).

    Raises:
        DatabaseError: the server cannot be asked.
    """
    name = snapshot_of(backup)
    if name is None:
        return None
    recorded = next((r for r in read_snapshots(paths) if r["name"] == name and r["backup"] == backup.name), None)
    if recorded is None or not recorded["created_at"]:
        return None
    return name if database.exists(name) else None


def dump_snapshot(database: Database, name: str, path: Path, progress: Callable[[int], None] | None = None) -> DumpInfo:
    """Dump the snapshot ``name`` to ``path`` and prove it (:meth:`Database.dump`); the recorded
    properties name the live database it copies.

    Raises:
        DatabaseError: the dump failed or did not prove (the file is removed).
    """
    info = database.beside(name).dump(path, progress=progress)
    info.properties["name"] = database.target.dbname
    return info


def _backup_folders(paths: ProjectPaths) -> set[str]:
    try:
        return {child.name for child in paths.backups.iterdir() if child.is_dir()}
    except OSError:
        return set()


def drop_expired(
    database: Database | None,
    paths: ProjectPaths,
    keep_hours: float,
    *,
    log: Callable[[str], None] = lambda line: None,
    now: float | None = None,
    dry_run: bool = False,
    keep: frozenset[str] = frozenset(),
) -> list[str]:
    """Drop the recorded snapshots :func:`expiry_reason` gives a reason for (with ``database``;
    none without one) and forget them; returns their names (``dry_run``: only those that would go).
    Those named in ``keep`` stay (the snapshot an interrupted run's journal names: its recovery
    drops or uses it). Call with the install's lock held.

    Raises:
        DatabaseError: a snapshot could not be dropped (those dropped before it are forgotten).
    """
    if database is None:
        return []
    backups = _backup_folders(paths)
    moment = time.time() if now is None else now
    dropped: list[str] = []
    try:
        for record in read_snapshots(paths):
            reason = expiry_reason(record, keep_hours, backups, moment)
            if not reason or record["name"] in keep:
                continue
            if not dry_run:
                drop_snapshot(database, record["name"])
                log(f"   dropped the snapshot {record['name']}: {reason}")
            dropped.append(record["name"])
    finally:
        if dropped and not dry_run:
            forget_snapshots(paths, set(dropped))
    return dropped
