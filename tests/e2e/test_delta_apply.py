"""Delta patches applied with ``inv`` on installs without services or database (issue 12): what a
delta (or a full patch) may not do to a host (delete the host's own files, replace a folder the
host keeps files in),
what it says when it cannot apply (an unreadable record, an interrupted apply first), and a forced
re-apply. Each refusal leaves the install exactly as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from support.crafted import bare_install, regenerate_sums
from support.installs import run_inv, wait_for_trash_deleters

from patchflow.delta import manifest_entries, tree_sha256

pytestmark = pytest.mark.e2e

SOURCE_FILES = {
    "package.json": b'{"name": "primeflow"}\n',
    "src/index.js": b"console.log('1.0.0');\n",
    "src/lib/a.js": b"export const a = 1;\n",
    "public/assets/logo.txt": b"logo\n",
}


def write(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` (patchflow's folders included) with its content hash or kind.

    The detached trash deleter of the command before (patchflow.trash) is waited for first: its
    folder going away is that command finishing, not a change by the next one."""
    wait_for_trash_deleters(root)
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def create(source: Path, version: str, base: str | None = None) -> None:
    (source / "VERSION").write_text(f"{version}\n")
    done = run_inv("create-patch", "--root", str(source), *(["--base", base] if base else []))
    assert done.returncode == 0, done.stdout + done.stderr


def copy_patch(source: Path, install: Path, version: str) -> Path:
    target = install / "patches" / f"v{version}"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source / "patches" / f"v{version}", target)
    return target


