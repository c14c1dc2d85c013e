"""Backups taken before a patch: replaced/deleted code, the old VERSION, the database dump.

Layout (folder mode 0700, files keep their modes, the dump and backup.json are 0600)::

    backups/pre-patch-v2.3.0_20250101T143022Z_3f9a1c/
        files/<path>            every entry the apply replaces or deletes, as it was
        VERSION                 the VERSION file as it was
        installed-manifest.json the manifest of the installed patch, when there was one
        database.dump           pg_dump --format=custom
        backup.json             what it holds; written last, "complete": true

Names carry a UTC timestamp with ``Z`` and a random suffix (no two backups collide, even in the
same second); "latest" is decided by ``created_at`` (UTC, microseconds) and a ``sequence`` number
from backup.json, never by mtime or a sort of local-time strings (field failure C23).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import stat
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from patchflow.errors import BackupError
from patchflow.journal import write_json_atomic
from patchflow.manifest import Entry, sha256_file
from patchflow.paths import BACKUP_PREFIX, ProjectPaths
from patchflow.version import PatchVersion

BACKUP_JSON = "backup.json"
DUMP_NAME = "database.dump"
FORMAT = 1


@dataclass
class Backup:
    """A backup folder and its ``backup.json`` data (see the module docstring)."""

    folder: Path
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def version(self) -> str:
        return str(self.data.get("version", ""))

    @property
    def restores_version(self) -> str:
        return str(self.data.get("restores_version", ""))

    @property
    def complete(self) -> bool:
        return bool(self.data.get("complete"))

    @property
    def created_at(self) -> str:
        return str(self.data.get("created_at", ""))

    def created_timestamp(self) -> float:
        try:
            return datetime.strptime(self.created_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
        except ValueError:
            return 0.0

    def sort_key(self) -> tuple[str, int]:
        return (self.created_at, int(self.data.get("sequence", 0)))

    def save(self) -> None:
        write_json_atomic(self.folder / BACKUP_JSON, self.data)

    def size_bytes(self) -> int:
        total = 0
        for dirpath, _, files in os.walk(self.folder):
            for name in files:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except OSError:
                    continue
        return total

    @property
    def dump_path(self) -> Path | None:
        db = self.data.get("database")
        return self.folder / db["file"] if db else None

    def old_entries(self) -> dict[str, Entry]:
        return {e["path"]: Entry.from_json(e) for e in self.data.get("old_entries", [])}

    def new_paths(self) -> list[str]:
        return list(self.data.get("new_paths", []))


def load_backup(folder: Path) -> Backup | None:
    """Read a backup folder (None when backup.json is missing or unreadable)."""
    try:
        data = json.loads((folder / BACKUP_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not _well_formed(data):
        return None
    return Backup(folder, data)


def _safe_rel(path: object) -> bool:
    """A relative POSIX path without ``..``, empty or absolute parts (what a backup may name)."""
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path or "\x00" in path:
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


def _well_formed(data: dict[str, Any]) -> bool:
    """True when backup.json has the types and safe paths patchflow wrote (a damaged or foreign
    file is ignored rather than trusted: it could name paths outside the install)."""
    try:
        texts = all(isinstance(data.get(k, ""), str) for k in ("version", "restores_version", "created_at"))
        numbers = isinstance(data.get("sequence", 0), int) and isinstance(data.get("complete", False), bool)
        old = data.get("old_entries", [])
        new = data.get("new_paths", [])
        paths_ok = (
            isinstance(old, list)
            and all(isinstance(e, dict) and _safe_rel(e.get("path")) for e in old)
            and isinstance(new, list)
            and all(_safe_rel(p) for p in new)
        )
        for e in old:
            Entry.from_json(e)
        database = data.get("database")
        db_ok = database is None or (
            isinstance(database, dict) and _safe_rel(database.get("file")) and "/" not in str(database.get("file"))
        )
        outputs = data.get("build_outputs", [])
        outputs_ok = isinstance(outputs, list) and all(
            isinstance(o, dict) and _safe_rel(o.get("path")) for o in outputs
        )
    except (ValueError, KeyError, TypeError):
        return False
    return bool(texts and numbers and paths_ok and db_ok and outputs_ok)


def list_backups(paths: ProjectPaths, *, include_incomplete: bool = False) -> list[Backup]:
    """Every backup under ``backups/``, oldest first by UTC creation time and sequence number."""
    if not paths.backups.is_dir():
        return []
    found = []
    for child in paths.backups.iterdir():
        if not child.is_dir() or not child.name.startswith(BACKUP_PREFIX):
            continue
        backup = load_backup(child)
        if backup is None or (not backup.complete and not include_incomplete):
            continue
        found.append(backup)
    return sorted(found, key=Backup.sort_key)


def latest_backup_for(paths: ProjectPaths, version: PatchVersion) -> Backup | None:
    """The newest complete backup taken before applying ``version`` (None if there is none)."""
    matching = [b for b in list_backups(paths) if b.version == str(version)]
    return matching[-1] if matching else None


def new_backup(
    paths: ProjectPaths,
    version: PatchVersion,
    restores_version: str,
    *,
    old_entries: list[Entry],
    new_paths: list[str],
    now: datetime | None = None,
) -> Backup:
    """Create an empty backup folder (0700) with an incomplete backup.json describing the plan.

    Args:
        old_entries: the entries the apply replaces or deletes (saved by :func:`save_files`).
        new_paths: paths the apply creates that did not exist (removed on restore).

    Raises:
        BackupError: the folder cannot be created.
    """
    moment = now or datetime.now(UTC)
    stamp = moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    existing = list_backups(paths, include_incomplete=True)
    sequence = max((int(b.data.get("sequence", 0)) for b in existing), default=0) + 1
    try:
        paths.backups.mkdir(parents=True, exist_ok=True)
        while True:
            folder = paths.backups / f"{BACKUP_PREFIX}{version.tag}_{stamp}_{secrets.token_hex(3)}"
            try:
                folder.mkdir(mode=0o700)
                break
            except FileExistsError:
                continue
        os.chmod(folder, 0o700)
    except OSError as exc:
        raise BackupError(
            f"Cannot create a backup folder in {paths.backups}: {exc}.",
            "Check permissions and free space; nothing was changed.",
        ) from None
    backup = Backup(
        folder,
        {
            "format": FORMAT,
            "id": folder.name,
            "version": str(version),
            "restores_version": restores_version,
            "created_at": moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "sequence": sequence,
            "complete": False,
            "old_entries": [e.to_json() for e in sorted(old_entries, key=lambda e: e.path)],
            "new_paths": sorted(new_paths),
            "database": None,
            "version_file": None,
        },
    )
    backup.save()
    return backup


def save_files(backup: Backup, root: Path, installed_manifest: Path) -> int:
    """Copy every old entry of ``backup`` from ``root`` into ``files/``; returns bytes copied.

    Also keeps ``VERSION`` and ``.patchflow/installed-manifest.json`` as they are.

    Raises:
        BackupError: a file cannot be read or written (disk full, permissions).
    """
    target = backup.folder / "files"
    copied = 0
    try:
        target.mkdir(mode=0o700, exist_ok=True)
        for entry in backup.old_entries().values():
            source = root / entry.path
            dest = target / entry.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            if entry.type == "file":
                shutil.copyfile(source, dest, follow_symlinks=False)
                os.chmod(dest, entry.mode)
                digest, size = sha256_file(dest)
                if digest != entry.sha256:
                    raise BackupError(
                        f"{entry.path} changed while it was being backed up.",
                        "Stop whatever writes to the tree and apply again.",
                    )
                copied += size
            elif entry.type == "symlink":
                os.symlink(entry.target, dest)
        version_file = root / "VERSION"
        if version_file.is_file():
            shutil.copyfile(version_file, backup.folder / "VERSION")  # bytes as they are
            backup.data["version_file"] = "VERSION"
        if installed_manifest.is_file():
            shutil.copyfile(installed_manifest, backup.folder / "installed-manifest.json")
    except OSError as exc:
        raise BackupError(
            f"The code backup in {backup.folder} failed: {exc}.",
            "Free disk space or fix permissions; the apply stops before changing anything.",
        ) from None
    backup.data["files_bytes"] = copied
    backup.save()
    return copied


def swap_build_outputs(backup: Backup, staging: Path, root: Path, patterns: tuple[str, ...]) -> list[str]:
    """Move build outputs (``node_modules``, ``dist``, ...) made in ``staging`` into the tree.

    Each old copy is renamed into ``outputs/`` of the backup first, then the staged copy is
    renamed into place (both renames on one filesystem, so each is atomic). What was moved is
    recorded in backup.json *before* moving, so :func:`restore_build_outputs` can undo any prefix
    of the work after a crash. Returns the relative paths swapped.
    """
    found = sorted(
        {
            p.relative_to(staging).as_posix()
            for pattern in patterns
            for p in staging.glob(pattern)
            if p.is_dir() and not p.is_symlink()
        }
    )
    if not found:
        return []
    backup.data["build_outputs"] = [
        {"path": rel, "had_old": (root / rel).exists() or (root / rel).is_symlink()} for rel in found
    ]
    backup.save()
    store = backup.folder / "outputs"
    for item in backup.data["build_outputs"]:
        rel = item["path"]
        if item["had_old"] and not (store / rel).exists():
            (store / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(root / rel, store / rel)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / rel, root / rel)
    return found


def restore_build_outputs(backup: Backup, root: Path) -> None:
    """Undo :func:`swap_build_outputs` (also a partial one): staged copies are removed and the
    old copies renamed back."""
    store = backup.folder / "outputs"
    for item in reversed(backup.data.get("build_outputs", [])):
        rel = item["path"]
        saved = store / rel
        target = root / rel
        if item["had_old"] and not saved.exists():
            continue  # the old copy was never moved: the tree still holds it
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.exists():
            shutil.rmtree(target)
        if item["had_old"]:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(saved, target)


def verify_dump(backup: Backup) -> None:
    """Check the database dump of ``backup`` against the size and sha256 recorded when it was taken.

    Raises:
        BackupError: the dump is missing or differs from what backup.json recorded (restoring it
            would drop the live database and then fail, or restore something else).
    """
    dump = backup.dump_path
    if dump is None:
        return
    recorded = backup.data.get("database") or {}
    if not dump.is_file():
        raise BackupError(
            f"The database dump {dump} of backup {backup.name} is missing.",
            "Nothing was restored; choose another backup (--backup) or restore by hand.",
        )
    digest, size = sha256_file(dump)
    expected = str(recorded.get("sha256") or "")
    if (expected and digest != expected) or ("size" in recorded and size != int(recorded["size"])):
        raise BackupError(
            f"The database dump {dump} of backup {backup.name} is corrupt: sha256 {digest} ({size} bytes), "
            f"backup.json recorded {expected or '?'} ({recorded.get('size', '?')} bytes).",
            "The database was left as it is; choose another backup (--backup) or restore by hand.",
        )


def remove_path(path: Path) -> None:
    """Remove a file, link or *empty* directory at ``path`` if it exists (never a tree)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        path.rmdir()
    else:
        path.unlink()


