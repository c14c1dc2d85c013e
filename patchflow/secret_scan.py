"""Secrets inside the files a patch packs (create-patch's warning), found by Yelp's ``detect-secrets``.

File names that are always secrets (``.env``, keys, ``.pgpass``, ``.aws/credentials``...) are never
packed at all (:data:`patchflow.manifest.SECRET_PATTERNS`). A token can also sit in a file the app
needs (``config/production.json``, a cloud service-account JSON, an ``.npmrc`` with an
``_authToken``): those are packed, and create-patch names each finding (file, line, kind) in a
warning, so the developer moves the secret into ``.env`` before the patch travels.

Scanned: configuration-like files (:data:`SCANNED_SUFFIXES`, dotfiles, files without a suffix) of at
most :data:`MAX_BYTES` that are text. The detectors are detect-secrets' own, without its two
high-entropy ones (they flag hashes, lockfile integrity fields and ids in ordinary config).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from detect_secrets.core.scan import scan_line
from detect_secrets.settings import default_settings, get_settings

#: Suffixes of files that hold configuration (where a token is put by hand).
SCANNED_SUFFIXES = frozenset(
    {".json", ".yml", ".yaml", ".toml", ".ini", ".cfg", ".conf", ".config", ".properties", ".xml", ".txt", ".sh"}
)
#: Files larger than this (bytes) are not scanned.
MAX_BYTES = 256 * 1024
#: detect-secrets plugins left out (noisy on ordinary configuration).
LEFT_OUT = frozenset({"Base64HighEntropyString", "HexHighEntropyString", "IPPublicDetector"})
#: Files detect-secrets is not run on (package manifests and lockfiles: integrity hashes, no tokens).
NOT_SCANNED = frozenset({"package-lock.json", "pnpm-lock.yaml", "yarn.lock", "composer.lock"})


def _scanned(rel: str) -> bool:
    name = rel.rpartition("/")[2]
    if name in NOT_SCANNED:
        return False
    suffix = Path(name).suffix.lower()
    return suffix in SCANNED_SUFFIXES or name.startswith(".") or not suffix


def find_secrets(root: Path, paths: Iterable[str]) -> list[str]:
    """``<path>:<line> (<kind>)`` for each secret detect-secrets finds in the configuration-like
    files among ``paths`` (POSIX, relative to ``root``), in path order. Files that cannot be read,
    are binary or too big are skipped (never an error: this only warns)."""
    found: list[str] = []
    with default_settings():
        plugins = get_settings().plugins
        for name in LEFT_OUT:
            plugins.pop(name, None)
        for rel in sorted(paths):
            if not _scanned(rel):
                continue
            path = root / rel
            try:
                if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_BYTES:
                    continue
                data = path.read_bytes()
            except OSError:
                continue
            if b"\0" in data[:8192]:
                continue
            for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
                kinds = sorted({secret.type for secret in scan_line(line)})
                if kinds:
                    found.append(f"{rel}:{number} ({', '.join(kinds)})")
    return found
