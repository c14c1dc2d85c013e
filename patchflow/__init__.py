"""patchflow: create, apply, roll back and deploy versioned patches of a PrimeFlow install."""

from __future__ import annotations

from importlib import metadata as _metadata
from pathlib import Path as _Path


def _read_version() -> str:
    version_file = _Path(__file__).resolve().parent.parent / "VERSION"
    if version_file.is_file():
        return version_file.read_text(encoding="utf-8").strip()
    try:
        return _metadata.version("patchflow")
    except _metadata.PackageNotFoundError:  # pragma: no cover - source tree without VERSION
        return "0.0.0"


__version__ = _read_version()
