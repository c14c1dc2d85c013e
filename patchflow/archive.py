"""Build, verify and safely extract patch archives (``patch-vX.Y.Z.tar.gz``).

Archives are deterministic: members sorted by path, PAX format with UTF-8 names whatever the
locale (field failure C07), mtime 0, owner ``0:0`` with empty names, gzip header without name
or timestamp. The same tree therefore gives the same bytes and the same sha256.

Extraction never trusts the archive: every member is checked first (no absolute path, no
``..``, no device/FIFO, no hard link, no symlink leaving the target, member set equal to the
manifest) and only then extracted with ``tarfile``'s ``data`` filter (CVE-2007-4559, C01).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path, PurePosixPath

from patchflow.errors import ArchiveError
from patchflow.manifest import Entry, clean_mode, sha256_file

GZIP_LEVEL = 6
TAR_ENCODING = "utf-8"
TAR_ERRORS = "surrogateescape"


def _tarinfo(entry: Entry) -> tarfile.TarInfo:
    info = tarfile.TarInfo(entry.path)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if entry.type == "dir":
        info.type = tarfile.DIRTYPE
        info.mode = entry.mode
    elif entry.type == "symlink":
        info.type = tarfile.SYMTYPE
        info.linkname = entry.target
        info.mode = 0o777
    else:
        info.type = tarfile.REGTYPE
        info.mode = entry.mode
        info.size = entry.size
    return info


def build_archive(
    root: Path,
    entries: Iterable[Entry],
    destination: Path,
    on_bytes: Callable[[int], None] | None = None,
) -> None:
    """Write a deterministic ``.tar.gz`` of ``entries`` (read from ``root``) to ``destination``.

    Each file is re-hashed while it is packed; a file that changed since it was scanned
    raises :class:`ArchiveError` (the tree must be quiet during create-patch).
    """
    with (
        open(destination, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT, encoding=TAR_ENCODING, errors=TAR_ERRORS) as tar,
    ):
        for entry in sorted(entries, key=lambda e: e.path):
            info = _tarinfo(entry)
            if entry.type != "file":
                tar.addfile(info)
                continue
            with open(root / entry.path, "rb") as handle:
                reader = _HashingReader(handle, on_bytes)
                tar.addfile(info, reader)
                if reader.hexdigest() != entry.sha256 or reader.size != entry.size:
                    raise ArchiveError(
                        f"{entry.path} changed while the patch was being built.",
                        "Stop whatever writes to the project tree and run create-patch again.",
                    )


class _HashingReader(io.RawIOBase):
    def __init__(self, handle: io.BufferedReader, on_bytes: Callable[[int], None] | None) -> None:
        self._handle = handle
        self._digest = hashlib.sha256()
        self._on_bytes = on_bytes
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self._digest.update(data)
        self.size += len(data)
        if self._on_bytes is not None and data:
            self._on_bytes(len(data))
        return data

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def _member_problem(member: tarfile.TarInfo) -> str | None:
    name = member.name
    pure = PurePosixPath(name)
    if not name or name.startswith("/") or pure.is_absolute():
        return "absolute path"
    if ".." in pure.parts:
        return "path contains '..'"
    if "\x00" in name or "\\" in name:
        return "unsafe characters in the name"
    if member.isdev() or member.isfifo() or member.ischr() or member.isblk():
        return "device or FIFO"
    if member.islnk():
        return "hard link"
    if member.issym():
        target = member.linkname
        if os.path.isabs(target):
            return f"symlink to absolute path {target!r}"
        depth: list[str] = []
        for part in (pure.parent / target).parts:
            if part == "..":
                if not depth:
                    return f"symlink {target!r} leaves the target folder"
                depth.pop()
            elif part not in ("", "."):
                depth.append(part)
    elif not (member.isfile() or member.isdir()):
        return "unsupported member type"
    return None


def read_members(archive: Path) -> dict[str, Entry]:
    """Read every member of ``archive`` into path -> :class:`Entry`, hashing file contents.

    Raises:
        ArchiveError: the archive is truncated or corrupt, or a member is unsafe (absolute
            path, ``..``, device, FIFO, hard link, link leaving the folder) or duplicated.
            The message names the offending member.
    """
    members: dict[str, Entry] = {}
    try:
        with tarfile.open(archive, mode="r|gz", encoding=TAR_ENCODING, errors=TAR_ERRORS) as tar:
            for member in tar:
                problem = _member_problem(member)
                if problem:
                    raise ArchiveError(
                        f"Unsafe member {member.name!r} in {archive.name}: {problem.rstrip('.')}.",
                        "The archive is refused and nothing was extracted; rebuild the patch with create-patch.",
                    )
                name = member.name.rstrip("/")
                if name in members:
                    raise ArchiveError(
                        f"Member {name!r} appears twice in {archive.name}.",
                        "The archive is refused; rebuild the patch with create-patch.",
                    )
                if member.isdir():
                    members[name] = Entry(name, "dir", mode=clean_mode(member.mode))
                elif member.issym():
                    members[name] = Entry(name, "symlink", target=member.linkname)
                else:
                    digest = hashlib.sha256()
                    handle = tar.extractfile(member)
                    if handle is None:  # pragma: no cover - regular files always have data
                        raise ArchiveError(f"Cannot read member {name!r}.", "Rebuild the patch.")
                    size = 0
                    while chunk := handle.read(1024 * 1024):
                        digest.update(chunk)
                        size += len(chunk)
                    members[name] = Entry(
                        name, "file", mode=clean_mode(member.mode), size=size, sha256=digest.hexdigest()
                    )
    except ArchiveError:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise ArchiveError(
            f"The archive {archive} is corrupt or truncated: {exc}.",
            "Copy or rebuild the patch again; nothing was extracted.",
        ) from None
    return members


def compare_members(archive_entries: Mapping[str, Entry], manifest_entries: Mapping[str, Entry]) -> list[str]:
    """List differences between archive members and manifest entries (empty when equal)."""
    problems = []
    for path in sorted(set(archive_entries) | set(manifest_entries)):
        a = archive_entries.get(path)
        m = manifest_entries.get(path)
        if a is None:
            problems.append(f"{path}: listed in manifest.json but missing from the archive")
        elif m is None:
            problems.append(f"{path}: in the archive but not listed in manifest.json")
        elif a.type != m.type:
            problems.append(f"{path}: archive has a {a.type}, manifest says {m.type}")
        elif a.type == "file" and (a.sha256 != m.sha256 or a.size != m.size):
            problems.append(f"{path}: content differs from manifest.json (sha256/size)")
        elif a.type != "symlink" and a.mode != m.mode:
            problems.append(f"{path}: mode {a.mode:04o} differs from manifest.json ({m.mode:04o})")
        elif a.type == "symlink" and a.target != m.target:
            problems.append(f"{path}: link target differs from manifest.json")
    return problems


def extract_archive(archive: Path, destination: Path, expected: Mapping[str, Entry]) -> None:
    """Extract ``archive`` into the empty or new folder ``destination`` after checking it.

    The members must equal ``expected`` (the manifest) exactly; then extraction runs with the
    ``data`` filter, files end up owned by the running user, and modes are set from the
    manifest (no setuid/setgid/group-or-other write).

    Raises:
        ArchiveError: an unsafe member, a mismatch with the manifest, or a corrupt archive;
            ``destination`` is left empty in that case.
    """
    members = read_members(archive)
    problems = compare_members(members, expected)
    if problems:
        raise ArchiveError(
            f"The archive {archive.name} does not match its manifest: {'; '.join(problems[:10])}.",
            "Refusing to extract; rebuild or re-copy the patch.",
        )
    destination.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, mode="r:gz", encoding=TAR_ENCODING, errors=TAR_ERRORS) as tar:
            tar.extractall(destination, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise ArchiveError(
            f"Extraction of {archive.name} failed: {exc}.", "Check disk space and permissions."
        ) from None
    real_root = os.path.realpath(destination)
    for entry in expected.values():
        if entry.type == "symlink":
            # resolved through every link (``q -> .`` chains): must stay inside the folder
            real = os.path.realpath(destination / entry.path)
            if real != real_root and not real.startswith(real_root + os.sep):
                raise ArchiveError(
                    f"Unsafe member {entry.path!r} in {archive.name}: the symlink leads outside the folder "
                    f"(through {entry.target!r}).",
                    "The archive is refused; nothing was applied.",
                )
            continue
        os.chmod(destination / entry.path, entry.mode)
    for entry in expected.values():
        if entry.type == "file":
            digest, _ = sha256_file(destination / entry.path)
            if digest != entry.sha256:
                raise ArchiveError(
                    f"{entry.path} differs from the manifest after extraction.",
                    "The disk or the archive is faulty; nothing was applied.",
                )
