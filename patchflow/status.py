"""patch-status: installed version, patches (verified or not), backups, history, interrupted work.

:func:`collect_status` returns plain data (the ``--json`` output); :func:`render_status` prints
it with rich tables. Times are UTC with an explicit ``Z``.

Speed: patches get the shallow verification (checksums, signature, manifest; the archive hashed
once, not decompressed) and its result is cached in ``.patchflow/verify-cache.json``, keyed by the
size, ``mtime_ns``, ``ctime_ns`` and inode of every file of the patch folder (and the verify key),
so an unchanged patch costs a few ``stat`` calls. ``verify_archives=True`` (``--verify``) runs the
deep check of every patch and refreshes the cache. Backup sizes come from ``backup.json``
(``files_bytes`` and the dump's ``size``) instead of walking every backup folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from patchflow.backup import Backup, list_backups
from patchflow.config import Settings
from patchflow.console import human_age, human_bytes
from patchflow.displaced import read_displaced
from patchflow.errors import PatchflowError
from patchflow.installed import installed_version_or_error, read_installed_record
from patchflow.journal import Journal, read_history
from patchflow.leftovers import leftovers
from patchflow.lock import lock_status
from patchflow.paths import ProjectPaths
from patchflow.version import PatchVersion, parse_version

if TYPE_CHECKING:
    from rich.console import Console

CACHE_FORMAT = 2  # bumped whenever what verify checks changes (2: delta manifests list only changes)


def _folder_key(folder: Path) -> list[list[Any]]:
    """``[name, size, mtime_ns, ctime_ns, inode]`` of every entry of ``folder``, sorted: any
    write, replacement or new file changes it."""
    key = []
    with os.scandir(folder) as children:
        for child in children:
            st = child.stat(follow_symlinks=False)
            key.append([child.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino])
    return sorted(key)


def _verify_key_id(verify_key: str) -> str:
    """A fingerprint of the verify key setting (its text, and the key file's stat when it is one)."""
    text = verify_key.strip()
    if not text:
        return ""
    parts = [text]
    try:
        st = Path(text).expanduser().stat()
        parts += [str(st.st_size), str(st.st_mtime_ns), str(st.st_ino)]
    except (OSError, ValueError):
        pass
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogateescape")).hexdigest()


def _load_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("patches"), dict):
        return {}
    return data


