"""The databases a restore displaced (``<name>_before_rollback_<stamp>``), recorded so that
patch-status can list them without a database connection and prune-backups can remove old ones.

``.patchflow/displaced-databases.json`` is a list of
``{"name", "database", "created_at", "backup", "rows_since"}`` (UTC times).
"""

from __future__ import annotations

import json
from typing import Any

from patchflow.lifecycle.journal import utc_now, write_json_atomic
from patchflow.paths import ProjectPaths


def read_displaced(paths: ProjectPaths) -> list[dict[str, Any]]:
    """The recorded displaced databases, oldest first (empty when none or unreadable)."""
    try:
        data = json.loads(paths.displaced_databases.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [d for d in data if isinstance(d, dict) and isinstance(d.get("name"), str)] if isinstance(data, list) else []


def record_displaced(paths: ProjectPaths, name: str, database: str, backup: str, rows_since: str) -> None:
    """Add ``name`` (kept in place of ``database`` by a restore from ``backup``; it holds the rows
    written since ``rows_since``) to the record; nothing when it is already there."""
    items = read_displaced(paths)
    if any(item["name"] == name for item in items):
        return
    items.append(
        {"name": name, "database": database, "created_at": utc_now(), "backup": backup, "rows_since": rows_since}
    )
    write_json_atomic(paths.displaced_databases, items, mode=0o644)


def forget_displaced(paths: ProjectPaths, names: set[str]) -> None:
    """Remove ``names`` from the record (after they were dropped)."""
    items = [item for item in read_displaced(paths) if item["name"] not in names]
    write_json_atomic(paths.displaced_databases, items, mode=0o644)
