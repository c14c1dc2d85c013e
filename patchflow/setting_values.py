"""Converters of raw setting values (TOML, ``.env`` or environment text) into typed settings.

They build the values of :class:`patchflow.config.Settings`; each raises ``ValueError`` saying
what was expected, which :mod:`patchflow.config` turns into a :class:`~patchflow.errors.ConfigError`
naming the source."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

#: The ``commands`` setting: ``(service name, shell command)`` pairs.
Commands = tuple[tuple[str, str], ...]


def to_str(value: Any) -> str:
    """Any scalar as text (a table or list is refused)."""
    if isinstance(value, (dict, list)):
        raise ValueError("expected a string")
    return str(value)


def to_int(value: Any) -> int:
    """A whole number >= 0 (a boolean is refused)."""
    if isinstance(value, bool):
        raise ValueError("expected a whole number")
    result = int(str(value).strip())
    if result < 0:
        raise ValueError("expected a number >= 0")
    return result


def to_float(value: Any) -> float:
    """A finite number >= 0 (a boolean is refused)."""
    if isinstance(value, bool):
        raise ValueError("expected a number")
    result = float(str(value).strip())
    if not math.isfinite(result) or result < 0:
        raise ValueError("expected a finite number >= 0")
    return result


def to_subdir(value: Any) -> str:
    """A folder inside the project root: relative, no ``..``, not the root itself."""
    text = str(value).strip().strip("/")
    parts = PurePosixPath(text).parts
    if str(value).strip().startswith("/") or not parts or any(p in ("..", ".") for p in parts) or "\\" in text:
        raise ValueError("expected a folder inside the project root, relative and without '..' (e.g. backups)")
    if parts[0] in ("VERSION", "prisma", "node_modules", "src", "apps", "packages"):
        raise ValueError(f"{parts[0]!r} belongs to the project; choose a folder of patchflow's own")
    return "/".join(parts)


def to_bool(value: Any) -> bool:
    """``true``/``false`` as TOML booleans or text (``1``, ``yes``, ``on``, ``0``, ``no``, ``off``, empty)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


def to_list(value: Any) -> tuple[str, ...]:
    """A list of non-empty strings: a TOML array, or text separated by commas."""
    if isinstance(value, (list, tuple)):
        return tuple(str(v).strip() for v in value if str(v).strip())
    return tuple(part.strip() for part in str(value).split(",") if part.strip())


def to_commands(value: Any) -> Commands:
    """``{"api": "node apps/api/server.js"}`` or ``"api=node a.js;worker=node w.js"``."""
    if isinstance(value, Mapping):
        items = [(str(k), str(v)) for k, v in value.items()]
    else:
        items = []
        for part in str(value).split(";"):
            if not part.strip():
                continue
            name, sep, command = part.partition("=")
            if not sep or not name.strip() or not command.strip():
                raise ValueError("expected name=command pairs separated by ';'")
            items.append((name.strip(), command.strip()))
    for name, _ in items:
        if not name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"service name {name!r} may hold only letters, digits, '-' and '_'")
    return tuple(items)


def choice(*allowed: str) -> Callable[[Any], str]:
    """A converter accepting exactly one of ``allowed``."""

    def convert(value: Any) -> str:
        text = str(value).strip()
        if text not in allowed:
            raise ValueError(f"expected one of: {', '.join(allowed)}")
        return text

    return convert


def to_remote_path(value: Any) -> str:
    """An absolute POSIX path on a remote host (empty: not set)."""
    text = to_str(value).strip()
    if text and (not text.startswith("/") or "\0" in text or "\n" in text):
        raise ValueError("expected an absolute path (e.g. /srv/primeflow)")
    return text.rstrip("/") or ("/" if text else "")


def to_epoch(value: Any) -> str:
    """A time as whole seconds since 1970-01-01 UTC, as ``SOURCE_DATE_EPOCH`` gives it
    (reproducible-builds.org), kept as its digits; empty: not set. A value that is not a whole
    number, or not a date a calendar holds (after year 9999), is refused, as the specification
    asks of a build."""
    if isinstance(value, bool):
        raise ValueError("expected whole seconds since 1970-01-01 UTC")
    text = str(value).strip()
    if not text:
        return ""
    if not text.isascii() or not text.isdigit():
        raise ValueError("expected whole seconds since 1970-01-01 UTC (e.g. git log -1 --format=%ct)")
    try:
        datetime.fromtimestamp(int(text), UTC)
    except (OverflowError, OSError, ValueError):
        raise ValueError("expected a time before the year 10000") from None
    return str(int(text))


def settings_table_markdown() -> str:
    """The README table of every documented setting: name, scope, environment variable, default, meaning."""
    from patchflow.config import FIELDS, _format  # the settings are declared there (it imports this module)

    lines = ["| setting | scope | environment variable | default | meaning |", "|---|---|---|---|---|"]
    for f in FIELDS:
        default = _format(f.default) if f.default != () else "(empty)"
        lines.append(f"| `{f.name}` | {f.scope} | `{f.env}` | `{default}` | {f.doc} |")
    return "\n".join(lines)