def _save_cache(path: Path, data: dict[str, Any]) -> None:
    """Write the cache atomically; a state folder that cannot be written only costs speed."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


def _patch_state(
    folder: Path, version: PatchVersion, settings: Settings, cache: dict[str, Any], *, deep: bool
) -> tuple[dict[str, Any], bool]:
    """The verification result of one patch folder (from the cache when its key still matches);
    returns ``(result, cache_changed)``."""
    from patchflow.verify import verify_patch_folder

    try:
        key: Any = {"files": _folder_key(folder), "verify_key": _verify_key_id(settings.verify_key)}
    except OSError:
        key = None
    cached = cache["patches"].get(folder.name)
    if not deep and key is not None and isinstance(cached, dict) and cached.get("key") == key:
        return cached, False
    report = verify_patch_folder(folder, version, check_archive=deep, verify_key=settings.verify_key)
    result = {
        "key": key,
        "deep": deep,
        "state": report.state,
        "problems": report.problems,
        "created_at": report.manifest.get("created_at"),
        "files": report.manifest.get("file_count"),
        "delta_base": (report.delta or {}).get("base_version"),
    }
    if key is None:
        return result, False
    cache["patches"][folder.name] = result
    return result, True


def backup_size(backup: Backup) -> int:
    """Bytes a backup holds: ``files_bytes`` + the dump's ``size`` recorded in backup.json (plus a
    walk of ``outputs/`` and ``displaced/`` when present), or a walk of the whole folder for a
    backup.json without those sizes."""
    files_bytes = backup.data.get("files_bytes")
    database = backup.data.get("database")
    dump_size = database.get("size") if isinstance(database, dict) else 0
    if not isinstance(files_bytes, int) or not isinstance(dump_size, int) or isinstance(files_bytes, bool):
        return backup.size_bytes()
    total = files_bytes + dump_size
    for extra in ("outputs", "displaced"):
        folder = backup.folder / extra
        if folder.is_dir():
            total += Backup(folder).size_bytes()
    return total


def collect_status(
    settings: Settings, *, history_limit: int = 10, verify_archives: bool = False, use_cache: bool = True
) -> dict[str, Any]:
    """Everything patch-status shows, as JSON-ready data.

    Args:
        settings: resolved settings.
        history_limit: number of history records.
        verify_archives: verify every patch deeply (archive members against the manifest) and
            refresh the cache; default: the shallow check, cached (see the module docstring).
        use_cache: read and write ``.patchflow/verify-cache.json``.

    Returns:
        Keys: ``root``, ``installed_version``, ``version_error``, ``patches`` (version, state,
        problems, created_at, files, installed, delta_base, verified: ``"deep"``/``"checksums"``),
        ``backups`` (name, version, restores_version, created_at, size_bytes, age_seconds,
        database), ``history`` (last records), ``last_apply`` (with ``stopped_seconds``),
        ``interrupted`` (journal or None), ``lock`` (or None), ``leftovers`` (names of what killed
        runs left in the state folder), ``recovery`` (``command``, ``args``, ``does``: the one
        command that recovers the install, see :func:`patchflow.recovery.recovery_advice`; None
        when nothing needs recovering).
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
        cache = _load_cache(paths.verify_cache) if use_cache else {}
        cache = cache or {"format": CACHE_FORMAT, "patches": {}}
        changed = False
        for version, folder in sorted(found, key=lambda item: item[0]):
            result, updated = _patch_state(folder, version, settings, cache, deep=verify_archives)
            changed = changed or updated
            patches.append(
                {
                    "version": str(version),
                    "folder": str(folder),
                    "state": result["state"],
                    "problems": result["problems"],
                    "created_at": result["created_at"],
                    "files": result["files"],
                    "installed": installed == str(version),
                    "delta_base": result.get("delta_base"),
                    "verified": "deep" if result.get("deep") else "checksums",
                }
            )
        names = {folder.name for _, folder in found}
        if any(name not in names for name in cache["patches"]):
            cache["patches"] = {k: v for k, v in cache["patches"].items() if k in names}
            changed = True
        if use_cache and changed:
            _save_cache(paths.verify_cache, cache)
    now = time.time()
    backups = []
    for backup in reversed(list_backups(paths)):
        backups.append(
            {
                "name": backup.name,
                "version": backup.version,
                "restores_version": backup.restores_version,
                "created_at": backup.created_at,
                "size_bytes": backup_size(backup),
                "age_seconds": round(now - backup.created_timestamp(), 1),
                "database": bool(backup.data.get("database")),
            }
        )
    record = read_installed_record(paths)
    history = read_history(paths.history, history_limit)
    applies = [h for h in history if h.get("action") == "apply" and h.get("result") == "success"]
    interrupted: dict[str, Any] | None = None
    damaged: str | None = None
    try:
        journal = Journal.load(paths.journal)
    except PatchflowError as exc:
        journal = None
        damaged = f"{exc.message} {exc.hint}"
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
    lock = lock_status(paths.lock, paths.lock_info, settings.lock_stale_seconds)
    left = [p.name for p in leftovers(paths)]
    recovery: dict[str, Any] | None = None
    if journal is not None or damaged or lock or left:
        from patchflow.recovery import recovery_advice  # the step lists: only when needed

        try:
            recovery = recovery_advice(journal, damaged, lock, installed, left)
        except PatchflowError as exc:  # a journal naming an invalid version
            recovery = {"command": None, "args": [], "does": exc.message}
    return {
        "root": str(paths.root),
        "installed_version": installed,
        "version_error": version_error,
        "patches": patches,
        "backups": backups,
        "history": history,
        "last_apply": applies[-1] if applies else None,
        "interrupted": interrupted,
        "lock": lock,
        "leftovers": left,
        "recovery": recovery,
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
    from rich.table import Table

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
    lock = status["lock"]
    if lock:
        console.print(
            f"[yellow]lock {lock['state']}[/]: {lock['action']} of {lock['version']} by "
            f"{lock['user']}@{lock['host']} pid {lock['pid']} since {_utc(lock['started_at'])}"
        )
    if status["leftovers"]:
        console.print(f"[yellow]left by a killed run[/]: {', '.join(status['leftovers'])}")
    recovery = status["recovery"]
    if recovery:
        if recovery["command"]:
            console.print(f"[bold]recover with[/]: {recovery['command']}  [dim]({recovery['does']})[/]")
        else:
            console.print(f"[bold]to recover[/]: {recovery['does']}")
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
        if patch.get("delta_base"):
            marker += f" (delta from {patch['delta_base']})"
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
