"""The deploy inventory: ``[tool.patchflow.hosts.<name>]`` entries (the ``hosts`` setting), parsed
and validated into :class:`HostEntry` values (each host's own ``settings`` with the converters of
:mod:`patchflow.config`)."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from patchflow.setting_values import to_remote_path, to_str


@dataclass(frozen=True)
class HostEntry:
    """One host of the deploy inventory, ``[tool.patchflow.hosts.<name>]``: ``host`` is an
    ``~/.ssh/config`` alias or ``user@host[:port]`` (default: the name), ``path`` the PrimeFlow
    checkout there (empty: ``remote_path``, else the local checkout's path), ``role`` e.g.
    ``staging`` or ``production``, ``python`` the interpreter that runs patchflow there (empty:
    ``remote_python``, else ``<path>/.patchflow/venv/bin/python`` when present, else ``python3``),
    ``settings`` that host's own patchflow settings as ``(name, value)`` pairs (a ``settings`` table
    in the entry; ``setup-host`` writes them into the host's ``.patchflow/host.toml``: Kamal's
    destinations), each value written as in an environment variable."""

    name: str
    host: str
    path: str = ""
    role: str = ""
    python: str = ""
    settings: tuple[tuple[str, str], ...] = ()


_HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HOST_KEYS = ("host", "path", "role", "python", "settings")


def _host_entry_settings(name: str, value: Any) -> tuple[tuple[str, str], ...]:
    """The ``settings`` table of inventory entry ``name``, validated with each setting's converter."""
    from patchflow.config import _BY_NAME, FIELDS, _format  # declared there; config imports this module

    if not isinstance(value, Mapping):
        raise ValueError(f'hosts.{name}.settings must be a table of settings (e.g. service_manager = "command")')
    pairs = []
    for key, raw in value.items():
        setting = str(key).replace("-", "_")
        if setting == "hosts":
            raise ValueError(f"hosts.{name}.settings may not hold an inventory (hosts)")
        spec = _BY_NAME.get(setting)
        if spec is None:
            close = difflib.get_close_matches(setting, sorted(f.name for f in FIELDS), n=1)
            maybe = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"hosts.{name}.settings: unknown setting {setting!r}{maybe}")
        try:
            pairs.append((setting, _format(spec.convert(raw))))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"hosts.{name}.settings.{setting}: {exc}") from None
    return tuple(pairs)


def to_hosts(value: Any) -> tuple[HostEntry, ...]:
    """The ``hosts`` setting's converter: a table of tables (``[tool.patchflow.hosts.web1]`` with
    host, path, role, python; a plain string value is the host), or the same as a JSON object
    (environment, ``.env``).

    Raises:
        ValueError: a host entry is malformed (the message names it and what is expected).
    """
    if isinstance(value, str):
        if not value.strip():
            return ()
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError('expected a JSON object such as {"web1": {"host": "deploy@10.0.0.5"}}') from None
    if not isinstance(value, Mapping):
        raise ValueError("expected a table of hosts: [tool.patchflow.hosts.<name>] with host, path, role, settings")
    entries = []
    for name, spec in value.items():
        if not _HOST_NAME.match(str(name)):
            raise ValueError(f"host name {name!r} may hold only letters, digits, '.', '-' and '_'")
        if isinstance(spec, str):
            spec = {"host": spec}
        if not isinstance(spec, Mapping):
            raise ValueError(f"hosts.{name} must be a table with host, path, role, python, settings")
        unknown = sorted(set(spec) - set(_HOST_KEYS))
        if unknown:
            raise ValueError(f"hosts.{name}: unknown key(s) {', '.join(unknown)} (known: {', '.join(_HOST_KEYS)})")
        host = to_str(spec.get("host", name)).strip()
        if not host or host.startswith("-") or any(ch.isspace() for ch in host):
            raise ValueError(f"hosts.{name}: host must be an ssh alias or user@host[:port] without spaces")
        role = to_str(spec.get("role", "")).strip()
        if role and not _HOST_NAME.match(role):
            raise ValueError(f"hosts.{name}: role {role!r} may hold only letters, digits, '.', '-' and '_'")
        try:
            path = to_remote_path(spec.get("path", ""))
        except ValueError as exc:
            raise ValueError(f"hosts.{name}: path: {exc}") from None
        python = to_str(spec.get("python", "")).strip()
        own = _host_entry_settings(str(name), spec["settings"]) if "settings" in spec else ()
        entries.append(HostEntry(str(name), host, path, role, python, own))
    return tuple(entries)
