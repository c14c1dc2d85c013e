"""What is installed: the version in ``VERSION`` and the record of the apply that installed it.

``.patchflow/installed.json`` is written at the commit of an apply (and put back by a rollback
from the backup that holds the previous one)::

    {"version": "2.3.0", "from_version": "2.2.0", "backup": "pre-patch-v2.3.0_...",
     "applied_at": "2025-01-01T14:30:22.123456Z", "migrations": ["20250301_audit_log"]}

``backup`` names the backup that rolls this version back: rollback-patch uses it and
prune-backups never removes it, whatever the clock said when backups were taken.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from patchflow.errors import PatchflowError
from patchflow.journal import write_json_atomic
from patchflow.paths import ProjectPaths
from patchflow.version import PatchVersion, read_version_file


def installed_version(paths: ProjectPaths) -> str | None:
    """The version in the install's ``VERSION`` (None when missing or not a semantic version)."""
    try:
        return str(read_version_file(paths.version_file))
    except PatchflowError:
        return None


def installed_version_or_error(paths: ProjectPaths) -> tuple[PatchVersion | None, str | None]:
    """``(version, None)`` or ``(None, why it cannot be read)``."""
    try:
        return read_version_file(paths.version_file), None
    except PatchflowError as exc:
        return None, exc.message


@dataclass(frozen=True)
class InstalledRecord:
    """The record of the apply that installed the current version (see the module docstring)."""

    version: str
    backup: str = ""
    from_version: str = ""
    applied_at: str = ""
    migrations: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "from_version": self.from_version,
            "backup": self.backup,
            "applied_at": self.applied_at,
            "migrations": list(self.migrations),
        }

    def save(self, paths: ProjectPaths) -> None:
        """Write ``.patchflow/installed.json`` atomically."""
        write_json_atomic(paths.installed_record, self.to_json(), mode=0o644)


def read_installed_record(paths: ProjectPaths) -> InstalledRecord | None:
    """The installed record, None when missing or unreadable (installs older than the record)."""
    try:
        data = json.loads(paths.installed_record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("version"), str):
        return None
    migrations = data.get("migrations") or []
    return InstalledRecord(
        version=data["version"],
        backup=str(data.get("backup") or ""),
        from_version=str(data.get("from_version") or ""),
        applied_at=str(data.get("applied_at") or ""),
        migrations=tuple(str(m) for m in migrations) if isinstance(migrations, list) else (),
    )
