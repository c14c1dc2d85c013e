"""patch-status: installed version, patches (verified or not), backups, history, interrupted work.

:func:`collect_status` returns plain data (the ``--json`` output, typed by
:mod:`patchflow.status_schema`); it prints nothing (:mod:`patchflow.tasks.status_view` shows it).
Times are UTC with an explicit ``Z``.

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
from typing import Any, NotRequired, TypedDict, cast

from patchflow.backup import Backup, list_backups
from patchflow.backup_check import backup_problems
from patchflow.config import Settings
from patchflow.errors import PatchflowError
from patchflow.files import private_folder
from patchflow.freeze import read_freeze
from patchflow.installed import installed_version_or_error, read_installed_record
from patchflow.leftovers import leftovers
from patchflow.lifecycle.journal import history_problems, read_history
from patchflow.maintenance_page import planned
from patchflow.paths import ProjectPaths
from patchflow.state_files import StateFileError, seal, seal_problem, tree_record_problem, unsealed
from patchflow.status_runs import annotate_history, database_report, installing_apply, run_state
from patchflow.status_schema import (
    SCHEMA_VERSION,
    BackupItem,
    PatchItem,
    RecoveryAdvice,
    StatusReport,
)
from patchflow.version import PatchVersion, parse_version
from patchflow.watch import watch_record

CACHE_FORMAT = 2  # bumped whenever what verify checks changes (2: delta manifests list only changes)


class CacheKey(TypedDict):
    """What a cached result is valid for: every entry of the patch folder (:func:`_folder_key`) and
    the verify key (:func:`_verify_key_id`)."""

    files: list[list[Any]]
    verify_key: str


class CachedPatch(TypedDict):
    """One patch folder's verification result in ``.patchflow/verify-cache.json`` (``key`` None:
    the folder could not be read, so the result is not cached)."""

    key: CacheKey | None
    deep: NotRequired[bool]
    state: str
    problems: list[str]
    created_at: str | None
    files: int | None
    delta_base: NotRequired[str | None]


class VerifyCache(TypedDict):
    """``.patchflow/verify-cache.json``: results by patch folder name."""

    format: int
    patches: dict[str, CachedPatch]


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


def _load_cache(path: Path) -> VerifyCache | None:
    """The cache file's results (None: missing, unreadable, of another format or failing its seal:
    :mod:`patchflow.state_files`; entries are
    trusted only when their ``key`` equals the folder's, see :func:`_patch_state`)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("patches"), dict):
        return None
    if seal_problem(data):  # changed since it was written: a cache is re-made, never trusted
        return None
    return cast("VerifyCache", unsealed(data))


