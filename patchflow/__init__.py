"""patchflow: create, apply, roll back and deploy versioned patches of a PrimeFlow install."""

from __future__ import annotations

from pathlib import Path as _Path


def _read_version() -> str:
    version_file = _Path(__file__).resolve().parent.parent / "VERSION"
    if version_file.is_file():
        return version_file.read_text(encoding="utf-8").strip()
    from importlib import metadata  # only for an installed wheel: 14 ms of every command's start-up

    try:
        return metadata.version("patchflow")
    except metadata.PackageNotFoundError:  # pragma: no cover - source tree without VERSION
        return "0.0.0"


__version__ = _read_version()
