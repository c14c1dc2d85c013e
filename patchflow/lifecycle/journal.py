"""The step journal of an apply or rollback in progress, and the append-only history.

``journal.json`` is rewritten atomically (write, fsync, rename) before and after every step, so a
kill at any instant leaves the last step started and finished on disk. Its presence means an
operation did not finish; patch-status reports it and the next apply/rollback recovers from it.

``history.jsonl`` gets one JSON object per finished apply, rollback or automatic rollback
(:class:`HistoryRecord`: ``action, from_version, to_version, started_at, duration_seconds,
stopped_seconds, result, user, host, error, backup``...; patch-status ``--json`` shows them as
they are written). The journal's step records (:class:`StepRecord`) and notes
(:class:`JournalNotes`) are typed the same way, so a key renamed on one side fails the type check.

Out of space is a planned state: while a run holds the lock, a :class:`SpaceReserve` of
``RESERVE_BYTES`` is allocated in the state folder. A state write that finds the filesystem full
(``ENOSPC``, ``EDQUOT``, in bytes or inodes) deletes the reserve and writes again, so the journal
can always record the failure and the rollback that follows has room; a forward step that needed
the reserve fails with :class:`DiskFullError` (the run then rolls back instead of going on).
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import socket
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Required, TypedDict, Unpack

from patchflow.errors import BackupError, PatchflowError
from patchflow.files import fsync_directory, private_folder
from patchflow.lock import _user
from patchflow.redact import redact_value
from patchflow.state_files import CHECKSUM_KEY, record_checksum, seal, seal_problem, unsealed
from patchflow.status_schema import HealthRecordJson, Work

RESERVE_BYTES = 4 * 1024 * 1024
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(BackupError):
    """A filesystem the run writes is full (bytes or inodes): the run stops and rolls back."""


def is_no_space(exc: BaseException) -> bool:
    """True when ``exc`` is an OSError for a full filesystem or quota (bytes or inodes)."""
    return isinstance(exc, OSError) and exc.errno in NO_SPACE


class SpaceReserve:
    """``RESERVE_BYTES`` bytes (and one inode) held in a file while a run holds the lock; given
    back with :meth:`release` the first time a state write finds the filesystem full.

    One reserve is active per process (:func:`activate_reserve`); writes of the journal, the
    history and the pidfiles use it through :func:`write_json_atomic` and :func:`append_line`.
    """

    def __init__(self, path: Path, size: int = RESERVE_BYTES) -> None:
        self.path = path
        self.size = size

    def allocate(self) -> None:
        """Create the file with its blocks allocated (``posix_fallocate``; zeros written where
        the filesystem cannot allocate). An existing reserve (left by a killed run) is reused.

        Raises:
            OSError: the filesystem has not even that much room (the plan checks space first).
        """
        private_folder(self.path.parent)
        try:
            if self.path.stat().st_blocks * 512 >= self.size:
                return
        except FileNotFoundError:
            pass
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            try:
                os.posix_fallocate(fd, 0, self.size)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                os.ftruncate(fd, 0)
                block = b"\0" * 65536
                for _ in range(0, self.size, len(block)):
                    os.write(fd, block)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise
        os.close(fd)

    def release(self) -> bool:
        """Delete the reserve; True when it was there (room was given back)."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True


_reserve: SpaceReserve | None = None
_reserve_used = False


def activate_reserve(path: Path) -> SpaceReserve:
    """Allocate the reserve at ``path`` and make it the one state writes fall back on.

    Raises:
        OSError: not even ``RESERVE_BYTES`` are free there.
    """
    global _reserve, _reserve_used
    reserve = SpaceReserve(path)
    reserve.allocate()
    _reserve, _reserve_used = reserve, False
    return reserve


