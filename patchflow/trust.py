"""Whose checkout this is: patchflow does not act on a checkout another user controls.

patchflow runs the checkout's commands (the install, build and migrate commands of its ``.env`` and
``pyproject.toml``) and, through ``inv`` and ``make``, its ``tasks.py`` and ``Makefile``. On a server
it often runs as root. A checkout whose folder or whose ``tasks.py``, ``noxfile.py``, ``Makefile``,
``.env``, ``pyproject.toml`` or ``host.toml`` belongs to another user (or may be written by every
user) lets that user choose what root runs next, so patchflow refuses it, the way git refuses a
repository of "dubious ownership" (``safe.directory``).

Trusted owners are the running user and root (root can do anything already). A checkout is trusted
anyway when it is listed, one absolute path per line (``*``: every checkout), in
``/etc/patchflow/safe-directories`` (``PATCHFLOW_SAFE_DIRECTORIES_FILE`` names another file) or in
``PATCHFLOW_SAFE_DIRECTORIES`` (paths separated by ``:``) of the running user's environment: both
are outside the checkout, so its owner cannot list it.

The check runs before anything is read from the checkout (:func:`patchflow.tasks.edge.project_root`).
``inv`` and ``make`` load the checkout's own ``tasks.py`` and ``Makefile`` before any check can
run: as root, run ``patchflow <task>`` (``python -m patchflow``), which does not (README: Operating
a server).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from patchflow.errors import ConfigError
from patchflow.files import tighten_folder, user_name

if TYPE_CHECKING:
    from patchflow.paths import ProjectPaths

SAFE_FILE = Path("/etc/patchflow/safe-directories")
SAFE_FILE_VARIABLE = "PATCHFLOW_SAFE_DIRECTORIES_FILE"
SAFE_VARIABLE = "PATCHFLOW_SAFE_DIRECTORIES"
#: Files of a checkout that decide what patchflow runs (code, commands, settings).
CONTROLLING = ("tasks.py", "noxfile.py", "Makefile", ".env", "pyproject.toml", "host.toml")


def _owner_name(uid: int) -> str:
    return user_name(uid)


def untrusted_parts(root: Path, uid: int) -> list[str]:
    """What of the checkout at ``root`` another user controls, one line each
    (``Makefile: owned by deploy``, ``.env: writable by every user``); empty when nothing."""
    found = []
    for name in ("", *CONTROLLING):
        path = root / name if name else root
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            found.append(f"{name or 'the folder'}: cannot be checked ({exc.strerror})")
            continue
        label = name or f"the folder {root}"
        if st.st_uid not in (uid, 0):
            found.append(f"{label}: owned by {_owner_name(st.st_uid)}")
        elif stat.S_ISLNK(st.st_mode):  # a link's own mode is always 0777: judge what it points to
            try:
                real = path.resolve(strict=True)
                target = os.stat(real)
            except OSError:
                continue
            if target.st_uid not in (uid, 0):
                found.append(f"{label}: a link to {real}, owned by {_owner_name(target.st_uid)}")
            elif target.st_mode & stat.S_IWOTH:
                found.append(f"{label}: a link to {real}, writable by every user")
        elif st.st_mode & stat.S_IWOTH and not (stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX):
            found.append(f"{label}: writable by every user")
    return found


def safe_directories(environ: Mapping[str, str]) -> list[str]:
    """The checkouts listed as trusted (absolute paths, or ``*``), from the file and the variable."""
    listed = [p for p in environ.get(SAFE_VARIABLE, "").split(":") if p.strip()]
    path = Path(environ.get(SAFE_FILE_VARIABLE) or SAFE_FILE)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        text = ""
    listed += [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return listed


def _listed(root: Path, listed: list[str]) -> bool:
    real = os.path.realpath(root)
    return any(entry == "*" or os.path.realpath(entry) == real for entry in listed)


def check_checkout_trusted(root: Path, environ: Mapping[str, str] | None = None, uid: int | None = None) -> None:
    """Refuse a checkout another user controls (see the module docstring).

    Raises:
        ConfigError: the folder or a file that decides what patchflow runs belongs to another user
            (or is writable by every user), and the checkout is not listed as safe; nothing was
            read from it or changed.
    """
    environ = os.environ if environ is None else environ
    uid = os.geteuid() if uid is None else uid
    parts = untrusted_parts(root, uid)
    if not parts or _listed(root, safe_directories(environ)):
        return
    who = _owner_name(uid)
    raise ConfigError(
        f"Refusing to act on {root} as {who}: another user controls what patchflow would run there "
        f"({'; '.join(parts)}). That user could make {who} run any command. Nothing was read or changed.",
        f"Run patchflow as the user who owns the checkout, or make {who} its owner (chown -R {who} {root}); "
        f"if you trust that user, list the checkout in {SAFE_FILE} (one path per line: echo {root} | sudo tee -a "
        f"{SAFE_FILE}) or in {SAFE_VARIABLE}.",
    )


def state_file_problems(paths: ProjectPaths, uid: int | None = None) -> list[str]:
    """patchflow's own files another user could have planted or may write: each of the journal,
    history, lock, lock record, installed records, sequence and operation log that is a link, or
    belongs to a user other than the running one, root or (for a checkout listed as safe) the
    checkout's owner, or may be written by group or others (one of the running user's own is
    closed instead: an older patchflow made them under the umask). (With the state folder 0700
    nobody else can put one there; these are left from before.)"""
    uid = os.geteuid() if uid is None else uid
    trusted = {uid, 0}
    if _listed(paths.root, safe_directories(os.environ)):  # the operator trusts the checkout's owner
        try:
            trusted.add(os.stat(paths.root).st_uid)
        except OSError:
            pass
    names = [
        paths.journal,
        paths.history,
        paths.lock,
        paths.lock_info,
        paths.installed_record,
        paths.installed_manifest,
        paths.sequence,
        paths.operation_log,
    ]
    found = []
    for path in names:
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISLNK(st.st_mode):
            found.append(f"{path} is a link (to {os.readlink(path)})")
        elif st.st_uid not in trusted:
            found.append(f"{path} belongs to {_owner_name(st.st_uid)}")
        elif st.st_mode & 0o022:
            if st.st_uid == uid:  # an older patchflow made it under the umask (0664): closed, not refused
                try:
                    os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o022)
                    continue
                except OSError:
                    pass
            found.append(f"{path} may be written by other users (mode {stat.S_IMODE(st.st_mode):04o})")
    return found


def close_folders(paths: ProjectPaths) -> None:
    """Close patchflow's folders to other users: the state folder, backups/ and the logs to 0700
    when they allow more (a checkout made under a loose umask). Run once a run holds the lock (it
    changes the install then anyway: a refused command changes nothing)."""
    for folder in (paths.state, paths.backups, paths.logs):
        tighten_folder(folder)


def secure_state(paths: ProjectPaths) -> None:
    """Refuse state files another user could have planted (:func:`state_file_problems`).

    Raises:
        ConfigError: such a file is there (named, with what to do); nothing was changed.
    """
    problems = state_file_problems(paths)
    if problems:
        raise ConfigError(
            f"patchflow's own files in {paths.state} could have been written by another user: {'; '.join(problems)}. "
            "patchflow trusts what they say (the history, the journal, the lock), so it stops here. Nothing was "
            "changed.",
            "Check them (who made them, and why), then remove or fix them: chown them to the user who runs "
            "patchflow and chmod go-w (or delete a link). patchflow keeps its folders 0700 from now on.",
        )
