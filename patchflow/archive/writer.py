"""The archive writer: one pass over the tree, compressed in parallel and deterministically.

:func:`build_archive` writes the format described in :mod:`patchflow.archive`.

**Parallel, deterministic compression.** The tar stream is cut into fixed blocks of
:data:`BLOCK_SIZE` bytes. Each block is deflated independently on a thread pool (every core) and
ends with a sync flush, so the blocks concatenate into one valid deflate stream (what ``pigz``
does); a final empty block and the trailer close it. A block is compressed at
:data:`~patchflow.archive.codec.LEVEL_TEXT`, or at :data:`~patchflow.archive.codec.LEVEL_PACKED`
when most of its bytes come from files that are already compressed (images, fonts, archives,
media: by extension, or by a quick probe of the first bytes of larger files). Block boundaries
and levels depend only on the tree, so the same tree, settings and codec give the same bytes and
the same sha256. The codec is ISA-L (``isal``), about ten times faster than zlib at a ratio close
to ``gzip -6``; stdlib ``zlib`` is the fallback where ``isal`` is unavailable.

**One pass to create:** each file is read once; the same bytes are hashed (sha256, for the
manifest) and packed; the compressed output is hashed (sha256 and md5) while it is written, so
nothing reads the archive again.
"""

from __future__ import annotations

import hashlib
import os
import queue
import struct
import tarfile
import threading
import zlib
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from patchflow.archive.codec import LEVEL_PACKED, LEVEL_TEXT, TAR_BLOCK, TAR_ENCODING, TAR_ERRORS, TAR_RECORD, codec
from patchflow.errors import ArchiveError
from patchflow.manifest import Entry

BLOCK_SIZE = 1024 * 1024
PROBE_MIN_SIZE = 64 * 1024
PROBE_BYTES = 32 * 1024
PROBE_RATIO = 0.95
PROGRESS_STEP = 4 * 1024 * 1024
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, mtime 0, OS unknown
_FINAL_BLOCK = b"\x03\x00"  # an empty final fixed-Huffman block: ends the deflate stream

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
    read while packing), the archive's ``sha256`` and ``md5`` (hex) and its ``size`` in bytes."""

    entries: list[Entry]
    sha256: str
    md5: str
    size: int


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
    compressor = codec.compressobj(level, zlib.DEFLATED, -15)
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
    return len(codec.compress(sample, LEVEL_PACKED)) >= PROBE_RATIO * len(sample)


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
        self.crc = codec.crc32(view, self.crc)
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
    padding = -entry.size % TAR_BLOCK
    if padding:
        packer.add(bytes(padding))
    return digest.hexdigest()


def _pack_bytes(packer: _Packer, entry: Entry, data: bytes) -> str:
    """Put ``data`` into the stream as the content of ``entry``; returns its sha256.

    Raises:
        ArchiveError: ``entry.size`` is not ``len(data)`` (the header already says that size).
    """
    if len(data) != entry.size:
        raise ArchiveError(
            f"{entry.path}: {len(data)} bytes given for a member of {entry.size} bytes.",
            "This is a bug in patchflow: report it; nothing was written.",
        )
    packer.add(data)
    padding = -entry.size % TAR_BLOCK
    if padding:
        packer.add(bytes(padding))
    return hashlib.sha256(data).hexdigest()


def build_archive(
    root: Path,
    entries: Iterable[Entry],
    destination: Path,
    on_bytes: Callable[[int], None] | None = None,
    *,
    workers: int | None = None,
    contents: Mapping[str, bytes] | None = None,
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
        contents: path -> bytes for file entries packed from these bytes instead of the file under
            ``root`` (which need not exist); the entry's ``size`` must be ``len(bytes)`` and its
            ``sha256``, when set, theirs (create-patch packs ``VERSION`` this way).

    Returns:
        An :class:`ArchiveResult` whose entries carry the sha256 and size read while packing.

    Raises:
        ArchiveError: a file changed (size or content) or vanished since it was scanned (the
            tree must be quiet during create-patch), or cannot be read; or a ``contents`` item
            does not match its entry's size or sha256.
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
                data = contents.get(entry.path) if contents else None
                if data is not None:
                    digest = _pack_bytes(packer, entry, data)
                else:
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
            end = packer.total + 2 * TAR_BLOCK
            packer.add(bytes(2 * TAR_BLOCK + (-end % TAR_RECORD)))
            packer.finish()
        finally:
            writer.jobs.put(None)
            writer.join()
        if writer.error is not None:
            raise writer.error
    if on_bytes is not None and pending_progress:
        on_bytes(pending_progress)
    return ArchiveResult(packed_entries, writer.sha256.hexdigest(), writer.md5.hexdigest(), writer.size)
