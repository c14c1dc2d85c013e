"""The PrimeFlow checkout patchflow acts on, and what its compose file says about it.

:func:`find_root` decides the project root of a command: the folder holding the ``tasks.py``
invoke loaded (the checkout patchflow was embedded in by ``init``), else the nearest folder above
the current directory holding ``VERSION`` or ``tasks.py``; ``--root`` always wins. patchflow's own
repository is the tool's home and never a default project.

:func:`detect_settings` reads the checkout's compose file (PyYAML) and proposes settings: the
compose file, application and data services, the database service and mode, the API's health URL
from its published port and healthcheck.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from patchflow.errors import ConfigError

COMPOSE_CANDIDATES = (
    "docker/docker-compose.yml",
    "docker/docker-compose.yaml",
    "docker/compose.yml",
    "docker/compose.yaml",
    "docker-compose.yml",
    "docker-compose.yaml",
    "compose.yml",
    "compose.yaml",
)
DATA_IMAGES = re.compile(
    r"(^|/)(postgres|postgis|timescale|pgvector|supabase/postgres|redis|valkey|keydb|mysql|mariadb|mongo|"
    r"rabbitmq|memcached|elasticsearch|opensearch|minio|nats|kafka|zookeeper|clickhouse)([:@]|$)"
)
DATA_NAMES = {"postgres", "postgresql", "db", "database", "redis", "cache", "mysql", "mariadb", "mongo", "queue"}


def is_tool_home(folder: Path) -> bool:
    """True when ``folder`` is patchflow's own repository (its pyproject names the project
    ``patchflow``): the tool's home, never a PrimeFlow install."""
    try:
        data = tomllib.loads((folder / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    project = data.get("project")
    return isinstance(project, dict) and project.get("name") == "patchflow"


def _refuse_tool_home(folder: Path) -> ConfigError:
    return ConfigError(
        f"{folder} is patchflow's own repository, not a PrimeFlow checkout.",
        "Run the command inside a PrimeFlow checkout set up with `inv init`, or pass --root PATH.",
    )


def find_root(start: Path, tasks_dir: Path | None = None) -> Path:
    """The project root for a command started in ``start`` whose tasks were loaded from
    ``tasks_dir`` (None when run as ``python -m patchflow``).

    Raises:
        ConfigError: the folder found is patchflow's own repository, or no checkout is found.
    """
    home = next((f for f in (start.resolve(), *start.resolve().parents) if is_tool_home(f)), None)
    if tasks_dir is not None:
        folder = tasks_dir.resolve()
        if is_tool_home(folder):  # patchflow's own tasks.py; a checkout with its own (.demo/...) is a project
            raise _refuse_tool_home(folder)
        return folder
    for folder in (start.resolve(), *start.resolve().parents):
        if (folder / "tasks.py").is_file() or (folder / "VERSION").is_file():
            if home is not None and (folder == home or home in folder.parents):
                raise _refuse_tool_home(home)
            return folder
    raise ConfigError(
        f"No PrimeFlow checkout found in {start} or above it (no VERSION or tasks.py).",
        "Run the command inside a PrimeFlow checkout, or pass --root PATH.",
    )


#: Settings proposed by :func:`detect_settings`: name -> a string or a list of strings, as TOML
#: writes them (each is checked by its setting's converter when it is read back).
DetectedSettings = dict[str, str | list[str]]
#: A service of a compose file as YAML gives it (keys as written, values not checked yet).
Service = dict[str, object]


@dataclass
class Detected:
    """Settings proposed from a checkout's compose file, with a line of reasoning for each."""

    settings: DetectedSettings = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _table(value: object) -> dict[str, object]:
    """``value`` when YAML gave a mapping (its keys as text), else empty: a service written as
    ``api:`` with nothing under it, or a value of the wrong kind, holds nothing to read."""
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else {}


def _compose_file(root: Path) -> str | None:
    return next((c for c in COMPOSE_CANDIDATES if (root / c).is_file()), None)


def _environment(service: Service) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(str(item).split("=", 1) for item in env if "=" in str(item))
    if isinstance(env, dict):
        return {str(k): "" if v is None else str(v) for k, v in env.items()}
    return {}


def _host_port(service: Service, container_port: str | None) -> str | None:
    """The host port published for ``container_port`` (or the first one published)."""
    ports = service.get("ports")
    for item in ports if isinstance(ports, list) else []:
        if isinstance(item, dict):
            published, target = item.get("published"), item.get("target")
        else:
            parts = str(item).split("/")[0].split(":")
            if len(parts) < 2:
                continue
            published, target = parts[-2], parts[-1]
        if published and (container_port is None or str(target) == container_port):
            return str(published)
    return None


def detect_settings(root: Path) -> Detected:
    """Propose ``[tool.patchflow]`` settings from the checkout's compose file (no docker needed).

    Raises:
        ConfigError: the compose file is not valid YAML.
    """
    import yaml

    found = Detected()
    compose_file = _compose_file(root)
    if compose_file is None:
        found.settings["service_manager"] = "none"
        found.notes.append("no compose file found: service_manager = none (set it to command or compose)")
        return found
    try:
        model = yaml.safe_load((root / compose_file).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{root / compose_file} is not valid YAML: {exc}.", "Fix the compose file.") from None
    services = {name: _table(service) for name, service in _table(_table(model).get("services")).items()}
    found.settings["service_manager"] = "compose"  # this machine's fact, pinned in its host settings
    found.settings["compose_files"] = [compose_file]
    found.notes.append(f"compose file {compose_file}: services {', '.join(services) or '(none)'}")
    data = [
        name for name, svc in services.items() if name in DATA_NAMES or DATA_IMAGES.search(str(svc.get("image", "")))
    ]
    apps = [name for name in services if name not in data]
    found.settings["app_services"] = apps
    found.settings["data_services"] = data
    postgres = next(
        (n for n in data if "postgres" in str(services[n].get("image", "")) or n in ("postgres", "db")), None
    )
    if postgres:
        found.settings["database_service"] = postgres
        env = _environment(services[postgres])
        urls = [_environment(services[a]).get("DATABASE_URL", "") for a in apps]
        in_stack = any(re.search(rf"@{re.escape(postgres)}(:\d+)?/", url) for url in urls)
        found.settings["database_mode"] = "compose" if in_stack else "url"
        if in_stack:
            for key, setting in (("POSTGRES_DB", "database_name"), ("POSTGRES_USER", "database_user")):
                if env.get(key) and "$" not in env[key]:
                    found.settings[setting] = env[key]
        found.notes.append(
            f"database: service {postgres}, "
            + ("reached inside the stack (database_mode = compose)" if in_stack else "DATABASE_URL (url mode)")
        )
    api = "api" if "api" in apps else next((a for a in apps if services[a].get("ports")), None)
    if api:
        svc = services[api]
        container_port = _environment(svc).get("PORT")
        test = _table(svc.get("healthcheck")).get("test")
        text = " ".join(test) if isinstance(test, list) else str(test or "")
        match = re.search(r"https?://(?:localhost|127\.0\.0\.1|0\.0\.0\.0)(?::(\d+))?(/[^\s'\"|]*)?", text)
        path = match.group(2) if match and match.group(2) else "/health"
        container_port = container_port or (match.group(1) if match else None)
        host_port = _host_port(svc, container_port)
        if host_port:
            found.settings["health_url"] = [f"http://localhost:{host_port}{path}"]
            found.notes.append(f"health check: {api} publishes {host_port}, path {path}")
        else:
            found.notes.append(f"health check: {api} publishes no port; set health_url by hand")
    return found
