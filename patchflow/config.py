"""Settings: one frozen, typed object built from layered sources; each value remembers its source.

Precedence, lowest to highest (like invoke's config levels):

1. built-in defaults (the field defaults of :class:`Settings`),
2. ``[tool.patchflow]`` in the project's ``pyproject.toml``,
3. the project's ``.env`` file (python-dotenv), keys ``PATCHFLOW_<NAME>``,
4. ``PATCHFLOW_<NAME>`` environment variables,
5. task flags (``overrides``).

``database_url`` also reads the conventional ``DATABASE_URL`` at the ``.env`` and environment
levels (a ``PATCHFLOW_DATABASE_URL`` at the same level wins). Values are validated when loaded;
an invalid value raises :class:`ConfigError` naming the file or variable at fault.

The process environment reaches patchflow's core only through :attr:`Settings.environ` (captured
once by :func:`load_settings`); no core module reads ``os.environ``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from dotenv import dotenv_values

from patchflow.errors import ConfigError

ENV_PREFIX = "PATCHFLOW_"
Commands = tuple[tuple[str, str], ...]


def _to_str(value: Any) -> str:
    if isinstance(value, (dict, list)):
        raise ValueError("expected a string")
    return str(value)


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a whole number")
    result = int(str(value).strip())
    if result < 0:
        raise ValueError("expected a number >= 0")
    return result


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number")
    result = float(str(value).strip())
    if not math.isfinite(result) or result < 0:
        raise ValueError("expected a finite number >= 0")
    return result


def _to_subdir(value: Any) -> str:
    """A folder inside the project root: relative, no ``..``, not the root itself."""
    text = str(value).strip().strip("/")
    parts = PurePosixPath(text).parts
    if str(value).strip().startswith("/") or not parts or any(p in ("..", ".") for p in parts) or "\\" in text:
        raise ValueError("expected a folder inside the project root, relative and without '..' (e.g. backups)")
    if parts[0] in ("VERSION", "prisma", "node_modules", "src", "apps", "packages"):
        raise ValueError(f"{parts[0]!r} belongs to the project; choose a folder of patchflow's own")
    return "/".join(parts)


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


def _to_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(str(v).strip() for v in value if str(v).strip())
    return tuple(part.strip() for part in str(value).split(",") if part.strip())


def _to_commands(value: Any) -> Commands:
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


def _choice(*allowed: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        text = str(value).strip()
        if text not in allowed:
            raise ValueError(f"expected one of: {', '.join(allowed)}")
        return text

    return convert


@dataclass(frozen=True)
class HostEntry:
    """One host of the deploy inventory, ``[tool.patchflow.hosts.<name>]``: ``host`` is an
    ``~/.ssh/config`` alias or ``user@host[:port]`` (default: the name), ``path`` the PrimeFlow
    checkout there (empty: ``remote_path``, else the local checkout's path), ``role`` e.g.
    ``staging`` or ``production``, ``python`` the interpreter that runs patchflow there (empty:
    ``remote_python``, else ``<path>/.patchflow/venv/bin/python`` when present, else ``python3``)."""

    name: str
    host: str
    path: str = ""
    role: str = ""
    python: str = ""


_HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HOST_KEYS = ("host", "path", "role", "python")


def _to_remote_path(value: Any) -> str:
    """An absolute POSIX path on a remote host (empty: not set)."""
    text = _to_str(value).strip()
    if text and (not text.startswith("/") or "\0" in text or "\n" in text):
        raise ValueError("expected an absolute path (e.g. /srv/primeflow)")
    return text.rstrip("/") or ("/" if text else "")


def _to_hosts(value: Any) -> tuple[HostEntry, ...]:
    """A table of tables (``[tool.patchflow.hosts.web1]`` with host, path, role, python; a plain
    string value is the host), or the same as a JSON object (environment, ``.env``)."""
    if isinstance(value, str):
        if not value.strip():
            return ()
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError('expected a JSON object such as {"web1": {"host": "deploy@10.0.0.5"}}') from None
    if not isinstance(value, Mapping):
        raise ValueError("expected a table of hosts: [tool.patchflow.hosts.<name>] with host, path, role")
    entries = []
    for name, spec in value.items():
        if not _HOST_NAME.match(str(name)):
            raise ValueError(f"host name {name!r} may hold only letters, digits, '.', '-' and '_'")
        if isinstance(spec, str):
            spec = {"host": spec}
        if not isinstance(spec, Mapping):
            raise ValueError(f"hosts.{name} must be a table with host, path, role, python")
        unknown = sorted(set(spec) - set(_HOST_KEYS))
        if unknown:
            raise ValueError(f"hosts.{name}: unknown key(s) {', '.join(unknown)} (known: {', '.join(_HOST_KEYS)})")
        host = _to_str(spec.get("host", name)).strip()
        if not host or host.startswith("-") or any(ch.isspace() for ch in host):
            raise ValueError(f"hosts.{name}: host must be an ssh alias or user@host[:port] without spaces")
        role = _to_str(spec.get("role", "")).strip()
        if role and not _HOST_NAME.match(role):
            raise ValueError(f"hosts.{name}: role {role!r} may hold only letters, digits, '.', '-' and '_'")
        try:
            path = _to_remote_path(spec.get("path", ""))
        except ValueError as exc:
            raise ValueError(f"hosts.{name}: path: {exc}") from None
        python = _to_str(spec.get("python", "")).strip()
        entries.append(HostEntry(str(name), host, path, role, python))
    return tuple(entries)


def _setting(default: Any, convert: Callable[[Any], Any], doc: str, *, hidden: bool = False) -> Any:
    """A :class:`Settings` field with its converter and one-line documentation (README table)."""
    return field(default=default, metadata={"convert": convert, "doc": doc, "hidden": hidden})


@dataclass(frozen=True)
class Settings:
    """The resolved settings of one project root (frozen; read values as typed attributes).

    ``sources`` maps each setting name to where its value came from (``default``,
    ``pyproject.toml``, ``.env:PATCHFLOW_X``, ``env:PATCHFLOW_X``, ``flag``); ``dotenv`` holds the
    project's ``.env`` as read; ``environ`` the process environment captured when loading (what
    child processes inherit). Units: every ``*_timeout`` is seconds, ``free_space_margin`` bytes.
    """

    root: Path = field(metadata={"setting": False})
    patches_dir: str = _setting("patches", _to_subdir, "folder (relative to the root) holding patches/vX.Y.Z/")
    backups_dir: str = _setting("backups", _to_subdir, "folder (relative to the root) holding pre-patch backups")
    state_dir: str = _setting(".patchflow", _to_subdir, "folder for the journal, history.jsonl and the lock")
    exclude: tuple[str, ...] = _setting(
        (), _to_list, "extra gitignore-style patterns left out of patches (comma separated)"
    )
    use_gitignore: bool = _setting(
        True, _to_bool, "create-patch also leaves out what the project's .gitignore ignores (local data, overrides)"
    )
    service_manager: str = _setting(
        "compose",
        _choice("command", "compose", "none"),
        "how services are stopped/started: compose, command (pidfiles) or none",
    )
    commands: Commands = _setting(  # noqa: RUF009 - a tuple of pairs is immutable
        (), _to_commands, "command manager: services as name=command;name=command"
    )
    stop_timeout: float = _setting(20.0, _to_float, "seconds to wait after SIGTERM before SIGKILL (command manager)")
    compose_files: tuple[str, ...] = _setting(
        ("docker/docker-compose.yml",), _to_list, "compose file(s), relative to the root"
    )
    compose_project: str = _setting(
        "",
        _to_str,
        "compose project name (empty: COMPOSE_PROJECT_NAME, the file's name:, then its folder, as compose does)",
    )
    app_services: tuple[str, ...] = _setting(
        ("api", "worker", "frontend"), _to_list, "services stopped during apply and replaced"
    )
    data_services: tuple[str, ...] = _setting(
        ("postgres", "redis"), _to_list, "services that keep running during apply (never in app_services)"
    )
    database_mode: str = _setting(
        "url",
        _choice("url", "compose", "none"),
        "url: pg_dump/pg_restore against database_url; compose: inside the database service; none",
    )
    database_url: str = _setting("", _to_str, "PostgreSQL URL (also read from DATABASE_URL)")
    database_admin_url: str = _setting(
        "",
        _to_str,
        "PostgreSQL URL of a role used only for dumps and restores (e.g. a superuser) when the app's role "
        "may not create databases or extensions",
    )
    database_service: str = _setting("postgres", _to_str, "compose service running PostgreSQL (compose mode)")
    database_name: str = _setting("", _to_str, "database name in compose mode (default: POSTGRES_DB of the service)")
    database_user: str = _setting("", _to_str, "database superuser in compose mode (default: POSTGRES_USER)")
    pg_bindir: str = _setting(
        "", _to_str, "folder with pg_dump/pg_restore/psql (default: the newest /usr/lib/postgresql/*/bin, then PATH)"
    )
    db_wait_timeout: float = _setting(60.0, _to_float, "seconds to wait for the database to accept connections")
    migrate_command: str = _setting(
        "auto",
        _to_str,
        "migration command; 'builtin' uses patchflow's Prisma-compatible runner; "
        "'auto' uses `pnpm prisma migrate deploy` when node_modules/.bin/prisma exists, else builtin",
    )
    migrate_timeout: float = _setting(
        900.0, _to_float, "seconds a migration may run; past it, it is cancelled on the server and the apply rolls back"
    )
    migration_lint: str = _setting(
        "warn",
        _choice("warn", "refuse", "off"),
        "pending migrations linted with squawk before stop: warn (shown in the plan), refuse (the apply stops), off",
    )
    install_command: str = _setting(
        "", _to_str, "run in the staging folder before stopping (e.g. pnpm install --frozen-lockfile)"
    )
    build_command: str = _setting("", _to_str, "run in the staging folder before stopping (e.g. pnpm build)")
    build_outputs: tuple[str, ...] = _setting(
        ("node_modules", "dist"),
        _to_list,
        "folders (globs, relative) made by install/build in staging that replace the tree's copies at switch",
    )
    signing_key: str = _setting("", _to_str, "create-patch: Ed25519 signing key file (hex seed) that signs SHA256SUMS")
    verify_key: str = _setting(
        "",
        _to_str,
        "verify/apply: Ed25519 verify key (64 hex characters or a file); when set, unsigned patches are refused",
    )
    health_url: tuple[str, ...] = _setting(
        ("http://localhost:3001/health",), _to_list, "health check URL(s), comma separated"
    )
    health_timeout: float = _setting(60.0, _to_float, "seconds until the health check gives up")
    health_version_field: str = _setting(
        "version",
        _to_str,
        "JSON field that must equal the deployed version when the body has it; without it the answer must come "
        "from the new process (empty: never compare)",
    )
    health_status_field: str = _setting(
        "status", _to_str, "JSON field that, when present, must hold one of health_status_ok (empty: ignore)"
    )
    health_status_ok: tuple[str, ...] = _setting(
        ("ok", "healthy", "up", "pass", "passing", "success", "ready", "green"),
        _to_list,
        "values of health_status_field that mean healthy (case-insensitive)",
    )
    health_follow_redirects: bool = _setting(
        False, _to_bool, "follow redirects of the health URL (default: a redirect is unhealthy)"
    )
    start_retries: int = _setting(3, _to_int, "attempts to start services (apply and rollback) before giving up")
    retention_days: int = _setting(7, _to_int, "prune-backups keeps every backup younger than this many days")
    retention_keep: int = _setting(5, _to_int, "prune-backups keeps at least this many newest backups")
    lock_stale_seconds: float = _setting(6 * 3600.0, _to_float, "a lock older than this (seconds) counts as stale")
    free_space_margin: int = _setting(
        64 * 1024 * 1024, _to_int, "bytes of free disk kept in reserve beyond a backup's estimate"
    )
    test_kill_at: str = _setting(
        "", _to_str, "tests only: SIGKILL this process at <step>[:after] (crash-safety tests)", hidden=True
    )
    hosts: tuple[HostEntry, ...] = _setting(
        (),
        _to_hosts,
        "deploy inventory: [tool.patchflow.hosts.<name>] tables with host (ssh alias or user@host[:port]), "
        "path (checkout there), role (staging, production...), python; a JSON object in the environment",
    )
    remote_path: str = _setting(
        "", _to_remote_path, "checkout path on hosts whose entry has no path (default: this checkout's own path)"
    )
    remote_python: str = _setting(
        "",
        _to_str,
        "python running patchflow on hosts whose entry has none (default: <path>/.patchflow/venv/bin/python "
        "when present, else python3)",
    )
    ssh_config: str = _setting(
        "", _to_str, "ssh config file for host aliases (default: ~/.ssh/config and /etc/ssh/ssh_config)"
    )
    ssh_known_hosts: str = _setting(
        "~/.ssh/known_hosts",
        _to_str,
        "known_hosts file checked before anything is sent (default: the ssh config's UserKnownHostsFile, "
        "else ~/.ssh/known_hosts); --accept-new-host-key appends to it",
    )
    ssh_connect_timeout: float = _setting(
        10.0, _to_float, "seconds for the TCP connect, SSH handshake and key authentication of a host"
    )
    ssh_command_timeout: float = _setting(
        60.0,
        _to_float,
        "seconds each remote command or transfer step may take; a host silent for longer is reported unknown",
    )
    ssh_reconnect_timeout: float = _setting(
        30.0, _to_float, "seconds deploy keeps reconnecting to a host that dropped while its apply runs"
    )
    deploy_timeout: float = _setting(
        3600.0, _to_float, "seconds deploy follows one remote apply or rollback before reporting it still running"
    )
    test_upload_cut: int = _setting(
        0, _to_int, "tests only: drop the SSH connection after this many bytes of an upload", hidden=True
    )
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, metadata={"setting": False})
    dotenv: Mapping[str, str] = field(default_factory=dict, compare=False, metadata={"setting": False})
    environ: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False, metadata={"setting": False})

    def source(self, name: str) -> str:
        """Where the value of ``name`` came from (``default`` when it was not set anywhere)."""
        return self.sources.get(name, "default")


@dataclass(frozen=True)
class Field:
    """One setting as documented: its name, converter, default and one-line documentation."""

    name: str
    convert: Callable[[Any], Any]
    default: Any
    doc: str
    hidden: bool = False

    @property
    def env(self) -> str:
        """The environment variable (and ``.env`` key) of this setting: ``PATCHFLOW_<NAME>``."""
        return ENV_PREFIX + self.name.upper()


FIELDS: tuple[Field, ...] = tuple(
    Field(f.name, f.metadata["convert"], f.default, f.metadata["doc"], f.metadata["hidden"])
    for f in dataclasses.fields(Settings)
    if f.metadata.get("setting", True)
)
_BY_NAME = {f.name: f for f in FIELDS}
_KNOWN_ENV = {f.env for f in FIELDS}


def mask_url(url: str) -> str:
    """Hide the password of a URL: ``postgresql://u:secret@h/db`` -> ``postgresql://u:***@h/db``."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user, colon, _ = creds.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}"


