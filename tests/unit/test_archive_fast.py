"""The one-pass archive: parallel deterministic gzip read by real tools, and the one-pass checked
extraction refusing every hostile member kind with nothing left behind (real files, real gzip/tar)."""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from patchflow.archive import writer as archive_writer
from patchflow.archive.extract import extract_archive
from patchflow.archive.reader import read_members
from patchflow.archive.writer import BLOCK_SIZE, build_archive
from patchflow.errors import ArchiveError
from patchflow.manifest import Entry, load_rules, scan_tree

PROTECTED = ("patches", "backups", ".patchflow")


def make_tree(root: Path, seed: int = 7) -> Path:
    """Text and incompressible files, some larger than a compression block, links, odd names."""
    rng = random.Random(seed)
    words = [f"ident{i}" for i in range(300)]
    for index in range(60):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(10, 3000))) + "\n"
        path = root / f"src/mod{index % 5}/file{index}.js"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    (root / "public/img").mkdir(parents=True)
    for index in range(8):
        (root / f"public/img/pic{index}.png").write_bytes(rng.randbytes(rng.randint(100, 200_000)))
    (root / "public/media.bin").write_bytes(rng.randbytes(BLOCK_SIZE + 12345))  # probed: incompressible
    (root / "bundle.js").write_bytes(b"const a = 1;\n" * (2 * BLOCK_SIZE // 13 + 7))  # spans blocks
    (root / "empty.txt").write_bytes(b"")
    (root / "docs").mkdir()
    (root / "docs/説明 ü.md").write_text("unicode\n", encoding="utf-8")
    (root / ("docs/" + "n" * 120 + ".md")).write_text("long name\n", encoding="utf-8")
    os.symlink("mod0/file0.js", root / "src/current.js")
    (root / "bin").mkdir()
    (root / "bin/run.sh").write_text("#!/bin/sh\n", encoding="utf-8")
    os.chmod(root / "bin/run.sh", 0o755)
    return root


def pack(root: Path, destination: Path, workers: int | None = None) -> tuple[dict[str, Entry], str]:
    tree = scan_tree(root, load_rules(root, (), PROTECTED), hash_files=False)
    result = build_archive(root, tree.sorted(), destination, workers=workers)
    assert result.sha256 == hashlib.sha256(destination.read_bytes()).hexdigest()
    assert result.md5 == hashlib.md5(destination.read_bytes()).hexdigest()
    assert result.size == destination.stat().st_size
    return {e.path: e for e in result.entries}, result.sha256


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("tree") / "project")


@pytest.fixture(scope="module")
def packed(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Entry]]:
    archive = tmp_path_factory.mktemp("archive") / "patch.tar.gz"
    entries, _ = pack(tree, archive)
    return archive, entries


def test_same_tree_same_bytes_whatever_the_threads(tree: Path, tmp_path: Path) -> None:
    digests = {pack(tree, tmp_path / f"a{workers}.tar.gz", workers)[1] for workers in (1, 2, 4)}
    assert len(digests) == 1
    copy = tmp_path / "copy"
    shutil.copytree(tree, copy, symlinks=True)
    for path in copy.rglob("*"):
        os.utime(path, (1_600_000_000, 1_600_000_000), follow_symlinks=False)
    assert pack(copy, tmp_path / "copy.tar.gz")[1] in digests


def test_entries_carry_the_sha256_read_while_packing(tree: Path, packed: tuple[Path, dict[str, Entry]]) -> None:
    _, entries = packed
    for rel, entry in entries.items():
        if entry.type == "file":
            data = (tree / rel).read_bytes()
            assert (entry.sha256, entry.size) == (hashlib.sha256(data).hexdigest(), len(data)), rel


def test_gzip_and_tar_read_it(tree: Path, packed: tuple[Path, dict[str, Entry]], tmp_path: Path) -> None:
    archive, entries = packed
    assert subprocess.run(["gzip", "-t", str(archive)], capture_output=True).returncode == 0
    listing = subprocess.run(["tar", "-tzf", str(archive)], capture_output=True, text=True, check=True).stdout
    assert {line.rstrip("/") for line in listing.splitlines()} == set(entries)
    out = tmp_path / "gnu"
    out.mkdir()
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(out)], check=True)
    for rel, entry in entries.items():
        if entry.type == "file":
            assert (out / rel).read_bytes() == (tree / rel).read_bytes(), rel
    assert os.readlink(out / "src/current.js") == "mod0/file0.js"


