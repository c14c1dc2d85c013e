"""The deflate codec of patch archives (ISA-L, else zlib), its levels, and the shared tar constants.

The writer and the reader both use these: the same codec, encoding and block sizes on both sides."""

from __future__ import annotations

import tarfile
import zlib
from typing import cast

__all__ = [
    "CODEC",
    "CODEC_ERRORS",
    "LEVEL_PACKED",
    "LEVEL_TEXT",
    "TAR_BLOCK",
    "TAR_ENCODING",
    "TAR_ERRORS",
    "TAR_RECORD",
    "codec",
    "padded",
]

try:
    from isal import isal_zlib as codec

    CODEC = "isal"
    LEVEL_TEXT = 3  # ISA-L's best level: within ~5% of gzip -6's size, ~10x its speed
    LEVEL_PACKED = 1
except ImportError:  # pragma: no cover - isal ships wheels for every supported platform
    import zlib as codec  # type: ignore[no-redef]

    CODEC = "zlib"
    LEVEL_TEXT = 6
    LEVEL_PACKED = 1

#: What the codec raises for data that is not valid deflate: ISA-L has its own error type (its
#: type stub declares ``error`` as an instance, hence the cast).
CODEC_ERRORS: tuple[type[Exception], ...] = (zlib.error, cast("type[Exception]", codec.error))
#: How member names and link targets are encoded (PAX: UTF-8 whatever the locale, C07).
TAR_ENCODING = "utf-8"
TAR_ERRORS = "surrogateescape"
#: A tar block (every header and every member's padded data is a whole number of them).
TAR_BLOCK = tarfile.BLOCKSIZE
#: A tar record: the archive ends with zeros up to a whole record (as tarfile and GNU tar write).
TAR_RECORD = tarfile.RECORDSIZE


def padded(size: int) -> int:
    """``size`` bytes rounded up to a whole number of tar blocks."""
    return size + (-size % TAR_BLOCK)
