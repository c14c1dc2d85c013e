"""A rollback takes away the folders a release added whole by renaming them aside inside the stopped
window and deleting them after the services are back (issue 26: "rollback as fast as apply"): the
tree ends exactly old, a file written since into a folder the release added is kept, the command
says the rest is deleted in the background, and no trash folder outlives the deleter."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.installs import Install, copy_patch, make_release, run_inv, wait_until

pytestmark = pytest.mark.integration

GENERATED = 300  # files the release adds in a new folder (the bench times 20,000)


def _release_adding_a_folder(install: Install, workdir: Path, health_status: int | None = None) -> None:
    source = make_release(install.root, workdir / "source-2.3.0", "2.3.0", health_status=health_status)
    for index in range(GENERATED):
        item = source / "src" / "generated" / f"part{index // 100}" / f"module{index}.js"
        item.parent.mkdir(parents=True, exist_ok=True)
        item.write_text(f"export const value{index} = {index};\n", encoding="utf-8")
    (source / "public" / "media").mkdir(parents=True, exist_ok=True)
    (source / "public" / "media" / "logo.svg").write_text("<svg/>\n", encoding="utf-8")
    done = run_inv("create-patch", "--root", str(source))
    assert done.returncode == 0, done.stdout + done.stderr
    copy_patch(source, install.root, "2.3.0")


def _no_trash_left(install: Install) -> bool:
    return not any((install.root / ".patchflow").glob("trash-restore-*"))


def test_rollback_patch_renames_added_folders_aside_keeps_a_file_written_since_and_ends_exactly_old(
    install: Install, tmp_path: Path
) -> None:
    tree_before = install.state()
    _release_adding_a_folder(install, tmp_path)
    applied = install.inv("apply-patch", "--version", "2.3.0", "--yes")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert (install.root / "src/generated/part2/module299.js").is_file()
    upload = install.root / "public" / "media" / "upload-1.png"  # written after the apply, in a folder it added
    upload.write_bytes(b"\x89PNG host data")

    rolled = install.inv("rollback-patch", "--version", "2.3.0", "--yes")
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert "trash-restore-" in rolled.stdout and "deleted in the background" in rolled.stdout
    assert upload.read_bytes() == b"\x89PNG host data", "a file the patch does not own is never moved or deleted"
    assert not (install.root / "public/media/logo.svg").exists()
    upload.unlink()
    (install.root / "public" / "media").rmdir()
    assert install.state() == tree_before
    wait_until(lambda: _no_trash_left(install), 60, "the detached deleter to remove the trash")


def test_an_automatic_rollback_renames_the_added_folder_aside_and_ends_exactly_old(
    install: Install, tmp_path: Path
) -> None:
    tree_before = install.state()
    _release_adding_a_folder(install, tmp_path, health_status=500)
    applied = install.inv("apply-patch", "--version", "2.3.0", "--yes", "--health-timeout", "2")
    assert applied.returncode != 0 and "rolled back automatically" in applied.stderr, applied.stdout + applied.stderr
    assert install.state() == tree_before
    wait_until(lambda: _no_trash_left(install), 60, "the detached deleter to remove the trash")
