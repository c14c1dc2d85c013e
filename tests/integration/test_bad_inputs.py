"""Bad inputs to apply-patch on a running install: each is refused with a clear message and a
non-zero exit, and leaves the install exactly as it was (tree, database, running version, backups)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.crafted import regenerate_sums
from support.installs import (
    REPO,
    Install,
    backup_names,
    build_release,
    health,
    set_dotenv,
    status_json,
)
from support.services import refusing_port

pytestmark = pytest.mark.integration


@dataclass
class Snapshot:
    tree: dict[str, tuple[str, int, str]]
    dump: str
    backups: list[str]
    history_lines: int


def _snapshot(install: Install) -> Snapshot:
    history = install.root / ".patchflow/history.jsonl"
    lines = len(history.read_text().splitlines()) if history.is_file() else 0
    return Snapshot(install.state(), install.pg_dump(), backup_names(install), lines)


def _assert_unchanged(install: Install, before: Snapshot) -> None:
    assert install.state() == before.tree, "the install tree changed"
    assert install.pg_dump() == before.dump, "the database changed"
    assert backup_names(install) == before.backups, "a backup folder was created"
    assert health(install) == (200, "2.2.0")
    assert (install.root / "VERSION").read_text().strip() == "2.2.0"
    status = status_json(install)
    assert status["interrupted"] is None and status["lock"] is None
    assert not list((install.root / ".patchflow").glob("staging-*"))


def _refused(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0, done.stdout + done.stderr
    assert "error:" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    return done.stderr


def _apply(install: Install, version: str = "2.3.0", *extra: str, env: dict[str, str] | None = None) -> str:
    return _refused(install.inv("apply-patch", "--version", version, "--yes", *extra, env=env))


def test_missing_patch(install: Install) -> None:
    before = _snapshot(install)
    err = _apply(install, "9.9.9")
    assert "v9.9.9" in err and "does not exist" in err
    _assert_unchanged(install, before)


def test_corrupt_archive_checksum_mismatch(install: Install, tmp_path: Path) -> None:
    folder = install.release(tmp_path, "2.3.0")
    before = _snapshot(install)
    archive = folder / "patch-v2.3.0.tar.gz"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    archive.write_bytes(bytes(data))
    err = _apply(install)
    assert "patch-v2.3.0.tar.gz: sha256 checksum mismatch" in err
    assert "md5 checksum mismatch" in err
    _assert_unchanged(install, before)


def test_truncated_archive_with_regenerated_checksums(install: Install, tmp_path: Path) -> None:
    folder = install.release(tmp_path, "2.3.0")
    before = _snapshot(install)
    archive = folder / "patch-v2.3.0.tar.gz"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["archive"]["sha256"] = hashlib.sha256(archive.read_bytes()).hexdigest()
    manifest["archive"]["size"] = archive.stat().st_size
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    regenerate_sums(folder)
    assert subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=folder, capture_output=True).returncode == 0
    err = _apply(install)
    assert "corrupt or truncated" in err
    _assert_unchanged(install, before)


def test_sha256sums_missing(install: Install, tmp_path: Path) -> None:
    folder = install.release(tmp_path, "2.3.0")
    before = _snapshot(install)
    (folder / "SHA256SUMS").unlink()
    err = _apply(install)
    assert "SHA256SUMS is missing" in err
    _assert_unchanged(install, before)


def test_version_with_shell_metacharacters(install: Install, tmp_path: Path) -> None:
    install.release(tmp_path, "2.3.0")
    before = _snapshot(install)
    marker = tmp_path / "pwned"
    versions = [
        f"2.3.0;touch {marker}",
        f"$(touch {marker})",
        f"2.3.0`touch {marker}`",
        f"2.3.0 && touch {marker}",
        f"2.3.0|touch {marker}",
        "../../2.3.0",
    ]
    calls = [("apply-patch", version, "--yes") for version in versions]
    calls += [("rollback-patch", versions[0], "--yes"), ("verify-patch", versions[0]), ("create-patch", versions[1])]
    for task, version, *extra in calls:
        err = _refused(install.inv(task, "--version", version, *extra))
        assert "Invalid" in err and "not allowed" in err, (task, version, err)
    assert not marker.exists()
    _assert_unchanged(install, before)


def test_database_down(install: Install, tmp_path: Path) -> None:
    install.release(tmp_path, "2.3.0")
    before = _snapshot(install)
    env_file = install.root / ".env"
    original = env_file.read_bytes()
    with refusing_port() as closed:
        set_dotenv(install, "DATABASE_URL", f"postgresql://postgres@127.0.0.1:{closed}/{install.dbname}")
        try:
            err = _apply(install, env={"PATCHFLOW_DB_WAIT_TIMEOUT": "2"})
        finally:
            env_file.write_bytes(original)
    assert "does not accept connections" in err
    assert f"127.0.0.1:{closed}" in err
    _assert_unchanged(install, before)


def test_not_enough_disk_space(install: Install, tmp_path: Path) -> None:
    install.release(tmp_path, "2.3.0")
    before = _snapshot(install)
    err = _apply(install, env={"PATCHFLOW_FREE_SPACE_MARGIN": "10000000000000000"})
    assert "Not enough free space" in err
    found = re.search(r"has (\d+) bytes free but (.+?) need (\d+) bytes \(\+ a reserve of (\d+)\)", err)
    assert found, err
    assert int(found.group(1)) > 0 and int(found.group(4)) == 10000000000000000
    assert "database dump" in found.group(2), "the filesystem and what needs its room are named"
    assert "nothing was stopped or changed" in err
    _assert_unchanged(install, before)


LOCK_HOLDER = """
import sys
from pathlib import Path
from patchflow.lock import install_lock
state = Path(sys.argv[1]) / ".patchflow"
with install_lock(state / "apply.lock", state / "apply.lock.json", action="apply", version="2.4.0"):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_lock_held_by_another_process(install: Install, tmp_path: Path) -> None:
    install.release(tmp_path, "2.3.0")
    before = _snapshot(install)
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(install.root)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        done = install.inv("apply-patch", "--version", "2.3.0", "--yes")
        err = _refused(done)
        assert done.returncode == 3
        assert "Another apply or rollback is running" in err
        assert f"pid {holder.pid}" in err and "apply of 2.4.0" in err
        rolled = install.inv("rollback-patch", "--version", "2.2.0", "--yes")
        assert rolled.returncode == 3 and f"pid {holder.pid}" in rolled.stderr
    finally:
        if holder.stdin is not None:
            holder.stdin.close()
        holder.wait(timeout=20)
    assert holder.returncode == 0
    _assert_unchanged(install, before)


def test_no_terminal_without_yes(install: Install, tmp_path: Path) -> None:
    install.release(tmp_path, "2.3.0")
    before = _snapshot(install)
    done = install.inv("apply-patch", "--version", "2.3.0")
    err = _refused(done)
    assert done.returncode == 5
    assert "--yes" in err and "not a terminal" in err
    _assert_unchanged(install, before)


def test_downgrade_refused_without_allow_downgrade(install: Install, tmp_path: Path) -> None:
    build_release(install, tmp_path, "2.1.0", sample_changes=False)
    before = _snapshot(install)
    err = _apply(install, "2.1.0")
    assert "Refusing to downgrade" in err and "2.2.0" in err and "2.1.0" in err
    assert "--allow-downgrade" in err
    _assert_unchanged(install, before)


def test_applying_the_installed_version_is_a_noop(install: Install) -> None:
    before = _snapshot(install)
    done = install.inv("apply-patch", "--version", "2.2.0", "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "nothing to do" in done.stdout and "2.2.0 is already installed" in done.stdout
    _assert_unchanged(install, before)
