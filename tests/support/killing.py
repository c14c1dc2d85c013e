"""Kill a running ``inv`` at an instant of the test's choosing, and fill a filesystem.

Two ways to die, as an operator's machine does it:

* ``main``: SIGKILL to the ``inv`` process only (``kill -9 <pid>``, the OOM killer): its commands
  (``psql``, ``pg_restore``, ``pg_dump``) run on as orphans;
* ``tree``: SIGKILL to ``inv`` and every command below it at the same instant (a stopped
  container, a cgroup kill), except the application services it started, which live on as a
  service manager's processes would.

A filesystem is filled with one big file (bytes) or many empty ones (inodes) in a folder of the
test's choosing, leaving a chosen amount free; :func:`mounted_tmpfs` gives a real one with a size
and an inode limit, and :func:`install_on` an install living on it.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from support.installs import Install, InstallTemplate, inv_popen
from support.missing import missing_service

SERVICE_MARKER = b"PF_SERVICE_ID="


def _stat_fields(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, grandchildren...), from ``/proc``."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields and fields[0] not in ("Z", "X"):
                parents.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def is_service(pid: int) -> bool:
    """True for a process of the install's services (it carries the service marker)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return any(var.startswith(SERVICE_MARKER) for var in environ.split(b"\0"))


def kill(pid: int, how: str) -> list[int]:
    """SIGKILL ``pid`` (``main``) or ``pid`` and its non-service descendants (``tree``): the
    descendants are stopped first so none of them acts after the parent died. Returns the pids
    killed."""
    victims = [pid]
    if how == "tree":
        below = [p for p in descendants(pid) if not is_service(p)]
        for child in below:
            try:
                os.kill(child, signal.SIGSTOP)
            except ProcessLookupError:
                pass
        victims += below
    for victim in victims:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return victims


def wait_stopped(pid: int, timeout: float = 120) -> None:
    """Wait until ``pid`` is stopped by a signal (state ``T``, e.g. the kill hook's SIGSTOP).

    Raises:
        AssertionError: it exited or did not stop within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fields = _stat_fields(pid)
        if not fields or fields[0] in ("Z", "X"):
            raise AssertionError(f"process {pid} exited before it reached the stop point")
        if fields[0] in ("T", "t"):
            return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} did not stop within {timeout} s")


def fill_bytes(folder: Path, leave: int) -> None:
    """Write one file in ``folder`` until the filesystem has about ``leave`` bytes free."""
    folder.mkdir(parents=True, exist_ok=True)
    stats = os.statvfs(folder)
    want = stats.f_bavail * stats.f_frsize - leave
    block = b"\0" * (1 << 20)
    with open(folder / f"fill-{time.monotonic_ns()}", "wb") as handle:
        while want > 0:
            chunk = block[: min(len(block), want)]
            try:
                handle.write(chunk)
                handle.flush()
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
            want -= len(chunk)


def fill_inodes(folder: Path, leave: int) -> None:
    """Create empty files in ``folder`` until the filesystem has about ``leave`` inodes free."""
    folder.mkdir(parents=True, exist_ok=True)
    count = os.statvfs(folder).f_favail - leave
    for index in range(max(0, count)):
        try:
            (folder / f"i{index}").touch()
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            break


@contextmanager
def mounted_tmpfs(mount: Path, size: str, inodes: int | None = None) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (``32m``) and ``inodes`` (default: the kernel's) at ``mount``
    (made if missing) for the block; unmounted after it (lazily: a process of the test may still
    hold a file there)."""
    if os.geteuid() != 0:
        missing_service("mounting a tmpfs needs root (CI runs as root)")
    mount.mkdir(parents=True, exist_ok=True)
    options = f"size={size},mode=0755" + (f",nr_inodes={inodes}" if inodes is not None else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@contextmanager
def backups_on_tmpfs(install: Install, size: str, inodes: int | None = None) -> Iterator[Path]:
    """The install's backups/ on a tmpfs of ``size`` and ``inodes`` for the block (another
    filesystem than the install's), with the backups already there copied onto it."""
    backups = install.root / "backups"
    kept = install.root.parent / "backups-before-mount"
    shutil.move(str(backups), kept)
    with mounted_tmpfs(backups, size, inodes):
        for child in kept.iterdir():
            shutil.copytree(child, backups / child.name, symlinks=True)
        yield backups


@contextmanager
def install_on(template: InstallTemplate, folder: Path) -> Iterator[Install]:
    """A running 2.2.0 install in ``folder`` (on a small filesystem: a free-space margin of 1 MiB);
    its services are stopped and its databases dropped after the block."""
    install = template.new_install(folder / "install", {"PATCHFLOW_FREE_SPACE_MARGIN": str(1024 * 1024)})
    try:
        yield install
    finally:
        install.down()
        rows = install.cluster.psql(
            "postgres", f"SELECT datname FROM pg_database WHERE datname LIKE '{install.dbname}%';\n"
        )
        for name in rows.split():
            install.cluster.drop_database(name)


def held_then_filled(
    install: Install, args: tuple[str, ...], point: str, filler: Path, fill: str, leave: int
) -> tuple[int, str, str]:
    """Run ``inv <args>`` held by the kill hook with SIGSTOP at ``point``; while it is held, fill
    the filesystem of ``filler`` (``fill``: ``bytes`` or ``inodes``) leaving about ``leave``;
    let it go on and return ``(exit code, stdout, stderr)``."""
    proc = inv_popen(install, *args, env={"PATCHFLOW_TEST_KILL_AT": f"{point}=SIGSTOP"})
    try:
        try:
            wait_stopped(proc.pid)
        except AssertionError as exc:
            out, err = proc.communicate(timeout=300)
            raise AssertionError(f"{exc}:\n{out}\n{err}") from None
        (fill_bytes if fill == "bytes" else fill_inodes)(filler, leave)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err
