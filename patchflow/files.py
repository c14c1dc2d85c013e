"""Placing, moving and removing paths inside an install, safely.

Every write into the install goes through :func:`place_entry`: content is written beside its
destination under a temporary name derived from the destination (:func:`temp_name`, so an
interrupted run can always find and remove it) and renamed over it. Nothing is written or deleted
through a symlink that leads outside the install (:func:`check_inside`).

Owners and modes: a path that replaces another keeps the owner and group of the path it replaces,
and its group-write bit; a new path takes the owner and group of its folder. A restore puts back
the exact owner, group and mode recorded when the path was backed up (:class:`Ownership`).
Ownership is changed only where the running user may change it (root, or a group it belongs to).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from patchflow.errors import BackupError
from patchflow.manifest import Entry

TEMP_PREFIX = ".pf-"
TEMP_SUFFIX = ".tmp"


@dataclass(frozen=True)
class Ownership:
    """Owner, group and exact permission bits of a path (``perm`` includes group/other write)."""

    uid: int
    gid: int
    perm: int

    @classmethod
    def of(cls, path: Path) -> Ownership | None:
        """The ownership of ``path`` (not following a final symlink), None when it does not exist."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        return cls(st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))


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


def remove_path(path: Path) -> None:
    """Remove a file, link or *empty* directory at ``path`` if it exists (never a tree).

    Raises:
        OSError: ``path`` is a directory that is not empty.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        path.rmdir()
    else:
        path.unlink()


def remove_tree(path: Path) -> None:
    """Remove ``path`` whatever it is (file, link, or a whole tree); nothing when it is absent."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def temp_name(dest: Path) -> Path:
    """The temporary name beside ``dest`` used while it is written: ``.pf-<16 hex>.tmp`` (short:
    a long name plus a suffix would exceed NAME_MAX), the same for every run."""
    digest = hashlib.sha256(os.fsencode(dest.name)).hexdigest()[:16]
    return dest.with_name(f"{TEMP_PREFIX}{digest}{TEMP_SUFFIX}")


