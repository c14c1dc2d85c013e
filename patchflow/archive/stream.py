"""The decompressed byte stream of an archive, inflated on a read-ahead thread.

:class:`Inflater` inflates it (every gzip member's CRC and length checked), :class:`Stream` hands
it out as exact reads for headers and zero-copy pieces for member data."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

from patchflow.archive.codec import CODEC_ERRORS, codec
from patchflow.errors import ArchiveError

READ_SIZE = 1024 * 1024


def corrupt(archive: Path, detail: object) -> ArchiveError:
    """The error for an ``archive`` that cannot be read to the end (``detail`` says why)."""
    return ArchiveError(
        f"The archive {archive} is corrupt or truncated: {detail}.",
        "Copy or rebuild the patch again; nothing was extracted.",
    )


class Inflater:
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
                        raise corrupt(self.archive, detail)
                    inflater = codec.decompressobj(31)
                try:
                    out = inflater.decompress(pending, READ_SIZE)
                except CODEC_ERRORS as exc:
                    raise corrupt(self.archive, exc) from None
                pending = inflater.unconsumed_tail
                if out and not self._emit(out):
                    return
                if inflater.eof:
                    pending = inflater.unused_data + pending
                    inflater = None
                    members += 1
                elif not out and not pending:
                    if at_end:
                        raise corrupt(self.archive, "unexpected end of file")
                    pending = handle.read(READ_SIZE)
                    at_end = not pending
        if members == 0 and not self._stop.is_set():
            raise corrupt(self.archive, "empty file")

    def chunks(self) -> Iterator[bytes]:
        """The decompressed bytes in order (raises :class:`ArchiveError` where the stream breaks)."""
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Stop the read-ahead thread (early, or after the end) and wait for it."""
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()


class Stream:
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
                raise corrupt(self._archive, "unexpected end of the tar stream")
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
                raise corrupt(self._archive, "unexpected end of the tar stream")
            piece = self._buf[:need]
            self._buf = self._buf[len(piece) :]
            need -= len(piece)
            self.offset += len(piece)
            yield piece

    def skip(self, size: int) -> None:
        """Consume ``size`` bytes without looking at them."""
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
