"""Argument lists for ``docker compose`` (Compose v2). Nothing here runs anything.

No builder can produce ``down -v``/``--volumes``, ``volume rm`` or ``system prune``: patchflow never
removes a named volume (field failure C25); :func:`assert_no_volume_removal` guards that.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path


def project_name(root: Path, configured: str = "") -> str:
    """The compose project name: the setting, else the root folder's name normalised as compose
    does (lower case, only ``a-z0-9_-``, starting with a letter or digit)."""
    if configured:
        return configured
    name = re.sub(r"[^a-z0-9_-]", "", root.name.lower()).lstrip("_-")
    return name or "primeflow"


def base(project_dir: Path, files: Sequence[str], project: str) -> list[str]:
    """``docker compose --project-directory DIR -f F... -p NAME``."""
    args = ["docker", "compose", "--project-directory", str(project_dir)]
    for f in files:
        args += ["-f", str(project_dir / f)]
    return [*args, "-p", project]


def build(prefix: Sequence[str], services: Sequence[str]) -> list[str]:
    return [*prefix, "build", *services]


def stop(prefix: Sequence[str], services: Sequence[str], timeout: int) -> list[str]:
    return [*prefix, "stop", "-t", str(timeout), *services]


def up(
    prefix: Sequence[str],
    services: Sequence[str],
    *,
    wait: bool = True,
    no_deps: bool = False,
    build: bool = False,
    wait_timeout: int | None = None,
) -> list[str]:
    args = [*prefix, "up", "-d"]
    if wait:
        args.append("--wait")
        if wait_timeout:
            args += ["--wait-timeout", str(wait_timeout)]
    if no_deps:
        args.append("--no-deps")
    args.append("--build" if build else "--no-build")
    return [*args, *services]


def down(prefix: Sequence[str]) -> list[str]:
    """``down`` that keeps volumes (no ``-v``, never)."""
    return [*prefix, "down"]


def restart(prefix: Sequence[str], services: Sequence[str], timeout: int) -> list[str]:
    return [*prefix, "restart", "-t", str(timeout), *services]


def ps(prefix: Sequence[str]) -> list[str]:
    return [*prefix, "ps", "--all", "--format", "json"]


def logs(prefix: Sequence[str], services: Sequence[str], *, follow: bool, tail: int | None) -> list[str]:
    args = [*prefix, "logs", "--no-color"]
    if follow:
        args.append("--follow")
    if tail is not None:
        args += ["--tail", str(tail)]
    return [*args, *services]


def config_services(prefix: Sequence[str]) -> list[str]:
    return [*prefix, "config", "--services"]


FORBIDDEN = (("down", "-v"), ("down", "--volumes"), ("volume", "rm"), ("volume", "prune"), ("system", "prune"))


def assert_no_volume_removal(args: Sequence[str]) -> None:
    """Raise ValueError if ``args`` would remove a volume (C25 guard, checked before every run)."""
    words = list(args)
    for first, second in FORBIDDEN:
        if first in words and second in words[words.index(first) :]:
            raise ValueError(f"refusing to run a command that removes volumes: {' '.join(words)}")
