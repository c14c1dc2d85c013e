"""Build, verify and safely extract patch archives (``patch-vX.Y.Z.tar.gz``), each in one pass.

**Format.** A POSIX tar stream (PAX format, UTF-8 names whatever the locale, field failure C07;
members sorted by path, mtime 0, owner ``0:0`` with empty names) compressed as ONE standard gzip
member: header without name or timestamp, the deflate data, CRC-32 and length. ``gzip -t``,
``tar -tzf`` and Python's ``tarfile`` (``r:gz`` and ``r|gz``) read it like any ``.tar.gz``.

**Parallel, deterministic compression.** The tar stream is cut into fixed blocks of
:data:`BLOCK_SIZE` bytes. Each block is deflated independently on a thread pool (every core) and
ends with a sync flush, so the blocks concatenate into one valid deflate stream (what ``pigz``
does); a final empty block and the trailer close it. A block is compressed at
:data:`LEVEL_TEXT`, or at :data:`LEVEL_PACKED` when most of its bytes come from files that are
already compressed (images, fonts, archives, media: by extension, or by a quick probe of the
first bytes of larger files). Block boundaries and levels depend only on the tree, so the same
tree, settings and codec give the same bytes and the same sha256. The codec is ISA-L
(``isal``), about ten times faster than zlib at a ratio close to ``gzip -6``; stdlib ``zlib``
is the fallback where ``isal`` is unavailable.

**One pass to create** (:func:`build_archive`): each file is read once; the same bytes are
hashed (sha256, for the manifest) and packed; the compressed output is hashed (sha256 and md5)
while it is written, so nothing reads the archive again.

**One pass to extract** (:func:`extract_archive`): the archive is decompressed once (a read-ahead
thread), each member header is checked as it arrives (no absolute path, ``..``, backslash,
device, FIFO, hard link, symlink leaving the target, member listed in the manifest with the same
type, size, mode and link target, never inside a link or a file), then written and hashed in the
same read; missing members are found at the end, and every symlink is resolved with ``realpath``.
Files are created with ``O_EXCL | O_NOFOLLOW`` (never through a link), owned by the running
user, with the manifest's mode (no setuid, setgid, sticky or group/other write). Any problem
removes everything extracted so far and raises :class:`ArchiveError` naming the member.
This covers what ``tarfile``'s ``data`` filter does (CVE-2007-4559, C01), which is not used.
"""

from __future__ import annotations

import hashlib
import os
import queue
import re
import shutil
import struct
import tarfile
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from patchflow.errors import ArchiveError
from patchflow.manifest import Entry, clean_mode

try:
    from isal import isal_zlib as _codec

    CODEC = "isal"
    LEVEL_TEXT = 3  # ISA-L's best level: within ~5% of gzip -6's size, ~10x its speed
    LEVEL_PACKED = 1
except ImportError:  # pragma: no cover - isal ships wheels for every supported platform
    import zlib as _codec  # type: ignore[no-redef]

    CODEC = "zlib"
    LEVEL_TEXT = 6
    LEVEL_PACKED = 1

GZIP_LEVEL = LEVEL_TEXT  # kept for callers of the old constant
TAR_ENCODING = "utf-8"
TAR_ERRORS = "surrogateescape"
BLOCK_SIZE = 1024 * 1024
READ_SIZE = 1024 * 1024
PROBE_MIN_SIZE = 64 * 1024
PROBE_BYTES = 32 * 1024
PROBE_RATIO = 0.95
PROGRESS_STEP = 4 * 1024 * 1024
MAX_HEADER = 1024 * 1024  # a PAX or GNU long-name header larger than this is refused
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, mtime 0, OS unknown
_FINAL_BLOCK = b"\x03\x00"  # an empty final fixed-Huffman block: ends the deflate stream
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE
_ZERO_BLOCK = bytes(_BLOCK)

