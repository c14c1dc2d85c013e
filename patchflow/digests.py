"""File digests (sha256, md5...) read in 1 MiB chunks, several algorithms in one read of the file."""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from hashlib import _Hash

ProgressCallback = Callable[[int], None]
CHUNK = 1024 * 1024


def file_digest(path: Path, algorithm: str = "sha256", on_bytes: ProgressCallback | None = None) -> tuple[str, int]:
    """Return ``(hex digest, size in bytes)`` of ``path`` with ``algorithm`` (a ``hashlib`` name such
    as ``sha256`` or ``md5``), read in 1 MiB chunks; ``on_bytes`` gets each chunk's length."""
    digest = hashlib.new(algorithm)
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
    return digest.hexdigest(), size


PARALLEL_DIGEST_MIN = 8 * 1024 * 1024


def file_digests(
    path: Path, algorithms: Iterable[str], on_bytes: ProgressCallback | None = None
) -> tuple[dict[str, str], int]:
    """Return ``({algorithm: hex digest}, size in bytes)`` of ``path`` for several ``hashlib``
    algorithms (e.g. ``("sha256", "md5")``) in ONE read of the file.

    For files of 8 MiB or more each extra algorithm runs on its own thread, fed the same
    1 MiB chunks (hashlib releases the GIL), so the time is that of the slowest digest.
    """
    names = list(dict.fromkeys(algorithms))
    digests = [hashlib.new(name) for name in names]
    size = 0
    with open(path, "rb") as handle:
        first = handle.read(CHUNK)
        if len(digests) == 1 or len(first) < CHUNK or os.fstat(handle.fileno()).st_size < PARALLEL_DIGEST_MIN:
            chunk = first
            while chunk:
                for digest in digests:
                    digest.update(chunk)
                size += len(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))
                chunk = handle.read(CHUNK)
        else:
            size = _parallel_digests(handle, first, digests, on_bytes)
    return {name: digest.hexdigest() for name, digest in zip(names, digests, strict=True)}, size


def _parallel_digests(handle: BinaryIO, first: bytes, digests: list[_Hash], on_bytes: ProgressCallback | None) -> int:
    """Feed every chunk of ``handle`` (starting with ``first``) to ``digests[0]`` here and to each
    other digest on its own thread."""
    feeds: list[queue.Queue[bytes | None]] = [queue.Queue(maxsize=8) for _ in digests[1:]]

    def consume(digest: _Hash, feed: queue.Queue[bytes | None]) -> None:
        while (chunk := feed.get()) is not None:
            digest.update(chunk)

    threads = [
        threading.Thread(target=consume, args=(digest, feed), daemon=True)
        for digest, feed in zip(digests[1:], feeds, strict=True)
    ]
    for thread in threads:
        thread.start()
    size = 0
    chunk = first
    try:
        while chunk:
            for feed in feeds:
                feed.put(chunk)
            digests[0].update(chunk)
            size += len(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
            chunk = handle.read(CHUNK)
    finally:
        for feed in feeds:
            feed.put(None)
        for thread in threads:
            thread.join()
    return size