def take_reserve(path: Path, *, required: bool, log: Callable[[str], None]) -> None:
    """Allocate the run's space reserve at ``path`` (see :class:`SpaceReserve`). When there is no
    room for it, a new run is refused; a recovery (``required=False``) goes on without it, since
    it frees space before it writes (``log`` says so).

    Raises:
        DiskFullError: ``required`` and the reserve cannot be allocated; nothing was changed.
    """
    try:
        activate_reserve(path)
    except OSError as exc:
        if not is_no_space(exc) or required:
            raise DiskFullError(
                f"No room for the {RESERVE_BYTES // (1024 * 1024)} MiB space reserve in {path.parent}: {exc.strerror}.",
                "Free space on that filesystem (df -h, df -i) and run the command again. Nothing was changed.",
            ) from None
        log(f"   no room for the space reserve in {path.parent}: recovering without it")


def deactivate_reserve() -> None:
    """Delete the active reserve (the run gave back its lock). Never raises: a reserve that cannot be
    deleted now (a failing disk) is reused by the next run, which allocates it anyway."""
    global _reserve
    if _reserve is not None:
        try:
            _reserve.release()
        except OSError:
            pass
        _reserve = None


def reserve_used() -> bool:
    """True once a state write of this run needed the reserve (a filesystem is full)."""
    return _reserve_used


def _with_reserve(write: Callable[[], None]) -> bool:
    """Run ``write()``; when it fails for space, release the reserve and run it once more.
    Returns True when the reserve was needed."""
    global _reserve_used
    try:
        write()
        return False
    except OSError as exc:
        if not is_no_space(exc) or _reserve is None or not _reserve.release():
            raise
    _reserve_used = True
    write()
    return True


