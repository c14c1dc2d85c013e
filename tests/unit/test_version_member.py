"""The VERSION a patch carries (issue 18, fault 5): ``create-patch --version 2.3.0`` on a tree whose
VERSION says 2.2.0 packs ``2.3.0\\n`` as the patch's VERSION, with every record of that member
consistent (manifest size/sha256/mode, archive, checksum files, a delta's tree hash), and never
writes the tree's file. Its neighbours: odd VERSION content, no VERSION, an excluded or linked one,
a folder, a newer one, a delta, --force. Real trees, real archives, real md5sum/sha256sum."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from patchflow.archive.reader import read_members
from patchflow.archive.writer import build_archive
from patchflow.config import load_settings
from patchflow.delta import manifest_entries, rebuild_tree, tree_sha256
from patchflow.errors import ArchiveError, CreatePatchError
from patchflow.lifecycle.create import CreatedPatch, create_patch
from patchflow.manifest import Entry
from patchflow.verify import verify_patch
from patchflow.version import parse_version

NOW = datetime(2025, 1, 2, tzinfo=UTC)
FILES = {
    "VERSION": b"2.2.0\n",
    "package.json": b'{"name": "primeflow"}\n',
    "src/index.js": b"console.log('hello');\n",
}


def write(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def create(root: Path, version: str | None = None, **kwargs: object) -> CreatedPatch:
    settings = load_settings(root, environ={})
    parsed = parse_version(version) if version else None
    return create_patch(settings, parsed, now=NOW, **kwargs)  # type: ignore[arg-type]


def carried(created: CreatedPatch) -> tuple[bytes, dict[str, object]]:
    """The VERSION member's bytes in the archive and its manifest entry; asserts that the manifest,
    the archive members, SHA256SUMS/checksum.md5 (real sha256sum/md5sum) and a deep verify agree."""
    manifest = json.loads((created.folder / "manifest.json").read_text(encoding="utf-8"))
    entry = next(f for f in manifest["files"] if f["path"] == "VERSION")
    with tarfile.open(created.archive) as tar:
        member = tar.getmember("VERSION")
        handle = tar.extractfile(member)
        assert handle is not None
        data = handle.read()
    assert entry == {
        "path": "VERSION",
        "type": "file",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "mode": f"{member.mode:04o}",
    }
    assert read_members(created.archive)["VERSION"] == Entry.from_json(entry)
    for tool, sums in (("sha256sum", "SHA256SUMS"), ("md5sum", "checksum.md5")):
        done = subprocess.run([tool, "-c", sums], cwd=created.folder, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
    verify_patch(created.folder, created.version, deep=True)
    if "delta" not in manifest:  # a delta's total_bytes is its whole tree's, its files only its members
        assert manifest["total_bytes"] == sum(f.get("size", 0) for f in manifest["files"])
    return data, entry


def test_a_newer_version_packs_its_own_version_and_leaves_the_tree_alone(tmp_path: Path) -> None:
    root = write(tmp_path / "project", FILES)
    version_file = root / "VERSION"
    os.chmod(version_file, 0o640)
    os.utime(version_file, (1_000_000_000, 1_000_000_000))
    before = version_file.stat()
    created = create(root, "2.3.0")
    data, entry = carried(created)
    assert data == b"2.3.0\n"
    assert entry["mode"] == "0640", "the member keeps the tree file's mode"
    assert created.version_note == (
        "VERSION: the tree's VERSION says 2.2.0; the patch carries VERSION 2.3.0 (the tree's file is left unchanged)"
    )
    after = version_file.stat()
    assert version_file.read_bytes() == b"2.2.0\n"
    assert (after.st_mtime_ns, after.st_ino, after.st_mode) == (before.st_mtime_ns, before.st_ino, before.st_mode)
    assert created.folder.name == "v2.3.0"


def test_the_trees_own_version_file_is_packed_as_it_is(tmp_path: Path) -> None:
    root = write(tmp_path / "project", {**FILES, "VERSION": b"v2.3.0\r\n"})
    created = create(root, "2.3.0")
    assert carried(created)[0] == b"v2.3.0\r\n"
    assert created.version_note == ""
    assert create(root, force=True).version_note == "", "the default version is VERSION's: nothing to say"


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"v2.2.0\r\n", "says 2.2.0"),
        (b"  2.2.0   \n\n", "says 2.2.0"),
        (b"\xef\xbb\xbf2.2.0\n", "says 2.2.0"),
        (b"2.3.0+build.7\n", "says 2.3.0+build.7"),  # build metadata names another build
        (b"2.3.0-rc.2\n", "says 2.3.0-rc.2"),  # the release of a pre-release
        (b"hello\n", "is not a version ('hello')"),
        (b"", "is not a version (empty)"),
        (b"\xff\xfe2\x00.\x00", "is not a version ("),
    ],
)
def test_other_version_content_gets_the_patchs_version(tmp_path: Path, content: bytes, says: str) -> None:
    root = write(tmp_path / "project", {**FILES, "VERSION": content})
    created = create(root, "2.3.0")
    assert carried(created)[0] == b"2.3.0\n"
    assert f"the tree's VERSION {says}" in created.version_note
    assert (root / "VERSION").read_bytes() == content


def test_a_tree_without_version_gets_one_in_the_patch_only(tmp_path: Path) -> None:
    root = write(tmp_path / "project", {k: v for k, v in FILES.items() if k != "VERSION"})
    created = create(root, "2.3.0")
    data, entry = carried(created)
    assert (data, entry["mode"]) == (b"2.3.0\n", "0644")
    assert created.version_note == (
        "VERSION: the tree has no VERSION file; the patch carries VERSION 2.3.0 (none is created in the tree)"
    )
    assert not (root / "VERSION").exists()
    assert created.file_count == 3


def test_an_excluded_version_file_is_still_carried(tmp_path: Path) -> None:
    root = write(tmp_path / "project", {**FILES, ".patchignore": b"VERSION\n"})
    created = create(root, "2.3.0")
    assert carried(created)[0] == b"2.3.0\n"
    assert "the exclude rules leave the tree's VERSION out" in created.version_note


def test_a_linked_version_file_is_carried_as_a_plain_file(tmp_path: Path) -> None:
    root = write(tmp_path / "project", {**FILES, "apps/api/VERSION": b"2.3.0\n"})
    (root / "VERSION").unlink()
    os.symlink("apps/api/VERSION", root / "VERSION")
    created = create(root)  # the version is read through the link
    data, entry = carried(created)
    assert (data, entry["type"]) == (b"2.3.0\n", "file")
    assert "is a symbolic link (to apps/api/VERSION)" in created.version_note
    assert os.readlink(root / "VERSION") == "apps/api/VERSION"


def test_a_version_folder_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    root = write(tmp_path / "project", {k: v for k, v in FILES.items() if k != "VERSION"})
    write(root, {"VERSION/notes.txt": b"a folder\n"})
    with pytest.raises(CreatePatchError) as caught:
        create(root, "2.3.0")
    assert "VERSION is a folder" in caught.value.message and "nothing was written" in caught.value.hint
    assert not (root / "patches").exists() or not any((root / "patches").iterdir())


@pytest.mark.parametrize("tree_says", ["2.4.0", "2.3.1", "3.0.0-rc.1"])
def test_a_tree_saying_a_newer_version_is_refused(tmp_path: Path, tree_says: str) -> None:
    root = write(tmp_path / "project", {**FILES, "VERSION": f"{tree_says}\n".encode()})
    with pytest.raises(CreatePatchError) as caught:
        create(root, "2.3.0")
    assert f"VERSION says {tree_says}, which is newer than the patch version 2.3.0" in caught.value.message
    assert f"--version {tree_says}" in caught.value.hint and "nothing was written" in caught.value.hint
    assert not (root / "patches").exists() or not any((root / "patches").iterdir())
    assert (root / "VERSION").read_bytes() == f"{tree_says}\n".encode()


def test_a_pre_release_of_the_trees_release_is_allowed(tmp_path: Path) -> None:
    root = write(tmp_path / "project", {**FILES, "VERSION": b"2.3.0\n"})
    created = create(root, "2.3.0-rc.1")
    assert carried(created)[0] == b"2.3.0-rc.1\n"
    assert "the tree's VERSION says 2.3.0" in created.version_note


def test_force_rebuilds_the_same_bytes(tmp_path: Path) -> None:
    root = write(tmp_path / "project", FILES)
    first = create(root, "2.3.0").archive.read_bytes()
    second = create(root, "2.3.0", force=True)
    assert second.archive.read_bytes() == first
    assert second.version_note.startswith("VERSION: the tree's VERSION says 2.2.0")


def test_a_delta_carries_the_new_version_and_hashes_the_tree_the_install_gets(tmp_path: Path) -> None:
    """A delta built from a tree whose VERSION still says 2.2.0 equals, member for member and tree
    hash for tree hash, the delta built after writing 2.3.0 into VERSION."""
    trees = {}
    for name, bump in (("kept", False), ("bumped", True)):
        root = write(tmp_path / name, FILES)
        create(root)  # 2.2.0, full
        write(root, {"src/index.js": b"console.log('2.3.0');\n"})
        if bump:
            (root / "VERSION").write_bytes(b"2.3.0\n")
        delta = create(root, "2.3.0", base=parse_version("2.2.0"))
        assert carried(delta)[0] == b"2.3.0\n"
        manifest = json.loads((delta.folder / "manifest.json").read_text(encoding="utf-8"))
        assert sorted(f["path"] for f in manifest["files"]) == ["VERSION", "src/index.js"]
        base = json.loads((root / "patches/v2.2.0/manifest.json").read_text(encoding="utf-8"))
        rebuilt = rebuild_tree(manifest_entries(base), manifest_entries(manifest).values(), manifest["deleted"])
        assert tree_sha256(rebuilt.values()) == manifest["delta"]["tree_sha256"]
        assert rebuilt["VERSION"].sha256 == hashlib.sha256(b"2.3.0\n").hexdigest()
        trees[name] = (manifest["delta"], delta.archive.read_bytes(), delta.version_note)
    assert trees["kept"][:2] == trees["bumped"][:2]
    assert trees["kept"][2].startswith("VERSION: the tree's VERSION says 2.2.0") and trees["bumped"][2] == ""


def test_build_archive_packs_a_member_from_bytes(tmp_path: Path) -> None:
    root = write(tmp_path / "project", {"a.txt": b"from disk\n"})
    data = b"2.3.0\n"
    entries = [
        Entry("VERSION", "file", mode=0o644, size=len(data)),  # no such file under root
        Entry("a.txt", "file", mode=0o644, size=10),
    ]
    result = build_archive(root, entries, tmp_path / "out.tar.gz", contents={"VERSION": data})
    found = read_members(tmp_path / "out.tar.gz")
    assert found["VERSION"].sha256 == hashlib.sha256(data).hexdigest() == result.entries[0].sha256
    assert found["a.txt"].sha256 == hashlib.sha256(b"from disk\n").hexdigest()
    with pytest.raises(ArchiveError) as caught:
        build_archive(
            root, [Entry("VERSION", "file", mode=0o644, size=9)], tmp_path / "bad.tar.gz", contents={"VERSION": data}
        )
    assert "6 bytes given for a member of 9 bytes" in caught.value.message
    wrong = Entry("VERSION", "file", mode=0o644, size=len(data), sha256="0" * 64)
    with pytest.raises(ArchiveError):
        build_archive(root, [wrong], tmp_path / "bad2.tar.gz", contents={"VERSION": data})
