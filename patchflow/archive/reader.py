"""Reading archives member by member: tar headers parsed and checked as they arrive, then listed or read.

Plain ustar headers are parsed directly, PAX and GNU long names through ``tarfile``'s parser.

:func:`walk` yields every member only after its header passed the checks (no absolute path,
``..``, backslash, device, FIFO, hard link, symlink leaving the target folder, duplicated member,
member inside a link or a file); everything else reads through it: :func:`read_members` (the
archive as manifest entries, file contents hashed), :func:`read_member_bytes` (a few small files)
and :mod:`patchflow.archive.extract`.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path

from patchflow.archive.codec import TAR_BLOCK, TAR_ENCODING, TAR_ERRORS, padded
from patchflow.archive.stream import Inflater, Stream, corrupt
from patchflow.errors import ArchiveError
from patchflow.manifest import Entry, clean_mode

MAX_HEADER = 1024 * 1024  # a PAX or GNU long-name header larger than this is refused
_ZERO_BLOCK = bytes(TAR_BLOCK)


def _parse_pax(data: bytes, archive: Path) -> dict[str, str]:
    """PAX extended header records (``"<len> <key>=<value>\\n"``) as a dict."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            raise corrupt(archive, "malformed PAX header") from None
        record = data[space + 1 : pos + length]
        if space < 0 or length <= 0 or pos + length > len(data) or not record.endswith(b"\n") or b"=" not in record:
            raise corrupt(archive, "malformed PAX header")
        key, _, value = record[:-1].partition(b"=")
        records[key.decode("utf-8", TAR_ERRORS)] = value.decode("utf-8", TAR_ERRORS)
        pos += length
    return records


_USTAR_MAGIC = b"ustar\x0000"
_OCTAL_FIELD = re.compile(rb"^ *([0-7]*) *(?:\x00.*)?$", re.DOTALL)


def _octal(field: bytes) -> int | None:
    match = _OCTAL_FIELD.match(field)
    return int(match.group(1) or b"0", 8) if match else None


