"""Settings: one object built from layered sources, each value remembering where it came from.

Precedence, lowest to highest (like invoke's config levels):

1. built-in defaults (``FIELDS`` below),
2. ``[tool.patchflow]`` in the project's ``pyproject.toml``,
3. the project's ``.env`` file (python-dotenv), keys ``PATCHFLOW_<NAME>``,
4. ``PATCHFLOW_<NAME>`` environment variables,
5. task flags (``overrides``).

``database_url`` also reads the conventional ``DATABASE_URL`` at the ``.env`` and environment
levels (a ``PATCHFLOW_DATABASE_URL`` at the same level wins). Values are validated when loaded;
an invalid value raises :class:`ConfigError` naming the file or variable at fault.
"""

from __future__ import annotations

import difflib
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from dotenv import dotenv_values

from patchflow.errors import ConfigError

ENV_PREFIX = "PATCHFLOW_"


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


def _to_commands(value: Any) -> tuple[tuple[str, str], ...]:
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
class Field:
    """One setting: its name, converter, default and one-line documentation."""

    name: str
    convert: Callable[[Any], Any]
    default: Any
    doc: str

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


FIELDS: tuple[Field, ...] = (
    Field("patches_dir", _to_subdir, "patches", "folder (relative to the root) holding patches/vX.Y.Z/"),
    Field("backups_dir", _to_subdir, "backups", "folder (relative to the root) holding pre-patch backups"),
    Field("state_dir", _to_subdir, ".patchflow", "folder for the journal, history.jsonl and the lock"),
    Field("exclude", _to_list, (), "extra gitignore-style patterns left out of patches (comma separated)"),
    Field(
        "service_manager",
        _choice("command", "compose", "none"),
        "compose",
        "how services are stopped/started: compose, command (pidfiles) or none",
    ),
    Field("commands", _to_commands, (), "command manager: services as name=command;name=command"),
    Field("stop_timeout", _to_float, 20.0, "seconds to wait after SIGTERM before SIGKILL (command manager)"),
    Field("compose_files", _to_list, ("docker/docker-compose.yml",), "compose file(s), relative to the root"),
    Field(
        "compose_project",
        _to_str,
        "",
        "compose project name (empty: COMPOSE_PROJECT_NAME, the file's name:, then its folder, as compose does)",
    ),
    Field("app_services", _to_list, ("api", "worker", "frontend"), "services stopped during apply and replaced"),
    Field(
        "data_services",
        _to_list,
        ("postgres", "redis"),
        "services that keep running during apply (never in app_services)",
    ),
    Field(
        "database_mode",
        _choice("url", "compose", "none"),
        "url",
        "url: pg_dump/pg_restore against database_url; compose: inside the database service; none",
    ),
    Field("database_url", _to_str, "", "PostgreSQL URL (also read from DATABASE_URL)"),
    Field("database_service", _to_str, "postgres", "compose service running PostgreSQL (compose mode)"),
    Field("database_name", _to_str, "", "database name in compose mode (default: POSTGRES_DB of the service)"),
    Field("database_user", _to_str, "", "database superuser in compose mode (default: POSTGRES_USER)"),
    Field(
        "pg_bindir", _to_str, "", "folder with pg_dump/pg_restore/psql (default: PATH, then /usr/lib/postgresql/*/bin)"
    ),
    Field("db_wait_timeout", _to_float, 60.0, "seconds to wait for the database to accept connections"),
    Field(
        "migrate_command",
        _to_str,
        "auto",
        "migration command; 'builtin' uses patchflow's Prisma-compatible runner; "
        "'auto' uses `pnpm prisma migrate deploy` when node_modules/.bin/prisma exists, else builtin",
    ),
    Field(
        "install_command",
        _to_str,
        "",
        "run in the staging folder before stopping (e.g. pnpm install --frozen-lockfile)",
    ),
    Field("build_command", _to_str, "", "run in the staging folder before stopping (e.g. pnpm build)"),
    Field(
        "build_outputs",
        _to_list,
        ("node_modules", "dist"),
        "folders (globs, relative) made by install/build in staging that replace the tree's copies at switch",
    ),
    Field("signing_key", _to_str, "", "create-patch: Ed25519 signing key file (hex seed) that signs SHA256SUMS"),
    Field(
        "verify_key",
        _to_str,
        "",
        "verify/apply: Ed25519 verify key (64 hex characters or a file); when set, unsigned patches are refused",
    ),
    Field("health_url", _to_list, ("http://localhost:3001/health",), "health check URL(s), comma separated"),
    Field("health_timeout", _to_float, 60.0, "seconds until the health check gives up"),
    Field(
        "health_version_field",
        _to_str,
        "version",
        "JSON field that must equal the deployed version (empty: do not check)",
    ),
    Field("start_retries", _to_int, 3, "attempts to start services (apply and rollback) before giving up"),
    Field("retention_days", _to_int, 7, "prune-backups keeps every backup younger than this many days"),
    Field("retention_keep", _to_int, 5, "prune-backups keeps at least this many newest backups"),
    Field("lock_stale_seconds", _to_float, 6 * 3600.0, "a lock older than this (seconds) counts as stale"),
    Field(
        "free_space_margin", _to_int, 64 * 1024 * 1024, "bytes of free disk kept in reserve beyond a backup's estimate"
    ),
)

