"""A fleet of PrimeFlow "servers" for the remote deploy tests: several real sshd processes on
127.0.0.1 (each its own port, host key and client key) and, behind each, a running sample install
at 2.2.0 (a copy of the session's :class:`~support.installs.InstallTemplate` with its own database,
port and node services). An *operator checkout* holds the inventory
(``[tool.patchflow.hosts.<name>]``), an ssh config with one alias per host, a known_hosts file and
the release patch 2.3.0; ``deploy`` and the remote forms of the tasks run from it as subprocesses.

:meth:`HostFleet.reset` puts back, cheaply, only the hosts a test changed (their files, history,
services or settings), so tests sharing one fleet stay independent.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.installs import INV, Install, InstallTemplate, get, rewrite_dotenv, run_inv, wait_trash_deleted, wait_until
from support.services import SshServer

RELEASE = "2.3.0"
BASE = "2.2.0"


@dataclass
class Host:
    """One server of the fleet: its sshd, its install and the fingerprint of its pristine state."""

    name: str
    role: str
    server: SshServer
    install: Install
    pristine: str = ""
    pristine_files: dict[str, list[str]] = field(default_factory=dict)
    pristine_env: str = ""
    pristine_history: bytes = b""

    def remember(self) -> None:
        """Record the current state as pristine (once the API answers)."""
        wait_until(lambda: self.health_version() == BASE, 30, f"{self.name}'s API to answer")
        self.pristine = self.fingerprint()
        self.pristine_files = self.listing()
        self.pristine_env = (self.root / ".env").read_text()
        history = self.root / ".patchflow" / "history.jsonl"
        self.pristine_history = history.read_bytes() if history.is_file() else b""

    @property
    def root(self) -> Path:
        return self.install.root

    def version(self) -> str:
        return (self.root / "VERSION").read_text().strip()

    def health_version(self) -> str | None:
        status, body = get(self.install.health_url, timeout=3)
        try:
            return str(json.loads(body).get("version")) if status == 200 else None
        except ValueError:
            return None

    def history(self) -> list[dict[str, Any]]:
        path = self.root / ".patchflow" / "history.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def set_env(self, **values: str) -> None:
        """Change the install's ``.env`` (the host is reset after the test)."""
        rewrite_dotenv(self.root, values)

    def runs(self) -> list[dict[str, Any]]:
        """The detached runs deploy recorded on the host (``.patchflow/deploys/<id>.json``), oldest first."""
        folder = self.root / ".patchflow" / "deploys"
        records = [json.loads(p.read_text()) for p in folder.glob("*.json")] if folder.is_dir() else []
        return sorted(records, key=lambda r: (str(r.get("started_at", "")), str(r["id"])))

    def stopped_run(self, action: str, timeout: float = 180) -> tuple[dict[str, Any], int]:
        """Wait until the newest detached run of ``action`` on the host holds a stopped process
        (``PATCHFLOW_TEST_KILL_AT=<step>=SIGSTOP`` reached); return its record and its process
        group (the run's wrapper shell leads its own session and group: its pid file holds it)."""

        def found() -> tuple[dict[str, Any], int] | None:
            runs = [r for r in self.runs() if r.get("action") == action]
            pid_file = Path(runs[-1]["pid_file"]) if runs else None
            if pid_file is None or not pid_file.is_file() or not pid_file.read_text().strip():
                return None
            group = int(pid_file.read_text())
            return (runs[-1], group) if any(state == "T" for state in group_states(group).values()) else None

        return wait_until(found, timeout, f"the {action} on {self.name} to stop at its test kill point")

    def stopped_task(self, task: str, timeout: float = 120) -> int:
        """Wait until a ``python -m patchflow <task> --root <this host>`` process is stopped (its
        ``PATCHFLOW_TEST_KILL_AT=...=SIGSTOP`` point reached); return its pid."""

        def found() -> int | None:
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    argv = (entry / "cmdline").read_bytes().split(b"\0")
                    state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                except (OSError, IndexError):
                    continue
                if state == "T" and task.encode() in argv and str(self.root).encode() in argv:
                    return int(entry.name)
            return None

        return wait_until(found, timeout, f"{task} on {self.name} to stop at its test kill point")

    def cut_session_of(self, pid: int) -> list[int]:
        """:func:`cut_session_of` on this host's sshd."""
        return cut_session_of(self.server, pid)

    def listing(self) -> dict[str, list[str]]:
        """The names in the folders a deploy writes to (the status cache left out: reading status
        may refresh it)."""
        state = self.root / ".patchflow"
        out = {}
        for folder in (self.root, self.root / "patches", state):
            names = sorted(os.listdir(folder)) if folder.is_dir() else []
            out[str(folder)] = [n for n in names if n != "verify-cache.json"]
        return out

    def fingerprint(self) -> str:
        """What a test may change: VERSION, .env, history, the names in the checkout's top level,
        patches/ and .patchflow/ (runs, logs, journal, lock), and the version the API reports."""
        digest = hashlib.sha256()
        state = self.root / ".patchflow"
        for path in (self.root / "VERSION", self.root / ".env", state / "history.jsonl"):
            digest.update(path.read_bytes() if path.is_file() else b"-")
        digest.update(json.dumps(self.listing(), sort_keys=True).encode())
        digest.update(str(self.health_version()).encode())
        return digest.hexdigest()