# fmt: off
#: Extensions of formats that are already compressed: packed at :data:`LEVEL_PACKED`.
PACKED_SUFFIXES = frozenset(
    {
        ".png", ".jpg", ".jpeg", ".gif", ".webp", ".avif", ".heic", ".jxl", ".woff", ".woff2", ".zip", ".gz", ".tgz",
        ".bz2", ".xz", ".zst", ".br", ".lz4", ".7z", ".rar", ".jar", ".war", ".apk", ".whl", ".mp3", ".mp4", ".m4a",
        ".m4v", ".aac", ".ogg", ".oga", ".opus", ".webm", ".mkv", ".mov", ".avi", ".flac", ".docx", ".xlsx", ".pptx",
        ".odt", ".ods", ".odp", ".epub",
    }
)
#: Extensions of text and other compressible formats: never probed.
TEXT_SUFFIXES = frozenset(
    {
        ".js", ".mjs", ".cjs", ".ts", ".tsx", ".jsx", ".json", ".map", ".css", ".scss", ".less", ".html", ".htm",
        ".md", ".txt", ".sql", ".prisma", ".yml", ".yaml", ".toml", ".xml", ".svg", ".csv", ".sh", ".py", ".env",
        ".lock", ".graphql", ".vue", ".ttf", ".otf", ".eot", ".wasm", ".ico", ".bmp", ".tif", ".tiff",
    }
)
# fmt: on


@dataclass(frozen=True)
class ArchiveResult:
    """What :func:`build_archive` wrote: the packed ``entries`` (files with the sha256 and size
    read while packing), the archive's ``sha256`` and ``md5`` (hex), its ``size`` in bytes and
    the uncompressed tar stream's ``tar_size`` in bytes."""

    entries: list[Entry]
    sha256: str
    md5: str
    size: int
    tar_size: int


def cpu_workers() -> int:
    """Number of cores this process may run on (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


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


_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE}
_MAX_OCTAL_SIZE = 8**11 - 1


def _header(entry: Entry) -> bytes:
    """The tar header of ``entry``: a plain ustar block when the name and link target are ASCII
    and fit (the common case, built directly), else ``tarfile``'s PAX header sequence. Both are
    what ``tarfile.TarInfo.tobuf(PAX_FORMAT)`` writes: owner 0:0 without names, mtime 0."""
    name = entry.path + "/" if entry.type == "dir" else entry.path  # as tarfile names folders
    link = entry.target if entry.type == "symlink" else ""
    size = entry.size if entry.type == "file" else 0
    if len(name) > 100 or len(link) > 100 or not name.isascii() or not link.isascii() or size > _MAX_OCTAL_SIZE:
        return _tarinfo(entry).tobuf(tarfile.PAX_FORMAT, TAR_ENCODING, TAR_ERRORS)
    mode = 0o777 if entry.type == "symlink" else entry.mode & 0o7777
    block = b"".join(
        (
            name.encode("ascii").ljust(100, b"\x00"),
            b"%07o\x00" % mode,
            b"0000000\x00" * 2,  # uid, gid
            b"%011o\x00" % size,
            b"00000000000\x00",  # mtime
            b"        ",  # checksum, counted as spaces
            _TYPES[entry.type],
            link.encode("ascii").ljust(100, b"\x00"),
            tarfile.POSIX_MAGIC,
            bytes(32 + 32 + 8 + 8 + 155 + 12),  # uname, gname, devmajor, devminor, prefix, padding
        )
    )
    return block[:148] + b"%06o\x00 " % sum(block) + block[156:]


def _deflate_block(data: memoryview, level: int) -> bytes:
    """Raw deflate of one block, ending on a byte boundary (sync flush) so blocks concatenate."""
    compressor = _codec.compressobj(level, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)


def is_precompressed(path: str | Path, size: int) -> bool:
    """True when ``path`` (``size`` bytes) holds already-compressed data: by extension, or for
    unknown extensions of at least 64 KiB by deflating its first 32 KiB (saves < 5%)."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix in PACKED_SUFFIXES:
        return True
    if suffix in TEXT_SUFFIXES or size < PROBE_MIN_SIZE:
        return False
    try:
        with open(path, "rb") as handle:
            sample = handle.read(PROBE_BYTES)
    except OSError:
        return False
    return len(_codec.compress(sample, LEVEL_PACKED)) >= PROBE_RATIO * len(sample)


