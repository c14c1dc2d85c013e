"""Argument lists for ``docker compose`` (Compose v2). Nothing here runs anything.

No builder can produce ``down -v``/``--volumes``, ``volume rm`` or ``system prune``: patchflow never
removes a named volume (field failure C25); :func:`assert_no_volume_removal` guards that.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path


def normalise_project_name(name: str) -> str:
    """``name`` normalised as compose does: lower case, only ``a-z0-9_-``, starting with a letter or digit."""
    return re.sub(r"[^a-z0-9_-]", "", name.lower()).lstrip("_-")


_TOP_LEVEL_NAME = re.compile(r"""^name:[ \t]*["']?([A-Za-z0-9][A-Za-z0-9_.-]*)["']?[ \t]*(?:#.*)?$""", re.MULTILINE)


def project_name(
    root: Path, configured: str = "", files: Sequence[str] = (), environ: Mapping[str, str] | None = None
) -> str:
    """The compose project name the operator's own ``docker compose -f FILE`` uses, so patchflow
    drives the same containers: the setting, else ``COMPOSE_PROJECT_NAME`` (``environ``), else a
    literal top-level ``name:`` of the first compose file, else the name of that file's folder
    (compose's default project directory); without files, the root folder's name. Normalised
    as compose does (lower case, only ``a-z0-9_-``)."""
    if configured:
        return configured
    from_env = normalise_project_name((environ or {}).get("COMPOSE_PROJECT_NAME", ""))
    if from_env:
        return from_env
    if files:
        first = root / files[0]
        try:
            match = _TOP_LEVEL_NAME.search(first.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            match = None
        if match and normalise_project_name(match.group(1)):
            return normalise_project_name(match.group(1))
        folder = normalise_project_name(first.parent.name)
        if folder:
            return folder
    return normalise_project_name(root.name) or "primeflow"


def base(project_dir: Path, files: Sequence[str], project: str, env_files: Sequence[Path] = ()) -> list[str]:
    """``docker compose [--env-file E]... -f DIR/F... -p NAME``.

    No ``--project-directory``: relative paths in a compose file (``build.context: ..``,
    ``env_file: ../.env``, bind mounts) resolve against the file's own folder, exactly as in the
    operator's ``docker compose -f docker/docker-compose.yml``. ``env_files`` (the install's
    ``.env``) feed ``${VAR}`` interpolation, also when building from a staging copy of the tree.
    """
    args = ["docker", "compose"]
    for env_file in env_files:
        args += ["--env-file", str(env_file)]
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


def down(prefix: Sequence[str], timeout: int | None = None) -> list[str]:
    """``down`` that keeps volumes (no ``-v``, never); ``timeout``: seconds before SIGKILL."""
    return [*prefix, "down", *(["-t", str(timeout)] if timeout is not None else [])]


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


def remove(prefix: Sequence[str], services: Sequence[str]) -> list[str]:
    """``rm --stop --force`` of ``services``' containers (never ``-v``: volumes are kept)."""
    return [*prefix, "rm", "--stop", "--force", *services]


def config_services(prefix: Sequence[str]) -> list[str]:
    return [*prefix, "config", "--services"]


FORBIDDEN = (
    ("down", "-v"),
    ("down", "--volumes"),
    ("rm", "-v"),
    ("rm", "--volumes"),
    ("volume", "rm"),
    ("volume", "remove"),
    ("volume", "prune"),
    ("system", "prune"),
)


def assert_no_volume_removal(args: Sequence[str]) -> None:
    """Raise ValueError if ``args`` would remove a volume (C25 guard, checked before every run).

    ``--flag=value`` counts as ``--flag`` (so ``down --volumes=true`` is caught)."""
    words = [str(a).split("=", 1)[0] for a in args]
    for first, second in FORBIDDEN:
        if first in words and second in words[words.index(first) :]:
            raise ValueError(f"refusing to run a command that removes volumes: {' '.join(map(str, args))}")
