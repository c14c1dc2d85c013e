"""Out of space is a planned state (issue 13): the disk fills (bytes or inodes) in the middle of an
apply, and the apply ends exactly on the old version with its services up and a clear error, the
next apply after freeing space works, and space is checked again before the services stop.

The install lives on its own tmpfs (a real filesystem with a size and an inode limit). The apply
is held with the kill hook's SIGSTOP at a step; the test fills the filesystem from a folder beside
the install, then lets the apply go on.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
from support.exact import NEW, OLD, assert_exactly_old
from support.installs import Install, build_release, health, set_dotenv
from support.killing import fill_bytes, fill_inodes, held_then_filled

pytestmark = pytest.mark.integration

HOOK = "PATCHFLOW_TEST_KILL_AT"
MEDIA_FILES = 60


def _release(install: Install, workdir: Path) -> None:
    """2.3.0 with a folder of media files (about 1.4 MiB that does not compress)."""

    def edit(source: Path) -> None:
        rng = random.Random(5)
        folder = source / "public" / "media"
        folder.mkdir(parents=True)
        for index in range(MEDIA_FILES):
            (folder / f"m{index:03}.bin").write_bytes(rng.randbytes(24 * 1024))

    build_release(install, workdir, NEW, edit=edit)


def _apply_with_full_disk(install: Install, filler: Path, step: str, fill: str, leave: int) -> tuple[int, str, str]:
    return held_then_filled(install, ("apply-patch", "--version", NEW, "--yes"), step, filler, fill, leave)


@pytest.mark.parametrize(
    ("step", "fill", "leave"),
    [
        ("stage", "bytes", 64 * 1024),
        ("backup", "bytes", 64 * 1024),
        ("switch", "bytes", 512 * 1024),
        ("migrate", "bytes", 0),
        ("switch", "inodes", 30),
    ],
    ids=["stage-bytes", "backup-bytes", "switch-bytes", "migrate-nothing-left", "switch-inodes"],
)
def test_a_full_disk_mid_apply_ends_exactly_old_and_the_next_apply_works(
    full_install: Install, small_fs: Path, tmp_path: Path, step: str, fill: str, leave: int
) -> None:
    install = full_install
    _release(install, tmp_path)
    tree_before, db_before = install.state(), install.pg_dump()
    filler = small_fs / "filler"

    code, out, err = _apply_with_full_disk(install, filler, step, fill, leave)
    assert code == 2, out + err
    assert "Traceback" not in out + err
    assert "full" in err or "space" in err, err
    if step == "stage":
        assert "Nothing was stopped or changed" in err, err
    else:
        assert "rolled back automatically" in err, err
    shutil.rmtree(filler)
    assert_exactly_old(install, tree_before, db_before)
    assert not (install.root / ".patchflow" / "space-reserve").exists()

    done = install.inv("apply-patch", "--version", NEW, "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert health(install) == (200, NEW)
    assert len(list((install.root / "public" / "media").iterdir())) == MEDIA_FILES


def test_space_is_checked_again_after_staging_before_the_services_stop(
    full_install: Install, small_fs: Path, tmp_path: Path
) -> None:
    install = full_install
    # the install command in staging writes 20 MB the plan could not foresee (node_modules does)
    set_dotenv(install, "PATCHFLOW_INSTALL_COMMAND", "sh -c 'head -c 20000000 /dev/zero > modules.bin'")
    _release(install, tmp_path)
    tree_before, db_before = install.state(), install.pg_dump()
    done = install.inv("apply-patch", "--version", NEW, "--yes")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "failed at stage: Not enough free space" in done.stderr, done.stderr
    assert "Nothing was stopped or changed" in done.stderr
    assert "-> stop" not in done.stdout
    assert_exactly_old(install, tree_before, db_before)


@pytest.mark.parametrize("fill", ["bytes", "inodes"])
def test_the_plan_refuses_a_filesystem_short_of_bytes_or_inodes(
    full_install: Install, small_fs: Path, tmp_path: Path, fill: str
) -> None:
    install = full_install
    _release(install, tmp_path)
    tree_before, db_before = install.state(), install.pg_dump()
    if fill == "bytes":
        fill_bytes(small_fs / "filler", 512 * 1024)
    else:
        fill_inodes(small_fs / "filler", 40)
    done = install.inv("apply-patch", "--version", NEW, "--yes")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Not enough free space" in done.stderr
    assert ("free inodes" if fill == "inodes" else "bytes free") in done.stderr, done.stderr
    assert "-> stop" not in done.stdout
    shutil.rmtree(small_fs / "filler")
    assert_exactly_old(install, tree_before, db_before)
    assert health(install) == (200, OLD)


def test_a_rollback_on_a_full_disk_finishes_within_its_reserved_space(
    full_install: Install, small_fs: Path, tmp_path: Path
) -> None:
    """Nothing of a rollback can be freed first (it stages nothing): the journal records each step
    in the room the reserve gave back, and the rollback ends exactly old."""
    install = full_install
    _release(install, tmp_path)
    tree_before, db_before = install.state(), install.pg_dump()
    done = install.inv("apply-patch", "--version", NEW, "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    code, out, err = held_then_filled(
        install, ("rollback-patch", "--yes"), "restore-database", small_fs / "filler", "bytes", 0
    )
    assert code == 0, out + err
    shutil.rmtree(small_fs / "filler")
    assert_exactly_old(install, tree_before, db_before)