_BY_NAME = {f.name: f for f in FIELDS}
# variables with the prefix that are not settings: the documented test hook (context.KILL_HOOK)
_KNOWN_ENV = {f.env for f in FIELDS} | {"PATCHFLOW_TEST_KILL_AT"}


@dataclass(frozen=True)
class Settings:
    """The resolved settings of one project root.

    ``values`` maps each field name to its converted value; ``sources`` maps it to where that
    value came from (``default``, ``pyproject.toml``, ``.env``, ``env:PATCHFLOW_X``, ``flag``).
    Read values as attributes: ``settings.health_timeout``.
    """

    root: Path
    values: Mapping[str, Any]
    sources: Mapping[str, str] = field(default_factory=dict)
    dotenv: Mapping[str, str] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("values", {})
        if name in values:
            return values[name]
        raise AttributeError(name)

    def source(self, name: str) -> str:
        """Where the value of ``name`` came from."""
        return self.sources.get(name, "default")

    def replace(self, **overrides: Any) -> Settings:
        """Return a copy with ``overrides`` applied as flags (validated like any other source)."""
        values = dict(self.values)
        sources = dict(self.sources)
        for name, raw in overrides.items():
            values[name] = _convert(name, raw, "flag")
            sources[name] = "flag"
        return Settings(self.root, values, sources, self.dotenv)

    def describe(self) -> list[tuple[str, str, str]]:
        """Rows ``(name, value, source)`` for every setting, secrets masked."""
        rows = []
        for f in FIELDS:
            value = self.values[f.name]
            text = _format(value)
            if f.name == "database_url" and text:
                text = mask_url(text)
            rows.append((f.name, text, self.source(f.name)))
        return rows


def _format(value: Any) -> str:
    """Render a setting value as it would be written in an environment variable."""
    if isinstance(value, tuple):
        if value and isinstance(value[0], tuple):
            return ";".join(f"{name}={command}" for name, command in value)
        return ",".join(str(v) for v in value)
    return str(value)


def mask_url(url: str) -> str:
    """Hide the password of a URL: ``postgresql://u:secret@h/db`` -> ``postgresql://u:***@h/db``."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user, colon, _ = creds.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}"


def _convert(name: str, raw: Any, where: str) -> Any:
    spec = _BY_NAME.get(name)
    if spec is None:
        known = ", ".join(sorted(_BY_NAME))
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
        environ: environment to read ``PATCHFLOW_*`` and ``DATABASE_URL`` from (default ``os.environ``).
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
    env = os.environ if environ is None else environ
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
    return Settings(root_path, values, sources, dotenv)


def settings_table_markdown() -> str:
    """The README table of every setting: name, environment variable, default, meaning."""
    lines = ["| setting | environment variable | default | meaning |", "|---|---|---|---|"]
    for f in FIELDS:
        default = _format(f.default) if f.default != () else "(empty)"
        lines.append(f"| `{f.name}` | `{f.env}` | `{default}` | {f.doc} |")
    return "\n".join(lines)
