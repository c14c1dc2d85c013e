"""Semantic versions for patches: parse, compare, format (``v`` prefix accepted).

Follows Semantic Versioning 2.0.0 (https://semver.org): ``MAJOR.MINOR.PATCH[-pre][+build]``.
Pre-releases sort before their release (``2.3.0-rc.1 < 2.3.0``) by semver 2.0.0 precedence,
computed by the ``semver`` library; build metadata does not count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering
from pathlib import Path

import semver

from patchflow.errors import VersionError

# https://semver.org/#is-there-a-suggested-regular-expression-regex-to-check-a-semver-string:
# numeric identifiers (also pre-release ones) have no leading zeros; build metadata may
_PRE_ID = r"(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)"
_SEMVER = re.compile(
    r"^(?P<major>0|[1-9]\d*)\.(?P<minor>0|[1-9]\d*)\.(?P<patch>0|[1-9]\d*)"
    rf"(?:-(?P<pre>{_PRE_ID}(?:\.{_PRE_ID})*))?"
    r"(?:\+(?P<build>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$",
    re.ASCII,
)


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
    def _key(self) -> semver.Version:
        return semver.Version(self.major, self.minor, self.patch, self.pre)

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
        return bool(self._key.compare(other._key) < 0)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PatchVersion):
            return NotImplemented
        return bool(self._key.compare(other._key) == 0)

    def __hash__(self) -> int:
        return hash((self.major, self.minor, self.patch, self.pre))


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
    raw = text.strip().lstrip("\ufeff").strip()
    candidate = raw[1:] if raw[:1] in ("v", "V") else raw
    match = _SEMVER.match(candidate)
    if match is None:
        unsafe = sorted({ch for ch in candidate if not ((ch.isascii() and ch.isalnum()) or ch in ".-+")})
        detail = f" It contains characters that are not allowed: {' '.join(repr(c) for c in unsafe)}." if unsafe else ""
        if not unsafe and re.search(r"(^|[.-])0\d", candidate.split("+", 1)[0]):
            detail = " A numeric part has a leading zero, which SemVer 2.0 forbids (1.2.0-rc.01 -> 1.2.0-rc.1)."
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
    except UnicodeDecodeError:
        raise VersionError(f"{path} is not text (not UTF-8).", "Write the version in it, e.g. 2.2.0.") from None
    return parse_version(text, source=f"version in {path}")