def check_inside(root: Path, path: Path) -> None:
    """Refuse to touch ``path`` when the folder holding it resolves outside ``root`` (a symlink
    on the way would make a write or a delete land elsewhere).

    Raises:
        BackupError: names the path and where it leads.
    """
    real_root = os.path.realpath(root)
    probe = path.parent
    while not os.path.lexists(probe) and probe != probe.parent:
        probe = probe.parent
    real = os.path.realpath(probe)
    if real != real_root and not real.startswith(real_root + os.sep):
        raise BackupError(
            f"Refusing to write or delete {path}: {probe} leads outside the install (to {real}).",
            "A symlink in the install points where the patch expects a folder; replace it by hand.",
        )


def _tmp_name(dest: Path) -> Path:
    """A short temporary name beside ``dest`` (long names would exceed NAME_MAX with a suffix)."""
    digest = hashlib.sha256(os.fsencode(dest.name)).hexdigest()[:16]
    return dest.with_name(f".pf-{digest}.tmp")


def place_entry(entry: Entry, source_root: Path, root: Path) -> None:
    """Make ``root/entry.path`` equal ``entry``, taking content from ``source_root/entry.path``.

    Files are copied beside their destination and renamed over it (atomic per file); a directory
    standing where a file or link goes must already be empty. Nothing is written through a
    symlink that leads outside ``root`` (:func:`check_inside`).
    """
    dest = root / entry.path
    check_inside(root, dest)
    if entry.type == "dir":
        if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
            dest.unlink()
        dest.mkdir(parents=True, exist_ok=True)
        os.chmod(dest, entry.mode)
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(dest)
    remove_path(tmp)
    if entry.type == "symlink":
        os.symlink(entry.target, tmp)
    else:
        shutil.copyfile(source_root / entry.path, tmp, follow_symlinks=False)
        os.chmod(tmp, entry.mode)
    if dest.is_dir() and not dest.is_symlink():
        dest.rmdir()
    os.replace(tmp, dest)


