"""What patch-status says about runs: one running now or interrupted, which apply installed the
installed version, which applies were rolled back, the databases restores displaced and the
snapshots applies keep.

* **Running or interrupted** (:func:`run_state`): a journal means an apply or rollback has not
  finished. Whether it is *running* or was *interrupted* is the install's lock: its holder holds
  the OS lock exactly as long as its process lives (also while it is stopped by SIGSTOP or
  Ctrl+Z: then it is shown as paused). Only a journal whose lock is free (stale, or no holder
  record) is an interrupted run, left by a killed process; what lies in the state folder while a
  run holds the lock is that run's, not left by a killed one. The journal and the lock are read
  again until both belong to the same instant (a run ending between the two reads is not
  reported as killed).
* **The apply that installed the version** (:func:`installing_apply`): the successful apply
  whose backup is the one ``.patchflow/installed.json`` records (a rollback puts back the record
  of the apply it returns to), never an apply that was rolled back since.
* **Rolled back** (:func:`annotate_history`): every apply record of the history gets
  ``rolled_back``: ``{"by", "at"}`` when an automatic rollback, a recovery or a later
  ``rollback-patch`` (matched by the backup it restored) undid it, else None.
* **Displaced databases and snapshots** (:func:`database_report`): the records of
  :mod:`patchflow.displaced` and :mod:`patchflow.snapshot`, with each database's age (a snapshot's
  dump state and expiry too) and, when the database server answers within a short timeout,
  whether it still exists and its size.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from patchflow.config import Settings
from patchflow.displaced import read_displaced
from patchflow.errors import PatchflowError
from patchflow.installed import InstalledRecord
from patchflow.lifecycle.journal import Journal
from patchflow.lock import lock_status, pid_alive
from patchflow.paths import ProjectPaths
from patchflow.snapshot import expires_at, read_snapshots
from patchflow.status_schema import (
    DisplacedDatabase,
    HistoryItem,
    InterruptedRun,
    LockInfo,
    RunningRun,
    SnapshotItem,
)

LIVE_LOCK_STATES = ("held", "held-too-long")
READ_ATTEMPTS = 5


def _timestamp(stamp: Any) -> float | None:
    """Seconds since the epoch of a UTC stamp (``...Z``, with or without microseconds)."""
    text = str(stamp or "")
    for layout in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.strptime(text, layout).replace(tzinfo=UTC).timestamp()
        except ValueError:
            continue
    return None


def paused(pid: int) -> bool:
    """True when process ``pid`` is stopped (SIGSTOP, Ctrl+Z: state ``T`` in /proc)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except (OSError, IndexError):
        return False


@dataclass
class RunState:
    """What the journal and the lock say together (see the module docstring)."""

    journal: Journal | None
    damaged: str | None
    lock: LockInfo | None
    running: RunningRun | None
    interrupted: InterruptedRun | None


Loaded = tuple[Journal | None, PatchflowError | None]


def _load(paths: ProjectPaths) -> Loaded:
    try:
        return Journal.load(paths.journal), None
    except PatchflowError as exc:
        return None, exc


def _same(a: Loaded, b: Loaded) -> bool:
    (ja, da), (jb, db) = a, b
    if ja is None or jb is None:
        return ja is None and jb is None and (da is None) == (db is None)
    return ja.run_id == jb.run_id and ja.steps == jb.steps and ja.phase == jb.phase


def run_state(paths: ProjectPaths, settings: Settings) -> RunState:
    """Read the journal and the lock consistently and tell a running run from an interrupted one."""
    first = _load(paths)
    lock: LockInfo | None = None
    for _ in range(READ_ATTEMPTS):
        lock = _lock_info(lock_status(paths.lock, paths.lock_info, settings.lock_stale_seconds))
        again = _load(paths)
        if _same(first, again):
            break
        first = again
    journal, error = first
    damaged = f"{error.message} {error.hint}" if error is not None else None
    if lock is not None and lock["state"] in LIVE_LOCK_STATES:
        return RunState(journal, damaged, lock, _running(lock, journal), None)
    return RunState(journal, damaged, lock, None, _interrupted(journal, error))


