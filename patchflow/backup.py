"""Backups taken before a patch: replaced/deleted code, the old VERSION, the database dump.

Layout (folder mode 0700, the dump and backup.json 0600)::

    backups/pre-patch-v2.3.0_20250101T143022Z_3f9a1c/
        files/<path>            every entry the apply replaces or deletes, as it was
        outputs/<path>          the build outputs (node_modules, dist) the apply replaced
        VERSION                 the VERSION file as it was (bytes)
        installed-manifest.json the manifest of the installed patch, when there was one
        installed.json          the record of what had installed that version
        database.dump           pg_dump --format=custom, proven complete
        backup.json             what it holds; "complete": true once everything is proven

Names carry a UTC timestamp with ``Z`` and a random suffix (no two backups collide, even in the
same second). Order is a ``sequence`` number kept by patchflow (``.patchflow/sequence``, never
decreasing), never the clock: a clock that jumped cannot make an older backup "the newest"
(field failure C23). Each old entry records its exact owner, group and mode, so a restore puts
them back as they were.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, cast

from patchflow.digests import file_digest
from patchflow.errors import BackupError
from patchflow.files import Ownership, move, private_folder, remove_tree
from patchflow.lifecycle.journal import write_json_atomic
from patchflow.manifest import Entry
from patchflow.paths import BACKUP_PREFIX, BackupPaths, ProjectPaths
from patchflow.state_files import CHECKSUM_KEY, record_checksum
from patchflow.version import PatchVersion

if TYPE_CHECKING:
    from patchflow.database import DatabaseProperties

FORMAT = 2


class DumpRecord(TypedDict, total=False):
    """A backup's database dump as ``backup.json`` records it (``database``): ``file`` (its name in
    the backup folder), ``size`` (bytes), ``sha256`` (hex) and the database's ``properties``. Read
    from disk, so a key may be missing; :func:`patchflow.database.verify_recorded_dump` checks the
    dump against it."""

    file: str
    size: int
    sha256: str
    properties: DatabaseProperties


@dataclass
class Backup:
    """A backup folder and its ``backup.json`` data (see the module docstring)."""

    folder: Path
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def paths(self) -> BackupPaths:
        return BackupPaths(self.folder)

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def version(self) -> str:
        """The version whose apply took this backup."""
        return str(self.data.get("version", ""))

    @property
    def restores_version(self) -> str:
        """The version this backup brings back."""
        return str(self.data.get("restores_version", ""))

    @property
    def complete(self) -> bool:
        return bool(self.data.get("complete"))

    @property
    def created_at(self) -> str:
        return str(self.data.get("created_at", ""))

    @property
    def sequence(self) -> int:
        return int(self.data.get("sequence", 0))

    def created_timestamp(self) -> float:
        """``created_at`` as epoch seconds (0 when unreadable)."""
        try:
            return datetime.strptime(self.created_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
        except ValueError:
            return 0.0

    def save(self) -> None:
        """Write ``backup.json`` atomically (0600), sealed with its checksum (:func:`record_checksum`)."""
        self.data[CHECKSUM_KEY] = record_checksum(self.data)
        write_json_atomic(self.paths.record, self.data)

    def size_bytes(self) -> int:
        """Bytes the backup holds (recorded sizes; walks the folder only for old backups)."""
        recorded = self.data.get("size_bytes")
        if isinstance(recorded, int):
            return recorded
        total = 0
        for dirpath, _, files in os.walk(self.folder):
            for name in files:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except OSError:
                    continue
        return total

    @property
    def database(self) -> DumpRecord | None:
        """The dump record (``file``, ``size``, ``sha256``, ``properties``), None without one."""
        db = self.data.get("database")
        # read from backup.json: its ``file`` was checked when the backup was listed (_well_formed)
        return cast("DumpRecord", db) if isinstance(db, dict) else None

    @property
    def dump_path(self) -> Path | None:
        db = self.database
        return self.folder / str(db["file"]) if db else None

    def old_entries(self) -> dict[str, Entry]:
        return {e["path"]: Entry.from_json(e) for e in self.data.get("old_entries", [])}

    def old_ownership(self) -> dict[str, Ownership]:
        """Exact owner, group and mode of each old entry, as recorded when it was backed up."""
        out = {}
        for item in self.data.get("old_entries", []):
            if all(isinstance(item.get(k), int) for k in ("uid", "gid", "perm")):
                out[item["path"]] = Ownership(item["uid"], item["gid"], item["perm"])
        return out

    def new_paths(self) -> list[str]:
        return list(self.data.get("new_paths", []))

    @property
    def migrations_applied(self) -> list[str] | None:
        """Migrations the apply ran after this backup (None: not recorded, i.e. unknown)."""
        value = self.data.get("migrations_applied")
        return [str(v) for v in value] if isinstance(value, list) else None


def load_backup(folder: Path) -> Backup | None:
    """Read a backup folder (None when backup.json is missing, unreadable or malformed)."""
    try:
        data = json.loads((folder / "backup.json").read_text(encoding="utf-8"))
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
    """Every backup under ``backups/`` this user can read, oldest first by sequence number (never
    by clock); :func:`unreadable_backups` names the others."""
    try:
        children = list(paths.backups.iterdir())
    except OSError:
        return []
    found = []
    for child in children:
        if not child.is_dir() or not child.name.startswith(BACKUP_PREFIX):
            continue
        backup = load_backup(child)
        if backup is None or (not backup.complete and not include_incomplete):
            continue
        found.append(backup)
    return sorted(found, key=lambda b: (b.sequence, b.created_at, b.name))


def unreadable_backups(paths: ProjectPaths, folders: list[Path] | None = None) -> list[Path]:
    """The backup folders (``folders``, default: every ``pre-patch-*`` under ``backups/``) that
    exist but whose ``backup.json`` this user cannot read; ``[backups/]`` itself when it cannot be
    listed."""
    if folders is None:
        try:
            folders = [c for c in paths.backups.iterdir() if c.name.startswith(BACKUP_PREFIX)]
        except FileNotFoundError:
            return []
        except OSError:
            return [paths.backups]
    unreadable = []
    for folder in folders:
        try:
            with open(folder / "backup.json", "rb"):
                pass
        except FileNotFoundError:
            continue
        except OSError:
            if os.path.lexists(folder) or not os.access(folder.parent, os.X_OK):
                unreadable.append(folder)
    return unreadable


def unreadable_error(paths: ProjectPaths, folders: list[Path]) -> BackupError:
    """The error for backups that exist but cannot be read by this user: who cannot, who owns
    them, and what to do."""
    from patchflow.files import current_user, describe_owner, user_name

    listed = ", ".join(f"{f.name} ({describe_owner(f)})" for f in folders[:5])
    more = f" and {len(folders) - 5} more" if len(folders) > 5 else ""
    user = current_user()
    try:
        owner = user_name(os.lstat(folders[0]).st_uid)
    except OSError:
        owner = "the user who took them"
    return BackupError(
        f"Backups exist in {paths.backups} but user {user} cannot read them: {listed}{more}.",
        f"Run rollback-patch as {owner} (who owns them), or give {user.split(' ')[0]} read access "
        f"(e.g. chown -R {user.split(' ')[0]} {paths.backups}). Nothing was changed.",
    )


def latest_backup_for(paths: ProjectPaths, version: PatchVersion) -> Backup | None:
    """The newest (highest sequence) complete backup taken before applying ``version``."""
    matching = [b for b in list_backups(paths) if b.version == str(version)]
    return matching[-1] if matching else None


def next_sequence(paths: ProjectPaths) -> int:
    """Take the next backup sequence number: one more than both the counter in
    ``.patchflow/sequence`` and every backup on disk; the counter is updated (atomic rename)."""
    try:
        counter = int(paths.sequence.read_text(encoding="utf-8").strip() or 0)
    except (OSError, ValueError):
        counter = 0
    existing = max((b.sequence for b in list_backups(paths, include_incomplete=True)), default=0)
    number = max(counter, existing) + 1
    private_folder(paths.state)
    tmp = paths.sequence.with_name(f".sequence.tmp-{os.getpid()}")
    tmp.write_text(f"{number}\n", encoding="utf-8")
    os.replace(tmp, paths.sequence)
    return number


def backup_name(version: PatchVersion, now: datetime | None = None) -> str:
    """A new backup folder name: ``pre-patch-vX.Y.Z_<UTC stamp>Z_<random>`` (``now``: the clock)."""
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{BACKUP_PREFIX}{version.tag}_{stamp}_{secrets.token_hex(3)}"


def new_backup(
    paths: ProjectPaths,
    version: PatchVersion,
    restores_version: str,
    *,
    old_entries: list[Entry],
    new_paths: list[str],
    now: datetime | None = None,
    name: str | None = None,
) -> Backup:
    """Create an empty backup folder (0700) with an incomplete backup.json describing the plan.

    Args:
        old_entries: the entries the apply replaces or deletes (saved by :func:`save_files`).
        new_paths: paths the apply creates that did not exist (removed on restore).
        now: creation time (default: the clock); used only for the name and ``created_at``.
        name: the folder name (from :func:`backup_name`, recorded by the caller before the folder
            exists, so a kill right after its creation leaves a folder its undo can find);
            default: a new one.

    Raises:
        BackupError: the folder cannot be created (or ``name`` exists already).
    """
    moment = now or datetime.now(UTC)
    try:
        sequence = next_sequence(paths)
        private_folder(paths.backups)
        while True:
            folder = paths.backups / (name or backup_name(version, moment))
            try:
                folder.mkdir(mode=0o700)
                break
            except FileExistsError:
                if name:
                    raise
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


def save_files(
    backup: Backup,
    root: Path,
    installed_files: list[Path],
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> int:
    """Copy every old entry of ``backup`` from ``root`` into ``files/`` and record its exact owner,
    group and mode; keep ``VERSION`` (bytes as they are) and ``installed_files`` (the installed
    manifest and record). Returns the bytes copied. ``progress(done, total)`` is called after
    each entry.

    Raises:
        BackupError: a file cannot be read or written (disk full, permissions), or changed while
            it was copied.
    """
    target = backup.paths.files
    copied = 0
    records = []
    items = backup.data.get("old_entries", [])
    try:
        target.mkdir(mode=0o700, exist_ok=True)
        for done, item in enumerate(items, 1):
            progress(done, len(items))
            entry = Entry.from_json(item)
            source = root / entry.path
            dest = target / entry.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            st = os.lstat(source)
            if entry.type == "file":
                shutil.copyfile(source, dest, follow_symlinks=False)
                digest, size = file_digest(dest)
                if digest != entry.sha256:
                    raise BackupError(
                        f"{entry.path} changed while it was being backed up.",
                        "Stop whatever writes to the tree and apply again.",
                    )
                copied += size
            elif entry.type == "symlink":
                os.symlink(entry.target, dest)
            records.append({**item, "uid": st.st_uid, "gid": st.st_gid, "perm": stat.S_IMODE(st.st_mode)})
        if (root / "VERSION").is_file():
            shutil.copyfile(root / "VERSION", backup.paths.version_file)
            backup.data["version_file"] = "VERSION"
            st = os.lstat(root / "VERSION")
            backup.data["version_owner"] = {"uid": st.st_uid, "gid": st.st_gid, "perm": stat.S_IMODE(st.st_mode)}
        for source in installed_files:
            if source.is_file():
                shutil.copyfile(source, backup.folder / source.name)
    except OSError as exc:
        raise BackupError(
            f"The code backup in {backup.folder} failed: {exc}.",
            "Free disk space or fix permissions; the apply stops before changing anything.",
        ) from None
    backup.data["old_entries"] = records
    backup.data["files_bytes"] = copied
    backup.save()
    return copied


def swap_build_outputs(backup: Backup, staging: Path, root: Path, patterns: tuple[str, ...]) -> list[str]:
    """Move build outputs (``node_modules``, ``dist``, ...) made in ``staging`` into the tree.

    Each old copy is moved into ``outputs/`` of the backup first (a rename, or a copy when the
    backups are on another filesystem), then the staged copy is renamed into place. What is moved
    is recorded in backup.json *before* moving, so :func:`patchflow.restore.restore_build_outputs`
    can undo any prefix of the work after a crash. Returns the relative paths swapped.

    Raises:
        OSError: a move failed (the caller's undo restores what was moved).
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
    store = backup.paths.outputs
    for item in backup.data["build_outputs"]:
        rel = item["path"]
        if item["had_old"] and not (store / rel).exists():
            move(root / rel, store / rel)
        move(staging / rel, root / rel)
    return found


def prune_backups(
    paths: ProjectPaths,
    *,
    keep_days: int,
    keep_last: int,
    keep: set[str],
    now: float | None = None,
    dry_run: bool = False,
) -> list[Backup]:
    """Delete backups older than ``keep_days`` beyond the newest ``keep_last`` (newest by sequence);
    returns those removed. A backup's age is that of the oldest-looking backup taken after it, so a
    clock that jumped cannot keep an old backup young.

    Never removes a backup named in ``keep`` (the one that rolls back the installed version, the
    one an interrupted apply still needs) nor an incomplete one.

    Raises:
        BackupError: a backup folder cannot be removed.
    """
    backups = list_backups(paths)
    current = time.time() if now is None else now
    protected = set(keep)
    if keep_last:
        protected |= {b.name for b in backups[-keep_last:]}
    limit = current - timedelta(days=keep_days).total_seconds()
    # a backup is at least as old as every backup taken after it (by sequence): a clock that was
    # ahead when it was taken does not make it look young
    ages: dict[str, float] = {}
    earliest_later = float("inf")
    for backup in reversed(backups):
        earliest_later = min(earliest_later, backup.created_timestamp())
        ages[backup.name] = earliest_later
    removed = []
    for backup in backups:
        if backup.name in protected or ages[backup.name] >= limit:
            continue
        if not dry_run:
            try:
                remove_tree(backup.folder)
            except OSError as exc:
                raise BackupError(f"Cannot remove backup {backup.name}: {exc}.", "Check permissions.") from None
        removed.append(backup)
    return removed