class _OrderedWriter(threading.Thread):
    """Write compressed blocks in order as their futures complete, hashing what is written."""

    def __init__(self, handle: Callable[[bytes], object], depth: int) -> None:
        super().__init__(name="patchflow-archive-writer", daemon=True)
        self._write = handle
        self.jobs: queue.Queue[Future[bytes] | bytes | None] = queue.Queue(maxsize=depth)
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5()  # noqa: S324 - checksum.md5 is kept for the old workflow, not for security
        self.size = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            if self.error is not None:
                continue  # keep draining so the producer never blocks; it sees self.error
            try:
                data = job if isinstance(job, bytes) else job.result()
                self._write(data)
                self.sha256.update(data)
                self.md5.update(data)
                self.size += len(data)
            except BaseException as exc:  # reported to the producer thread
                self.error = exc


class _Packer:
    """Cut a byte stream into :data:`BLOCK_SIZE` blocks and hand each to the compressor pool."""

    def __init__(self, pool: ThreadPoolExecutor, writer: _OrderedWriter) -> None:
        self._pool = pool
        self._writer = writer
        self._block = bytearray(BLOCK_SIZE)
        self._fill = 0
        self._packed_bytes = 0
        self.crc = 0
        self.total = 0

    def _flush(self) -> None:
        if not self._fill:
            return
        view = memoryview(self._block)[: self._fill]
        self.crc = _codec.crc32(view, self.crc)
        level = LEVEL_PACKED if self._packed_bytes * 2 > self._fill else LEVEL_TEXT
        self._put(self._pool.submit(_deflate_block, view, level))
        self._block = bytearray(BLOCK_SIZE)  # the pool owns the old buffer now
        self._fill = 0
        self._packed_bytes = 0

    def _put(self, job: Future[bytes] | bytes) -> None:
        if self._writer.error is not None:
            raise self._writer.error
        self._writer.jobs.put(job)

    def space(self) -> memoryview:
        """The free part of the current block (a full block is flushed first)."""
        if self._fill == BLOCK_SIZE:
            self._flush()
        return memoryview(self._block)[self._fill :]

    def commit(self, count: int, packed: bool) -> None:
        """Mark ``count`` bytes written into :meth:`space` as used."""
        self._fill += count
        self.total += count
        if packed:
            self._packed_bytes += count

    def add(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            space = self.space()
            count = min(len(space), len(view))
            space[:count] = view[:count]
            self.commit(count, packed=False)
            view = view[count:]

    def finish(self) -> None:
        self._flush()
        self._put(_FINAL_BLOCK + struct.pack("<II", self.crc & 0xFFFFFFFF, self.total & 0xFFFFFFFF))


def _changed(path: str) -> ArchiveError:
    return ArchiveError(
        f"{path} changed while the patch was being built.",
        "Stop whatever writes to the project tree and run create-patch again.",
    )


def _pack_file(packer: _Packer, path: str, entry: Entry, packed: bool) -> str:
    """Copy the file of ``entry`` (at ``path``) into the stream, hashing the same bytes; returns
    the sha256."""
    digest = hashlib.sha256()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ArchiveError(
            f"Cannot read {entry.path}: {exc.strerror}.", "Fix the permissions and run create-patch again."
        ) from None
    try:
        remaining = entry.size
        scratch = bytearray(1)  # filled only if the file grew since it was scanned (no fstat needed)
        while True:
            space = packer.space()
            want = min(remaining, len(space))
            last = want == remaining  # this read reaches the scanned size: also probe one byte more
            count = os.readv(fd, [space[:want], scratch] if last else [space[:want]])
            if count != want:  # more: it grew; fewer: it ended early (regular files read fully)
                raise _changed(entry.path)
            digest.update(space[:count])
            packer.commit(count, packed)
            remaining -= count
            if last:
                break
    finally:
        os.close(fd)
    padding = -entry.size % _BLOCK
    if padding:
        packer.add(bytes(padding))
    return digest.hexdigest()


def build_archive(
    root: Path,
    entries: Iterable[Entry],
    destination: Path,
    on_bytes: Callable[[int], None] | None = None,
    *,
    workers: int | None = None,
) -> ArchiveResult:
    """Write the deterministic ``.tar.gz`` of ``entries`` (read from ``root``) to ``destination``.

    Every file is read once: its bytes are hashed (sha256) and packed in the same read, and the
    compressed output is hashed (sha256, md5) as it is written (see the module docstring).

    Args:
        root: the folder the entries' paths are relative to.
        entries: what to pack; each file's ``size`` must be its current size. A file entry with a
            ``sha256`` must still have that content; an empty ``sha256`` is filled in.
        destination: the archive to write (replaced if it exists).
        on_bytes: progress callback, fed with bytes of file content packed.
        workers: compression threads (default: every core).

    Returns:
        An :class:`ArchiveResult` whose entries carry the sha256 and size read while packing.

    Raises:
        ArchiveError: a file changed (size or content) or vanished since it was scanned (the
            tree must be quiet during create-patch), or cannot be read.
        OSError: ``destination`` cannot be written.
    """
    ordered = sorted(entries, key=lambda e: e.path)
    threads = workers or cpu_workers()
    packed_entries: list[Entry] = []
    pending_progress = 0
    with open(destination, "wb") as output, ThreadPoolExecutor(threads, thread_name_prefix="patchflow-gzip") as pool:
        writer = _OrderedWriter(output.write, depth=2 * threads + 2)
        writer.start()
        packer = _Packer(pool, writer)
        try:
            writer.jobs.put(_GZIP_HEADER)
            base = str(root)
            for entry in ordered:
                packer.add(_header(entry))
                if entry.type != "file":
                    packed_entries.append(entry)
                    continue
                path = os.path.join(base, entry.path)
                digest = _pack_file(packer, path, entry, is_precompressed(path, entry.size))
                if entry.sha256 and digest != entry.sha256:
                    raise _changed(entry.path)
                packed_entries.append(Entry(entry.path, "file", entry.mode, entry.size, digest))
                if on_bytes is not None:
                    pending_progress += entry.size
                    if pending_progress >= PROGRESS_STEP:
                        on_bytes(pending_progress)
                        pending_progress = 0
            # end of archive: two zero blocks, then zeros up to a whole record (as tarfile and GNU tar)
            end = packer.total + 2 * _BLOCK
            packer.add(bytes(2 * _BLOCK + (-end % _RECORD)))
            packer.finish()
        finally:
            writer.jobs.put(None)
            writer.join()
        if writer.error is not None:
            raise writer.error
    if on_bytes is not None and pending_progress:
        on_bytes(pending_progress)
    return ArchiveResult(packed_entries, writer.sha256.hexdigest(), writer.md5.hexdigest(), writer.size, packer.total)


# -- reading ---------------------------------------------------------------------------------


def _corrupt(archive: Path, detail: object) -> ArchiveError:
    return ArchiveError(
        f"The archive {archive} is corrupt or truncated: {detail}.",
        "Copy or rebuild the patch again; nothing was extracted.",
    )


class _Inflater:
    """The decompressed bytes of a gzip file (every member's CRC and length checked), produced in
    chunks of at most :data:`READ_SIZE` by a read-ahead thread, so decompression overlaps with
    whatever the consumer does (writing, hashing). Raises :class:`ArchiveError` for a corrupt or
    truncated stream; :meth:`close` stops the thread early."""

    def __init__(self, archive: Path, depth: int = 8) -> None:
        self.archive = archive
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="patchflow-inflate", daemon=True)
        self._thread.start()

    def _emit(self, item: bytes | BaseException | None) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            self._inflate()
        except BaseException as exc:  # handed to the consumer
            self._emit(exc)
        else:
            self._emit(None)

    def _inflate(self) -> None:
        members = 0
        pending = b""
        at_end = False
        with open(self.archive, "rb") as handle:
            inflater = None
            while not self._stop.is_set():
                if len(pending) < 2 and not at_end:
                    more = handle.read(READ_SIZE)
                    at_end = not more
                    pending += more
                    continue
                if inflater is None:
                    if not pending:
                        break
                    if pending[:2] != b"\x1f\x8b":
                        detail = "not a gzip file" if members == 0 else "data after the end of the gzip stream"
                        raise _corrupt(self.archive, detail)
                    inflater = _codec.decompressobj(31)
                try:
                    out = inflater.decompress(pending, READ_SIZE)
                except zlib.error as exc:
                    raise _corrupt(self.archive, exc) from None
                except Exception as exc:  # isal raises its own error type
                    raise _corrupt(self.archive, exc) from None
                pending = inflater.unconsumed_tail
                if out and not self._emit(out):
                    return
                if inflater.eof:
                    pending = inflater.unused_data + pending
                    inflater = None
                    members += 1
                elif not out and not pending:
                    if at_end:
                        raise _corrupt(self.archive, "unexpected end of file")
                    pending = handle.read(READ_SIZE)
                    at_end = not pending
        if members == 0 and not self._stop.is_set():
            raise _corrupt(self.archive, "empty file")

    def chunks(self) -> Iterator[bytes]:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()


