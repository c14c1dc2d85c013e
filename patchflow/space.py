"""Free space: bytes and inodes needed on every filesystem an apply writes, checked before stop.

An apply writes in several places that may be different filesystems (the install, the staging
folder under ``.patchflow/``, ``backups/`` on another mount). Each :class:`Need` names a folder and
what it will receive; :func:`check_space` groups them by filesystem (``st_dev``) and compares the
sums with ``statvfs`` (bytes available to this user, inodes available), keeping a reserve of
``margin`` bytes on each.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from patchflow.errors import BackupError


@dataclass(frozen=True)
class Need:
    """``bytes`` and ``inodes`` that ``label`` will write under ``folder``."""

    folder: Path
    label: str
    bytes: int
    inodes: int


@dataclass(frozen=True)
class Room:
    """What one filesystem has: the first folder seen on it, free bytes and inodes."""

    folder: Path
    free_bytes: int
    free_inodes: int


def _existing(path: Path) -> Path:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def room_of(folder: Path) -> tuple[int, Room]:
    """``(device, Room)`` of the filesystem holding ``folder`` (or its nearest existing parent)."""
    probe = _existing(folder)
    stats = os.statvfs(probe)
    # filesystems without an inode table (btrfs...) report 0 inodes in total: no limit to check
    inodes = stats.f_favail if stats.f_files else 2**62
    return os.stat(probe).st_dev, Room(probe, stats.f_bavail * stats.f_frsize, inodes)


def check_space(needs: list[Need], margin: int, *, action: str = "apply") -> dict[int, tuple[Room, int, int]]:
    """Check that every filesystem has the bytes and inodes its needs add up to, plus ``margin``
    bytes; returns ``{device: (room, bytes needed, inodes needed)}``. ``action`` names the command
    to run again in the hint (``apply``, ``roll back``).

    Raises:
        BackupError: a filesystem is short of bytes or inodes (names it, with the numbers and
            what needs the room); nothing was changed.
    """
    totals: dict[int, tuple[Room, int, int, list[str]]] = {}
    for need in needs:
        device, room = room_of(need.folder)
        _, size, inodes, labels = totals.get(device, (room, 0, 0, []))
        totals[device] = (room, size + need.bytes, inodes + need.inodes, [*labels, need.label])
    problems = []
    for room, size, inodes, labels in totals.values():
        what = " + ".join(labels)
        if size + margin > room.free_bytes:
            problems.append(
                f"{room.folder} has {room.free_bytes} bytes free but {what} need {size} bytes (+ a reserve of {margin})"
            )
        if inodes + 16 > room.free_inodes:
            problems.append(f"{room.folder} has {room.free_inodes} free inodes but {what} need {inodes}")
    if problems:
        raise BackupError(
            f"Not enough free space: {'; '.join(problems)}.",
            f"Free space (e.g. inv prune-backups) and {action} again; nothing was stopped or changed.",
        )
    return {device: (room, size, inodes) for device, (room, size, inodes, _) in totals.items()}
