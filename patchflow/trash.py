"""Deleting what a committed apply renamed aside (``trash-*``) without keeping the operator waiting.

After the commit, the staging folder (a whole tree: 20,000 files take many seconds to delete) is
renamed to ``.patchflow/trash-<name>`` in one ``rename``. :func:`delete_detached` then hands the
deletion to a process of its own (its own session, no terminal, no output), so the result is
printed and the command returns at once.

Crash safety: before the deleter starts, each folder is locked (``flock``, exclusive) through a
descriptor the deleter inherits, so the lock lives exactly as long as the deleter does.
:func:`being_deleted` tests that lock: patch-status and the clean-up of the next run
(:mod:`patchflow.leftovers`) leave a folder being deleted alone, and a deleter that is killed
leaves only ``trash-*`` folders whose lock is free, which the next apply or rollback removes (and
patch-status lists with that command). When the deleter cannot be started, the folders stay for
the next run and the log says so.

Run as ``python -m patchflow.trash FOLDER...`` (by :func:`delete_detached` only): deletes each
folder (the fault hook's ``trash-deleter`` point holds or kills it first, see
:mod:`patchflow.faults`).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import patchflow
from patchflow.faults import NO_FAULTS, FaultHooks
from patchflow.files import remove_tree


def _lock(folder: Path) -> int | None:
    """An open descriptor of ``folder`` holding an exclusive ``flock`` (None when it is gone)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def being_deleted(folder: Path) -> bool:
    """True while a live deleter holds the lock of ``folder`` (see the module docstring)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing the descriptor releases a lock this probe took
    return False


def delete_detached(
    folders: Sequence[Path], log: Callable[[str], None], *, faults: FaultHooks = NO_FAULTS
) -> int | None:
    """Start a detached process deleting ``folders`` (each locked first, see the module); returns
    its pid, or None when there was nothing to delete or it could not start (then the folders are
    left for the next run, and ``log`` says so). ``faults`` (tests) are passed on to it."""
    present = [f for f in folders if f.exists() or f.is_symlink()]
    if not present:
        return None
    locks = [fd for fd in (_lock(f) for f in present) if fd is not None]
    env = faults.child_environ(os.environ)
    package_parent = str(Path(patchflow.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-X", "utf8", "-m", "patchflow.trash", *(str(f) for f in present)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/",
            env=env,
            pass_fds=locks,
            start_new_session=True,
        )
    except OSError as exc:
        log(f"   {', '.join(f.name for f in present)} left for the next run to delete ({exc.strerror})")
        return None
    finally:
        for fd in locks:
            os.close(fd)  # the deleter holds the locks now
    names = ", ".join(f.name for f in present)
    log(f"   {names} is deleted in the background (pid {proc.pid}); a later run removes what it leaves")
    return proc.pid


def main(argv: Sequence[str]) -> int:
    """Delete each folder of ``argv`` (the deleter's entry point); 0, or 1 when one remains."""
    FaultHooks.from_environ(os.environ).checkpoint("trash-deleter")
    remaining = 0
    for name in argv:
        try:
            remove_tree(Path(name))
        except OSError:
            remaining += 1
    return 1 if remaining else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