class _Stream:
    """Sequential access to a chunked byte stream: exact reads for headers, zero-copy pieces
    for member data."""

    def __init__(self, chunks: Iterator[bytes], archive: Path) -> None:
        self._chunks = chunks
        self._archive = archive
        self._buf = memoryview(b"")
        self.offset = 0  # bytes consumed so far

    def _more(self) -> bool:
        for chunk in self._chunks:
            if chunk:
                self._buf = memoryview(chunk)
                return True
        return False

    def take(self, size: int) -> bytes:
        """Exactly ``size`` bytes (:class:`ArchiveError` when the stream ends first)."""
        self.offset += size
        if len(self._buf) >= size:
            out = self._buf[:size].tobytes()
            self._buf = self._buf[size:]
            return out
        parts = []
        need = size
        while need:
            if not self._buf and not self._more():
                raise _corrupt(self._archive, "unexpected end of the tar stream")
            piece = self._buf[:need]
            parts.append(piece.tobytes())
            self._buf = self._buf[len(piece) :]
            need -= len(piece)
        return b"".join(parts)

    def pieces(self, size: int) -> Iterator[memoryview]:
        """``size`` bytes as consecutive views (valid until the next call)."""
        need = size
        while need:
            if not self._buf and not self._more():
                raise _corrupt(self._archive, "unexpected end of the tar stream")
            piece = self._buf[:need]
            self._buf = self._buf[len(piece) :]
            need -= len(piece)
            self.offset += len(piece)
            yield piece

    def skip(self, size: int) -> None:
        for _ in self.pieces(size):
            pass

    def rest_is_zero(self) -> bool:
        """Consume the rest of the stream; True when it is all NUL bytes."""
        zero = True
        while True:
            if self._buf and self._buf.tobytes().count(0) != len(self._buf):
                zero = False
            if not self._more():
                return zero