def restore_code(backup: Backup, root: Path, installed_manifest: Path) -> None:
    """Put back the code saved in ``backup``: remove what the apply added, restore what it
    replaced or deleted (content, mode, links), restore VERSION and the installed manifest.

    Idempotent: running it twice gives the same tree.

    Raises:
        BackupError: a saved file is missing from the backup, or the tree cannot be written.
    """
    old = backup.old_entries()
    files = backup.folder / "files"
    try:
        restore_build_outputs(backup, root)
        for rel in sorted(backup.new_paths(), key=lambda p: p.count("/"), reverse=True):
            if rel in old:
                continue
            path = root / rel
            check_inside(root, path)
            try:
                remove_path(path)
            except OSError:
                # a folder the patch created that now holds files outside the patch: keep it
                continue
        for rel in sorted(old, key=lambda p: (p.count("/"), p)):
            entry = old[rel]
            if entry.type == "file" and not (files / rel).is_file():
                raise BackupError(f"The backup {backup.name} lacks {rel}.", "Restore that file by hand.")
            dest = root / rel
            check_inside(root, dest)
            if entry.type != "dir" and dest.is_dir() and not dest.is_symlink():
                # a folder of the patch stands where a file was; it may hold files written since
                # (uploads...): move it into the backup instead of deleting anything
                aside = backup.folder / "displaced" / rel
                aside.parent.mkdir(parents=True, exist_ok=True)
                if aside.exists():
                    shutil.rmtree(aside)
                os.replace(dest, aside)
                backup.data.setdefault("displaced", []).append(rel)
                backup.save()
            place_entry(entry, files, root)
        saved_version = backup.folder / "VERSION"
        version_file = root / "VERSION"
        if backup.data.get("version_file") and saved_version.is_file():
            tmp = root / ".VERSION.patchflow-tmp"
            shutil.copyfile(saved_version, tmp)
            os.replace(tmp, version_file)
        else:  # there was no VERSION before the patch
            version_file.unlink(missing_ok=True)
        saved = backup.folder / "installed-manifest.json"
        if saved.is_file():
            installed_manifest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(saved, installed_manifest)
        else:
            installed_manifest.unlink(missing_ok=True)
    except OSError as exc:
        raise BackupError(
            f"Restoring code from {backup.name} failed: {exc}.",
            "Fix the cause (disk, permissions) and run rollback-patch again.",
        ) from None


def prune_backups(
    paths: ProjectPaths,
    *,
    keep_days: int,
    keep_last: int,
    installed_version: str | None,
    now: float | None = None,
    dry_run: bool = False,
) -> list[Backup]:
    """Delete backups older than ``keep_days`` beyond the newest ``keep_last``; returns those removed.

    Never removes the newest backup that rolls back the installed version (its ``version`` equals
    ``installed_version``), nor an incomplete backup of an apply still recorded in the journal.
    """
    backups = list_backups(paths)
    current = time.time() if now is None else now
    protected: set[str] = set(b.name for b in backups[-keep_last:]) if keep_last else set()
    if installed_version:
        rolling = [b for b in backups if b.version == installed_version]
        if rolling:
            protected.add(rolling[-1].name)
    limit = current - timedelta(days=keep_days).total_seconds()
    removed = []
    for backup in backups:
        if backup.name in protected or backup.created_timestamp() >= limit:
            continue
        if not dry_run:
            shutil.rmtree(backup.folder)
        removed.append(backup)
    return removed
