"""Semantic versions for patches: parse, compare, format (``v`` prefix accepted).

Follows Semantic Versioning 2.0.0 (https://semver.org): ``MAJOR.MINOR.PATCH[-pre][+build]``.
Pre-releases sort before their release (``2.3.0-rc.1 < 2.3.0``) using
``packaging.version.Version`` for the ordering.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering
from pathlib import Path

from packaging.version import InvalidVersion, Version

from patchflow.errors import VersionError

_SEMVER = re.compile(
    r"^(?P<major>0|[1-9]\d*)\.(?P<minor>0|[1-9]\d*)\.(?P<patch>0|[1-9]\d*)"
    r"(?:-(?P<pre>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
    r"(?:\+(?P<build>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)


def _pep440(major: int, minor: int, patch: int, pre: str | None) -> Version:
    base = f"{major}.{minor}.{patch}"
    if not pre:
        return Version(base)
    head, _, rest = pre.partition(".")
    number = int(rest) if rest.isdigit() else 0
    mapping = {"alpha": "a", "a": "a", "beta": "b", "b": "b", "rc": "rc", "pre": "rc"}
    tag = mapping.get(head.lower())
    try:
        if tag is not None:
            return Version(f"{base}{tag}{number}")
        return Version(f"{base}.dev{number}")
    except InvalidVersion:  # pragma: no cover - guarded by the regex
        return Version(f"{base}.dev0")


@total_ordering
@dataclass(frozen=True)
class PatchVersion:
    """A parsed semantic version; ``str()`` gives ``2.3.0``, ``tag`` gives ``v2.3.0``."""

    major: int
    minor: int
    patch: int
    pre: str | None = None
    build: str | None = None

    @property
    def tag(self) -> str:
        """The folder/tag form: ``v`` + version (``v2.3.0``)."""
        return f"v{self}"

    @property
    def _key(self) -> Version:
        return _pep440(self.major, self.minor, self.patch, self.pre)

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.pre:
            text += f"-{self.pre}"
        if self.build:
            text += f"+{self.build}"
        return text

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, PatchVersion):
            return NotImplemented
        if self._key != other._key:
            return self._key < other._key
        # same PEP 440 key: order unknown pre-release labels lexically, a release last
        return (self.pre is None, self.pre or "") < (other.pre is None, other.pre or "")


def parse_version(text: str | None, *, source: str = "version") -> PatchVersion:
    """Parse ``text`` (``2.3.0``, ``v2.3.0``, ``2.3.0-rc.1``) into a :class:`PatchVersion`.

    Raises:
        VersionError: empty, malformed, or containing anything but ``[0-9A-Za-z.+-]``
            (so ``2.3.0;rm -rf /`` is refused before it can reach a path or a shell).
    """
    if text is None or not text.strip():
        raise VersionError(
            f"No {source} given.",
            "Pass a semantic version such as --version 2.3.0 (or set it in the VERSION file).",
        )
    raw = text.strip()
    candidate = raw[1:] if raw[:1] in ("v", "V") else raw
    match = _SEMVER.match(candidate)
    if match is None:
        unsafe = sorted({ch for ch in candidate if not (ch.isalnum() or ch in ".-+")})
        detail = f" It contains characters that are not allowed: {' '.join(repr(c) for c in unsafe)}." if unsafe else ""
        raise VersionError(
            f"Invalid {source} {raw!r}: expected a semantic version MAJOR.MINOR.PATCH "
            f"such as 2.3.0 or 2.3.0-rc.1.{detail}",
            "Fix the value and run the command again; nothing was changed.",
        )
    return PatchVersion(int(match["major"]), int(match["minor"]), int(match["patch"]), match["pre"], match["build"])


def read_version_file(path: Path) -> PatchVersion:
    """Read and parse a ``VERSION`` file (one line, e.g. ``2.2.0``).

    Raises:
        VersionError: the file is missing, unreadable or does not hold a semantic version.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise VersionError(
            f"The VERSION file {path} does not exist.",
            "Create it with the installed version (e.g. `echo 2.2.0 > VERSION`) or pass --version.",
        ) from None
    except OSError as exc:
        raise VersionError(f"Cannot read {path}: {exc.strerror}.", "Check its permissions.") from None
    return parse_version(text, source=f"version in {path}")
