"""One apply or rollback at a time per install, with a lock that names its holder.

The lock is an OS file lock (``filelock``) on ``.patchflow/apply.lock`` so it dies with its
process; ``apply.lock.json`` beside it records the holder (pid, host, user, start time, action,
version). Finding that record while the OS lock is free means the holder died without cleaning
up: a *stale* lock, reported with its details and broken only with ``break_stale=True``
(field failure C19).
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypedDict

from filelock import FileLock, Timeout

from patchflow.errors import LockError
from patchflow.files import private_folder
from patchflow.state_files import seal, seal_problem


def pid_alive(pid: int) -> bool:
    """True when a process with ``pid`` exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LockStatus(TypedDict):
    """What :func:`lock_status` reports (patch-status's ``lock``): ``state`` (``held``,
    ``held-too-long``, ``stale``), ``age_seconds`` (None when the start time cannot be read) and
    the holder's fields."""

    state: str
    age_seconds: float | None
    pid: int
    host: str
    user: str
    started_at: str
    action: str
    version: str


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or held) the lock."""

    pid: int
    host: str
    user: str
    started_at: str
    action: str
    version: str

    def describe(self) -> str:
        return f"{self.action} of {self.version} by {self.user}@{self.host} (pid {self.pid}) since {self.started_at}"

    @classmethod
    def read(cls, path: Path) -> LockHolder | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if seal_problem(data):
                return None  # changed since it was written: the holder is not known
            return cls(
                int(data["pid"]),
                str(data["host"]),
                str(data["user"]),
                str(data["started_at"]),
                str(data["action"]),
                str(data["version"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def holder_state(info_path: Path, lock_path: Path) -> tuple[LockHolder | None, str]:
    """``(holder, state)`` with state ``free``, ``held`` (a live process) or ``stale``."""
    holder = LockHolder.read(info_path)
    if holder is None:
        return None, "free"
    probe = FileLock(str(lock_path), timeout=0)
    try:
        probe.acquire()
    except Timeout:
        return holder, "held"
    else:
        probe.release()
    return holder, "stale"


class InstallLock:
    """The install's lock, taken with :meth:`acquire` and given back with :meth:`release`."""

    def __init__(self, lock_path: Path, info_path: Path) -> None:
        self.lock_path = lock_path
        self.info_path = info_path
        self._lock = FileLock(str(lock_path), timeout=0)
        self.holder: LockHolder | None = None

    def acquire(self, *, action: str, version: str, break_stale: bool = False) -> LockHolder:
        """Take the lock and record this process as its holder.

        Raises:
            LockError: another apply/rollback holds it (named), or a stale lock is found and
                ``break_stale`` is False (the error says who held it and how to break it).
        """
        private_folder(self.lock_path.parent)
        try:
            self._lock.acquire()
        except Timeout:
            holder = LockHolder.read(self.info_path)
            who = holder.describe() if holder else "another process (no holder record)"
            raise LockError(
                f"Another apply or rollback is running on this install: {who}.",
                "Wait for it to finish (inv patch-status shows its progress); nothing was changed.",
            ) from None
        try:
            previous = LockHolder.read(self.info_path)
            if previous is not None and not break_stale:
                alive = previous.host == socket.gethostname() and pid_alive(previous.pid)
                state = "is still alive but does not hold the lock" if alive else "is gone"
                raise LockError(
                    f"Stale lock: {previous.describe()} did not finish; its process {state}.",
                    "Run `inv patch-status` to see what it left, then repeat the command with --break-lock "
                    "to take over (the interrupted apply is finished or undone first).",
                )
            holder = LockHolder(
                os.getpid(),
                socket.gethostname(),
                _user(),
                datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                action,
                version,
            )
            tmp = self.info_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(seal(holder.__dict__)) + "\n", encoding="utf-8")
            os.replace(tmp, self.info_path)
        except BaseException:  # any exit, an interrupt too: never keep the lock without its holder file
            self._lock.release()
            raise
        self.holder = holder
        return holder

    def release(self) -> None:
        """Remove the holder record and give the lock back (nothing when not held)."""
        if self.holder is None:
            return
        try:
            self.info_path.unlink(missing_ok=True)
        finally:
            self.holder = None
            self._lock.release()


@contextmanager
def install_lock(
    lock_path: Path, info_path: Path, *, action: str, version: str, break_stale: bool = False
) -> Iterator[LockHolder]:
    """Hold the install's lock for the duration of the ``with`` block (see :class:`InstallLock`).

    Raises:
        LockError: the lock is held or stale (see :meth:`InstallLock.acquire`).
    """
    lock = InstallLock(lock_path, info_path)
    holder = lock.acquire(action=action, version=version, break_stale=break_stale)
    try:
        yield holder
    finally:
        lock.release()


def lock_status(lock_path: Path, info_path: Path, stale_after: float) -> LockStatus | None:
    """What patch-status shows about the lock, or None when free. ``stale_after`` is seconds."""
    holder, state = holder_state(info_path, lock_path)
    if holder is None:
        return None
    age = None
    try:
        started = datetime.strptime(holder.started_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        age = time.time() - started.timestamp()
    except ValueError:
        pass
    if state == "held" and age is not None and age > stale_after:
        state = "held-too-long"
    return {
        "state": state,
        "age_seconds": age,
        "pid": holder.pid,
        "host": holder.host,
        "user": holder.user,
        "started_at": holder.started_at,
        "action": holder.action,
        "version": holder.version,
    }
