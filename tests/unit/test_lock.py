"""The install lock against a real second process (C19: concurrent applies, stale locks)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import patchflow
from patchflow.errors import LockError
from patchflow.lock import install_lock, lock_status

REPO = Path(patchflow.__file__).resolve().parents[1]
HOLDER = """
import sys, time
from pathlib import Path
from patchflow.lock import install_lock
with install_lock(Path(sys.argv[1]), Path(sys.argv[2]), action="apply", version="2.3.0"):
    print("locked", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    state = tmp_path / ".patchflow"
    return state / "apply.lock", state / "apply.lock.json"


@pytest.fixture
def holder(paths: tuple[Path, Path]) -> Iterator[subprocess.Popen[str]]:
    """A child process holding the lock (``apply`` of 2.3.0) until it is killed."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(paths[0]), str(paths[1])], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def test_lock_is_taken_and_released(paths: tuple[Path, Path]) -> None:
    lock, info = paths
    with install_lock(lock, info, action="rollback", version="2.2.0") as me:
        data = json.loads(info.read_text(encoding="utf-8"))
        assert data["pid"] == os.getpid() == me.pid
        assert (data["action"], data["version"], data["host"]) == ("rollback", "2.2.0", socket.gethostname())
        assert lock_status(lock, info, stale_after=3600) is not None
    assert not info.exists()
    assert lock_status(lock, info, stale_after=3600) is None


def test_second_run_refused_while_another_process_holds_it(
    paths: tuple[Path, Path], holder: subprocess.Popen[str]
) -> None:
    lock, info = paths
    before = info.read_bytes()
    with pytest.raises(LockError) as caught, install_lock(lock, info, action="apply", version="2.4.0"):
        pytest.fail("the lock must not be granted twice")
    message = caught.value.message
    assert f"pid {holder.pid}" in message
    assert socket.gethostname() in message
    assert "apply of 2.3.0" in message
    assert "since " in message
    assert "nothing was changed" in caught.value.hint
    assert caught.value.exit_code == 3
    assert info.read_bytes() == before, "the holder's record is left alone"


def test_lock_status_reports_the_live_holder(paths: tuple[Path, Path], holder: subprocess.Popen[str]) -> None:
    status = lock_status(*paths, stale_after=3600)
    assert status is not None
    assert status["state"] == "held"
    assert status["pid"] == holder.pid
    assert (status["action"], status["version"]) == ("apply", "2.3.0")
    assert 0 <= status["age_seconds"] < 60
    too_long = lock_status(*paths, stale_after=-1)
    assert too_long is not None and too_long["state"] == "held-too-long"


def test_killed_holder_leaves_a_stale_lock(paths: tuple[Path, Path], holder: subprocess.Popen[str]) -> None:
    lock, info = paths
    kill(holder)
    assert info.is_file(), "SIGKILL leaves the holder record behind"
    status = lock_status(lock, info, stale_after=3600)
    assert status is not None and status["state"] == "stale"
    assert status["pid"] == holder.pid

    before = info.read_bytes()
    with pytest.raises(LockError) as caught, install_lock(lock, info, action="apply", version="2.4.0"):
        pytest.fail("a stale lock must not be taken over silently")
    assert "Stale lock" in caught.value.message
    assert f"pid {holder.pid}" in caught.value.message
    assert "apply of 2.3.0" in caught.value.message
    assert "is gone" in caught.value.message
    assert "--break-lock" in caught.value.hint
    assert info.read_bytes() == before


def test_break_stale_takes_over(paths: tuple[Path, Path], holder: subprocess.Popen[str]) -> None:
    lock, info = paths
    kill(holder)
    with install_lock(lock, info, action="apply", version="2.4.0", break_stale=True) as me:
        data = json.loads(info.read_text(encoding="utf-8"))
        assert data["pid"] == os.getpid() == me.pid
        assert data["version"] == "2.4.0"
    assert not info.exists()
    assert lock_status(lock, info, stale_after=3600) is None


def test_break_stale_does_not_break_a_live_lock(paths: tuple[Path, Path], holder: subprocess.Popen[str]) -> None:
    lock, info = paths
    with (
        pytest.raises(LockError, match="Another apply or rollback is running"),
        install_lock(lock, info, action="apply", version="2.4.0", break_stale=True),
    ):
        pytest.fail("break_stale must never take a lock from a live process")
    assert holder.poll() is None