@pytest.mark.parametrize("mode", ["r:gz", "r|gz"])
def test_python_tarfile_reads_it(packed: tuple[Path, dict[str, Entry]], mode: str) -> None:
    archive, entries = packed
    with tarfile.open(archive, mode, encoding="utf-8") as tar:
        names = set()
        for member in tar:
            names.add(member.name)
            if member.isfile():
                handle = tar.extractfile(member)
                assert handle is not None
                assert hashlib.sha256(handle.read()).hexdigest() == entries[member.name].sha256
            assert (member.uid, member.gid, member.uname, member.gname, member.mtime) == (0, 0, "", "", 0)
    assert names == set(entries)


def test_one_gzip_member_with_blocks_at_two_levels(packed: tuple[Path, dict[str, Entry]]) -> None:
    archive, _ = packed
    data = archive.read_bytes()
    assert data[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # no name, no timestamp
    import zlib

    inflater = zlib.decompressobj(31)
    inflater.decompress(data)
    assert inflater.eof and inflater.unused_data == b"", "a single standard gzip member"


def test_precompressed_detection(tmp_path: Path) -> None:
    rng = random.Random(1)
    (tmp_path / "a.png").write_bytes(b"x" * 10)
    (tmp_path / "blob.dat").write_bytes(rng.randbytes(200_000))
    (tmp_path / "text.dat").write_bytes(b"hello world " * 20_000)
    assert archive_writer.is_precompressed(tmp_path / "a.png", 10)
    assert archive_writer.is_precompressed(tmp_path / "blob.dat", 200_000)
    assert not archive_writer.is_precompressed(tmp_path / "text.dat", 240_000)


def test_read_members_equals_the_packed_entries(packed: tuple[Path, dict[str, Entry]]) -> None:
    archive, entries = packed
    assert read_members(archive) == entries


def test_extract_round_trip_with_modes_and_owner(
    tree: Path, packed: tuple[Path, dict[str, Entry]], tmp_path: Path
) -> None:
    archive, entries = packed
    destination = tmp_path / "a" / "staging"
    done: list[int] = []
    extract_archive(archive, destination, entries, on_bytes=done.append)
    assert sum(done) == sum(e.size for e in entries.values())
    again = scan_tree(destination, load_rules(destination, (), PROTECTED))
    assert again.entries == entries
    st = (destination / "bin/run.sh").stat()
    assert stat.S_IMODE(st.st_mode) == 0o755 and (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())


@pytest.mark.parametrize("change", ["grown", "emptied", "shrunk"])
def test_a_changed_file_while_packing_is_refused(tree: Path, tmp_path: Path, change: str) -> None:
    source = tmp_path / "src"
    shutil.copytree(tree, source, symlinks=True)
    entries = scan_tree(source, load_rules(source, (), PROTECTED), hash_files=False).sorted()
    target = source / "src/mod0/file0.js"
    data = target.read_bytes()
    target.write_bytes({"grown": data + b"more", "emptied": b"", "shrunk": data[:-1]}[change])
    with pytest.raises(ArchiveError, match="changed while the patch was being built"):
        build_archive(source, entries, tmp_path / "x.tar.gz")
    (source / "src/mod0/file0.js").unlink()
    with pytest.raises(ArchiveError, match=r"Cannot read src/mod0/file0\.js"):
        build_archive(source, entries, tmp_path / "x.tar.gz")


# -- hostile archives --------------------------------------------------------------------------

Member = tuple[tarfile.TarInfo, bytes | None]


def _file(name: str, data: bytes, mode: int = 0o644) -> Member:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return info, data


def _kind(name: str, kind: bytes, link: str = "", mode: int = 0o644) -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, mode
    return info, None


def write_tar(path: Path, members: list[Member], fmt: int = tarfile.PAX_FORMAT) -> None:
    with tarfile.open(path, "w:gz", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


def expected_of(members: list[Member]) -> dict[str, Entry]:
    """What a manifest would list for the members (whatever their kind; the first of duplicates)."""
    out: dict[str, Entry] = {}
    for info, data in members:
        name = info.name.rstrip("/")
        if info.isdir():
            entry = Entry(name, "dir", mode=info.mode & 0o755)
        elif info.issym():
            entry = Entry(name, "symlink", target=info.linkname)
        else:
            body = data or b""
            entry = Entry(name, "file", info.mode & 0o755, len(body), hashlib.sha256(body).hexdigest())
        out.setdefault(name, entry)
    return out


GOOD = [_file("app/index.js", b"console.log(1)\n"), _file("app/util.js", b"module.exports = 1\n")]
# (members, text the error names, the expected manifest entries or None for "as listed")
HOSTILE: dict[str, tuple[list[Member], str]] = {
    "dotdot": ([*GOOD, _file("../../outside.txt", b"x")], "path contains '..'"),
    "absolute": ([*GOOD, _file("/tmp/abs-patchflow-test.txt", b"x")], "absolute path"),
    "backslash": ([*GOOD, _file("app\\..\\x", b"x")], "unsafe characters"),
    "dot part": ([*GOOD, _file("app/./x.js", b"x")], "not normalized"),
    "char device": ([*GOOD, _kind("dev/null", tarfile.CHRTYPE)], "device or FIFO"),
    "block device": ([*GOOD, _kind("dev/sda", tarfile.BLKTYPE)], "device or FIFO"),
    "fifo": ([*GOOD, _kind("app/pipe", tarfile.FIFOTYPE)], "device or FIFO"),
    "hard link": ([*GOOD, _kind("app/hard", tarfile.LNKTYPE, "app/index.js")], "hard link"),
    "absolute link": ([*GOOD, _kind("app/etc", tarfile.SYMTYPE, "/etc")], "symlink to absolute path"),
    "escaping link": ([*GOOD, _kind("app/up", tarfile.SYMTYPE, "../../..")], "leaves the target folder"),
    "chained links": (
        [*GOOD, _kind("p", tarfile.SYMTYPE, "q/x/../.."), _kind("q", tarfile.SYMTYPE, ".")],
        "leads outside the folder",
    ),
    "write through a link": (
        [_kind("app", tarfile.SYMTYPE, "lib"), _kind("lib", tarfile.DIRTYPE, mode=0o755), _file("app/x.js", b"x")],
        "is a symlink in the archive",
    ),
    "duplicate": ([*GOOD, _file("app/index.js", b"again")], "appears twice"),
}


def _outside_state(base: Path) -> set[str]:
    return {str(p.relative_to(base)) for p in base.rglob("*")}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_members_are_refused_and_nothing_is_left(tmp_path: Path, case: str) -> None:
    members, reason = HOSTILE[case]
    archive = tmp_path / "crafted.tar.gz"
    write_tar(archive, members)
    expected = expected_of(members)
    sentinel = Path("/tmp/abs-patchflow-test.txt")
    sentinel.unlink(missing_ok=True)
    before = _outside_state(tmp_path)
    destination = tmp_path / "install" / "staging"
    with pytest.raises(ArchiveError) as caught:
        extract_archive(archive, destination, expected)
    assert reason in caught.value.message
    assert not destination.exists() and not (tmp_path / "install").exists()
    assert _outside_state(tmp_path) == before
    assert not sentinel.exists()
    if case != "chained links":  # each link stays inside lexically: only the extraction's realpath sees it
        # the deep verification (verify-patch --deep) refuses it too, without writing anything
        from patchflow.archive.reader import compare_members

        try:
            problems = compare_members(read_members(archive), expected)
        except ArchiveError as exc:
            problems = [exc.message]
        assert problems and reason in problems[0]


MISMATCHES: dict[str, tuple[Callable[[dict[str, Entry]], None], str]] = {
    "extra member": (lambda e: e.pop("app/util.js"), "app/util.js: in the archive but not listed in manifest.json"),
    "missing member": (
        lambda e: e.update({"app/new.js": Entry("app/new.js", "file", 0o644, 1, "0" * 64)}),
        "app/new.js: listed in manifest.json but missing from the archive",
    ),
    "content": (
        lambda e: e.update({"app/util.js": Entry("app/util.js", "file", 0o644, e["app/util.js"].size, "0" * 64)}),
        "app/util.js: content differs from manifest.json",
    ),
    "size": (
        lambda e: e.update({"app/util.js": Entry("app/util.js", "file", 0o644, 3, e["app/util.js"].sha256)}),
        "app/util.js: content differs from manifest.json",
    ),
    "mode": (
        lambda e: e.update({"app/util.js": Entry("app/util.js", "file", 0o755, e["app/util.js"].size, "x")}),
        "app/util.js: mode 0644 differs from manifest.json (0755)",
    ),
    "type": (lambda e: e.update({"app/util.js": Entry("app/util.js", "dir", 0o755)}), "archive has a file"),
}


@pytest.mark.parametrize("case", sorted(MISMATCHES))
def test_a_member_differing_from_the_manifest_removes_what_was_extracted(tmp_path: Path, case: str) -> None:
    change, message = MISMATCHES[case]
    archive = tmp_path / "a.tar.gz"
    members = [*GOOD, _file("app/z.js", b"last\n")]
    write_tar(archive, members)
    expected = expected_of(members)
    change(expected)
    destination = tmp_path / "staging"
    destination.mkdir()
    with pytest.raises(ArchiveError) as caught:
        extract_archive(archive, destination, expected)
    assert message in caught.value.message
    assert list(destination.iterdir()) == []


def test_setuid_bits_and_owners_from_the_archive_are_not_kept(tmp_path: Path) -> None:
    info, data = _file("bin/tool", b"#!/bin/sh\n", mode=0o6755)
    info.uid = info.gid = 4242
    info.uname = info.gname = "evil"
    folder = _kind("shared", tarfile.DIRTYPE, mode=0o1777)
    archive = tmp_path / "a.tar.gz"
    write_tar(archive, [folder, (info, data)])
    expected = {
        "shared": Entry("shared", "dir", 0o755),
        "bin/tool": Entry("bin/tool", "file", 0o755, len(data or b""), hashlib.sha256(data or b"").hexdigest()),
    }
    destination = tmp_path / "staging"
    extract_archive(archive, destination, expected)
    for rel, mode in (("bin/tool", 0o755), ("shared", 0o755), ("bin", 0o755)):
        st = (destination / rel).stat()
        assert stat.S_IMODE(st.st_mode) == mode, rel
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())


@pytest.mark.parametrize("cut", ["half", "last byte", "trailer"])
def test_truncated_archives_are_refused(packed: tuple[Path, dict[str, Entry]], tmp_path: Path, cut: str) -> None:
    archive, entries = packed
    data = archive.read_bytes()
    damaged = tmp_path / "damaged.tar.gz"
    damaged.write_bytes({"half": data[: len(data) // 2], "last byte": data[:-1], "trailer": data[:-8]}[cut])
    destination = tmp_path / "staging"
    with pytest.raises(ArchiveError, match="corrupt or truncated"):
        extract_archive(damaged, destination, entries)
    assert not destination.exists()
    with pytest.raises(ArchiveError, match="corrupt or truncated"):
        read_members(damaged)


def test_a_flipped_byte_fails_the_crc(packed: tuple[Path, dict[str, Entry]], tmp_path: Path) -> None:
    archive, entries = packed
    data = bytearray(archive.read_bytes())
    data[-7] ^= 0x01  # inside the CRC-32 of the trailer
    damaged = tmp_path / "damaged.tar.gz"
    damaged.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="corrupt or truncated"):
        extract_archive(damaged, tmp_path / "staging", entries)
    assert not (tmp_path / "staging").exists()


def test_a_broken_deflate_stream_is_the_codecs_error_turned_into_archive_error(
    packed: tuple[Path, dict[str, Entry]], tmp_path: Path
) -> None:
    """After a valid gzip header the codec (ISA-L or zlib) finds an invalid deflate block: its own
    error type becomes an ArchiveError, not a traceback."""
    archive, entries = packed
    damaged = tmp_path / "damaged.tar.gz"
    damaged.write_bytes(archive.read_bytes()[:10] + b"garbage, not deflate data" * 4)
    with pytest.raises(ArchiveError, match="corrupt or truncated"):
        extract_archive(damaged, tmp_path / "staging", entries)
    assert not (tmp_path / "staging").exists()
    with pytest.raises(ArchiveError, match="corrupt or truncated"):
        read_members(damaged)


def test_data_after_the_archive_is_refused(packed: tuple[Path, dict[str, Entry]], tmp_path: Path) -> None:
    archive, entries = packed
    damaged = tmp_path / "damaged.tar.gz"
    damaged.write_bytes(archive.read_bytes() + b"garbage!")
    with pytest.raises(ArchiveError, match="after the end of the gzip stream"):
        extract_archive(damaged, tmp_path / "staging", entries)


def test_extraction_needs_an_empty_folder(packed: tuple[Path, dict[str, Entry]], tmp_path: Path) -> None:
    archive, entries = packed
    destination = tmp_path / "staging"
    destination.mkdir()
    (destination / "keep.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(ArchiveError, match="not empty"):
        extract_archive(archive, destination, entries)
    assert [p.name for p in destination.iterdir()] == ["keep.txt"]


def test_a_subset_creates_the_folders_above_its_members(tmp_path: Path) -> None:
    members = [_file("apps/api/src/new.js", b"new\n")]
    archive = tmp_path / "delta.tar.gz"
    write_tar(archive, members)
    destination = tmp_path / "staging"
    extract_archive(archive, destination, expected_of(members))
    assert (destination / "apps/api/src/new.js").read_bytes() == b"new\n"
    assert stat.S_IMODE((destination / "apps/api").stat().st_mode) == 0o755


def test_gnu_long_names_are_read_and_checked(tmp_path: Path) -> None:
    long_name = "src/" + "n" * 150 + ".js"
    archive = tmp_path / "gnu.tar.gz"
    members = [_file(long_name, b"gnu\n")]
    write_tar(archive, members, fmt=tarfile.GNU_FORMAT)
    extract_archive(archive, tmp_path / "ok", expected_of(members))
    assert (tmp_path / "ok" / long_name).read_bytes() == b"gnu\n"
    evil = [_file("../" + "e" * 150, b"x")]
    write_tar(archive, evil, fmt=tarfile.GNU_FORMAT)
    with pytest.raises(ArchiveError, match=r"path contains '\.\.'"):
        extract_archive(archive, tmp_path / "bad", expected_of(evil))
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_direct_header_parsing_agrees_with_tarfile(fmt: int) -> None:
    """The direct ustar parser reads what tarfile.TarInfo.frombuf reads (and declines the rest)."""
    from patchflow.archive.reader import _ustar
    from patchflow.archive.writer import _header

    infos = []
    for entry in (
        Entry("a/b.js", "file", 0o644, 123),
        Entry("dir", "dir", 0o755),
        Entry("l", "symlink", target="a/b.js"),
        Entry("x" * 100, "file", 0o600, 0),
        Entry("big", "file", 0o755, 8**11 - 1),
    ):
        infos.append(_header(entry)[:512])
    for name, kind in (
        ("p" * 90 + "/" + "q" * 90, tarfile.REGTYPE),
        ("dev/x", tarfile.CHRTYPE),
        ("d/", tarfile.AREGTYPE),
    ):
        info = tarfile.TarInfo(name)
        info.type = kind
        try:
            infos.append(info.tobuf(fmt, "utf-8", "surrogateescape")[-512:])
        except ValueError:
            continue
    for block in infos:
        ours = _ustar(block)
        theirs = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        if ours is None:
            continue
        assert (ours.name, ours.type, ours.mode, ours.size, ours.linkname) == (
            theirs.name,
            theirs.type,
            theirs.mode,
            theirs.size,
            theirs.linkname,
        )
    assert all(_ustar(block) is not None for block in infos[:5]), "create-patch's own headers are parsed directly"
    damaged = bytearray(infos[0])
    damaged[0] ^= 1
    assert _ustar(bytes(damaged)) is None, "a bad checksum goes to tarfile, which refuses it"


def test_a_destination_that_cannot_be_created_is_an_archive_error(
    packed: tuple[Path, dict[str, Entry]], tmp_path: Path
) -> None:
    archive, entries = packed
    (tmp_path / "file").write_text("not a folder", encoding="utf-8")
    with pytest.raises(ArchiveError, match="Cannot create"):
        extract_archive(archive, tmp_path / "file" / "staging", entries)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
