"""``service_manager = command``: configured commands run as background processes.

Each service (``commands`` setting, ``name=command``) runs in its own session, started through the
runner, with its output appended to ``.patchflow/logs/<name>.log``. It is tracked two ways:

* a pidfile ``.patchflow/run/<name>.pid`` (pid, kernel start time, command), written as
  ``starting`` with a fresh random ``nonce`` *before* the process is spawned and completed right
  after;
* that nonce in the process environment (``PF_SERVICE_ID=<root>::<name>::<nonce>``), so a process
  whose pid was never written (patchflow killed between the spawn and the write) is still found
  and stopped: no orphan keeps the port.

Stop is SIGTERM to each process group, then SIGKILL after ``stop_timeout`` seconds.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from patchflow.config import Settings
from patchflow.errors import CommandError, ConfigError, ServiceError
from patchflow.files import private_folder
from patchflow.lifecycle.journal import write_json_atomic
from patchflow.paths import ProjectPaths
from patchflow.runner import Runner, end_groups, group_members, process_start_ticks, processes_with_env
from patchflow.services import NoImages, ServiceState

SERVICE_MARKER = "PF_SERVICE_ID"
STOP_ROUNDS = 3
START_BANNER = "--- patchflow: starting"
_CAUSE = re.compile(
    r"error|exception|EADDRINUSE|EACCES|ENOENT|cannot|can't|not found|denied|fatal|panic|refused|invalid|failed",
    re.IGNORECASE,
)


def marked_processes(marker: str, *, any_start: bool = False) -> list[int]:
    """Pids of live processes whose environment carries ``PF_SERVICE_ID=<marker>`` (with
    ``any_start``, any start of the service: ``marker`` is then ``<root>::<name>::``), oldest
    first (by kernel start time)."""
    return processes_with_env(SERVICE_MARKER, marker, prefix=any_start)


def listening_ports(pids: list[int]) -> set[int]:
    """TCP ports in LISTEN state held by sockets of ``pids`` (``/proc/net/tcp``, ``tcp6`` and the
    processes' file descriptors)."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[3] == "0A" and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def cause_lines(text: str, limit: int = 6) -> str:
    """The lines of a service log that say why it stopped: those naming an error (``EADDRINUSE``,
    ``Cannot find module``, ``Error:`` ...) from the last start on, else its last lines."""
    last_start = text.rfind(START_BANNER)
    rows = [row.strip() for row in text[last_start if last_start >= 0 else 0 :].splitlines() if row.strip()]
    rows = [row for row in rows if not row.startswith(START_BANNER)]
    causes = [row for row in rows if _CAUSE.search(row)]
    chosen = causes[:limit] if causes else rows[-limit:]
    return " | ".join(chosen) if chosen else "(the log is empty)"


class CommandManager(NoImages):
    """Processes started from the ``commands`` setting, tracked by pidfiles and an environment marker."""

    kind = "command"

    def __init__(self, settings: Settings, paths: ProjectPaths, runner: Runner) -> None:
        """Raises ConfigError: no commands are configured."""
        self.settings = settings
        self.paths = paths
        self.runner = runner
        self.commands: dict[str, str] = dict(settings.commands)
        self._started: list[str] = []
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
        """Where the output of service ``name`` is appended."""
        return self.paths.logs / f"{name}.log"

    def marker(self, name: str, nonce: str) -> str:
        """The ``PF_SERVICE_ID`` value of one start of service ``name`` of this install."""
        return f"{self.paths.root}::{name}::{nonce}"

    def _record(self, name: str) -> dict[str, object]:
        try:
            data = json.loads(self._pidfile(name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def running(self, name: str) -> int | None:
        """The live pid of service ``name``: the one in its pidfile, or, when patchflow died before
        writing it (record still ``starting``), the oldest process carrying that start's nonce."""
        record = self._record(name)
        pid, ticks, nonce = record.get("pid"), record.get("start_ticks"), record.get("nonce")
        if isinstance(pid, int):
            current = process_start_ticks(pid)
            return pid if current is not None and (ticks is None or current == ticks) else None
        if record.get("state") == "starting" and isinstance(nonce, str) and nonce:
            found = marked_processes(self.marker(name, nonce))
            return found[0] if found else None
        return None

    def _members(self, name: str) -> list[int]:
        """Every live process of service ``name`` of this install: its recorded pid and whatever
        carries its marker from any start (children that left its process group, an orphan of a
        start whose pidfile was lost or overwritten)."""
        pids = set(marked_processes(self.marker(name, ""), any_start=True))
        leader = self.running(name)
        if leader is not None:
            pids.add(leader)
        return sorted(pids)

    def proof_of_new(self, url: str, since: float) -> str | None:
        """Why the answer at ``url`` may not come from the processes this run started (None: it
        does): one of the install's running services must hold the listening socket of its port."""
        port = urllib.parse.urlsplit(url).port or 80
        if self.serves(port):
            return None
        return f"port {port} is not held by a process of this install's services (an old or stray process answers)"

    def proof_available(self, urls: Sequence[str]) -> str:
        """How :meth:`proof_of_new` will prove a new process for ``urls`` ('' when it cannot: the
        services do not hold those ports now, e.g. a proxy in front of them)."""
        ports = [urllib.parse.urlsplit(u).port or 80 for u in urls]
        hosts = {urllib.parse.urlsplit(u).hostname for u in urls}
        if ports and hosts <= {"localhost", "127.0.0.1", "::1"} and all(self.serves(p) for p in ports):
            return f"a new process of the services listens on port {', '.join(map(str, ports))}"
        return ""

    def serves(self, port: int) -> bool | None:
        """True when a process of a running service listens on TCP ``port`` (the answer on that
        port comes from this install's services, not from a stray process)."""
        pids: list[int] = []
        for name in self.commands:
            leader = self.running(name)
            if leader is None:
                continue
            try:
                pids += group_members(os.getpgid(leader))
            except ProcessLookupError:
                continue
        return port in listening_ports(pids)

    def start(self, services: Sequence[str] | None = None, *, rebuild: bool = False) -> None:
        """Spawn the services that are not running (returns at once; :meth:`check_running` and the
        readiness poll of :func:`patchflow.services.start_with_retries` find one that exits).

        Raises:
            ServiceError: a command cannot be started, or a service is already gone.
        """
        private_folder(self.paths.pids)
        private_folder(self.paths.logs)
        for name in self._select(services):
            pid = self.running(name)
            if pid is not None:
                if self._record(name).get("state") == "starting":
                    self._adopt(name, pid)  # spawned by a run killed before it wrote the pid
                continue
            if self._members(name):
                self.stop([name])  # an untracked process of an earlier start: never run two
            command = self.commands[name]
            pidfile = self._pidfile(name)
            nonce = secrets.token_hex(8)
            write_json_atomic(pidfile, {"state": "starting", "nonce": nonce, "command": command}, mode=0o644)
            with open(self.log_file(name), "ab") as log:
                log.write(f"{START_BANNER} {name}: {command}\n".encode())
            env = {**self.settings.dotenv, **self.settings.environ, SERVICE_MARKER: self.marker(name, nonce)}
            try:
                pid = self.runner.spawn(
                    shlex.split(command), cwd=self.paths.root, env=env, log_file=self.log_file(name)
                )
            except CommandError as exc:
                pidfile.unlink(missing_ok=True)
                raise ServiceError(
                    f"Cannot start {name} ({command!r}): {exc.message}", "Fix the command in the commands setting."
                ) from None
            self.settings.faults.checkpoint(f"spawn-{name}", "after")
            self._adopt(name, pid)
        self.check_running()

    def _adopt(self, name: str, pid: int) -> None:
        """Record ``pid`` (with its kernel start time) as the running process of ``name``."""
        record = self._record(name)
        write_json_atomic(
            self._pidfile(name),
            {
                "state": "running",
                "nonce": record.get("nonce", ""),
                "pid": pid,
                "start_ticks": process_start_ticks(pid),
                "command": self.commands[name],
            },
            mode=0o644,
        )
        if name not in self._started:
            self._started.append(name)

    def check_running(self) -> None:
        """Raise if a service this manager started has exited since.

        Raises:
            ServiceError: names the services and the log lines that say why (EADDRINUSE ...).
        """
        dead = [name for name in self._started if self.running(name) is None]
        if dead:
            causes = "; ".join(f"{name}: {self._cause(name)}" for name in dead)
            raise ServiceError(f"Service(s) {', '.join(dead)} exited right after starting: {causes}", self.logs_hint())

    def _cause(self, name: str) -> str:
        try:
            text = self.log_file(name).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return cause_lines(text[-65536:])

    def stop(self, services: Sequence[str] | None = None) -> None:
        """SIGTERM the process groups of every service at once, SIGKILL those left after
        ``stop_timeout`` seconds (one deadline for all: services that ignore SIGTERM cost it once);
        remove pidfiles.

        Raises:
            ServiceError: a service still runs after SIGKILL (the first such is named).
        """
        names = self._select(services)
        left = {name: self._members(name) for name in names}
        for _ in range(STOP_ROUNDS):  # a process started while the services shut down is ended too
            groups = []
            for pid in (pid for members in left.values() for pid in members):
                try:
                    groups.append(os.getpgid(pid))
                except ProcessLookupError:
                    continue
            if not groups:
                break
            end_groups(groups, grace=float(self.settings.stop_timeout))
            left = {name: self._members(name) for name in names}
        for name in names:
            if left[name]:
                raise ServiceError(
                    f"Service {name} did not stop (pid {', '.join(map(str, left[name]))}).",
                    "Stop it by hand (kill -9).",
                )
            self._pidfile(name).unlink(missing_ok=True)
            if name in self._started:
                self._started.remove(name)

    def restart(self, services: Sequence[str] | None = None) -> None:
        self.stop(services)
        self.start(services)

    def remove(self, services: Sequence[str]) -> None:
        """Services of the command manager come from the settings, not from a patch: nothing to do."""
        return None

    def up(self) -> None:
        self.start()

    def down(self) -> None:
        self.stop()

    def status(self) -> list[ServiceState]:
        out = []
        for name in self.commands:
            pid = self.running(name)
            out.append(ServiceState(name, "running" if pid else "stopped", f"pid {pid}" if pid else ""))
        return out

    def logs(self, services: Sequence[str], *, follow: bool, tail: int | None) -> None:
        """Print the services' log files to this terminal (``tail``).

        Raises:
            ServiceError: no log exists yet.
        """
        names = self._select(services)
        files = [str(self.log_file(n)) for n in names if self.log_file(n).exists()]
        if not files:
            raise ServiceError(f"No logs yet for {', '.join(names)}.", f"Logs are written to {self.paths.logs}.")
        args = ["tail", "-n", str(tail if tail is not None else 100), *(["-F"] if follow else []), *files]
        self.runner.attach(args, escape=True)

    def logs_hint(self) -> str:
        return f"service logs in {self.paths.logs}/ (inv logs)"
