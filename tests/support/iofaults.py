"""Failing system calls for the I/O fault sweep (issue 22): run an ``inv`` task with
``tests/support/faultshim.c`` preloaded, so the N-th ``write``, ``fsync``, ``openat``, ``rename``,
``unlink`` or ``mkdir`` on a path of the install fails with ``ENOSPC``, ``EIO`` or ``EDQUOT``.

A counting run (no fault, every call logged) gives, per kind, how many calls an apply or a rollback
makes on the install's paths and which path each one touched; :func:`spread_parts` picks calls from it so
every kind meets every part of the run (the journal, the logs, the backup, the staging and patch
folders, the tree). The shim is built once per test session with the C compiler
(``scripts/ensure-system.sh --for test`` installs gcc).
"""

from __future__ import annotations

import errno
import shutil
import struct
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from support.installs import Install, inv_popen
from support.missing import missing_service

SOURCE = Path(__file__).with_name("faultshim.c")
KINDS = ("write", "fsync", "openat", "rename", "unlink", "mkdir")
ERRNOS = (errno.ENOSPC, errno.EIO, errno.EDQUOT)
# a full disk or an exhausted quota stays so for the rest of the run; an I/O error is one call's
PERSISTENT = {errno.ENOSPC, errno.EDQUOT}


def build_shim(folder: Path) -> Path:
    """``faultshim.so`` compiled into ``folder`` (fails under ``CI=true`` without a C compiler)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        missing_service("no C compiler (cc/gcc) to build the syscall fault shim: apt-get install gcc")
    target = folder / "faultshim.so"
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-o", str(target), str(SOURCE), "-ldl"],
        check=True,
        capture_output=True,
    )
    return target


@dataclass(frozen=True)
class Call:
    """One counted call of the counting run: its kind, its number within the kind (from 1) and the
    path it touched, relative to the install (``-`` outside it)."""

    kind: str
    number: int
    path: str

    @property
    def part(self) -> str:
        """The part of the install the call touched: ``journal``, ``logs``, ``state`` (the rest of
        ``.patchflow/``), ``backups``, ``patches``, ``staging`` or ``tree``."""
        top, _, rest = self.path.partition("/")
        if top == ".patchflow":
            if rest.startswith("journal"):
                return "journal"
            if rest.startswith("logs"):
                return "logs"
            if rest.startswith(("staging", "stage")):
                return "staging"
            return "state"
        if top in ("backups", "patches"):
            return top
        return "tree"


def _environment(
    shim: Path, root: Path, counts: Path, log: Path | None, fault: tuple[str, int, int] | None
) -> dict[str, str]:
    env = {
        "LD_PRELOAD": str(shim),
        "FAULTSHIM_PREFIX": str(root.resolve()),
        "FAULTSHIM_COUNTS": str(counts),
        "FAULTSHIM_LOG": str(log) if log else "",
    }
    if fault is not None:
        kind, number, code = fault
        env.update(
            FAULTSHIM_KIND=kind,
            FAULTSHIM_N=str(number),
            FAULTSHIM_ERRNO=str(code),
            FAULTSHIM_PERSIST="1" if code in PERSISTENT else "0",
        )
    return env


def read_counts(counts: Path) -> dict[str, int]:
    """The per-kind counts the shim left in ``counts``."""
    values = struct.unpack(f"<{len(KINDS)}q", counts.read_bytes()[: 8 * len(KINDS)])
    return dict(zip(KINDS, values, strict=True))


def run(
    install: Install, shim: Path, args: tuple[str, ...], workdir: Path, fault: tuple[str, int, int] | None = None
) -> tuple[int, str, dict[str, int], list[Call]]:
    """``inv args`` on ``install`` with the shim: ``fault`` is ``(kind, n, errno)`` or None (count
    only, every call logged). Returns (exit code, output, counts, the logged calls)."""
    counts = workdir / "faultshim.counts"
    log = workdir / "faultshim.log" if fault is None else None
    for stale in (counts, log):
        if stale is not None:
            stale.unlink(missing_ok=True)
    proc = inv_popen(install, *args, env=_environment(shim, install.root, counts, log, fault))
    out, err = proc.communicate(timeout=600)
    calls = []
    root = str(install.root.resolve())
    if log is not None:
        for line in log.read_text(errors="replace").splitlines():
            kind, number, path = line.split(" ", 2)
            relative = path[len(root) + 1 :] if path.startswith(root + "/") else ("." if path == root else "-")
            calls.append(Call(kind, int(number.rstrip("!")), relative))
    return proc.returncode, out + err, read_counts(counts), calls


def spread_parts(calls: list[Call], per_part: int = 1) -> list[Call]:
    """``per_part`` calls in each part of the install the run touches (journal, logs, state,
    backups, patches, staging, tree), in the order the run reached the parts; in each part the
    first call of the kind chosen least so far: a small sample that meets every part of the run
    and as many kinds as it can."""
    chosen: list[Call] = []
    used = dict.fromkeys(KINDS, 0)
    for part in dict.fromkeys(c.part for c in calls):  # in the run's order
        here = [c for c in calls if c.part == part]
        for _ in range(per_part):
            left = [c for c in here if c not in chosen]
            if not left:
                break
            call = min(left, key=lambda c: (used[c.kind], here.index(c)))
            used[call.kind] += 1
            chosen.append(call)
    return chosen


def errno_for(index: int) -> int:
    """The errno of the ``index``-th trial: ENOSPC, EIO and EDQUOT in turn."""
    return ERRNOS[index % len(ERRNOS)]


def tally(outcomes: list[tuple[str, str, int, str]]) -> str:
    """``kind errno: count`` per kind and errno of ``(action, kind, errno, landed)`` outcomes, and
    where the installs landed."""
    by_fault = Counter((kind, errno.errorcode[code]) for _, kind, code, _ in outcomes)
    landed = Counter(f"{action}->{where}" for action, _, _, where in outcomes)
    faults = ", ".join(f"{kind} {name}: {count}" for (kind, name), count in sorted(by_fault.items()))
    return f"{len(outcomes)} faults ({faults}); landed {dict(sorted(landed.items()))}"


__all__ = ["ERRNOS", "KINDS", "Call", "build_shim", "errno_for", "read_counts", "run", "spread_parts", "tally"]