def _lock_info(raw: Mapping[str, Any] | None) -> LockInfo | None:
    """The lock as :func:`patchflow.lock.lock_status` describes it, typed (its keys and values, in its
    order: the ``--json`` output is the same)."""
    if raw is None:
        return None
    return {
        "state": raw["state"],
        "age_seconds": raw["age_seconds"],
        "pid": raw["pid"],
        "host": raw["host"],
        "user": raw["user"],
        "started_at": raw["started_at"],
        "action": raw["action"],
        "version": raw["version"],
    }


def _running(lock: LockInfo, journal: Journal | None) -> RunningRun:
    last = journal.steps[-1] if journal is not None and journal.steps else None
    started = _timestamp(lock.get("started_at"))
    recovering = None
    if journal is not None and journal.pid != lock["pid"]:
        # the holder is recovering the run a killed process left (its lock step finishes or undoes it)
        recovering = f"the interrupted {journal.action} of {journal.version}"
    return {
        "action": str(lock["action"]),
        "version": str(lock["version"]),
        "from_version": (journal.from_version or None) if journal is not None and recovering is None else None,
        "phase": journal.phase if journal is not None else None,
        "step": str(last["name"]) if last else None,
        "step_state": str(last.get("state")) if last else None,
        "step_started_at": str(last.get("at")) if last else None,
        "started_at": str(lock["started_at"]),
        "elapsed_seconds": round(time.time() - started, 1) if started is not None else None,
        "pid": int(lock["pid"]),
        "user": str(lock["user"]),
        "host": str(lock["host"]),
        "paused": pid_alive(int(lock["pid"])) and paused(int(lock["pid"])),
        "recovering": recovering,
    }


def _interrupted(journal: Journal | None, damaged: PatchflowError | None) -> InterruptedRun | None:
    if damaged is not None:
        return {
            "action": "?",
            "version": "?",
            "from_version": None,
            "phase": "?",
            "state": "journal damaged",
            "step": None,
            "step_state": None,
            "failed_step": None,
            "error": damaged.message,
            "pid": None,
            "host": None,
            "started_at": None,
            "backup": None,
        }
    if journal is None:
        return None
    failed = [s for s in journal.steps if s.get("state") == "failed"]
    state = "rollback incomplete / services may be down" if journal.phase == "rolling_back" else "interrupted"
    return {
        "action": journal.action,
        "version": journal.version,
        "from_version": journal.from_version,
        "phase": journal.phase,
        "state": state,
        "step": journal.current_step,
        "step_state": journal.steps[-1].get("state") if journal.steps else None,
        "failed_step": failed[-1]["name"] if failed else None,
        "error": journal.error,
        "pid": journal.pid,
        "host": journal.host,
        "started_at": journal.started_at,
        "backup": journal.backup,
    }


def _undoes(rollback: HistoryItem, apply: HistoryItem) -> bool:
    """True when the rollback record undid the apply record: it restored the apply's backup, or
    (records without backups) it went from the apply's version back to the one before it."""
    if apply.get("backup") and rollback.get("backup"):
        return bool(rollback["backup"] == apply["backup"])
    return rollback.get("from_version") == apply.get("to_version") and (
        rollback.get("to_version") == apply.get("from_version")
    )


def annotate_history(records: Sequence[Mapping[str, Any]]) -> list[HistoryItem]:
    """Copies of the history ``records`` (oldest first, as :func:`patchflow.lifecycle.journal.read_history`
    reads them: the records apply and rollback append, not validated) where each apply record has
    ``rolled_back``: ``{"by": "automatic rollback" | "recovery" | "rollback-patch", "at": UTC
    time or None}`` when it was undone, else None."""
    out = [cast("HistoryItem", dict(r)) for r in records]
    for index, record in enumerate(out):
        if record.get("action") != "apply":
            continue
        record["rolled_back"] = None
        if record.get("result") == "rolled_back":
            record["rolled_back"] = {"by": "recovery" if record.get("recovered") else "automatic rollback", "at": None}
            continue
        if record.get("result") != "success":
            continue
        for later in out[index + 1 :]:
            if later.get("action") == "rollback" and later.get("result") == "success" and _undoes(later, record):
                record["rolled_back"] = {"by": "rollback-patch", "at": later.get("started_at")}
                break
    return out