def set_ownership(path: Path, uid: int, gid: int, perm: int | None) -> None:
    """Give ``path`` (not following a symlink) ``uid``/``gid`` and, unless a link, ``perm``.

    The owner is changed only when it differs and the running user may change it (root); a group
    the user belongs to is set when it differs; otherwise ownership stays as created.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if (st.st_uid, st.st_gid) != (uid, gid):
        try:
            os.lchown(path, uid if os.geteuid() == 0 else -1, gid)
        except PermissionError:
            pass
    if perm is not None and not stat.S_ISLNK(st.st_mode):
        os.chmod(path, perm)


def _inherited(dest: Path, entry: Entry) -> tuple[int, int, int]:
    """``(uid, gid, perm)`` for ``dest`` written from ``entry``: those of the path it replaces
    (keeping its group-write bit), else the folder's owner and group with the entry's mode."""
    current = Ownership.of(dest)
    if current is not None:
        return current.uid, current.gid, entry.mode | (current.perm & 0o020)
    folder = Ownership.of(dest.parent)
    if folder is None:
        return os.geteuid(), os.getegid(), entry.mode
    return folder.uid, folder.gid, entry.mode


def place_entry(
    entry: Entry,
    source_root: Path,
    root: Path,
    *,
    exact: Ownership | None = None,
    written: Callable[[str], None] | None = None,
) -> None:
    """Make ``root/entry.path`` equal ``entry``, taking file content from ``source_root/entry.path``.

    Files and links are written to :func:`temp_name` beside the destination, given their owner
    and mode, then renamed over it (atomic per file); a directory standing where a file or link
    goes must already be empty. ``exact`` (a restore) sets that owner, group and mode; otherwise
    they are inherited as the module docstring says. ``written(path)`` is called between the write
    of the temporary copy and its rename (the test suite's kill hook).

    Raises:
        BackupError: the destination's folder leads outside ``root`` through a symlink.
        OSError: the write failed (disk full, permissions); the temporary file is removed.
    """
    dest = root / entry.path
    check_inside(root, dest)
    uid, gid, perm = (exact.uid, exact.gid, exact.perm) if exact else _inherited(dest, entry)
    if entry.type == "dir":
        if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
            dest.unlink()
        made = not dest.exists()
        dest.mkdir(parents=True, exist_ok=True)
        if made or exact is not None:
            set_ownership(dest, uid, gid, perm)
        else:
            os.chmod(dest, perm)
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(dest)
    remove_path(tmp)
    try:
        if entry.type == "symlink":
            os.symlink(entry.target, tmp)
            set_ownership(tmp, uid, gid, None)
        else:
            shutil.copyfile(source_root / entry.path, tmp, follow_symlinks=False)
            set_ownership(tmp, uid, gid, perm)
        if written is not None:
            written(entry.path)
        if dest.is_dir() and not dest.is_symlink():
            dest.rmdir()
        os.replace(tmp, dest)
    except BaseException:  # any exit, an interrupt too: no temporary file is left behind; re-raised
        remove_path(tmp)
        raise


def gone_name(path: Path) -> Path:
    """The name beside ``path`` it is renamed to before it is deleted (``.pf-<16 hex>.gone``), so
    a kill during the delete leaves either the whole of ``path`` or a name known to be rubbish."""
    return temp_name(path).with_suffix(".gone")


def remove_temporaries(path: Path) -> None:
    """Remove what an interrupted write or move of ``path`` may have left beside it (its
    :func:`temp_name` and :func:`gone_name`)."""
    remove_tree(temp_name(path))
    remove_tree(gone_name(path))


def move(source: Path, target: Path) -> None:
    """Move ``source`` to ``target`` (absent): a rename, or, when they are on different filesystems
    (``EXDEV``), a copy to :func:`temp_name` beside ``target`` renamed into place, then ``source``
    renamed to :func:`gone_name` and deleted. Links stay links; modes and owners are kept.

    A kill at any instant leaves ``source`` or ``target`` whole (possibly both), never a partial
    copy under either name: what is left over carries a temporary name
    (:func:`remove_temporaries`).

    Raises:
        OSError: the move failed; a partial copy is removed.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(source, target)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    tmp = temp_name(target)
    remove_tree(tmp)
    try:
        if source.is_dir() and not source.is_symlink():
            shutil.copytree(source, tmp, symlinks=True, copy_function=_copy_with_owner)
            _copy_owner(source, tmp)
        else:
            _copy_with_owner(str(source), str(tmp))
        os.replace(tmp, target)
    except BaseException:  # any exit, an interrupt too: no temporary copy is left behind; re-raised
        remove_tree(tmp)
        raise
    gone = gone_name(source)
    remove_tree(gone)
    os.replace(source, gone)
    remove_tree(gone)


def _copy_owner(source: Path, target: Path) -> None:
    st = os.lstat(source)
    set_ownership(target, st.st_uid, st.st_gid, None if stat.S_ISLNK(st.st_mode) else stat.S_IMODE(st.st_mode))


def _copy_with_owner(source: str, target: str) -> str:
    shutil.copy2(source, target, follow_symlinks=False)
    _copy_owner(Path(source), Path(target))
    return target


def user_name(uid: int) -> str:
    """The login name of ``uid`` (``uid 1001`` when it has none)."""
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def current_user() -> str:
    """``deploy (uid 1001)``: who this process acts as (its effective uid)."""
    uid = os.geteuid()
    return f"{user_name(uid)} (uid {uid})"


def describe_owner(path: Path) -> str:
    """``owned by root, mode 0700`` for ``path`` (not following a final symlink); ``missing``
    when it does not exist, ``cannot stat`` when a folder above it cannot be searched."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"cannot stat: {exc.strerror}"
    return f"owned by {user_name(st.st_uid)}, mode {stat.S_IMODE(st.st_mode):04o}"


def nearest_existing(path: Path) -> Path:
    """``path`` or the nearest folder above it that exists (where creating ``path`` writes)."""
    probe = path
    while not os.path.lexists(probe) and probe != probe.parent:
        probe = probe.parent
    return probe


def sync_filesystem(path: Path) -> None:
    """Make every write to the filesystem holding ``path`` durable (``syncfs(2)`` on it; ``sync(2)``
    where ``syncfs`` is missing): the data a step wrote (the backup's copies, the switched tree),
    before the journal entry that vouches for it is written (README: Durability). Never raises: a
    sync that fails leaves the data as durable as the kernel's own write-back makes it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        os.sync()
        return
    try:
        if _syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _syncfs(fd: int) -> int:
    """``syncfs(fd)`` through the C library (0 when done, -1 when it failed or does not exist)."""
    import ctypes

    try:
        return int(ctypes.CDLL(None, use_errno=True).syncfs(fd))
    except (AttributeError, OSError):
        return -1


def private_folder(path: Path) -> Path:
    """Create ``path`` and every missing folder above it as folders only their owner may enter
    (mode 0700 whatever the umask: the state folder, backups/, logs/). Existing folders are left as
    they are (:func:`tighten_folder` tightens patchflow's own). Returns ``path``.

    Raises:
        OSError: a folder cannot be created.
    """
    missing = []
    current = path
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            continue
        os.chmod(folder, 0o700)  # mkdir's mode is filtered by the umask; this is exact
    return path


def tighten_folder(path: Path) -> None:
    """Give group and other users no access to ``path`` (0700) when it is a folder of this user
    that allows them any; nothing when it is missing, a link, or another user's. Never raises."""
    try:
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(path, stat.S_IMODE(st.st_mode) & 0o700)
    except OSError:
        pass


def fsync_directory(path: Path) -> None:
    """fsync the folder ``path`` (its entries: a rename into it is durable once this returns).

    Raises:
        OSError: it cannot be opened or synced.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