def _save_cache(path: Path, data: VerifyCache) -> None:
    """Write the cache atomically; a state folder that cannot be written only costs speed."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        private_folder(path.parent)
        tmp.write_text(json.dumps(seal(data), separators=(",", ":")), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


def _patch_state(
    folder: Path, version: PatchVersion, settings: Settings, cache: VerifyCache, *, deep: bool
) -> tuple[CachedPatch, bool]:
    """The verification result of one patch folder (from the cache when its key still matches);
    returns ``(result, cache_changed)``."""
    from patchflow.verify import verify_patch_folder

    try:
        key: CacheKey | None = {"files": _folder_key(folder), "verify_key": _verify_key_id(settings.verify_key)}
    except OSError:
        key = None
    cached = cache["patches"].get(folder.name)
    if not deep and key is not None and isinstance(cached, dict) and cached.get("key") == key:
        return cached, False
    report = verify_patch_folder(folder, version, check_archive=deep, verify_key=settings.verify_key)
    result: CachedPatch = {
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
) -> StatusReport:
    """Everything patch-status shows, as JSON-ready data (the README's "patch-status --json"
    documents every field; :mod:`patchflow.status_schema` types them).

    Args:
        settings: resolved settings.
        history_limit: number of history records.
        verify_archives: verify every patch deeply (archive members against the manifest) and
            refresh the cache, and every backup's saved files and dump against their SHA-256;
            default: the shallow check, cached (see the module docstring).
        use_cache: read and write ``.patchflow/verify-cache.json``.

    Returns:
        ``schema_version``, ``root``, ``installed_version``, ``version_error``, ``patches``,
        ``backups`` (newest first), ``history`` (last records, each apply marked ``rolled_back``
        or not), ``last_apply`` (the apply that installed the installed version),
        ``latest_apply`` (the newest apply, whatever became of it), ``running`` (the run holding
        the lock now) or ``interrupted`` (a journal whose process is gone), ``lock``,
        ``leftovers`` (what killed runs left in the state folder; empty while a run holds the
        lock), ``recovery`` (the one command that recovers the install, see
        :func:`patchflow.lifecycle.recovery.recovery_advice`; None when nothing needs recovering),
        ``installed_record``, ``displaced_databases`` (with age and, when the database answers,
        size) and ``displaced_databases_note``, ``snapshots`` (kept by applies, with their dump
        and expiry) and ``snapshots_note``, ``damaged_state`` (state files and history lines that
        fail their seal or do not parse, each named: :mod:`patchflow.state_files`), ``freeze`` (a
        deploy freeze ``inv lock`` set: message, user, host, set_at; None when there is none).
    """
    paths = ProjectPaths.from_settings(settings)
    parsed, version_error = installed_version_or_error(paths)
    installed = str(parsed) if parsed is not None else None
    patches: list[PatchItem] = []
    if paths.patches.is_dir():
        found: list[tuple[PatchVersion, Path]] = []
        for child in paths.patches.iterdir():
            if not child.is_dir() or not child.name.startswith("v"):
                continue
            try:
                parsed = parse_version(child.name)
            except PatchflowError:
                continue
            if child.name == parsed.tag:  # "v1.0.0 " or "V1.0.0" is not the folder of 1.0.0
                found.append((parsed, child))
        loaded = _load_cache(paths.verify_cache) if use_cache else None
        cache: VerifyCache = loaded or {"format": CACHE_FORMAT, "patches": {}}
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
    backups: list[BackupItem] = []
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
                # the record's checksum and the saved files' sizes; with --verify also their sha256
                "problems": backup_problems(backup, deep=verify_archives),
            }
        )
    damaged = history_problems(paths.history)
    try:
        record = read_installed_record(paths)
    except StateFileError as exc:
        record = None
        damaged.insert(0, exc.message)
    tree_problem = tree_record_problem(paths)
    if tree_problem:
        damaged.insert(0, tree_problem)
    try:
        freeze = read_freeze(paths.state)
    except StateFileError as exc:
        freeze = None
        damaged.insert(0, exc.message)
    every = annotate_history(read_history(paths.history))
    history = every[-history_limit:] if history_limit else every
    applies = [h for h in every if h.get("action") == "apply"]
    runs = run_state(paths, settings)
    lock = runs.lock
    # while a run holds the lock, what lies in the state folder is its own work, not a killed run's
    left = [] if runs.running else [p.name for p in leftovers(paths)]
    recovery: RecoveryAdvice | None = None
    if runs.journal is not None or runs.damaged or lock or left:
        from patchflow.lifecycle.recovery import recovery_advice  # the step lists: only when needed

        try:
            recovery = recovery_advice(runs.journal, runs.damaged, cast(Any, lock), installed, left)
        except PatchflowError as exc:  # a journal naming an invalid version
            recovery = {"command": None, "args": [], "does": exc.message}
    displaced, snapshots, database_note = database_report(settings, paths)
    return {
        "schema_version": SCHEMA_VERSION,
        "root": str(paths.root),
        "installed_version": installed,
        "version_error": version_error,
        "patches": patches,
        "backups": backups,
        "history": history,
        "last_apply": installing_apply(every, record, installed),
        "latest_apply": applies[-1] if applies else None,
        "running": runs.running,
        "interrupted": runs.interrupted,
        "lock": lock,
        "leftovers": left,
        "recovery": recovery,
        "installed_record": record.to_json() if record else None,
        "displaced_databases": displaced,
        "displaced_databases_note": database_note if displaced else None,
        "snapshots": snapshots,
        "snapshots_note": database_note if snapshots else None,
        "damaged_state": damaged,
        "freeze": freeze,
        "watch": watch_record(paths.state),
        "maintenance": planned(paths.state),
    }
