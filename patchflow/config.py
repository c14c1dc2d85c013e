"""Settings: one frozen, typed object built from layered sources; each value remembers its source.

Precedence, lowest to highest (like invoke's config levels):

1. built-in defaults (the field defaults of :class:`Settings`),
2. ``[tool.patchflow]`` in the project's ``pyproject.toml`` (the release's settings),
3. ``.patchflow/host.toml`` (this host's settings, never carried by a patch; read by
   :mod:`patchflow.settings_files`),
4. the project's ``.env`` file (python-dotenv), keys ``PATCHFLOW_<NAME>``,
5. ``PATCHFLOW_<NAME>`` environment variables,
6. task flags (``overrides``).

Each setting has a scope (``host`` or ``release``, :attr:`Field.scope`) saying which file it
belongs in; the converters of raw values are in :mod:`patchflow.setting_values`.

``database_url`` also reads the conventional ``DATABASE_URL`` at the ``.env`` and environment
levels, and ``source_date_epoch`` the conventional ``SOURCE_DATE_EPOCH`` at the environment level
(a ``PATCHFLOW_<NAME>`` at the same level wins). Values are validated when loaded; an invalid
value raises :class:`ConfigError` naming the file or variable at fault. The process environment
reaches patchflow's core only through :attr:`Settings.environ` (captured
once by :func:`load_settings`); no core module reads ``os.environ``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from patchflow.errors import ConfigError
from patchflow.faults import KILL_AT_VARIABLE, NO_FAULTS, UPLOAD_CUT_VARIABLE, FaultHooks
from patchflow.inventory import HostEntry as HostEntry
from patchflow.inventory import to_hosts
from patchflow.redact import remember_settings
from patchflow.setting_values import (
    Commands,
    choice,
    to_bool,
    to_commands,
    to_epoch,
    to_float,
    to_int,
    to_list,
    to_remote_path,
    to_str,
    to_subdir,
)
from patchflow.settings_files import HOST_SETTINGS_FILE, host_settings_path, read_host_settings, read_pyproject
from patchflow.trust import SAFE_FILE_VARIABLE, SAFE_VARIABLE

ENV_PREFIX = "PATCHFLOW_"


def _setting(default: Any, convert: Callable[[Any], Any], doc: str) -> Any:
    """A :class:`Settings` field with its converter and one-line documentation (README table)."""
    return field(default=default, metadata={"convert": convert, "doc": doc})


@dataclass(frozen=True)
class Settings:
    """The resolved settings of one project root (frozen; read values as typed attributes).

    ``sources`` maps each setting name to where its value came from (``default``,
    ``pyproject.toml``, ``.env:PATCHFLOW_X``, ``env:PATCHFLOW_X``, ``flag``); ``dotenv`` holds the
    project's ``.env`` as read; ``environ`` the process environment captured when loading (what
    child processes inherit). Units: every ``*_timeout`` is seconds, ``free_space_margin`` bytes.
    """

    root: Path = field(metadata={"setting": False})
    patches_dir: str = _setting("patches", to_subdir, "folder (relative to the root) holding patches/vX.Y.Z/")
    backups_dir: str = _setting("backups", to_subdir, "folder (relative to the root) holding pre-patch backups")
    state_dir: str = _setting(".patchflow", to_subdir, "folder for the journal, history.jsonl and the lock")
    exclude: tuple[str, ...] = _setting(
        (), to_list, "extra gitignore-style patterns left out of patches (comma separated)"
    )
    use_gitignore: bool = _setting(
        True, to_bool, "create-patch also leaves out what the project's .gitignore ignores (local data, overrides)"
    )
    host_paths: tuple[str, ...] = _setting(
        ("/storage", "/uploads", "/docker/docker-compose.override.yml", "/.venv"),
        to_list,
        "paths each host keeps as its own (gitignore-style, comma separated; a folder, a file or a link to shared "
        "storage): never packed by create-patch, never written, replaced or deleted by an apply (besides .env, "
        "secrets and patchflow's folders; .venv is where a checkout's own patchflow may be installed)",
    )
    service_manager: str = _setting(
        "compose",
        choice("command", "compose", "none"),
        "how services are stopped/started: compose, command (pidfiles) or none",
    )
    commands: Commands = _setting(  # noqa: RUF009 - a tuple of pairs is immutable
        (), to_commands, "command manager: services as name=command;name=command"
    )
    stop_timeout: float = _setting(20.0, to_float, "seconds to wait after SIGTERM before SIGKILL (command manager)")
    compose_files: tuple[str, ...] = _setting(
        ("docker/docker-compose.yml",), to_list, "compose file(s), relative to the root"
    )
    compose_project: str = _setting(
        "",
        to_str,
        "compose project name (empty: COMPOSE_PROJECT_NAME, the file's name:, then its folder, as compose does)",
    )
    app_services: tuple[str, ...] = _setting(
        ("api", "worker", "frontend"), to_list, "services stopped during apply and replaced"
    )
    data_services: tuple[str, ...] = _setting(
        ("postgres", "redis"), to_list, "services that keep running during apply (never in app_services)"
    )
    database_mode: str = _setting(
        "url",
        choice("url", "compose", "none"),
        "url: pg_dump/pg_restore against database_url; compose: inside the database service; none",
    )
    database_url: str = _setting("", to_str, "PostgreSQL URL (also read from DATABASE_URL)")
    database_admin_url: str = _setting(
        "",
        to_str,
        "PostgreSQL URL of a role used only for dumps and restores (e.g. a superuser) when the app's role "
        "may not create databases or extensions",
    )
    database_service: str = _setting("postgres", to_str, "compose service running PostgreSQL (compose mode)")
    database_name: str = _setting("", to_str, "database name in compose mode (default: POSTGRES_DB of the service)")
    database_user: str = _setting("", to_str, "database superuser in compose mode (default: POSTGRES_USER)")
    pg_bindir: str = _setting(
        "", to_str, "folder with pg_dump/pg_restore/psql (default: the newest /usr/lib/postgresql/*/bin, then PATH)"
    )
    db_wait_timeout: float = _setting(60.0, to_float, "seconds to wait for the database to accept connections")
    database_snapshot: str = _setting(
        "auto",
        choice("auto", "off"),
        "auto: with pending migrations, copy the database on its server inside the stopped window (CREATE DATABASE "
        "... TEMPLATE) and dump that snapshot after the restart, when the role may and the database is reached by "
        "URL; off: dump inside the stopped window",
    )
    snapshot_keep_hours: float = _setting(
        6.0,
        to_float,
        "hours a snapshot is kept once its dump is proven (0: dropped then); prune-backups drops expired ones",
    )
    migrate_command: str = _setting(
        "auto",
        to_str,
        "migration command; 'builtin' uses patchflow's Prisma-compatible runner; "
        "'auto' uses `pnpm prisma migrate deploy` when node_modules/.bin/prisma exists, else builtin",
    )
    migrate_timeout: float = _setting(
        900.0, to_float, "seconds a migration may run; past it, it is cancelled on the server and the apply rolls back"
    )
    migration_lint: str = _setting(
        "warn",
        choice("warn", "refuse", "off"),
        "pending migrations linted with squawk before stop: warn (shown in the plan), refuse (the apply stops), off",
    )
    migration_lock_timeout: float = _setting(
        5.0,
        to_float,
        "seconds each statement of the builtin runner waits for a lock (PostgreSQL's lock_timeout) before its "
        "attempt fails and is retried; 0: wait without limit (until migrate_timeout)",
    )
    migration_lock_retries: int = _setting(
        3,
        to_int,
        "attempts the builtin runner makes again after a migration could not get its lock (waiting 1, 2, 4... s "
        "between), within migrate_timeout",
    )
    migration_blocker_wait: float = _setting(
        0.0,
        to_float,
        "seconds the plan waits, before the stop, for transactions older than migration_lock_timeout that hold "
        "locks the pending migrations need to end; still there after it, the apply is refused naming them",
    )
    migration_checksum_check: str = _setting(
        "refuse",
        choice("refuse", "warn"),
        "an applied migration whose file in the patch no longer has the checksum recorded in _prisma_migrations: "
        "refuse the apply before the stop, or warn (listed in the plan)",
    )
    schema_drift_check: str = _setting(
        "warn",
        choice("warn", "refuse", "off"),
        "the live schema compared before the stop with a scratch database built from the recorded migrations: "
        "differences (a change made by hand) listed in the plan (warn), refuse the apply, or off",
    )
    install_command: str = _setting(
        "", to_str, "run in the staging folder before stopping (e.g. pnpm install --frozen-lockfile)"
    )
    build_command: str = _setting("", to_str, "run in the staging folder before stopping (e.g. pnpm build)")
    build_outputs: tuple[str, ...] = _setting(
        ("node_modules", "dist"),
        to_list,
        "folders (globs, relative) made by install/build in staging that replace the tree's copies at switch",
    )
    signing_key: str = _setting("", to_str, "create-patch: Ed25519 signing key file (hex seed) that signs SHA256SUMS")
    retiring_signing_key: str = _setting(
        "", to_str, "create-patch: the signing key being replaced; it announces signing_key's in each patch (rotation)"
    )
    signature_days: float = _setting(365.0, to_float, "create-patch: days a patch's signature stays valid (expiry)")
    verify_key: str = _setting(
        "",
        to_str,
        "verify/apply: Ed25519 verify key (64 hex characters or a file); when set, unsigned patches are refused",
    )
    allow_unsigned: bool = _setting(
        False,
        to_bool,
        "apply: without verify_key, apply patches nobody's signature vouches for (each plan says so); else refused",
    )
    maintenance_ports: tuple[str, ...] = _setting(
        (), to_list, "ports ([host:]port) that answer HTTP 503 and a maintenance page while the services are stopped"
    )
    maintenance_page: str = _setting("", to_str, "the maintenance notice's HTML file in the checkout (empty: built in)")
    notify_urls: tuple[str, ...] = _setting(
        (), to_list, "Apprise URLs told when each apply/rollback starts and ends; a failed send never fails the run"
    )
    watch_seconds: float = _setting(
        0.0,
        to_float,
        "after the commit, watch the new version this long (health, restarts, watch_errors); fail: roll back",
    )
    watch_errors: tuple[str, ...] = _setting(
        (
            r"UnhandledPromiseRejection",
            r"PrismaClientInitializationError",
            r"FATAL ERROR: .*JavaScript heap out of memory",
            r"Error: P1001: Can't reach database server",
        ),
        to_list,
        "regular expressions that, in the app's logs during the watch window, roll the version back",
    )
    release_checks: str = _setting(
        "warn",
        choice("warn", "refuse", "off"),
        "create-patch's checklist (changelog, version step, committed, preflight)",
    )
    smoke_checks: tuple[str, ...] = _setting(
        (),
        to_list,
        "checks after the health check, before the commit (`<url> [status] [field=value]` or "
        "`cmd:<command>`; a failure rolls back)",
    )
    health_url: tuple[str, ...] = _setting(
        ("http://localhost:3001/health",), to_list, "health check URL(s), comma separated"
    )
    health_timeout: float = _setting(60.0, to_float, "seconds until the health check gives up")
    health_version_field: str = _setting(
        "version",
        to_str,
        "JSON field that must equal the deployed version when the body has it; without it the answer must come "
        "from the new process (empty: never compare)",
    )
    health_status_field: str = _setting(
        "status", to_str, "JSON field that, when present, must hold one of health_status_ok (empty: ignore)"
    )
    health_status_ok: tuple[str, ...] = _setting(
        ("ok", "healthy", "up", "pass", "passing", "success", "ready", "green"),
        to_list,
        "values of health_status_field that mean healthy (case-insensitive)",
    )
    health_follow_redirects: bool = _setting(
        False, to_bool, "follow redirects of the health URL (default: a redirect is unhealthy)"
    )
    env_example_check: str = _setting(
        "refuse",
        choice("refuse", "warn", "off"),
        "keys a release adds to .env.example that this host's .env and environment lack: refuse the apply before "
        "the stop, warn (listed in the plan) or off",
    )
    start_retries: int = _setting(3, to_int, "attempts to start services (apply and rollback) before giving up")
    retention_days: int = _setting(7, to_int, "prune-backups keeps every backup younger than this many days")
    retention_keep: int = _setting(5, to_int, "prune-backups keeps at least this many newest backups")
    lock_stale_seconds: float = _setting(6 * 3600.0, to_float, "a lock older than this (seconds) counts as stale")
    free_space_margin: int = _setting(
        64 * 1024 * 1024, to_int, "bytes of free disk kept in reserve beyond a backup's estimate"
    )
    hosts: tuple[HostEntry, ...] = _setting(
        (),
        to_hosts,
        "deploy inventory: [tool.patchflow.hosts.<name>] tables with host (ssh alias or user@host[:port]), "
        "path (checkout there), role (staging, production...), python; a JSON object in the environment",
    )
    remote_path: str = _setting(
        "", to_remote_path, "checkout path on hosts whose entry has no path (default: this checkout's own path)"
    )
    remote_python: str = _setting(
        "",
        to_str,
        "python running patchflow on hosts whose entry has none (default: <path>/.patchflow/venv/bin/python "
        "when present, else python3)",
    )
    ssh_config: str = _setting(
        "", to_str, "ssh config file for host aliases (default: ~/.ssh/config and /etc/ssh/ssh_config)"
    )
    ssh_known_hosts: str = _setting(
        "~/.ssh/known_hosts",
        to_str,
        "known_hosts file checked before anything is sent (default: the ssh config's UserKnownHostsFile, "
        "else ~/.ssh/known_hosts); --accept-new-host-key appends to it",
    )
    ssh_connect_timeout: float = _setting(
        10.0, to_float, "seconds for the TCP connect, SSH handshake and key authentication of a host"
    )
    ssh_command_timeout: float = _setting(
        60.0,
        to_float,
        "seconds each remote command or transfer step may take; a host silent for longer is reported unknown",
    )
    ssh_reconnect_timeout: float = _setting(
        30.0, to_float, "seconds deploy keeps reconnecting to a host that dropped while its apply runs"
    )
    deploy_timeout: float = _setting(
        3600.0, to_float, "seconds deploy follows one remote apply or rollback before reporting it still running"
    )
    source_date_epoch: str = _setting(
        "",
        to_epoch,
        "create-patch: the patch's created_at as seconds since 1970 UTC, for reproducible patches (also read "
        "from SOURCE_DATE_EPOCH in the environment; empty: the clock)",
    )
    faults: FaultHooks = field(default=NO_FAULTS, compare=False, repr=False, metadata={"setting": False})
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, metadata={"setting": False})
    dotenv: Mapping[str, str] = field(default_factory=dict, compare=False, metadata={"setting": False})
    environ: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False, metadata={"setting": False})

    def source(self, name: str) -> str:
        """Where the value of ``name`` came from (``default`` when it was not set anywhere)."""
        return self.sources.get(name, "default")


HOST = "host"
RELEASE = "release"
# Settings that belong to the machine (Capistrano's linked files, Kamal's destinations): how its
# services are run and checked, its database, its keys, its folders and retention, its inventory.
# ``init`` and ``setup-host`` write them into the host settings file, which no patch carries; the
# rest describe the release (what is packed, built, migrated, which services it has).
HOST_SCOPED = frozenset(
    {
        "patches_dir",
        "backups_dir",
        "state_dir",
        "service_manager",
        "commands",
        "stop_timeout",
        "compose_project",
        "database_mode",
        "database_url",
        "database_admin_url",
        "database_service",
        "database_name",
        "database_user",
        "pg_bindir",
        "db_wait_timeout",
        "database_snapshot",
        "snapshot_keep_hours",
        "signing_key",
        "verify_key",
        "allow_unsigned",
        "notify_urls",
        "maintenance_ports",
        "retiring_signing_key",
        "signature_days",
        "health_url",
        "health_timeout",
        "env_example_check",
        "retention_days",
        "retention_keep",
        "lock_stale_seconds",
        "free_space_margin",
        "hosts",
        "remote_path",
        "remote_python",
        "ssh_config",
        "ssh_known_hosts",
        "ssh_connect_timeout",
        "ssh_command_timeout",
        "ssh_reconnect_timeout",
        "deploy_timeout",
    }
)


@dataclass(frozen=True)
class Field:
    """One setting as documented: its name, converter, default, one-line documentation and scope
    (``host``: this machine's, kept in the host settings file; ``release``: the project's)."""

    name: str
    convert: Callable[[Any], Any]
    default: Any
    doc: str
    scope: str = RELEASE

    @property
    def env(self) -> str:
        """The environment variable (and ``.env`` key) of this setting: ``PATCHFLOW_<NAME>``."""
        return ENV_PREFIX + self.name.upper()


FIELDS: tuple[Field, ...] = tuple(
    Field(
        f.name,
        f.metadata["convert"],
        f.default,
        f.metadata["doc"],
        HOST if f.name in HOST_SCOPED else RELEASE,
    )
    for f in dataclasses.fields(Settings)
    if f.metadata.get("setting", True)
)
_BY_NAME = {f.name: f for f in FIELDS}
# the tests' fault hooks; the operator's trusted checkouts (not a setting: no checkout vouches for itself)
_KNOWN_ENV = {f.env for f in FIELDS} | {KILL_AT_VARIABLE, UPLOAD_CUT_VARIABLE, SAFE_VARIABLE, SAFE_FILE_VARIABLE}


# variables other tools define that patchflow reads as settings, per level (a PATCHFLOW_<NAME>
# at the same level wins); SOURCE_DATE_EPOCH describes the build, not the app: not read from .env
_CONVENTIONAL = {
    ".env": {"DATABASE_URL": "database_url"},
    "env": {"DATABASE_URL": "database_url", "SOURCE_DATE_EPOCH": "source_date_epoch"},
}


def convert_setting(name: str, raw: Any, where: str) -> Any:
    """``raw`` converted and validated as the value of setting ``name`` (``where`` names its
    source in errors).

    Raises:
        ConfigError: unknown setting or invalid value (the message names ``where``).
    """
    return _convert(name, raw, where)


def format_setting(value: Any) -> str:
    """A setting's value as it would be written in an environment variable (lists comma separated,
    commands as ``name=command;...``)."""
    return _format(value)


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
        known = sorted(f.name for f in FIELDS)
        close = difflib.get_close_matches(name, known, n=1)
        raise ConfigError(
            f"Unknown setting {name!r} in {where}.",
            (f"Did you mean {close[0]!r}? " if close else "") + f"Known settings: {', '.join(known)}.",
        )
    try:
        return spec.convert(raw)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"Invalid value {raw!r} for setting {name!r} in {where}: {exc}.",
            f"Fix {where} (setting {name}, environment variable {spec.env}).",
        ) from None


def load_settings(
    root: Path | str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    release: Mapping[str, Any] | None = None,
) -> Settings:
    """Resolve the settings of the project at ``root`` (default: the current directory).

    Args:
        root: project root; must be an existing directory.
        environ: environment to read ``PATCHFLOW_*``, ``DATABASE_URL`` and ``SOURCE_DATE_EPOCH`` from, kept as
            :attr:`Settings.environ` (default: a copy of ``os.environ``).
        overrides: task flags; ``None`` values are ignored (flag not given).
        release: a ``[tool.patchflow]`` table to use instead of the root's ``pyproject.toml``
            (e.g. a patch's, see :func:`release_section`), with every other layer read as usual.

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

    section = read_pyproject(root_path) if release is None else dict(release)
    for name, raw in section.items():
        values[name] = _convert(name, raw, f"{root_path / 'pyproject.toml'} [tool.patchflow]")
        sources[name] = "pyproject.toml"
    for name, raw in read_host_settings(root_path).items():
        values[name] = _convert(name, raw, str(host_settings_path(root_path)))
        sources[name] = HOST_SETTINGS_FILE

    dotenv_path = root_path / ".env"
    dotenv: dict[str, str] = {}
    if dotenv_path.is_file():
        try:
            dotenv = {k: v for k, v in dotenv_values(dotenv_path, encoding="utf-8").items() if v is not None}
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"Cannot read {dotenv_path}: {exc}.", "Save it as UTF-8 and make it readable.") from None
    # before any value is converted (an error names it): every password is known to the redaction
    remember_settings(str(values.get("database_url", "")), str(values.get("database_admin_url", "")), env, dotenv)
    for layer, mapping, label in ((".env", dotenv, str(dotenv_path)), ("env", env, "the environment")):
        for variable, name in _CONVENTIONAL[layer].items():
            if mapping.get(variable):
                values[name] = _convert(name, mapping[variable], f"{variable} in {label}")
                sources[name] = f"{layer}:{variable}"
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
    try:
        faults = FaultHooks.from_environ({**dotenv, **env})  # a server under test gets them through its .env
    except ValueError as exc:
        raise ConfigError(str(exc), "Unset it: it is a test hook, not a setting.") from None
    return Settings(root=root_path, sources=sources, dotenv=dotenv, environ=env, faults=faults, **values)