def installing_apply(
    records: Sequence[HistoryItem], installed_record: InstalledRecord | None, installed: str | None
) -> HistoryItem | None:
    """The record (from :func:`annotate_history`) of the apply that installed ``installed``: the
    successful, not rolled back apply of that version whose backup the installed record names,
    else the newest such apply; None when the history has none (installed by hand)."""
    if installed is None:
        return None
    candidates = [
        r
        for r in records
        if r.get("action") == "apply"
        and r.get("result") == "success"
        and r.get("to_version") == installed
        and not r.get("rolled_back")
    ]
    if installed_record is not None and installed_record.version == installed and installed_record.backup:
        exact = [r for r in candidates if r.get("backup") == installed_record.backup]
        if exact:
            return exact[-1]
    return candidates[-1] if candidates else None


def database_report(
    settings: Settings, paths: ProjectPaths
) -> tuple[list[DisplacedDatabase], list[SnapshotItem], str | None]:
    """The recorded displaced databases and snapshots with their age, and (when the server answers)
    whether each still exists and its size in bytes, asked in one query; the note says why sizes
    are unknown (None when known)."""
    now = time.time()
    displaced: list[DisplacedDatabase] = []
    for item in read_displaced(paths):
        created = _timestamp(item.get("created_at"))
        displaced.append(
            {
                "name": str(item["name"]),
                "database": str(item.get("database") or ""),
                "created_at": str(item.get("created_at") or ""),
                "backup": str(item.get("backup") or ""),
                "rows_since": str(item.get("rows_since") or ""),
                "age_seconds": round(now - created, 1) if created is not None else None,
                "exists": None,
                "size_bytes": None,
            }
        )
    snapshots: list[SnapshotItem] = []
    for record in read_snapshots(paths):
        created = _timestamp(record["created_at"])
        until = expires_at(record, settings.snapshot_keep_hours)
        snapshots.append(
            {
                "name": record["name"],
                "database": record["database"],
                "backup": record["backup"],
                "created_at": record["created_at"] or None,
                "dump": record["dump"],
                "dump_error": record["dump_error"] or None,
                "expires_at": datetime.fromtimestamp(until, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if until else None,
                "age_seconds": round(now - created, 1) if created is not None else None,
                "exists": None,
                "size_bytes": None,
            }
        )
    names = [i["name"] for i in displaced] + [i["name"] for i in snapshots]
    if not names:
        return displaced, snapshots, None
    sizes, note = _database_sizes(settings, paths, names)
    if sizes is not None:
        for entry in [*displaced, *snapshots]:
            entry["exists"] = entry["name"] in sizes
            entry["size_bytes"] = sizes.get(entry["name"])
    return displaced, snapshots, note or None


def _database_sizes(settings: Settings, paths: ProjectPaths, names: list[str]) -> tuple[dict[str, int] | None, str]:
    """``({name: bytes} of those that exist, "")``, or ``(None, why not)`` when the database
    server does not answer within its connect timeout or the settings name none."""
    from patchflow.commands import postgres as pg
    from patchflow.context import _database
    from patchflow.dbwait import answers, reason_of
    from patchflow.runner import LocalRunner

    try:
        database = _database(settings, paths, LocalRunner(base_env=settings.environ))
    except PatchflowError as exc:
        return None, f"sizes unknown: {exc.message}"
    if database is None:
        return None, "sizes unknown: no database is configured (database_mode = none)"
    error = answers(database, admin=True)
    if error is not None:
        return None, f"sizes unknown: the database server does not answer ({reason_of(error)})"
    listed = ", ".join(pg.quote_literal(name) for name in names)
    try:
        rows = database.query(
            f"SELECT datname, pg_database_size(datname) FROM pg_database WHERE datname IN ({listed})", admin=True
        )
    except PatchflowError as exc:
        return None, f"sizes unknown: {exc.message}"
    return {row[0]: int(row[1]) for row in rows if len(row) == 2 and row[1].isdigit()}, ""