def _parse_pax(data: bytes, archive: Path) -> dict[str, str]:
    """PAX extended header records (``"<len> <key>=<value>\\n"``) as a dict."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            raise _corrupt(archive, "malformed PAX header") from None
        record = data[space + 1 : pos + length]
        if space < 0 or length <= 0 or pos + length > len(data) or not record.endswith(b"\n") or b"=" not in record:
            raise _corrupt(archive, "malformed PAX header")
        key, _, value = record[:-1].partition(b"=")
        records[key.decode("utf-8", TAR_ERRORS)] = value.decode("utf-8", TAR_ERRORS)
        pos += length
    return records


def _padded(size: int) -> int:
    return size + (-size % _BLOCK)


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


def _members(stream: _Stream, archive: Path) -> Iterator[tarfile.TarInfo]:
    """Yield each member header; the caller consumes ``member.size`` bytes of a regular file
    (plus padding) before asking for the next. Checks the end-of-archive marker and that only
    zeros follow it."""
    pax: dict[str, str] = {}
    long_name: str | None = None
    long_link: str | None = None
    while True:
        block = stream.take(_BLOCK)
        if block == _ZERO_BLOCK:
            if pax or long_name is not None or long_link is not None:
                raise _corrupt(archive, "extended header without a member")
            if not stream.rest_is_zero():
                raise _corrupt(archive, "data after the end of the archive")
            return
        try:
            info = _ustar(block) or tarfile.TarInfo.frombuf(block, TAR_ENCODING, TAR_ERRORS)
        except tarfile.HeaderError as exc:
            raise _corrupt(archive, f"bad tar header ({exc})") from None
        extended = info.type in (tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
        if extended and info.size > MAX_HEADER:
            raise _corrupt(archive, f"extended header of {info.size} bytes")
        if info.type == tarfile.XHDTYPE:
            pax.update(_parse_pax(stream.take(_padded(info.size))[: info.size], archive))
            continue
        if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
            text = stream.take(_padded(info.size))[: info.size].split(b"\x00", 1)[0].decode("utf-8", TAR_ERRORS)
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
                raise _corrupt(archive, "malformed PAX size") from None
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


def _unsafe(member: str, archive: Path, problem: str) -> ArchiveError:
    return ArchiveError(
        f"Unsafe member {member!r} in {archive.name}: {problem.rstrip('.')}.",
        "The archive is refused and nothing was extracted; rebuild the patch with create-patch.",
    )


def _kind(member: tarfile.TarInfo) -> str:
    return "dir" if member.isdir() else "symlink" if member.issym() else "file"


def _walk(archive: Path) -> Iterator[tuple[tarfile.TarInfo, _Stream]]:
    """Every safe member of ``archive`` (unsafe or duplicated members raise), with the stream
    positioned on its data; the caller reads (or not) ``member.size`` bytes of a file."""
    inflater = _Inflater(archive)
    try:
        stream = _Stream(inflater.chunks(), archive)
        kinds: dict[str, str] = {}  # member name -> dir / symlink / file
        folders: set[str] = set()  # every folder some member is in
        for member in _members(stream, archive):
            name = member.name
            problem = _member_problem(member)
            if problem:
                raise _unsafe(name, archive, problem)
            if name in kinds:
                raise ArchiveError(
                    f"Member {name!r} appears twice in {archive.name}.",
                    "The archive is refused; rebuild the patch with create-patch.",
                )
            kind = _kind(member)
            parent = name.rpartition("/")[0]
            while parent and parent not in folders:
                if kinds.get(parent, "dir") != "dir":  # never write through a link or into a file
                    raise _unsafe(name, archive, f"its folder {parent!r} is a {kinds[parent]} in the archive")
                folders.add(parent)
                parent = parent.rpartition("/")[0]
            if kind != "dir" and name in folders:
                raise _unsafe(name, archive, f"it is a {kind} but earlier members are inside it")
            kinds[name] = kind
            data_end = stream.offset + (_padded(member.size) if member.isfile() else 0)
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
        for member, stream in _walk(archive):
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
        raise _corrupt(archive, exc) from None
    return members


def read_member_bytes(archive: Path, names: set[str], limit: int = 1 << 20) -> dict[str, bytes]:
    """The contents of the regular-file members ``names`` of ``archive`` (at most ``limit`` bytes
    each; streaming, stops once all were seen; missing members are left out).

    Raises:
        ArchiveError: the archive is corrupt or a member before them is unsafe.
    """
    found: dict[str, bytes] = {}
    try:
        for member, stream in _walk(archive):
            if member.name in names and member.isfile() and member.size <= limit:
                found[member.name] = b"".join(stream.pieces(member.size))
                if len(found) == len(names):
                    break
    except ArchiveError:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise _corrupt(archive, exc) from None
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


def _header_mismatch(member: tarfile.TarInfo, expected: Entry | None) -> str | None:
    """What :func:`compare_members` would say about ``member`` from its header alone (or None)."""
    path = member.name
    if expected is None:
        return f"{path}: in the archive but not listed in manifest.json"
    kind = _kind(member)
    if kind != expected.type:
        return f"{path}: archive has a {kind}, manifest says {expected.type}"
    if kind == "file" and member.size != expected.size:
        return f"{path}: content differs from manifest.json (sha256/size)"
    if kind != "symlink" and clean_mode(member.mode) != expected.mode:
        return f"{path}: mode {clean_mode(member.mode):04o} differs from manifest.json ({expected.mode:04o})"
    if kind == "symlink" and member.linkname != expected.target:
        return f"{path}: link target differs from manifest.json"
    return None


def _mismatch(archive: Path, problems: list[str]) -> ArchiveError:
    return ArchiveError(
        f"The archive {archive.name} does not match its manifest: {'; '.join(problems[:10])}.",
        "Refusing to extract (nothing was kept); rebuild or re-copy the patch.",
    )


class _Extraction:
    """The state of one :func:`extract_archive`: what was created, so a failure removes it all."""

    def __init__(self, archive: Path, destination: Path) -> None:
        self.archive = archive
        self.destination = destination
        self.made: list[Path] = []  # folders created up to and including destination
        self.base = str(destination)
        self.kinds: dict[str, str] = {"": "dir"}
        self.dirs: list[tuple[str, int]] = []  # folders whose mode is set at the end
        self.links: list[Entry] = []
        self.umask = _current_umask()

    def prepare(self) -> None:
        missing = []
        folder = self.destination
        while not folder.exists() and not folder.is_symlink():
            missing.append(folder)
            folder = folder.parent
        if self.destination.is_symlink() or (self.destination.exists() and not self.destination.is_dir()):
            raise ArchiveError(
                f"Cannot extract into {self.destination}: it is not a folder.", "Remove it and try again."
            )
        if not missing and any(os.scandir(self.destination)):
            raise ArchiveError(
                f"Cannot extract into {self.destination}: the folder is not empty.",
                "Extraction needs an empty or new folder; remove it and try again.",
            )
        try:
            for folder in reversed(missing):
                folder.mkdir()
                self.made.append(folder)
        except OSError as exc:
            for folder in reversed(self.made):
                folder.rmdir()
            raise ArchiveError(
                f"Cannot create {self.destination}: {exc.strerror}.", "Check permissions and disk space."
            ) from None

    def discard(self) -> None:
        """Remove everything this extraction created (the destination's content, and the folders
        it made)."""
        if not self.destination.is_dir() or self.destination.is_symlink():
            return
        for path in (self.destination / p for p, _ in reversed(self.dirs)):
            try:
                os.chmod(path, 0o700, follow_symlinks=False)
            except OSError:
                pass
        with os.scandir(self.destination) as children:
            for child in children:
                if child.is_dir(follow_symlinks=False):
                    shutil.rmtree(child.path, ignore_errors=True)
                else:
                    try:
                        os.unlink(child.path)
                    except OSError:
                        pass
        for folder in reversed(self.made):
            try:
                folder.rmdir()
            except OSError:
                break

    def parent_of(self, name: str) -> None:
        """Make sure every folder above ``name`` is a folder of this extraction (created as
        needed, e.g. the unchanged folders of a delta patch); never a link or a file."""
        parts = name.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            prefix = "/".join(parts[:depth])
            kind = self.kinds.get(prefix)
            if kind is None:
                os.mkdir(os.path.join(self.base, prefix), 0o700)
                self.kinds[prefix] = "implicit"
            elif kind not in ("dir", "implicit"):
                raise _unsafe(name, self.archive, f"its folder {prefix!r} is a {kind} in the archive")

    def write_file(
        self, member: tarfile.TarInfo, stream: _Stream, entry: Entry, on_bytes: Callable[[int], None] | None
    ) -> None:
        name = member.name
        digest = hashlib.sha256()
        mode = clean_mode(entry.mode)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(os.path.join(self.base, name), flags, mode)  # the open fd may write whatever the mode
        self.kinds[name] = "file"
        try:
            for piece in stream.pieces(member.size):
                digest.update(piece)
                view = piece
                while view:
                    view = view[os.write(fd, view) :]
                if on_bytes is not None:
                    on_bytes(len(piece))
            if mode & self.umask:
                os.fchmod(fd, mode)
        finally:
            os.close(fd)
        if digest.hexdigest() != entry.sha256:
            raise _mismatch(self.archive, [f"{name}: content differs from manifest.json (sha256/size)"])

    def add(
        self, member: tarfile.TarInfo, stream: _Stream, entry: Entry, on_bytes: Callable[[int], None] | None
    ) -> None:
        name = member.name
        self.parent_of(name)
        if member.isdir():
            mode = clean_mode(entry.mode)
            final = mode & 0o700 == 0o700 and not mode & self.umask  # writable now, and mkdir gives it exactly
            if self.kinds.get(name) != "implicit":
                os.mkdir(os.path.join(self.base, name), mode if final else 0o700)
                if not final:
                    self.dirs.append((name, mode))
            else:
                self.dirs.append((name, mode))
            self.kinds[name] = "dir"
        elif member.issym():
            os.symlink(member.linkname, os.path.join(self.base, name))
            self.kinds[name] = "symlink"
            self.links.append(entry)
        else:
            self.write_file(member, stream, entry, on_bytes)

    def finish(self, expected: Mapping[str, Entry]) -> None:
        missing = [p for p in sorted(expected) if p not in self.kinds or self.kinds[p] == "implicit"]
        if missing:
            listed = [f"{p}: listed in manifest.json but missing from the archive" for p in missing]
            raise _mismatch(self.archive, listed)
        real_root = os.path.realpath(self.destination)
        for entry in self.links:
            # resolved through every link (``q -> .`` chains): must stay inside the folder
            real = os.path.realpath(self.destination / entry.path)
            if real != real_root and not real.startswith(real_root + os.sep):
                raise ArchiveError(
                    f"Unsafe member {entry.path!r} in {self.archive.name}: the symlink leads outside the folder "
                    f"(through {entry.target!r}).",
                    "The archive is refused; nothing was applied.",
                )
        for name, kind in self.kinds.items():
            if kind == "implicit":
                os.chmod(self.destination / name, 0o755)  # noqa: S103 - a folder of the patch tree
        for name, mode in sorted(self.dirs, key=lambda item: item[0].count("/"), reverse=True):
            os.chmod(self.destination / name, mode)


def _current_umask() -> int:
    """The process umask, read without changing it (Linux), else by setting and restoring it."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # pragma: no cover - not Linux
    os.umask(mask)  # pragma: no cover
    return mask  # pragma: no cover