def cut_session_of(server: SshServer, pid: int) -> list[int]:
    """SIGKILL the sshd processes serving the SSH session that ``pid`` runs in (its ancestors below
    ``server``'s listening sshd), as a dropped connection ends them: the client sees its connection
    break, the command there is left to itself. Returns the pids killed."""
    listener = server._proc.pid if server._proc is not None else None
    killed = []
    current = pid
    while current > 1 and current != listener:
        try:
            parent = int(Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()[1])
            name = Path(f"/proc/{current}/comm").read_text().strip()
        except (OSError, IndexError, ValueError):
            break
        if name.startswith("sshd"):
            os.kill(current, signal.SIGKILL)
            killed.append(current)
        current = parent
    assert killed and current == listener, f"pid {pid} is not served by the sshd on port {server.port}"
    return killed


def group_states(group: int) -> dict[int, str]:
    """pid -> state letter (``R``, ``S``, ``T`` stopped...) of every process of process group ``group``."""
    states = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group:
            states[int(entry.name)] = fields[0]
    return states


@dataclass
class HostFleet:
    """Servers plus the operator checkout that deploys to them (see the module docstring)."""

    folder: Path
    template: InstallTemplate
    hosts: list[Host] = field(default_factory=list)
    operator: Path = Path()
    ssh_config: Path = Path()
    known_hosts: Path = Path()

    @classmethod
    def start(cls, folder: Path, template: InstallTemplate, roles: dict[str, str]) -> HostFleet:
        """Start one sshd and one install per ``roles`` entry (name -> role); write the operator
        checkout (inventory, ssh config, known_hosts, patches/v2.3.0)."""
        fleet = cls(folder, template)
        try:
            for name, role in roles.items():
                server = SshServer.start(folder / "sshd")
                fleet.hosts.append(Host(name, role, server, template.new_install(folder / name)))
            fleet._write_operator()
            for host in fleet.hosts:
                host.remember()
        except BaseException:
            fleet.stop()
            raise
        return fleet

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    def _write_operator(self) -> None:
        self.operator = self.folder / "operator"
        self.operator.mkdir(parents=True, exist_ok=True)
        (self.operator / "VERSION").write_text(f"{RELEASE}\n")
        self.ssh_config = self.operator / "ssh_config"
        self.known_hosts = self.operator / "known_hosts"
        self.ssh_config.write_text(
            "".join(
                f"Host {h.name}\n  HostName {h.server.host}\n  Port {h.server.port}\n  User {h.server.user}\n"
                f"  IdentityFile {h.server.client_key}\n  IdentitiesOnly yes\n\n"
                for h in self.hosts
            )
        )
        self.known_hosts.write_text("".join(h.server.known_hosts.read_text() for h in self.hosts))
        lines = [
            "[tool.patchflow]",
            f'ssh_config = "{self.ssh_config}"',
            f'ssh_known_hosts = "{self.known_hosts}"',
            "ssh_connect_timeout = 5",
            "ssh_reconnect_timeout = 3",
            "",
        ]
        for h in self.hosts:
            lines += [
                f"[tool.patchflow.hosts.{h.name}]",
                f'host = "{h.name}"',
                f'path = "{h.root}"',
                f'role = "{h.role}"',
                f'python = "{sys.executable}"',
                "",
            ]
        (self.operator / "pyproject.toml").write_text("\n".join(lines))
        patch = self.template.release_patch(RELEASE)
        shutil.copytree(patch, self.operator / "patches" / f"v{RELEASE}")

    # -- running the tasks from the operator checkout -----------------------------------------

    def inv(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """``inv <task> --root <operator checkout> <args>`` (no terminal)."""
        return run_inv(args[0], "--root", str(self.operator), *args[1:], env=env, timeout=timeout)

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """The same as :meth:`inv`, started in the background (output piped)."""
        return subprocess.Popen(
            [*INV, args[0], "--root", str(self.operator), *args[1:]],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )

    # -- keeping tests independent -------------------------------------------------------------

    def reset(self) -> list[str]:
        """Recreate every host whose state differs from its pristine one (and restart any sshd a
        test dropped); returns the names recreated."""
        recreated = []
        for host in self.hosts:
            host.server.thaw()
            host.server.restart()
            if host.fingerprint() == host.pristine:
                continue
            self._wait_idle(host)
            if self._tidy(host) and host.fingerprint() == host.pristine:
                continue
            self._remove_install(host)
            host.install = self.template.new_install(host.root)
            host.remember()
            recreated.append(host.name)
        return recreated

    def _tidy(self, host: Host) -> bool:
        """The cheap reset of a host that was only written to (uploads, run records, logs, .env) but
        never applied anything: remove what is new, put .env back. False when it needs recreating."""
        history = host.root / ".patchflow" / "history.jsonl"
        unchanged = (
            host.version() == BASE
            and (history.read_bytes() if history.is_file() else b"") == host.pristine_history
            and not (host.root / ".patchflow" / "journal.json").exists()
            and host.health_version() == BASE
        )
        if not unchanged:
            return False
        for folder, names in host.listing().items():
            for name in set(names) - set(host.pristine_files.get(folder, [])):
                path = Path(folder) / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        (host.root / ".env").write_text(host.pristine_env)
        return True

    def _wait_idle(self, host: Host) -> None:
        """Wait (bounded) until no deploy run is running on the host."""
        deploys = host.root / ".patchflow" / "deploys"

        def idle() -> bool:
            for record in deploys.glob("*.json") if deploys.is_dir() else []:
                run_id = json.loads(record.read_text())["id"]
                if not (deploys / f"{run_id}.exit").exists() and (deploys / f"{run_id}.pid").exists():
                    pid = int((deploys / f"{run_id}.pid").read_text())
                    if Path(f"/proc/{pid}").exists():
                        return False
            return True

        wait_until(idle, 120, f"the runs on {host.name} to end")
        wait_trash_deleted(host.root)  # the detached clean-up of a committed apply

    def _remove_install(self, host: Host) -> None:
        host.install.down()
        cluster = host.install.cluster
        rows = cluster.psql(
            "postgres", f"SELECT datname FROM pg_database WHERE datname LIKE '{host.install.dbname}%';\n"
        )
        for name in rows.split():
            cluster.drop_database(name)
        shutil.rmtree(host.root)

    def stop(self) -> None:
        """Stop every install's services, drop their databases, stop every sshd."""
        for host in self.hosts:
            try:
                if host.root.exists():
                    self._wait_idle(host)
                    self._remove_install(host)
            finally:
                host.server.stop()