def apply(
    install: Path, version: str, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_inv("apply-patch", "--root", str(install), "--version", version, "--yes", *extra, env=env)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """``(source, install)``: the source at 1.1.0 with patches 1.0.0 (full) and 1.1.0 (a delta on
    it); the install got 1.0.0 through apply-patch (so it records its tree)."""
    source = tmp_path / "source"
    write(source, SOURCE_FILES)
    create(source, "1.0.0")
    install = bare_install(tmp_path / "install", "0.9.0")
    copy_patch(source, install, "1.0.0")
    done = apply(install, "1.0.0")
    assert done.returncode == 0, done.stdout + done.stderr
    write(source, {"src/index.js": b"console.log('1.1.0');\n"})
    (source / "src/lib/a.js").unlink()
    create(source, "1.1.0", base="1.0.0")
    return source, install


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_a_delta_edited_to_delete_a_host_file_is_refused(pair: tuple[Path, Path]) -> None:
    source, install = pair
    write(install, {"storage/user-upload.bin": b"precious"})
    folder = copy_patch(source, install, "1.1.0")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["deleted"].append("storage/user-upload.bin")  # the tree hash does not move: not in the base
    (folder / "manifest.json").write_text(json.dumps(manifest))
    regenerate_sums(folder)
    before = snapshot(install)
    refused = apply(install, "1.1.0")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    flat = _flat(refused.stderr)
    assert "does not fit the tree of 1.0.0: it deletes paths its base does not have: storage/user-upload.bin" in flat
    assert "Nothing was changed" in flat
    assert snapshot(install) == before


def test_a_full_patch_edited_to_delete_a_host_file_keeps_it(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    """A full patch's ``deleted`` is relative to the patch before it; on an install that records
    its tree, only the record says what a patch owns, so a host file listed there stays."""
    source, install = pair
    full = tmp_path / "full-source"
    shutil.copytree(source, full, symlinks=True, ignore=shutil.ignore_patterns("patches"))
    create(full, "1.1.0")
    # not under a host path (storage/, uploads/: never a patch's at all): a file the host added elsewhere
    write(install, {"public/user-upload.bin": b"precious"})
    folder = copy_patch(full, install, "1.1.0")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["deleted"] = [*manifest["deleted"], "public/user-upload.bin"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    regenerate_sums(folder)
    done = apply(install, "1.1.0")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (install / "public/user-upload.bin").read_bytes() == b"precious"
    assert "public/user-upload.bin" in _flat(done.stdout), "listed as unowned"


def test_a_folder_the_host_keeps_files_in_is_not_replaced_by_a_file(pair: tuple[Path, Path]) -> None:
    """Refused at the plan (which full patches share), before anything stops, naming the files;
    with --remove-unowned the host's file goes with the folder."""
    source, install = pair
    shutil.rmtree(source / "public/assets")
    (source / "public/assets").write_bytes(b"now a file\n")
    create(source, "1.2.0", base="1.1.0")
    copy_patch(source, install, "1.1.0")
    assert apply(install, "1.1.0").returncode == 0
    write(install, {"public/assets/host-added.png": b"host data"})
    copy_patch(source, install, "1.2.0")
    before = snapshot(install)
    refused = apply(install, "1.2.0")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    flat = _flat(refused.stderr)
    assert "public/assets (a file in the patch) holds public/assets/host-added.png" in flat
    assert "--remove-unowned" in flat and "-> stop" not in refused.stdout
    assert snapshot(install) == before
    done = apply(install, "1.2.0", "--remove-unowned")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (install / "public/assets").read_bytes() == b"now a file\n"


def test_an_unreadable_record_of_the_tree_is_named(pair: tuple[Path, Path]) -> None:
    source, install = pair
    copy_patch(source, install, "1.1.0")
    record = install / ".patchflow/installed-manifest.json"
    for text, why in (('{"files": 5', "JSONDecodeError"), ('{"files": [5]}', "TypeError")):
        record.write_text(text)
        before = snapshot(install)
        refused = apply(install, "1.1.0")
        assert refused.returncode == 1, refused.stdout + refused.stderr
        flat = _flat(refused.stderr)
        assert "installed-manifest.json cannot be read" in flat and why in flat, flat
        assert snapshot(install) == before


def test_a_delta_after_an_interrupted_apply_names_the_interrupted_run(pair: tuple[Path, Path]) -> None:
    source, install = pair
    write(source, {"src/lib/b.js": b"export const b = 2;\n"})
    create(source, "1.2.0", base="1.1.0")
    copy_patch(source, install, "1.1.0")
    copy_patch(source, install, "1.2.0")
    killed = apply(install, "1.1.0", env={"PATCHFLOW_TEST_KILL_AT": "migrate"})
    assert killed.returncode in (-9, 137), killed.stdout + killed.stderr
    before = snapshot(install)
    refused = apply(install, "1.2.0", "--break-lock")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    flat = _flat(refused.stderr)
    assert "An interrupted apply of 1.1.0 is not finished or undone yet" in flat
    assert "inv patch-status" in flat and "Nothing was changed" in flat
    assert snapshot(install) == before
    status = json.loads(run_inv("patch-status", "--root", str(install), "--json").stdout)
    recovered = run_inv(*status["recovery"]["args"], "--root", str(install))
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    done = apply(install, "1.1.0")
    assert done.returncode == 0 or "already installed" in done.stdout, done.stdout + done.stderr
    done = apply(install, "1.2.0")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (install / "src/lib/b.js").is_file() and not (install / "src/lib/a.js").exists()


def test_a_forced_reapply_of_an_installed_delta_works(pair: tuple[Path, Path]) -> None:
    source, install = pair
    copy_patch(source, install, "1.1.0")
    before = snapshot(install)
    dry = apply(install, "1.1.0", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    flat = _flat(dry.stdout)
    assert "patch a delta on 1.0.0: 2 entries in its archive; the whole tree (" in flat, flat
    assert snapshot(install) == before, "a dry run changes nothing"
    assert apply(install, "1.1.0").returncode == 0
    (install / "src/index.js").write_text("edited by hand\n")
    done = apply(install, "1.1.0", "--force")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (install / "src/index.js").read_text() == "console.log('1.1.0');\n"


def test_a_delta_made_with_a_newer_version_than_the_trees_installs_that_version(tmp_path: Path) -> None:
    """`create-patch --version 1.1.0 --base 1.0.0` on a tree whose VERSION still says 1.0.0: the
    delta carries VERSION 1.1.0, its tree hash is the tree the install ends with, and a rollback
    brings the old VERSION back."""
    source = tmp_path / "source"
    write(source, SOURCE_FILES)
    create(source, "1.0.0")
    install = bare_install(tmp_path / "install", "0.9.0")
    copy_patch(source, install, "1.0.0")
    assert apply(install, "1.0.0").returncode == 0
    write(source, {"src/index.js": b"console.log('1.1.0');\n"})
    made = run_inv("create-patch", "--root", str(source), "--version", "1.1.0", "--base", "1.0.0")
    assert made.returncode == 0, made.stdout + made.stderr
    assert "VERSION: the tree's VERSION says 1.0.0; the patch carries VERSION 1.1.0" in made.stdout
    assert (source / "VERSION").read_text() == "1.0.0\n"
    folder = copy_patch(source, install, "1.1.0")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert sorted(f["path"] for f in manifest["files"]) == ["VERSION", "src/index.js"]

    verified = run_inv("verify-patch", "--root", str(install), "--version", "1.1.0", "--deep")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    done = apply(install, "1.1.0")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (install / "VERSION").read_text() == "1.1.0\n"
    record = json.loads((install / ".patchflow/installed-manifest.json").read_text())
    assert tree_sha256(manifest_entries(record).values()) == manifest["delta"]["tree_sha256"]
    checked = run_inv("verify-patch", "--root", str(install))  # no --version: the installed VERSION's patch
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"verifying v1.1.0, the version in {install / 'VERSION'}" in _flat(checked.stdout)

    back = run_inv("rollback-patch", "--root", str(install), "--version", "1.1.0", "--yes")
    assert back.returncode == 0, back.stdout + back.stderr
    assert (install / "VERSION").read_text() == "1.0.0\n"
    assert (install / "src/index.js").read_bytes() == SOURCE_FILES["src/index.js"]