def extract_archive(
    archive: Path,
    destination: Path,
    expected: Mapping[str, Entry],
    *,
    on_bytes: Callable[[int], None] | None = None,
) -> None:
    """Extract ``archive`` into the empty or new folder ``destination`` in one checked pass.

    The members must equal ``expected`` exactly (the manifest's entries, or for a delta patch
    the subset it packs: :meth:`patchflow.verify.VerifyReport.archive_entries`). Folders above a
    member that the archive does not hold (a delta's unchanged folders) are created with mode
    0755. Files end up owned by the running user with the manifest's modes (no setuid, setgid,
    sticky, group/other write). See the module docstring for every check.

    Args:
        on_bytes: progress callback, fed with bytes of file content written.

    Raises:
        ArchiveError: an unsafe member, a mismatch with ``expected``, a corrupt or truncated
            archive, a destination that is not an empty folder, or a write error (disk full).
            The message names the member at fault; everything extracted so far is removed, and
            folders created for ``destination`` too.
    """
    job = _Extraction(archive, destination)
    job.prepare()
    try:
        for member, stream in _walk(archive):
            entry = expected.get(member.name)
            problem = _header_mismatch(member, entry)
            if problem is not None or entry is None:
                raise _mismatch(archive, [problem or member.name])
            job.add(member, stream, entry, on_bytes)
        job.finish(expected)
    except BaseException as exc:
        job.discard()
        if isinstance(exc, ArchiveError):
            raise
        if isinstance(exc, (tarfile.TarError, OSError, zlib.error)):
            raise ArchiveError(
                f"Extraction of {archive.name} failed: {exc}.",
                "Check disk space and permissions; nothing was extracted.",
            ) from None
        raise