def utc_now() -> str:
    """UTC time as ``2025-01-01T14:30:22.123456Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def write_json_atomic(path: Path, data: Any, mode: int = 0o600) -> bool:
    """Write JSON to ``path`` atomically (temporary file, fsync, rename, fsync of the folder) with ``mode``; a full
    filesystem is met with the run's :class:`SpaceReserve`. Returns True when the reserve was
    needed (the filesystem is full).

    Raises:
        OSError: the write failed (and no reserve was left to give room); ``path`` is unchanged
            and no temporary file is left.
    """
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"

    def write() -> None:
        private_folder(path.parent)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_directory(path.parent)  # the rename itself durable: the record is there after a power loss

    return _with_reserve(write)


def append_line(path: Path, line: str) -> bool:
    """Append ``line`` (with a newline) to ``path`` and fsync, falling back on the reserve like
    :func:`write_json_atomic`. Returns True when the reserve was needed. An append begins on a line
    boundary: when the file does not end with a newline (a crash cut the last append), one is
    written first, so the torn line stays alone (its readers skip it) and this one is whole.

    Raises:
        OSError: the write failed.
    """

    def write() -> None:
        private_folder(path.parent)
        with open(path, "a+b") as handle:
            torn = handle.seek(0, os.SEEK_END) > 0 and handle.seek(-1, os.SEEK_END) >= 0 and handle.read(1) != b"\n"
            handle.write((b"\n" if torn else b"") + line.encode("utf-8") + b"\n")
            handle.flush()
            os.fsync(handle.fileno())

    return _with_reserve(write)


class StepRecord(TypedDict, total=False):
    """One step record of ``journal.json``: a step or an undo (``restore-code``) started in
    ``phase`` at ``at`` (UTC, :func:`utc_now`), then ``done`` (at ``done_at``) or ``failed`` (with
    ``error``). Only ``name`` is sure in a journal written by an older version."""

    name: Required[str]
    state: Literal["started", "done", "failed"]
    at: str
    phase: str
    done_at: str
    error: str


class JournalNotes(TypedDict, total=False):
    """What a run notes in its journal to find again after a kill.

    Attributes:
        runners: the run markers of the processes that worked on this run (:mod:`patchflow.runner`).
        old_health: the health settings that judge the version before the apply if it comes back.
        removed_services: compose services the apply removed (started again by its undo).
        pending: the migrations pending when the migrate step began ([] : the database is kept).
        migrations: the migrations the migrate step applied.
        restore_stamp: the time stamp naming the database restored beside the live one.
        restore_method: how the database is restored (``beside`` or ``in-place``:
            :mod:`patchflow.restore_in_place`), chosen by the role's rights before the restore
            starts; a recovery restores the same way.
        displaced_database: the database a restore displaced and kept (in place: the dump of it).
        restore_database: (rollback) whether the database is restored.
        kept_images: compose service -> the reference keeping the installed version's image.
        dump_before_stop: the dump step dumped the database before the stop (no migration was
            pending): the migrate step runs none and the undo keeps the live database.
        snapshot: the snapshot of the database the snapshot step makes (:mod:`patchflow.snapshot`),
            noted before it exists: drop-snapshot drops it, dump-snapshot dumps it.
    """

    runners: list[str]
    old_health: HealthRecordJson
    removed_services: list[str]
    pending: list[str]
    migrations: list[str]
    restore_stamp: str
    restore_method: str
    displaced_database: str
    restore_database: bool
    dump_before_stop: bool
    kept_images: dict[str, str]
    snapshot: str


class HistoryRecord(TypedDict, total=False):
    """One line of ``history.jsonl`` (shown as it is by patch-status ``--json``: the README's table
    documents every key). :func:`append_history` adds ``user``, ``host``, ``pid`` and
    ``finished_at``; the rest comes from the run: an apply (``result`` success, failed,
    rolled_back, rollback_failed, interrupted), a rollback (success, failed) or the recovery that
    undid a killed apply (``recovered``). Durations are seconds; ``steps`` maps step -> seconds and
    ``work`` is :func:`patchflow.stopped_window.plan_work`."""

    user: str
    host: str
    pid: int
    finished_at: str
    action: Required[str]
    run_id: str | None
    from_version: str | None
    to_version: str | None
    started_at: str
    duration_seconds: float
    stopped_seconds: float
    steps: dict[str, float]
    work: Work
    result: Required[str]
    backup: str | None
    migrations: list[str]
    recovered: bool
    error: str
    rollback_error: str
    old_version_unhealthy: str
    database_restored: bool
    displaced_database: str | None
    checklist: dict[str, object]
    watch_seconds: float


def _patchflow_version() -> str:
    from patchflow import __version__

    return __version__


#: The journal's format: a journal of a higher format was written by a newer patchflow and is refused.
JOURNAL_FORMAT = 1


@dataclass
class Journal:
    """State of one operation. ``phase`` is ``forward`` or ``rolling_back``; ``steps`` lists the
    :class:`StepRecord` of every step and undo in order; ``notes`` (:class:`JournalNotes`) what the
    run must find again after a kill."""

    path: Path
    action: str
    version: str
    from_version: str
    started_at: str = field(default_factory=utc_now)
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)
    phase: str = "forward"
    backup: str | None = None
    steps: list[StepRecord] = field(default_factory=list)
    error: str | None = None
    notes: JournalNotes = field(default_factory=lambda: JournalNotes())
    run_id: str = field(default_factory=lambda: secrets.token_hex(8))
    format: int = JOURNAL_FORMAT  # absent (read as 1) in journals of patchflow before formats
    written_by: str = field(default_factory=_patchflow_version)  # the patchflow that wrote it

    def note(self, **values: Unpack[JournalNotes]) -> None:
        """Record ``values`` in :attr:`notes` (names chosen before work that must be found again
        after a kill: a temporary database, a timestamp) and save.

        Raises:
            DiskFullError: forward phase, and the filesystem is full (recorded first).
        """
        self.notes.update(values)
        self._save_going_on()

    def save(self) -> bool:
        """Write the journal atomically (temporary file, fsync, rename); True when the space
        reserve was needed to do it."""
        data = asdict(self)
        data.pop("path")
        data[CHECKSUM_KEY] = record_checksum(data)  # its own ``format`` is the journal's (JOURNAL_FORMAT)
        return write_json_atomic(self.path, data)

    def _save_going_on(self) -> None:
        """Save; in the forward phase a full filesystem ends the step (the run rolls back)."""
        needed = self.save()
        if (needed or reserve_used()) and self.phase == "forward":
            raise DiskFullError(
                f"The filesystem holding {self.path.parent} is full (no space or no inodes left).",
                "The run stopped and rolled back using its reserved space. Free space (inv prune-backups, "
                "df -h, df -i) and apply again.",
            )

    def start(self, name: str) -> None:
        """Record step ``name`` as started.

        Raises:
            DiskFullError: forward phase, and the filesystem is full (recorded first).
        """
        self.steps.append({"name": name, "state": "started", "at": utc_now(), "phase": self.phase})
        self._save_going_on()

    def finish(self, name: str) -> None:
        """Record step ``name`` as done.

        Raises:
            DiskFullError: forward phase, and the filesystem is full (recorded first).
        """
        for step in reversed(self.steps):
            if step["name"] == name and step["state"] == "started":
                step["state"] = "done"
                step["done_at"] = utc_now()
                break
        self._save_going_on()

    def fail(self, name: str, error: str) -> None:
        """Record step ``name`` as failed with ``error``. On a full filesystem with no reserve left
        the record stays ``started`` (recovery treats both alike) instead of hiding the error."""
        for step in reversed(self.steps):
            if step["name"] == name and step["state"] == "started":
                step["state"] = "failed"
                step["error"] = error
                break
        self.error = error
        try:
            self.save()
        except OSError as exc:
            if not is_no_space(exc):
                raise

    def reached(self, name: str, phase: str = "forward") -> bool:
        """True when step ``name`` was started (whatever its outcome) in ``phase``."""
        return any(s["name"] == name and s.get("phase", "forward") == phase for s in self.steps)

    def done(self, name: str, phase: str = "forward") -> bool:
        """True when step ``name`` was done in ``phase``."""
        return any(
            s["name"] == name and s["state"] == "done" and s.get("phase", "forward") == phase for s in self.steps
        )

    def seconds_since(self, name: str, phase: str = "forward") -> float | None:
        """Seconds (wall clock) from the first start of step ``name`` in ``phase`` until now: the
        real stopped window of a run that a recovery finished or undid. None when not reached."""
        for step in self.steps:
            if step["name"] == name and step.get("phase", "forward") == phase:
                try:
                    began = datetime.strptime(str(step["at"]), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
                except (KeyError, ValueError):
                    return None
                return max(0.0, (datetime.now(UTC) - began).total_seconds())
        return None

    @property
    def current_step(self) -> str | None:
        """The name of the last step or undo recorded (None before any)."""
        return self.steps[-1]["name"] if self.steps else None

    def clear(self) -> None:
        """Delete the journal: the run is over."""
        self.path.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: Path) -> Journal | None:
        """Read an existing journal, or None when there is none.

        Raises:
            PatchflowError: the journal exists but is unreadable or malformed (an operation was
                interrupted and its record is damaged: nothing may run until someone looks), or
                it was written by a newer patchflow (a higher ``format``): never guessed at.
        """
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise _damaged(path, str(exc)) from None
        texts = ("action", "version", "from_version", "started_at", "host", "phase")
        if (
            not isinstance(data, dict)
            or not all(isinstance(data.get(k), str) for k in ("action", "version", "from_version"))
            or not all(isinstance(data[k], str) for k in texts if k in data)
            or not isinstance(data.get("steps", []), list)
            or not all(isinstance(step, dict) and isinstance(step.get("name"), str) for step in data.get("steps", []))
            or not isinstance(data.get("pid", 0), int)
            or not isinstance(data.get("backup"), (str, type(None)))
            or not isinstance(data.get("notes", {}), dict)
            or not isinstance(data.get("run_id", ""), str)
            or not isinstance(data.get("format", 1), int)
        ):
            raise _damaged(path, "unexpected structure")
        if data.get("format", 1) > JOURNAL_FORMAT:
            raise PatchflowError(
                f"The journal {path} of an interrupted {data['action']} of {data['version']} was written by a newer "
                f"patchflow ({data.get('written_by') or 'unknown version'}, journal format {data['format']}; this "
                f"patchflow {_patchflow_version()} reads format {JOURNAL_FORMAT}): its steps cannot be finished or "
                "undone by this version. Nothing was changed.",
                "Recover it with the patchflow that wrote it (upgrade patchflow here: `inv setup-host --upgrade` "
                "from the operator's checkout, or pip install the newer wheel), then run the command again.",
            )
        recorded = data.get(CHECKSUM_KEY)
        if recorded is not None and recorded != record_checksum(data):
            raise _damaged(path, "it fails its checksum (changed after patchflow wrote it)")
        fields = (
            "action",
            "version",
            "from_version",
            "started_at",
            "pid",
            "host",
            "phase",
            "backup",
            "steps",
            "error",
            "notes",
            "run_id",
            "format",
            "written_by",
        )
        known = {k: data[k] for k in fields if k in data}
        known.setdefault("written_by", "")  # older journals do not say
        return cls(path=path, **known)


def _damaged(path: Path, why: str) -> PatchflowError:
    return PatchflowError(
        f"The journal {path} of an interrupted apply or rollback is damaged ({why}).",
        "Nothing was changed. Check the install by hand (VERSION, files, database, the newest backup in "
        "backups/); move the journal away (no command runs while it is there), then, if needed, restore with "
        "`inv rollback-patch --version X --backup NAME --force --break-lock`.",
    )


def append_history(path: Path, record: HistoryRecord) -> bool:
    """Append one record to ``history.jsonl`` (adds ``user``, ``host``, ``pid`` and ``finished_at``,
    the UTC time it is written, when missing: who did what, and when, for a run that waited). A record
    whose ``run_id``, ``action`` and ``result`` are already there is not written twice (a
    recovered commit runs this again). Returns False when the filesystem was too full to write it
    (the run's outcome does not depend on its history line).

    Raises:
        OSError: the write failed for another reason than space.
    """
    record = {"user": _user(), "host": socket.gethostname(), "pid": os.getpid(), "finished_at": utc_now(), **record}
    record = redact_value(record)  # an error's text may carry a password (libpq's)
    key = (record.get("run_id"), record.get("action"), record.get("result"))
    if key[0] and any((h.get("run_id"), h.get("action"), h.get("result")) == key for h in read_history(path, 50)):
        return True
    try:
        append_line(path, json.dumps(seal(record), ensure_ascii=False))
    except OSError as exc:
        if not is_no_space(exc):
            raise
        return False
    return True


def read_history(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The last ``limit`` history records, oldest first, as the file has them: written by this or
    an older version (:class:`HistoryRecord`, keys may be missing), shown as they are by
    patch-status, without their seal. A line that is not a JSON object or fails its seal
    (:mod:`patchflow.state_files`) is not trusted and left out; :func:`history_problems` names it."""
    records = []
    for _, record, problem in _history_lines(path):
        if record is not None and not problem:
            records.append(unsealed(record))
    return records[-limit:] if limit else records


def _history_lines(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """``(line number, record or None, why it may not be trusted)`` for each non-empty line."""
    if not path.is_file():
        return
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            yield number, None, "not JSON (a torn or damaged line)"
            continue
        if not isinstance(record, dict):
            yield number, None, "not a JSON object"
            continue
        yield number, record, seal_problem(record)


def history_problems(path: Path) -> list[str]:
    """One line per record of ``history.jsonl`` that is left out of the history (``history.jsonl
    line 12: it fails its checksum ...``): damaged, torn, or from a newer patchflow."""
    return [f"{path.name} line {number}: {problem}" for number, _, problem in _history_lines(path) if problem]
