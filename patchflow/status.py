"""patch-status: installed version, patches (verified or not), backups, history, interrupted work.

:func:`collect_status` returns plain data (the ``--json`` output); :func:`render_status` prints
it with rich tables. Times are UTC with an explicit ``Z``.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.table import Table

from patchflow.backup import list_backups
from patchflow.config import Settings
from patchflow.console import human_age, human_bytes
from patchflow.displaced import read_displaced
from patchflow.errors import PatchflowError
from patchflow.installed import installed_version_or_error, read_installed_record
from patchflow.journal import Journal, read_history
from patchflow.lock import lock_status
from patchflow.paths import ProjectPaths
from patchflow.verify import verify_patch_folder
from patchflow.version import PatchVersion, parse_version


def collect_status(settings: Settings, *, history_limit: int = 10, verify_archives: bool = True) -> dict[str, Any]:
    """Everything patch-status shows, as JSON-ready data.

    Keys: ``root``, ``installed_version``, ``version_error``, ``patches`` (version, state,
    problems, created_at, files), ``backups`` (name, version, restores_version, created_at,
    size_bytes, age_seconds, database), ``history`` (last records), ``last_apply``
    (with ``stopped_seconds``), ``interrupted`` (journal or None), ``lock`` (or None).
    """
    paths = ProjectPaths.from_settings(settings)
    parsed, version_error = installed_version_or_error(paths)
    installed = str(parsed) if parsed is not None else None
    patches = []
    if paths.patches.is_dir():
        found: list[tuple[PatchVersion, Any]] = []
        for child in paths.patches.iterdir():
            if not child.is_dir() or not child.name.startswith("v"):
                continue
            try:
                parsed = parse_version(child.name)
            except PatchflowError:
                continue
            if child.name == parsed.tag:  # "v1.0.0 " or "V1.0.0" is not the folder of 1.0.0
                found.append((parsed, child))
        for version, folder in sorted(found, key=lambda item: item[0]):
            report = verify_patch_folder(folder, version, check_archive=verify_archives, verify_key=settings.verify_key)
            patches.append(
                {
                    "version": str(version),
                    "folder": str(folder),
                    "state": report.state,
                    "problems": report.problems,
                    "created_at": report.manifest.get("created_at"),
                    "files": report.manifest.get("file_count"),
                    "installed": installed == str(version),
                }
            )
    now = time.time()
    backups = []
    for backup in reversed(list_backups(paths)):
        backups.append(
            {
                "name": backup.name,
                "version": backup.version,
                "restores_version": backup.restores_version,
                "created_at": backup.created_at,
                "size_bytes": backup.size_bytes(),
                "age_seconds": round(now - backup.created_timestamp(), 1),
                "database": bool(backup.data.get("database")),
            }
        )
    record = read_installed_record(paths)
    history = read_history(paths.history, history_limit)
    applies = [h for h in history if h.get("action") == "apply" and h.get("result") == "success"]
    interrupted: dict[str, Any] | None = None
    try:
        journal = Journal.load(paths.journal)
    except PatchflowError as exc:
        journal = None
        interrupted = {
            "action": "?",
            "version": "?",
            "from_version": None,
            "phase": "?",
            "state": "journal damaged",
            "step": None,
            "step_state": None,
            "failed_step": None,
            "error": exc.message,
            "pid": None,
            "host": None,
            "started_at": None,
            "backup": None,
        }
    if journal is not None:
        failed = [s for s in journal.steps if s.get("state") == "failed"]
        state = "rollback incomplete / services may be down" if journal.phase == "rolling_back" else "interrupted"
        interrupted = {
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
    return {
        "root": str(paths.root),
        "installed_version": installed,
        "version_error": version_error,
        "patches": patches,
        "backups": backups,
        "history": history,
        "last_apply": applies[-1] if applies else None,
        "interrupted": interrupted,
        "lock": lock_status(paths.lock, paths.lock_info, settings.lock_stale_seconds),
        "installed_record": record.to_json() if record else None,
        "displaced_databases": read_displaced(paths),
    }


def _seconds(value: Any) -> str:
    """``1.234`` -> ``1.2 s``; anything that is not a number -> ``?``."""
    return f"{value:.1f} s" if isinstance(value, (int, float)) and not isinstance(value, bool) else "?"


def _utc(stamp: Any) -> str:
    """``2025-01-01T14:30:22.123456Z`` -> ``2025-01-01 14:30:22Z`` (UTC, seconds)."""
    text = str(stamp or "")
    if len(text) >= 19 and text[10] == "T":
        return f"{text[:10]} {text[11:19]}Z"
    return text


def render_status(status: dict[str, Any], console: Console) -> None:
    """Print ``status`` (from :func:`collect_status`) as text and tables."""
    console.print(f"[bold]PrimeFlow install[/] {status['root']}")
    if status["installed_version"]:
        console.print(f"installed version: [bold green]{status['installed_version']}[/]")
    else:
        console.print(f"installed version: [red]unknown[/] ({status['version_error']})")
    interrupted = status["interrupted"]
    if interrupted:
        console.print(
            f"[bold red]{interrupted['state'].upper()}[/]: {interrupted['action']} of {interrupted['version']} "
            f"(from {interrupted['from_version'] or '?'}) stopped "
            + (
                f"at step [bold]{interrupted['step']}[/] ({interrupted.get('step_state')})"
                if interrupted["step"]
                else "before its first step"
            )
            + (
                f", failed step {interrupted['failed_step']}: {interrupted['error']}"
                if interrupted["failed_step"]
                else ""
            )
            + f"; started {_utc(interrupted['started_at'])} by pid {interrupted['pid']} on {interrupted['host']}."
        )
        console.print(
            f"  finish or undo it: inv apply-patch --version {interrupted['version']} --break-lock, "
            f"or inv rollback-patch --version {interrupted['version']} --break-lock"
        )
    lock = status["lock"]
    if lock:
        console.print(
            f"[yellow]lock {lock['state']}[/]: {lock['action']} of {lock['version']} by "
            f"{lock['user']}@{lock['host']} pid {lock['pid']} since {_utc(lock['started_at'])}"
        )
    last = status["last_apply"]
    if last:
        console.print(
            f"last apply: {last.get('from_version')} -> {last.get('to_version')} at {_utc(last.get('started_at'))}, "
            f"stopped window {_seconds(last.get('stopped_seconds'))}"
        )

    table = Table(title="Patches", show_lines=False)
    for column in ("version", "state", "files", "created (UTC)", "problems"):
        table.add_column(column, overflow="fold")
    for patch in status["patches"]:
        colour = {"ok": "green", "corrupt": "red", "incomplete": "yellow"}[patch["state"]]
        marker = " (installed)" if patch["installed"] else ""
        table.add_row(
            patch["version"] + marker,
            f"[{colour}]{patch['state']}[/]",
            str(patch["files"] or ""),
            _utc(patch["created_at"]),
            "; ".join(patch["problems"][:3]),
        )
    console.print(table if status["patches"] else "patches: none")

    table = Table(title="Backups (newest first)")
    for column in ("name", "before", "restores", "created (UTC)", "age", "size", "database"):
        table.add_column(column, overflow="fold")
    for backup in status["backups"]:
        table.add_row(
            backup["name"],
            backup["version"],
            backup["restores_version"],
            _utc(backup["created_at"]),
            human_age(backup["age_seconds"]),
            human_bytes(backup["size_bytes"]),
            "yes" if backup["database"] else "no",
        )
    console.print(table if status["backups"] else "backups: none")

    if status["history"]:
        table = Table(title="History (latest last)")
        for column in ("action", "from", "to", "started (UTC)", "duration", "stopped", "result"):
            table.add_column(column, overflow="fold")
        for item in status["history"]:
            result = str(item.get("result"))
            colour = "green" if result == "success" else "red"
            table.add_row(
                str(item.get("action")),
                str(item.get("from_version") or ""),
                str(item.get("to_version") or ""),
                _utc(item.get("started_at")),
                _seconds(item.get("duration_seconds")),
                _seconds(item.get("stopped_seconds")),
                f"[{colour}]{result}[/]",
            )
        console.print(table)
