"""What killed runs leave in the state folder after their journal is closed (or before it was
written): staging folders, trees renamed aside after a commit (``trash-*``), temporary files of
atomic writes, an unused space reserve.

None of it is part of the install, and nothing reads it: any later run that holds the lock removes
it (apply and rollback at their lock step; an apply of the installed version finishes just this
clean-up), and patch-status lists it with that command. A ``trash-*`` folder that the detached
deleter of a committed apply is still deleting (:mod:`patchflow.trash`) is not a leftover.
"""

from __future__ import annotations

from pathlib import Path

from patchflow.files import remove_tree
from patchflow.lock import pid_alive
from patchflow.paths import ProjectPaths
from patchflow.trash import being_deleted

PATTERNS = ("staging-*", "trash-*", ".*.tmp-*")


def leftovers(paths: ProjectPaths, *, reserve: bool = False) -> list[Path]:
    """Leftover paths in the state folder (``reserve``: the space reserve too), sorted."""
    if not paths.state.is_dir():
        return []
    found = {
        p
        for pattern in PATTERNS
        for p in paths.state.glob(pattern)
        if not _being_written(p) and not (p.name.startswith("trash-") and being_deleted(p))
    }
    if reserve and paths.space_reserve.exists():
        found.add(paths.space_reserve)
    return sorted(found)


def remove_leftovers(paths: ProjectPaths, *, reserve: bool = False) -> list[str]:
    """Remove :func:`leftovers` (call with the lock held); returns their names.

    Raises:
        OSError: one could not be removed.
    """
    found = leftovers(paths, reserve=reserve)
    for path in found:
        remove_tree(path)
    return [p.name for p in found]


def _being_written(path: Path) -> bool:
    """True for the temporary file of an atomic write whose process still runs (patch-status
    writing its cache): ``.<name>.tmp-<pid>``."""
    _, marker, pid = path.name.rpartition(".tmp-")
    return bool(marker) and pid.isdigit() and pid_alive(int(pid))