def _format(value: Any) -> str:
    """Render a setting value as it would be written in an environment variable."""
    if isinstance(value, tuple):
        if value and isinstance(value[0], tuple):
            return ";".join(f"{name}={command}" for name, command in value)
        return ",".join(str(v) for v in value)
    return str(value)


def _convert(name: str, raw: Any, where: str) -> Any:
    spec = _BY_NAME.get(name)
    if spec is None:
        known = ", ".join(sorted(f.name for f in FIELDS if not f.hidden))
        raise ConfigError(f"Unknown setting {name!r} in {where}.", f"Known settings: {known}.")
    try:
        return spec.convert(raw)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"Invalid value {raw!r} for setting {name!r} in {where}: {exc}.",
            f"Fix {where} (setting {name}, environment variable {spec.env}).",
        ) from None


def _read_pyproject(root: Path) -> dict[str, Any]:
    path = root / "pyproject.toml"
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}.", "Fix the file or remove [tool.patchflow].") from None
    section = data.get("tool", {}).get("patchflow", {})
    if not isinstance(section, dict):
        raise ConfigError(f"[tool.patchflow] in {path} must be a table.", "Fix the file.")
    return {k.replace("-", "_"): v for k, v in section.items()}


def load_settings(
    root: Path | str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Resolve the settings of the project at ``root`` (default: the current directory).

    Args:
        root: project root; must be an existing directory.
        environ: environment to read ``PATCHFLOW_*`` and ``DATABASE_URL`` from, kept as
            :attr:`Settings.environ` (default: a copy of ``os.environ``).
        overrides: task flags; ``None`` values are ignored (flag not given).

    Raises:
        ConfigError: the root is not a directory, or a value is invalid (the message names its source).
    """
    root_path = Path(root if root is not None else os.getcwd()).expanduser()
    if not root_path.is_dir():
        raise ConfigError(
            f"Project root {root_path} is not a directory.",
            "Pass --root pointing at a PrimeFlow checkout (the folder holding VERSION).",
        )
    root_path = root_path.resolve()
    env = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = {f.name: f.default for f in FIELDS}
    sources: dict[str, str] = {f.name: "default" for f in FIELDS}

    for name, raw in _read_pyproject(root_path).items():
        values[name] = _convert(name, raw, f"{root_path / 'pyproject.toml'} [tool.patchflow]")
        sources[name] = "pyproject.toml"

    dotenv_path = root_path / ".env"
    dotenv: dict[str, str] = {}
    if dotenv_path.is_file():
        try:
            dotenv = {k: v for k, v in dotenv_values(dotenv_path, encoding="utf-8").items() if v is not None}
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"Cannot read {dotenv_path}: {exc}.", "Save it as UTF-8 and make it readable.") from None
    for layer, mapping, label in ((".env", dotenv, str(dotenv_path)), ("env", env, "the environment")):
        if mapping.get("DATABASE_URL"):
            values["database_url"] = mapping["DATABASE_URL"]
            sources["database_url"] = f"{layer}:DATABASE_URL"
        for key in mapping:
            if key.startswith(ENV_PREFIX) and key not in _KNOWN_ENV:
                close = difflib.get_close_matches(key, sorted(_KNOWN_ENV), n=1)
                raise ConfigError(
                    f"Unknown setting {key} in {label}.",
                    (f"Did you mean {close[0]}? " if close else "")
                    + "The README lists every setting and its environment variable.",
                )
        for f in FIELDS:
            if f.env in mapping:
                values[f.name] = _convert(f.name, mapping[f.env], f"{f.env} in {label}")
                sources[f.name] = f"{layer}:{f.env}"

    for name, raw in (overrides or {}).items():
        if raw is None:
            continue
        values[name] = _convert(name, raw, "a command-line flag")
        sources[name] = "flag"
    return Settings(root=root_path, sources=sources, dotenv=dotenv, environ=env, **values)


def settings_table_markdown() -> str:
    """The README table of every documented setting: name, environment variable, default, meaning."""
    lines = ["| setting | environment variable | default | meaning |", "|---|---|---|---|"]
    for f in FIELDS:
        if f.hidden:
            continue
        default = _format(f.default) if f.default != () else "(empty)"
        lines.append(f"| `{f.name}` | `{f.env}` | `{default}` | {f.doc} |")
    return "\n".join(lines)
