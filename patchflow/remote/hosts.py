"""The hosts a remote task acts on: the inventory's entries, ``--host/--hosts/--role`` selection, roles.

A :class:`Target` is one host (inventory name, ssh address, checkout path, role, interpreter, and
the host settings ``setup-host`` writes there); :func:`resolve_targets` picks them from the flags.
Nothing here opens a connection.
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

from patchflow.config import Settings
from patchflow.errors import RemoteError

Log = Callable[[str], None]
STAGING_ROLE = "staging"
PRODUCTION_ROLE = "production"


def quiet(line: str) -> None:
    """A :data:`Log` that drops every line."""
    return None


def operator() -> str:
    """Who deploys: ``user@machine`` of this process (recorded with every run started)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class Target:
    """A host to act on.

    Attributes:
        name: the inventory name, or the host string for a host given on the command line.
        host: an ``~/.ssh/config`` alias or ``user@host[:port]``.
        path: the PrimeFlow checkout on the host (absolute).
        role: ``staging``, ``production``... (empty for a host outside the inventory).
        python: the interpreter running patchflow there (empty: ``<path>/.patchflow/venv/bin/python``
            when present, else ``python3``).
        settings: the host's own patchflow settings from its inventory entry, ``(name, value)``
            pairs that ``setup-host`` writes into the host's ``.patchflow/host.toml``.
    """

    name: str
    host: str
    path: str
    role: str = ""
    python: str = ""
    settings: tuple[tuple[str, str], ...] = ()

    def python_candidates(self) -> list[str]:
        """The interpreters tried in order to run patchflow on the host."""
        if self.python:
            return [self.python]
        return [f"{self.path.rstrip('/')}/.patchflow/venv/bin/python", "python3"]


def resolve_targets(
    settings: Settings, *, host: str | None = None, hosts: str | None = None, role: str | None = None
) -> list[Target]:
    """The hosts named by ``--host``, ``--hosts a,b`` or ``--role R`` (exactly one of them).

    A name found in the inventory (``hosts`` setting) takes its entry; any other name is used as an
    ssh alias or ``user@host[:port]`` with ``remote_path`` (default: this checkout's path) and
    ``remote_python``.

    Raises:
        RemoteError: none or several of the three given, an empty list, or no host has the role.
    """
    given = [flag for flag, value in (("--host", host), ("--hosts", hosts), ("--role", role)) if value]
    if len(given) != 1:
        raise RemoteError(
            "Name the hosts with exactly one of --host H, --hosts a,b or --role R"
            + (f" (got {' and '.join(given)})." if given else "."),
            "Hosts are ssh aliases, user@host[:port], or names of [tool.patchflow.hosts.<name>] in pyproject.toml.",
            exit_code=1,
        )
    inventory = {entry.name: entry for entry in settings.hosts}
    default_path = settings.remote_path or str(settings.root)
    if role:
        chosen = [entry for entry in settings.hosts if entry.role == role]
        if not chosen:
            roles = sorted({entry.role for entry in settings.hosts if entry.role})
            raise RemoteError(
                f"No host of the inventory has the role {role!r}.",
                f"Roles in [tool.patchflow.hosts.*]: {', '.join(roles) or 'none'}.",
                exit_code=1,
            )
        names = [entry.name for entry in chosen]
    else:
        names = [part.strip() for part in (host or hosts or "").split(",") if part.strip()]
        if not names:
            raise RemoteError("No host named.", "Pass --host H or --hosts a,b.", exit_code=1)
    targets: list[Target] = []
    for name in dict.fromkeys(names):
        entry = inventory.get(name)
        if entry is not None:
            targets.append(
                Target(
                    entry.name,
                    entry.host,
                    entry.path or default_path,
                    entry.role,
                    entry.python or settings.remote_python,
                    entry.settings,
                )
            )
        else:
            if name.startswith("-") or any(ch.isspace() for ch in name):
                raise RemoteError(
                    f"{name!r} is not a host name.", "Pass an ssh alias or user@host[:port].", exit_code=1
                )
            targets.append(Target(name, name, default_path, "", settings.remote_python))
    return targets