def _ustar(block: bytes) -> tarfile.TarInfo | None:
    """Parse a plain POSIX ustar header (what create-patch and tarfile write for ordinary
    names) directly; None for anything else (GNU or base-256 fields, an odd checksum), which
    ``tarfile.TarInfo.frombuf`` then parses."""
    if block[257:265] != _USTAR_MAGIC:
        return None
    stored = _octal(block[148:156])
    if stored is None or stored != sum(block) - sum(block[148:156]) + 8 * 0x20:
        return None
    mode, size = _octal(block[100:108]), _octal(block[124:136])
    if mode is None or size is None:
        return None
    kind = block[156:157]
    name = block[:100].split(b"\x00", 1)[0].decode(TAR_ENCODING, TAR_ERRORS)
    prefix = block[345:500].split(b"\x00", 1)[0]
    if prefix:
        name = prefix.decode(TAR_ENCODING, TAR_ERRORS) + "/" + name
    if kind == tarfile.AREGTYPE and name.endswith("/"):
        kind = tarfile.DIRTYPE
    info = tarfile.TarInfo(name.rstrip("/") if kind == tarfile.DIRTYPE else name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.linkname = block[157:257].split(b"\x00", 1)[0].decode(TAR_ENCODING, TAR_ERRORS)
    return info


def _members(stream: Stream, archive: Path) -> Iterator[tarfile.TarInfo]:
    """Yield each member header; the caller consumes ``member.size`` bytes of a regular file
    (plus padding) before asking for the next. Checks the end-of-archive marker and that only
    zeros follow it."""
    pax: dict[str, str] = {}
    long_name: str | None = None
    long_link: str | None = None
    while True:
        block = stream.take(TAR_BLOCK)
        if block == _ZERO_BLOCK:
            if pax or long_name is not None or long_link is not None:
                raise corrupt(archive, "extended header without a member")
            if not stream.rest_is_zero():
                raise corrupt(archive, "data after the end of the archive")
            return
        try:
            info = _ustar(block) or tarfile.TarInfo.frombuf(block, TAR_ENCODING, TAR_ERRORS)
        except tarfile.HeaderError as exc:
            raise corrupt(archive, f"bad tar header ({exc})") from None
        extended = info.type in (tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
        if extended and info.size > MAX_HEADER:
            raise corrupt(archive, f"extended header of {info.size} bytes")
        if info.type == tarfile.XHDTYPE:
            pax.update(_parse_pax(stream.take(padded(info.size))[: info.size], archive))
            continue
        if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
            text = stream.take(padded(info.size))[: info.size].split(b"\x00", 1)[0].decode("utf-8", TAR_ERRORS)
            if info.type == tarfile.GNUTYPE_LONGNAME:
                long_name = text
            else:
                long_link = text
            continue
        if long_name is not None:
            info.name = long_name
        if long_link is not None:
            info.linkname = long_link
        if "path" in pax:
            info.name = pax["path"]
        if "linkpath" in pax:
            info.linkname = pax["linkpath"]
        if "size" in pax:
            try:
                info.size = int(pax["size"])
            except ValueError:
                raise corrupt(archive, "malformed PAX size") from None
        if info.isdir():
            info.name = info.name.rstrip("/")
        pax, long_name, long_link = {}, None, None
        yield info


def _member_problem(member: tarfile.TarInfo) -> str | None:
    name = member.name
    parts = name.split("/")
    if not name or name.startswith("/"):
        return "absolute path"
    if ".." in parts:
        return "path contains '..'"
    if "\x00" in name or "\\" in name:
        return "unsafe characters in the name"
    if "" in parts or "." in parts:
        return "path is not normalized (empty or '.' part)"
    if member.isdev() or member.isfifo() or member.ischr() or member.isblk():
        return "device or FIFO"
    if member.islnk():
        return "hard link"
    if member.type in (tarfile.XGLTYPE, tarfile.GNUTYPE_SPARSE):
        return "unsupported member type"
    if member.issym():
        target = member.linkname
        if target.startswith("/"):
            return f"symlink to absolute path {target!r}"
        if "\x00" in target:
            return "unsafe characters in the link target"
        depth = parts[:-1]
        for part in target.split("/"):
            if part == "..":
                if not depth:
                    return f"symlink {target!r} leaves the target folder"
                depth.pop()
            elif part not in ("", "."):
                depth.append(part)
    elif not (member.isfile() or member.isdir()):
        return "unsupported member type"
    if member.size < 0 or (member.size and not member.isfile()):
        return "unsupported member type (data on a non-file member)"
    return None


def unsafe(member: str, archive: Path, problem: str) -> ArchiveError:
    """The error refusing ``archive`` for its ``member`` (``problem`` says what is wrong)."""
    return ArchiveError(
        f"Unsafe member {member!r} in {archive.name}: {problem.rstrip('.')}.",
        "The archive is refused and nothing was extracted; rebuild the patch with create-patch.",
    )


def member_kind(member: tarfile.TarInfo) -> str:
    """``dir``, ``symlink`` or ``file``: the manifest's type of a checked ``member``."""
    return "dir" if member.isdir() else "symlink" if member.issym() else "file"


def walk(archive: Path) -> Iterator[tuple[tarfile.TarInfo, Stream]]:
    """Every safe member of ``archive`` (unsafe or duplicated members raise), with the stream
    positioned on its data; the caller reads (or not) ``member.size`` bytes of a file."""
    inflater = Inflater(archive)
    try:
        stream = Stream(inflater.chunks(), archive)
        kinds: dict[str, str] = {}  # member name -> dir / symlink / file
        folders: set[str] = set()  # every folder some member is in
        for member in _members(stream, archive):
            name = member.name
            problem = _member_problem(member)
            if problem:
                raise unsafe(name, archive, problem)
            if name in kinds:
                raise ArchiveError(
                    f"Member {name!r} appears twice in {archive.name}.",
                    "The archive is refused; rebuild the patch with create-patch.",
                )
            kind = member_kind(member)
            parent = name.rpartition("/")[0]
            while parent and parent not in folders:
                if kinds.get(parent, "dir") != "dir":  # never write through a link or into a file
                    raise unsafe(name, archive, f"its folder {parent!r} is a {kinds[parent]} in the archive")
                folders.add(parent)
                parent = parent.rpartition("/")[0]
            if kind != "dir" and name in folders:
                raise unsafe(name, archive, f"it is a {kind} but earlier members are inside it")
            kinds[name] = kind
            data_end = stream.offset + (padded(member.size) if member.isfile() else 0)
            yield member, stream
            stream.skip(data_end - stream.offset)  # whatever the consumer did not read, and the padding
    finally:
        inflater.close()


def read_members(archive: Path) -> dict[str, Entry]:
    """Read every member of ``archive`` into path -> :class:`Entry`, hashing file contents
    (one streaming pass, nothing written).

    Raises:
        ArchiveError: the archive is truncated or corrupt, or a member is unsafe (absolute
            path, ``..``, device, FIFO, hard link, link leaving the folder) or duplicated.
            The message names the offending member.
    """
    members: dict[str, Entry] = {}
    try:
        for member, stream in walk(archive):
            name = member.name
            if member.isdir():
                members[name] = Entry(name, "dir", mode=clean_mode(member.mode))
            elif member.issym():
                members[name] = Entry(name, "symlink", target=member.linkname)
            else:
                digest = hashlib.sha256()
                for piece in stream.pieces(member.size):
                    digest.update(piece)
                members[name] = Entry(
                    name, "file", mode=clean_mode(member.mode), size=member.size, sha256=digest.hexdigest()
                )
    except ArchiveError:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise corrupt(archive, exc) from None
    return members


def read_member_bytes(archive: Path, names: set[str], limit: int = 1 << 20) -> dict[str, bytes]:
    """The contents of the regular-file members ``names`` of ``archive`` (at most ``limit`` bytes
    each; streaming, stops once all were seen; missing members are left out).

    Raises:
        ArchiveError: the archive is corrupt or a member before them is unsafe.
    """
    found: dict[str, bytes] = {}
    try:
        for member, stream in walk(archive):
            if member.name in names and member.isfile() and member.size <= limit:
                found[member.name] = b"".join(stream.pieces(member.size))
                if len(found) == len(names):
                    break
    except ArchiveError:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise corrupt(archive, exc) from None
    return found


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
