"""Start real services (PostgreSQL, sshd) for tests and probe the Docker Engine.

Plain helpers with no pytest dependency, so they can also be used from scripts or a REPL.
See DESIGN.md, "Testing against real things". System packages come from
``scripts/ensure-system.sh --for test``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = [
    "LOCAL_BASE_IMAGE",
    "PostgresCluster",
    "SshServer",
    "children_by_parent",
    "docker_available",
    "find_pg_bindir",
    "free_port",
    "refusing_port",
    "shared_tempdir",
    "traversable_by_others",
]

#: Image built by ``scripts/ensure-system.sh --for test`` (no registry is reachable).
LOCAL_BASE_IMAGE = "patchflow-local/busybox:latest"

PG_ROOT = Path("/usr/lib/postgresql")
PG_OS_USER = "postgres"
SSHD = Path("/usr/sbin/sshd")
_SOCKET_PATH_MAX = 100  # sockaddr_un.sun_path is 108 bytes; keep room for ".s.PGSQL.NNNNN"


def free_port() -> int:
    """A TCP port on 127.0.0.1 no other test of this run is given (``sample_workspace.free_port``)."""
    scripts = str(Path(__file__).resolve().parents[2] / "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    from sample_workspace import free_port as reserve

    return reserve()


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A 127.0.0.1 port that is bound (no ``SO_REUSEADDR``) but not listening while the block runs:
    every connection to it is refused, and no other process can start listening there meanwhile,
    unlike a port that was merely free a moment ago (:func:`free_port`)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


def traversable_by_others(path: Path) -> bool:
    """True when every folder from ``/`` down to ``path`` lets other users in (``o+x``), so a
    process running as another OS user (``postgres``, an unprivileged uid) can reach ``path``."""
    path = Path(path).resolve()
    try:
        return all(folder.stat().st_mode & stat.S_IXOTH for folder in (path, *path.parents))
    except OSError:
        return False


#: Where :func:`shared_tempdir` looks, after ``tempfile.gettempdir()`` ($TMPDIR may be private).
_SHARED_TMP_CANDIDATES = ("/tmp", "/var/tmp", "/dev/shm")


def shared_tempdir(prefix: str) -> Path:
    """A new folder (mode 0755, removed by the caller) that other OS users can reach: under
    ``tempfile.gettempdir()`` when every folder above it is ``o+x``, else under the first such of
    ``/tmp``, ``/var/tmp``, ``/dev/shm``. Never under the checkout or pytest's ``tmp_path`` (both
    may sit below a 0700 folder, e.g. a clone made in ``mktemp -d`` or under ``/root``).

    Raises:
        RuntimeError: no writable folder that other users can reach exists.
    """
    for candidate in (tempfile.gettempdir(), *_SHARED_TMP_CANDIDATES):
        base = Path(candidate)
        if base.is_dir() and os.access(base, os.W_OK | os.X_OK) and traversable_by_others(base):
            folder = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
            folder.chmod(0o755)
            return folder
    raise RuntimeError(
        "no writable temporary folder that other users can enter "
        f"(tried {tempfile.gettempdir()}, {', '.join(_SHARED_TMP_CANDIDATES)}; each needs o+x on every parent)"
    )


def _wait_for_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
        time.sleep(0.05)
    return False


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", path.parent.name))


def find_pg_bindir(root: Path = PG_ROOT) -> Path:
    """The highest-version ``/usr/lib/postgresql/<ver>/bin`` that holds ``pg_ctl``."""
    candidates = [p.parent for p in root.glob("*/bin/pg_ctl") if os.access(p, os.X_OK)]
    if not candidates:
        raise RuntimeError(
            f"no PostgreSQL server binaries found ({root}/<version>/bin/pg_ctl); "
            "install the Debian package 'postgresql' "
            "(or run scripts/ensure-system.sh --for test)"
        )
    return max(candidates, key=lambda b: _version_key(b / "pg_ctl"))


def _run(
    argv: list[str], *, cwd: Path | None = None, input: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run argv; on failure raise RuntimeError carrying the command's output."""
    try:
        proc = subprocess.run(
            argv,
            cwd=cwd,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"{' '.join(argv)}: {exc}") from exc
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited with {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@dataclass
class PostgresCluster:
    """A throwaway PostgreSQL cluster (``initdb`` + ``pg_ctl``) with trust authentication.

    Listens on ``127.0.0.1:port`` and on a unix socket in ``socket_dir``. As root the
    server runs as the ``postgres`` OS user (PostgreSQL refuses to run as root).
    """

    bindir: Path
    datadir: Path
    socket_dir: Path
    port: int
    root_dir: Path
    logfile: Path
    host: str = "127.0.0.1"
    superuser: str = "postgres"
    run_as: str | None = None
    _extra_dirs: list[Path] = field(default_factory=list, repr=False)
    _running: bool = field(default=False, repr=False)

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def start(cls, base_dir: Path, *, bindir: Path | None = None, port: int | None = None) -> PostgresCluster:
        """initdb a new cluster in a fresh folder under ``base_dir`` and start it.

        As root, every parent folder of ``base_dir`` must be traversable by the
        ``postgres`` OS user (e.g. a :func:`shared_tempdir`; pytest's ``tmp_path`` is 0700 and
        does not qualify).
        """
        bindir = bindir or find_pg_bindir()
        run_as = PG_OS_USER if os.geteuid() == 0 else None
        base_dir = Path(base_dir).resolve()
        base_dir.mkdir(parents=True, exist_ok=True)
        root_dir = Path(tempfile.mkdtemp(prefix="pg-", dir=base_dir))
        root_dir.chmod(0o755)
        extra: list[Path] = []
        socket_dir = root_dir / "sock"
        if len(str(socket_dir)) + len("/.s.PGSQL.65535") > _SOCKET_PATH_MAX:
            socket_dir = shared_tempdir("pgsock-")
            extra.append(socket_dir)
        socket_dir.mkdir(mode=0o755, exist_ok=True)
        socket_dir.chmod(0o755)
        if run_as is not None:
            try:
                pw = pwd.getpwnam(run_as)
            except KeyError:
                raise RuntimeError(
                    f"running as root but there is no '{run_as}' OS user to run PostgreSQL "
                    "(install the Debian package 'postgresql')"
                ) from None
            for d in (root_dir, socket_dir):
                os.chown(d, pw.pw_uid, pw.pw_gid)
            check = subprocess.run(
                ["runuser", "-u", run_as, "--", "test", "-w", str(root_dir)],
                capture_output=True,
                check=False,
            )
            if check.returncode != 0:
                shutil.rmtree(root_dir, ignore_errors=True)
                raise RuntimeError(
                    f"the '{run_as}' OS user cannot reach {root_dir}: make every parent of "
                    f"{base_dir} traversable (chmod o+x), e.g. use support.services.shared_tempdir()"
                )
        cluster = cls(
            bindir=bindir,
            datadir=root_dir / "data",
            socket_dir=socket_dir,
            port=port or free_port(),
            root_dir=root_dir,
            logfile=root_dir / "postgres.log",
            run_as=run_as,
            _extra_dirs=extra,
        )
        try:
            cluster._initdb()
            cluster._start_server(fixed_port=port is not None)
        except BaseException:
            cluster._remove_files()
            raise
        return cluster

    def _as_owner(self, argv: list[str]) -> list[str]:
        if self.run_as is None:
            return argv
        return ["runuser", "-u", self.run_as, "--", *argv]

    def _initdb(self) -> None:
        base = [
            str(self.bin("initdb")),
            "-D",
            str(self.datadir),
            "-A",
            "trust",
            "-U",
            self.superuser,
            "--encoding=UTF8",
        ]
        try:
            _run(self._as_owner([*base, "--locale=C.UTF-8"]), cwd=self.root_dir)
        except RuntimeError:
            # C.UTF-8 is not available everywhere (e.g. minimal non-Debian images).
            shutil.rmtree(self.datadir, ignore_errors=True)
            _run(self._as_owner([*base, "--no-locale"]), cwd=self.root_dir)
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": _quote_literal(str(self.socket_dir)),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
        }
        with (self.datadir / "postgresql.conf").open("a", encoding="utf-8") as fh:
            fh.write("\n# patchflow test cluster\n")
            fh.writelines(f"{k} = {v}\n" for k, v in settings.items())

    def _start_server(self, *, fixed_port: bool) -> None:
        attempts = 1 if fixed_port else 3
        for attempt in range(attempts):
            argv = [
                str(self.bin("pg_ctl")),
                "-D",
                str(self.datadir),
                "-l",
                str(self.logfile),
                "-o",
                f"-p {self.port}",
                "-w",
                "-t",
                "60",
                "start",
            ]
            try:
                _run(self._as_owner(argv), cwd=self.root_dir)
            except RuntimeError as exc:
                log = self._log_tail()
                if attempt + 1 < attempts and "already in use" in log:
                    self.port = free_port()  # lost a race for the port; try another
                    continue
                raise RuntimeError(f"{exc}\nserver log ({self.logfile}):\n{log}") from None
            self._running = True
            return

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- use ------------------------------------------------------------------------------
    def bin(self, name: str) -> Path:
        """Path of a PostgreSQL program (``psql``, ``pg_dump``, ...) of this version."""
        return self.bindir / name

    def url(self, db: str, user: str = "postgres") -> str:
        """``postgresql://user@127.0.0.1:PORT/db`` (TCP; trust authentication)."""
        return f"postgresql://{user}@{self.host}:{self.port}/{db}"

    def socket_url(self, db: str, user: str = "postgres") -> str:
        """The unix-socket URL: ``postgresql://user@/db?host=<socket_dir>&port=PORT``."""
        return f"postgresql://{user}@/{db}?host={self.socket_dir}&port={self.port}"

    def env(self, user: str = "postgres") -> dict[str, str]:
        """libpq variables (PGHOST/PGPORT/PGUSER) pointing at this cluster over TCP."""
        return {"PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": user}

    def psql(self, db: str, sql: str) -> str:
        """Run ``sql`` with psql (``ON_ERROR_STOP=1``, unaligned, tuples only) over the
        unix socket; return stdout. Statements are sent one by one (autocommit)."""
        argv = [
            str(self.bin("psql")),
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self.socket_dir),
            "-p",
            str(self.port),
            "-U",
            self.superuser,
            "-d",
            db,
            "-f",
            "-",
        ]
        return _run(argv, input=sql, cwd=self.root_dir).stdout

    def create_database(self, name: str, owner: str | None = None) -> None:
        sql = f"CREATE DATABASE {_quote_ident(name)}"
        if owner is not None:
            sql += f" OWNER {_quote_ident(owner)}"
        self.psql("postgres", sql + ";\n")

    def drop_database(self, name: str) -> None:
        """Terminate the database's connections, then ``DROP DATABASE IF EXISTS``."""
        self.psql(
            "postgres",
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            f"WHERE datname = {_quote_literal(name)} AND pid <> pg_backend_pid();\n"
            f"DROP DATABASE IF EXISTS {_quote_ident(name)};\n",
        )

    def stop_server(self) -> None:
        """Stop the server now (``pg_ctl -m fast stop``: sessions are ended, as in a crash or a
        fail-over), keeping its files and port for :meth:`start_server`."""
        argv = [str(self.bin("pg_ctl")), "-D", str(self.datadir), "-m", "fast", "-w", "stop"]
        _run(self._as_owner(argv), cwd=self.root_dir)

    def start_server(self) -> None:
        """Start the server again on its port after :meth:`stop_server` (waits until it accepts)."""
        self._start_server(fixed_port=True)

    def is_running(self) -> bool:
        """True when the server answers on its socket (``pg_isready``)."""
        argv = [str(self.bin("pg_isready")), "-q", "-h", str(self.socket_dir), "-p", str(self.port)]
        return subprocess.run(argv, capture_output=True, check=False).returncode == 0

    def add_password_role(self, name: str, password: str) -> None:
        """A login role ``name`` that must give ``password`` over TCP (scram-sha-256): a
        ``pg_hba.conf`` line for that role only, before the trust lines, then a reload. The other
        roles keep trust authentication."""
        hba = self.datadir / "pg_hba.conf"
        line = f"host all {_quote_ident(name)} 127.0.0.1/32 scram-sha-256\n"
        text = hba.read_text(encoding="utf-8")
        if line not in text:
            hba.write_text(line + text, encoding="utf-8")
        self.psql(
            "postgres",
            f"DROP ROLE IF EXISTS {_quote_ident(name)};\n"
            f"CREATE ROLE {_quote_ident(name)} LOGIN SUPERUSER PASSWORD {_quote_literal(password)};\n"
            "SELECT pg_reload_conf();\n",
        )
        # the reload is asynchronous: poll until a wrong password is refused
        argv = [str(self.bin("psql")), "-X", "-h", self.host, "-p", str(self.port), "-U", name, "-d", "postgres"]
        env = {**os.environ, "PGPASSWORD": password + "-wrong", "PGCONNECT_TIMEOUT": "5"}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            done = subprocess.run(
                [*argv, "-c", "SELECT 1"],
                capture_output=True,
                text=True,
                env=env,
                check=False,
                stdin=subprocess.DEVNULL,
            )
            if done.returncode != 0 and "password authentication failed" in done.stderr:
                return
            time.sleep(0.05)
        raise RuntimeError(f"pg_hba.conf reload did not take effect for role {name}")

    def stop(self) -> None:
        """``pg_ctl -m fast stop`` and remove the cluster's files. Safe to call twice."""
        try:
            if self._running and (self.datadir / "postmaster.pid").exists():
                argv = [str(self.bin("pg_ctl")), "-D", str(self.datadir), "-m", "fast", "-w"]
                _run(self._as_owner([*argv, "stop"]), cwd=self.root_dir)
        finally:
            self._running = False
            self._remove_files()

    def _remove_files(self) -> None:
        for d in (self.root_dir, *self._extra_dirs):
            shutil.rmtree(d, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass
class SshServer:
    """A private ``sshd`` on 127.0.0.1 accepting one generated client key for the
    current OS user (root in CI)."""

    host: str
    port: int
    user: str
    client_key: Path
    host_key: Path
    known_hosts: Path
    root_dir: Path
    config: Path
    logfile: Path
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @classmethod
    def start(cls, base_dir: Path, *, port: int | None = None) -> SshServer:
        """Generate keys and a config in a fresh folder under ``base_dir``; start sshd."""
        if not SSHD.exists():
            raise RuntimeError(
                f"{SSHD} not found; install the Debian package 'openssh-server' "
                "(or run scripts/ensure-system.sh --for test)"
            )
        if shutil.which("ssh-keygen") is None:
            raise RuntimeError("ssh-keygen not found; install the Debian package 'openssh-client'")
        if os.geteuid() == 0:
            # sshd's privilege-separation folder; Debian creates it only from its service unit.
            Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
        base_dir = Path(base_dir).resolve()
        base_dir.mkdir(parents=True, exist_ok=True)
        root_dir = Path(tempfile.mkdtemp(prefix="sshd-", dir=base_dir))
        host_key = root_dir / "ssh_host_ed25519_key"
        client_key = root_dir / "client_ed25519"
        try:
            for key, comment in ((host_key, "patchflow-test-host"), (client_key, "patchflow-test")):
                _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)])
            authorized = root_dir / "authorized_keys"
            shutil.copyfile(client_key.with_suffix(".pub"), authorized)
            authorized.chmod(0o600)
            server = cls(
                host="127.0.0.1",
                port=port or free_port(),
                user=pwd.getpwuid(os.geteuid()).pw_name,
                client_key=client_key,
                host_key=host_key,
                known_hosts=root_dir / "known_hosts",
                root_dir=root_dir,
                config=root_dir / "sshd_config",
                logfile=root_dir / "sshd.log",
            )
            attempts = 1 if port else 3
            for attempt in range(attempts):
                try:
                    server._launch()
                    break
                except RuntimeError:
                    if attempt + 1 >= attempts:
                        raise
                    server.port = free_port()
        except BaseException:
            shutil.rmtree(root_dir, ignore_errors=True)
            raise
        return server

    def _write_files(self) -> None:
        authorized = self.root_dir / "authorized_keys"
        self.config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    f"ListenAddress {self.host}",
                    f"HostKey {self.host_key}",
                    f"AuthorizedKeysFile {authorized}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "StrictModes no",
                    f"PidFile {self.root_dir / 'sshd.pid'}",
                    "UsePAM no",
                    "PrintMotd no",
                    "MaxStartups 100:30:200",
                    "MaxSessions 100",
                    "Subsystem sftp internal-sftp",
                    # bash sources ~/.bashrc for a command run by sshd only as a top-level shell
                    # (SHLVL unset): with SHLVL=1 it does not, like a server whose .bashrc returns
                    # early for non-interactive shells. This machine's root .bashrc runs
                    # `pyenv init`, whose rehash lock, left by a session killed in a test, made
                    # every later session wait 60 s.
                    "SetEnv SHLVL=1",
                    "",
                ]
            ),
            encoding="utf-8",
        )
        pub = self.host_key.with_suffix(".pub").read_text(encoding="utf-8").split()
        self.known_hosts.write_text(f"[{self.host}]:{self.port} {pub[0]} {pub[1]}\n", encoding="utf-8")

    def _launch(self) -> None:
        self._write_files()
        # -D: stay in the foreground so we own the process; -E: log to a file.
        self._proc = subprocess.Popen(
            [str(SSHD), "-D", "-f", str(self.config), "-E", str(self.logfile)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            if _wait_for_port(self.host, self.port, 0.2):
                return
        self._kill()
        log = self.logfile.read_text(errors="replace") if self.logfile.exists() else ""
        raise RuntimeError(f"sshd on {self.host}:{self.port} did not start; log:\n{log}")

    def ssh_argv(self, *command: str) -> list[str]:
        """An ``ssh`` command line that logs into this server (host key pinned via
        ``known_hosts``; never touches ~/.ssh)."""
        return [
            "ssh",
            "-i",
            str(self.client_key),
            "-p",
            str(self.port),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-F",
            "/dev/null",
            f"{self.user}@{self.host}",
            *command,
        ]

    @property
    def pid(self) -> int:
        """The sshd listener's pid (its sessions are its children)."""
        assert self._proc is not None, "sshd is not running"
        return self._proc.pid

    def drop(self) -> None:
        """Kill this sshd and every process serving its connections (SIGKILL), as a crashed or
        unplugged server would: clients see their connections break. Processes that left those
        sessions (``setsid``, reparented) keep running. :meth:`restart` starts sshd again."""
        if self._proc is None:
            return
        doomed = _descendants(self._proc.pid)
        self._proc.kill()
        self._proc.wait(timeout=10)
        self._proc = None
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def freeze(self) -> None:
        """Stop (SIGSTOP) this sshd and every process serving its connections: the host stops
        answering while its TCP connections stay open, like a host behind a firewall that drops
        packets (field failure C20). :meth:`thaw` lets them go on."""
        if self._proc is not None:
            for pid in (self._proc.pid, *_descendants(self._proc.pid)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT what :meth:`freeze` stopped."""
        if self._proc is not None:
            for pid in (self._proc.pid, *_descendants(self._proc.pid)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def restart(self) -> None:
        """Start sshd again on the same port with the same host key (after :meth:`drop`)."""
        if self._proc is None:
            self._launch()

    def connect_kwargs(self) -> dict[str, object]:
        """``connect_kwargs`` for ``fabric.Connection`` (this key only, no agent)."""
        return {"key_filename": str(self.client_key), "look_for_keys": False, "allow_agent": False}

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        self._proc = None

    def stop(self) -> None:
        """Stop sshd and remove keys/config. Safe to call twice."""
        try:
            self._kill()
        finally:
            shutil.rmtree(self.root_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def children_by_parent() -> dict[int, list[int]]:
    """Every process's direct children, keyed by parent pid (from /proc, right now)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry.name))
    return parents


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first found first), from /proc."""
    parents = children_by_parent()
    found: list[int] = []
    queue = [pid]
    while queue:
        children = parents.get(queue.pop(0), [])
        found += children
        queue += children
    return found


def docker_available() -> str | None:
    """None when ``docker info`` and ``docker compose version`` both work, else why not."""
    if shutil.which("docker") is None:
        return (
            "docker CLI not found (Debian package 'docker.io'; run scripts/ensure-system.sh --for test --venv <venv>)"
        )
    checks = (
        (["docker", "info"], "Docker Engine not reachable ('docker info' failed)"),
        (
            ["docker", "compose", "version"],
            "Compose v2 plugin missing ('docker compose version' failed)",
        ),
    )
    for argv, reason in checks:
        try:
            proc = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{reason}: {exc}"
        if proc.returncode != 0:
            lines = [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines()]
            errors = [ln for ln in lines if re.search(r"error|cannot|denied|unknown", ln, re.I)]
            detail = " | ".join(errors or [ln for ln in lines if ln][-1:])[:300] or "no output"
            hint = "; run scripts/ensure-system.sh --for test --venv <venv>"
            return f"{reason}: {detail}{hint}"
    return None
