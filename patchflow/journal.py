"""The step journal of an apply or rollback in progress, and the append-only history.

``journal.json`` is rewritten atomically (write, fsync, rename) before and after every step, so a
kill at any instant leaves the last step started and finished on disk. Its presence means an
operation did not finish; patch-status reports it and the next apply/rollback recovers from it.

``history.jsonl`` gets one JSON object per finished apply, rollback or automatic rollback:
``action, from_version, to_version, started_at, duration_seconds, stopped_seconds, result,
user, host, error, backup``.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from patchflow.errors import PatchflowError
from patchflow.lock import _user


def utc_now() -> str:
    """UTC time as ``2025-01-01T14:30:22.123456Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def write_json_atomic(path: Path, data: Any, mode: int = 0o600) -> None:
    """Write JSON to ``path`` atomically (temporary file, fsync, rename) with ``mode``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@dataclass
class Journal:
    """State of one operation. ``phase`` is ``forward`` or ``rolling_back``; ``steps`` lists
    ``{"name", "state": "started"|"done"|"failed", "at", "error"?}`` in order."""

    path: Path
    action: str
    version: str
    from_version: str
    started_at: str = field(default_factory=utc_now)
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)
    phase: str = "forward"
    backup: str | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    run_id: str = field(default_factory=lambda: secrets.token_hex(8))

    def note(self, key: str, value: Any) -> None:
        """Record ``value`` under ``key`` (a name chosen before work that must be found again after
        a kill: a temporary database, a timestamp) and save."""
        self.notes[key] = value
        self.save()

    def save(self) -> None:
        """Write the journal atomically (temporary file, fsync, rename)."""
        data = asdict(self)
        data.pop("path")
        write_json_atomic(self.path, data)

    def start(self, name: str) -> None:
        self.steps.append({"name": name, "state": "started", "at": utc_now(), "phase": self.phase})
        self.save()

    def finish(self, name: str) -> None:
        for step in reversed(self.steps):
            if step["name"] == name and step["state"] == "started":
                step["state"] = "done"
                step["done_at"] = utc_now()
                break
        self.save()

    def fail(self, name: str, error: str) -> None:
        for step in reversed(self.steps):
            if step["name"] == name and step["state"] == "started":
                step["state"] = "failed"
                step["error"] = error
                break
        self.error = error
        self.save()

    def reached(self, name: str, phase: str = "forward") -> bool:
        """True when step ``name`` was started (whatever its outcome) in ``phase``."""
        return any(s["name"] == name and s.get("phase", "forward") == phase for s in self.steps)

    def done(self, name: str, phase: str = "forward") -> bool:
        return any(
            s["name"] == name and s["state"] == "done" and s.get("phase", "forward") == phase for s in self.steps
        )

    @property
    def current_step(self) -> str | None:
        return self.steps[-1]["name"] if self.steps else None

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: Path) -> Journal | None:
        """Read an existing journal, or None when there is none.

        Raises:
            PatchflowError: the journal exists but is unreadable or malformed (an operation was
                interrupted and its record is damaged: nothing may run until someone looks).
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
        ):
            raise _damaged(path, "unexpected structure")
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
        )
        known = {k: data[k] for k in fields if k in data}
        return cls(path=path, **known)


def _damaged(path: Path, why: str) -> PatchflowError:
    return PatchflowError(
        f"The journal {path} of an interrupted apply or rollback is damaged ({why}).",
        "Nothing was changed. Check the install by hand (VERSION, files, database, the newest backup in "
        "backups/), restore it with `inv rollback-patch --backup NAME --force` if needed, then move the "
        "journal away.",
    )


def append_history(path: Path, record: dict[str, Any]) -> None:
    """Append one record to ``history.jsonl`` (adds ``user`` and ``host`` when missing). A record
    whose ``run_id``, ``action`` and ``result`` are already there is not written twice (a
    recovered commit runs this again)."""
    record = {"user": _user(), "host": socket.gethostname(), **record}
    key = (record.get("run_id"), record.get("action"), record.get("result"))
    if key[0] and any((h.get("run_id"), h.get("action"), h.get("result")) == key for h in read_history(path, 50)):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_history(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The last ``limit`` history records, oldest first (unparseable lines skipped)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records[-limit:] if limit else records
