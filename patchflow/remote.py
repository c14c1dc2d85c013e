"""Remote deploy over SSH (Fabric): hosts, connections, upload, detached runs, attach, rolling order.

Nothing in the apply logic is written twice: on every host the *same* tasks run in the server's
PrimeFlow checkout (``python -m patchflow apply-patch --root <path> --version X --yes``, and
``rollback-patch``), started by a :class:`fabric.Connection`. This module only moves the patch,
starts those tasks so that they survive the SSH connection, follows them and reads their outcome.

Lifecycle of :func:`deploy` (one host or a fleet):

1. **Local patch**: ``patches/vX`` of this checkout verifies (checksums, signature, manifest). A
   delta patch is refused, before anything is sent, when a host to update is not on its base.
2. **Connect every host first** (:class:`HostSession`; key or agent authentication only, never a
   password; connect, handshake and authentication bounded by ``ssh_connect_timeout``). Host keys
   are checked as OpenSSH checks them: a key missing from ``known_hosts`` is refused unless
   ``accept_new_key`` (it is then appended), a changed key is always refused. Any refusal stops
   the deploy before anything was sent to any host.
3. **Facts** (``host-facts``, :mod:`patchflow.serverside`) from every host, in the non-interactive
   environment the apply will have (field failure C22): patchflow there (else: run ``setup-host``),
   the tools the apply needs, the lock (a live holder refuses the deploy, naming it: C19 (d)),
   earlier uploads. With a host of role ``production`` among the targets, a host of role
   ``staging`` must have applied the version successfully (its history), unless ``skip_staging``.
4. **Upload** (``parallel`` hosts at a time) over SFTP into ``patches/.upload-vX-<id>/``: files
   already there with the same SHA-256 are skipped, a partial file whose bytes match the start of
   ours is continued, then ``receive-patch`` verifies the folder on the host and renames it to
   ``patches/vX``. A partial upload is never renamed, so never applied (C08 (f)).
5. **Apply, rolling**: the canary first (its health probed again after its apply), then one host
   at a time, stopping at the first failure; ``rollback_on_failure`` rolls back, newest first, the
   hosts this run updated.

**Detached runs** (:func:`start_run`): the task starts with ``setsid nohup sh -c '...'`` with
output to ``.patchflow/logs/<run id>.log``, stdin from ``/dev/null``; the wrapper shell writes its
pid to ``.patchflow/deploys/<id>.pid`` and, when the task ends, its exit code to ``<id>.exit``
(``<id>.json`` records what was started, by whom, when). The process has no controlling terminal and
its own session, so a dropped connection neither signals nor blocks it (C20). :func:`follow_run`
streams the log over SFTP (each line prefixed with the host name) and waits for the exit file; a
broken connection is retried for ``ssh_reconnect_timeout`` seconds, then the host is reported
*unknown*, never done. :func:`attach` (``deploy --attach``, or ``deploy`` again by the same operator
while the run lasts) follows the newest run again and reads its true outcome from the exit code,
the history, the journal and the installed version on the server.

Every remote command has a deadline (``ssh_command_timeout``); SFTP channels too; a keepalive
detects a vanished peer. Commands are built with :func:`shlex.join` / :func:`shlex.quote`.
Fabric and Paramiko are imported only here.
"""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import getpass
import hashlib
import json
import logging
import math
import os
import secrets
import shlex
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import paramiko
from fabric import Config as FabricConfig
from fabric import Connection
from invoke.exceptions import CommandTimedOut, ThreadException

from patchflow import __version__
from patchflow.config import Settings
from patchflow.errors import LockError, PatchflowError, RemoteError, VerifyError
from patchflow.paths import SHA256SUMS, ProjectPaths
from patchflow.serverside import upload_dir_name
from patchflow.version import PatchVersion

Log = Callable[[str], None]
# Paramiko logs a dead peer's traceback from its transport thread; our errors say it in one line.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
T = TypeVar("T")
R = TypeVar("R")

POLL_SECONDS = 0.25
ALIVE_CHECK_SECONDS = 2.0
KEEPALIVE_SECONDS = 15
CHUNK = 256 * 1024
STAGING_ROLE = "staging"
PRODUCTION_ROLE = "production"
#: exit codes of the remote tasks (see the README) and what deploy calls them
EXIT_MEANING = {
    0: "ok",
    1: "refused",
    2: "failed",
    3: "locked",
    4: "rollback incomplete",
    5: "not confirmed",
    130: "interrupted",
}
# shell exit codes of the facts script
NO_CHECKOUT = 90
NO_PYTHON = 91
_NETWORK_ERRORS = (paramiko.SSHException, EOFError, OSError, ThreadException)


def _quiet(line: str) -> None:
    return None


def operator() -> str:
    """Who deploys: ``user@machine`` of this process (recorded with every run started)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def fingerprint(key: Any) -> str:
    """The OpenSSH ``SHA256:`` fingerprint of a Paramiko key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class ConnectionLost(RemoteError):
    """The SSH connection broke or a remote step got no answer in time (the host may come back)."""


# -- hosts -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A host to act on.

    Attributes:
        name: the inventory name, or the host string for a host given on the command line.
        host: an ``~/.ssh/config`` alias or ``user@host[:port]``.
        path: the PrimeFlow checkout on the host (absolute).
        role: ``staging``, ``production``... (empty for a host outside the inventory).
        python: the interpreter running patchflow there (empty: ``<path>/.patchflow/venv/bin/python``
            when present, else ``python3``).
    """

    name: str
    host: str
    path: str
    role: str = ""
    python: str = ""

    def python_candidates(self) -> list[str]:
        """The interpreters tried in order to run patchflow on the host."""
        if self.python:
            return [self.python]
        return [f"{self.path.rstrip('/')}/.patchflow/venv/bin/python", "python3"]


def resolve_targets(
    settings: Settings, *, host: str | None = None, hosts: str | None = None, role: str | None = None
) -> list[Target]:
    """The hosts named by ``--host``, ``--hosts a,b`` or ``--role R`` (exactly one of them).

    A name found in the inventory (``hosts`` setting) takes its entry; any other name is used as an
    ssh alias or ``user@host[:port]`` with ``remote_path`` (default: this checkout's path) and
    ``remote_python``.

    Raises:
        RemoteError: none or several of the three given, an empty list, or no host has the role.
    """
    given = [flag for flag, value in (("--host", host), ("--hosts", hosts), ("--role", role)) if value]
    if len(given) != 1:
        raise RemoteError(
            "Name the hosts with exactly one of --host H, --hosts a,b or --role R"
            + (f" (got {' and '.join(given)})." if given else "."),
            "Hosts are ssh aliases, user@host[:port], or names of [tool.patchflow.hosts.<name>] in pyproject.toml.",
            exit_code=1,
        )
    inventory = {entry.name: entry for entry in settings.hosts}
    default_path = settings.remote_path or str(settings.root)
    if role:
        chosen = [entry for entry in settings.hosts if entry.role == role]
        if not chosen:
            roles = sorted({entry.role for entry in settings.hosts if entry.role})
            raise RemoteError(
                f"No host of the inventory has the role {role!r}.",
                f"Roles in [tool.patchflow.hosts.*]: {', '.join(roles) or 'none'}.",
                exit_code=1,
            )
        names = [entry.name for entry in chosen]
    else:
        names = [part.strip() for part in (host or hosts or "").split(",") if part.strip()]
        if not names:
            raise RemoteError("No host named.", "Pass --host H or --hosts a,b.", exit_code=1)
    targets: list[Target] = []
    for name in dict.fromkeys(names):
        entry = inventory.get(name)
        if entry is not None:
            targets.append(
                Target(
                    entry.name,
                    entry.host,
                    entry.path or default_path,
                    entry.role,
                    entry.python or settings.remote_python,
                )
            )
        else:
            if name.startswith("-") or any(ch.isspace() for ch in name):
                raise RemoteError(
                    f"{name!r} is not a host name.", "Pass an ssh alias or user@host[:port].", exit_code=1
                )
            targets.append(Target(name, name, default_path, "", settings.remote_python))
    return targets


# -- one connection ----------------------------------------------------------------------------


class _KnownHostsPolicy(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
    """A host key missing from known_hosts: refused, or with ``accept_new`` appended to
    ``known_file`` (OpenSSH's ``StrictHostKeyChecking=accept-new``; a *changed* key never gets here:
    Paramiko raises BadHostKeyException)."""

    def __init__(self, name: str, known_file: Path, accept_new: bool, log: Log) -> None:
        self.name = name
        self.known_file = known_file
        self.accept_new = accept_new
        self.log = log

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        seen = f"{key.get_name()} {fingerprint(key)}"
        if not self.accept_new:
            raise RemoteError(
                f"{self.name}: the host key of {hostname} ({seen}) is not in {self.known_file}; "
                "refused before anything was sent to any host.",
                "Compare the fingerprint with the server's (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub there), "
                f"then accept it once with --accept-new-host-key (it is added to {self.known_file}), or add it "
                "with ssh-keyscan yourself.",
            )
        self.known_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.known_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="ascii") as handle:
            handle.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.log(f"accepted the new host key of {hostname} ({seen}); added to {self.known_file}")


@dataclass(frozen=True)
class Completed:
    """A remote command's exit code and output (text)."""

    exited: int
    stdout: str
    stderr: str

    def last_error(self) -> str:
        """The most telling line of the output: patchflow's ``error:`` line, else the last line."""
        lines = [line.strip() for line in (self.stderr + "\n" + self.stdout).splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error:")]
        return (errors[-1] if errors else lines[-1] if lines else f"exit code {self.exited}")[:500]


class HostSession:
    """One host's SSH connection: a :class:`fabric.Connection` opened by :meth:`open` and closed by
    :meth:`close` (also as a context manager).

    Settings used: ``ssh_config`` (aliases, users, ports, identities, ProxyJump), ``ssh_known_hosts``
    (unless the ssh config names a ``UserKnownHostsFile``), ``ssh_connect_timeout``,
    ``ssh_command_timeout``. Authentication is by key or agent only (``IdentitiesOnly yes`` in the ssh
    config leaves the agent out); Paramiko is never given a password, so nothing can prompt.
    Network errors become :class:`ConnectionLost`; :meth:`reconnect` opens a new connection.
    """

    def __init__(self, target: Target, settings: Settings, *, accept_new_key: bool = False, log: Log = _quiet) -> None:
        self.target = target
        self.settings = settings
        self.accept_new_key = accept_new_key
        self.log = log
        self._conn: Any = None
        self._sftp: Any = None
        self._sent = 0
        self.address = target.host

    @property
    def name(self) -> str:
        return self.target.name

    def __enter__(self) -> HostSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _known_files(self, conn: Any) -> list[Path]:
        configured = self.settings.source("ssh_known_hosts") != "default"
        from_ssh_config = str(conn.ssh_config.get("userknownhostsfile", "")).split()
        names = [self.settings.ssh_known_hosts] if configured or not from_ssh_config else from_ssh_config
        return [Path(os.path.expanduser(name)) for name in names if name]

    def open(self) -> None:
        """Connect and authenticate (host key checked first).

        Raises:
            RemoteError: the host key is unknown (without ``accept_new_key``) or changed, the key or
                agent is refused, or the host cannot be reached within ``ssh_connect_timeout``.
        """
        if self._conn is not None:
            return
        settings = self.settings
        config = FabricConfig(runtime_ssh_path=os.path.expanduser(settings.ssh_config) if settings.ssh_config else None)
        timeout = settings.ssh_connect_timeout or 10.0
        kwargs: dict[str, Any] = {
            "banner_timeout": timeout,
            "auth_timeout": timeout,
            "channel_timeout": settings.ssh_command_timeout or None,
            "allow_agent": True,
            "look_for_keys": True,
        }
        conn = Connection(
            self.target.host, config=config, connect_timeout=max(1, math.ceil(timeout)), connect_kwargs=kwargs
        )
        if str(conn.ssh_config.get("identitiesonly", "")).lower() == "yes":
            conn.connect_kwargs["allow_agent"] = False
            conn.connect_kwargs["look_for_keys"] = False
        self.address = f"{conn.user}@{conn.host}:{conn.port}"
        known = self._known_files(conn)
        client = conn.client
        for path in (Path("/etc/ssh/ssh_known_hosts"), *known):
            if path.is_file():
                client.load_system_host_keys(str(path))
        client.set_missing_host_key_policy(_KnownHostsPolicy(self.name, known[0], self.accept_new_key, self.log))
        try:
            conn.open()
        except RemoteError:
            conn.close()
            raise
        except paramiko.BadHostKeyException as exc:
            conn.close()
            raise RemoteError(
                f"{self.name}: the host key of {self.address} has CHANGED: it offers {exc.key.get_name()} "
                f"{fingerprint(exc.key)}, but {known[0]} holds {exc.expected_key.get_name()} "
                f"{fingerprint(exc.expected_key)}. Someone may be intercepting the connection (or the server "
                "was reinstalled); refused before anything was sent to any host.",
                "If the new key is genuine, remove the old one (ssh-keygen -R '[host]:port' -f "
                f"{known[0]}) and accept the new one with --accept-new-host-key; a changed key is never accepted "
                "automatically.",
            ) from None
        except paramiko.AuthenticationException as exc:
            conn.close()
            raise RemoteError(
                f"{self.name}: {self.address} refused our keys ({_describe(exc)}).",
                "deploy authenticates with a key or the ssh agent only (never a password): add your public key "
                "to the deploy user's authorized_keys there, or set IdentityFile in the ssh config.",
            ) from None
        except (*_NETWORK_ERRORS, ValueError) as exc:
            transport = conn.client.get_transport()
            cause = (transport.get_exception() if transport is not None else None) or exc
            why = _describe(cause)
            if str(cause) == "No existing session":  # Paramiko's words for a handshake that never finished
                why = "it accepted the TCP connection but did not complete the SSH handshake"
            conn.close()
            raise ConnectionLost(
                f"{self.name}: cannot reach {self.address} within {timeout:.0f} s ({why}).",
                "Check the host name, port, network and that sshd runs there (ssh -v gives details).",
            ) from None
        if conn.transport is not None:
            conn.transport.set_keepalive(KEEPALIVE_SECONDS)
        self._conn = conn

    def close(self) -> None:
        """Close the connection (and its SFTP session); safe to call twice."""
        conn, self._conn, self._sftp = self._conn, None, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: S110 - closing a broken connection may fail in many ways
                pass

    def reconnect(self, within: float) -> bool:
        """Open a new connection, retrying until ``within`` seconds have passed; True when connected.

        Raises:
            RemoteError: the host key is now unknown or changed (never retried).
        """
        self.close()
        deadline = time.monotonic() + within
        delay = 0.5
        while True:
            try:
                self.open()
                return True
            except ConnectionLost:
                if time.monotonic() + delay > deadline:
                    return False
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _require(self) -> Any:
        if self._conn is None:
            self.open()
        return self._conn

    def _lost(self, what: str, exc: BaseException) -> ConnectionLost:
        self.close()
        return ConnectionLost(
            f"{self.name}: the connection to {self.address} broke during {what} ({_describe(exc)}).",
            "The host may be unreachable; nothing is assumed done there.",
        )

    def run(self, command: str, *, what: str, timeout: float | None = None) -> Completed:
        """Run the shell ``command`` (built with shlex quoting) on the host, no terminal, stdin closed.

        Args:
            command: the command line for the user's shell there.
            what: what the command does, for messages.
            timeout: seconds before it is abandoned (default ``ssh_command_timeout``).

        Raises:
            ConnectionLost: no answer within the timeout, or the connection broke.
        """
        conn = self._require()
        limit = self.settings.ssh_command_timeout if timeout is None else timeout
        try:
            result = conn.run(
                command,
                hide=True,
                warn=True,
                pty=False,
                in_stream=False,
                timeout=limit or None,
                encoding="utf-8",
            )
        except CommandTimedOut:
            self.close()
            raise ConnectionLost(
                f"{self.name}: {what} got no answer from {self.address} within {limit:.0f} s.",
                "The host or the command hangs; nothing is assumed done there.",
            ) from None
        except _NETWORK_ERRORS as exc:
            raise self._lost(what, exc) from None
        return Completed(int(result.exited), str(result.stdout), str(result.stderr))

    def sftp(self) -> Any:
        """The connection's SFTP client (each request bounded by ``ssh_command_timeout``)."""
        if self._sftp is None:
            conn = self._require()
            try:
                client = conn.sftp()
                client.get_channel().settimeout(self.settings.ssh_command_timeout or None)
            except _NETWORK_ERRORS as exc:
                raise self._lost("opening SFTP", exc) from None
            self._sftp = client
        return self._sftp

    @contextmanager
    def sftp_call(self, what: str) -> Iterator[Any]:
        """The SFTP client, for requests made inside the block: a missing file stays
        FileNotFoundError; a broken connection or timeout becomes :class:`ConnectionLost`; any other
        refusal of the server (permissions, disk full) a :class:`RemoteError` naming ``what``."""
        try:
            yield self.sftp()
        except FileNotFoundError:
            raise
        except _NETWORK_ERRORS as exc:
            transport = self._conn.transport if self._conn is not None else None
            alive = transport is not None and transport.is_active()
            if alive and isinstance(exc, OSError) and not isinstance(exc, TimeoutError):
                raise RemoteError(
                    f"{self.name}: {what} failed there: {exc}.",
                    "Check that the deploy user owns the checkout there and that its disk has room.",
                ) from None
            raise self._lost(what, exc) from None

    def read_from(self, path: str, offset: int, limit: int) -> bytes:
        """Up to ``limit`` bytes of the remote file ``path`` from ``offset`` (b"" at its end or when
        it does not exist yet)."""
        try:
            with self.sftp_call(f"reading {path}") as sftp, sftp.open(path, "rb") as handle:
                handle.seek(offset)
                return bytes(handle.read(limit))
        except FileNotFoundError:
            return b""

    def read_text(self, path: str) -> str | None:
        """The content of a small remote file, None when it does not exist."""
        try:
            with self.sftp_call(f"reading {path}") as sftp, sftp.open(path, "rb") as handle:
                return bytes(handle.read(65536)).decode("utf-8", "replace")
        except FileNotFoundError:
            return None

    def chunk_size(self, size: int) -> int:
        """``size``, or less so that an upload stops exactly at ``test_upload_cut`` bytes (test hook)."""
        cut = self.settings.test_upload_cut
        return min(size, cut - self._sent) if cut > self._sent else size

    def count_sent(self, size: int) -> None:
        """Test hook (``test_upload_cut``): drop the connection once that many bytes were sent."""
        self._sent += size
        cut = self.settings.test_upload_cut
        if cut and self._sent >= cut and self._conn is not None and self._conn.transport is not None:
            self._conn.transport.close()


@dataclass
class HostFacts:
    """What ``host-facts`` reported (see :func:`patchflow.serverside.host_facts`)."""

    data: dict[str, Any]

    @property
    def python(self) -> str:
        return str(self.data["python"])

    @property
    def root(self) -> str:
        return str(self.data["paths"]["root"])

    def path(self, key: str) -> str:
        """An absolute folder of the checkout there: ``patches``, ``state``, ``logs``, ``deploys``."""
        return str(self.data["paths"][key])

    @property
    def status(self) -> dict[str, Any]:
        return dict(self.data["status"])

    @property
    def installed(self) -> str | None:
        value = self.data["status"].get("installed_version")
        return str(value) if value else None

    @property
    def lock(self) -> dict[str, Any] | None:
        value = self.data["status"].get("lock")
        return dict(value) if isinstance(value, dict) else None

    @property
    def interrupted(self) -> dict[str, Any] | None:
        value = self.data["status"].get("interrupted")
        return dict(value) if isinstance(value, dict) else None

    @property
    def history(self) -> list[dict[str, Any]]:
        return [h for h in self.data["status"].get("history", []) if isinstance(h, dict)]

    @property
    def runs(self) -> list[dict[str, Any]]:
        return [r for r in self.data.get("runs", []) if isinstance(r, dict)]

    @property
    def health(self) -> dict[str, Any] | None:
        value = self.data.get("health")
        return dict(value) if isinstance(value, dict) else None

    @property
    def missing(self) -> list[str]:
        return [str(m) for m in self.data.get("missing", [])]

    def task(self, *args: str) -> str:
        """The shell command running ``python -m patchflow <args>`` in the checkout there."""
        return f"cd -- {shlex.quote(self.root)} && " + shlex.join([self.python, "-m", "patchflow", *args])


def fetch_facts(
    session: HostSession, *, version: PatchVersion | None = None, health: bool = False, history: int = 200
) -> HostFacts:
    """Run ``host-facts`` in the target's checkout with the first interpreter that exists.

    Raises:
        RemoteError: no checkout at the path, no Python, patchflow missing or too old there (the hint
            names ``setup-host``), or its output unreadable.
        ConnectionLost: the host did not answer.
    """
    target = session.target
    args = ["host-facts", "--root", target.path, "--history", str(history)]
    if version is not None:
        args += ["--version", str(version)]
    if health:
        args.append("--health")
    tried = " ".join(shlex.quote(p) for p in target.python_candidates())
    script = "\n".join(
        [
            f"cd -- {shlex.quote(target.path)} 2>/dev/null || exit {NO_CHECKOUT}",
            f"for py in {tried}; do",
            '  if command -v "$py" >/dev/null 2>&1; then exec "$py" -m patchflow ' + shlex.join(args) + "; fi",
            "done",
            f'echo "no interpreter found (tried {tried}) on PATH=$PATH" >&2',
            f"exit {NO_PYTHON}",
        ]
    )
    done = session.run(script, what="host-facts")
    setup = f"Run `inv setup-host --host {target.name}` to install or upgrade patchflow there."
    if done.exited == NO_CHECKOUT:
        raise RemoteError(
            f"{target.name}: no checkout at {target.path} on {session.address}.",
            "Set the host's path ([tool.patchflow.hosts.<name>] path, or remote_path), or run "
            f"`inv setup-host --host {target.name}`.",
        )
    if done.exited == NO_PYTHON:
        raise RemoteError(f"{target.name}: {done.last_error()}.", setup)
    if "No module named patchflow" in done.stderr:
        raise RemoteError(f"{target.name}: patchflow is not installed there ({done.last_error()}).", setup)
    if "No idea what 'host-facts' is" in done.stderr:
        raise RemoteError(f"{target.name}: the patchflow there is too old for deploy (no host-facts task).", setup)
    if done.exited != 0:
        raise RemoteError(f"{target.name}: host-facts failed there: {done.last_error()}", setup)  # e.g. bad settings
    try:
        data = json.loads(done.stdout)
    except ValueError:
        raise RemoteError(
            f"{target.name}: host-facts printed something that is not JSON: {done.stdout.strip()[:200]!r}.",
            "Check the shell start-up files of the deploy user there: they must not print in non-interactive shells.",
        ) from None
    if not isinstance(data, dict) or "paths" not in data or "status" not in data:
        raise RemoteError(f"{target.name}: host-facts gave an unexpected answer.", setup)
    return HostFacts(data)


# -- upload ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalPatch:
    """A verified local patch folder: ``files`` maps each file name to (size in bytes, sha256)."""

    version: PatchVersion
    folder: Path
    files: dict[str, tuple[int, str]]
    sums_sha256: str
    delta_base: str | None = None  # the version a delta patch is built on; None for a full patch
    base_tree_sha256: str | None = None  # the delta's base tree (patchflow.delta.tree_sha256)

    @property
    def upload_name(self) -> str:
        return upload_dir_name(self.version, self.sums_sha256)

    @property
    def total_bytes(self) -> int:
        return sum(size for size, _ in self.files.values())


def local_patch(settings: Settings, version: PatchVersion) -> LocalPatch:
    """Verify this checkout's ``patches/vX`` (as apply would, shallow) and list its files with the
    SHA-256 from its ``SHA256SUMS``.

    Raises:
        VerifyError: the folder is missing or does not verify.
    """
    from patchflow.verify import verify_patch

    folder = ProjectPaths.from_settings(settings).patch_dir(version)
    if not folder.is_dir():
        raise VerifyError(
            f"No patch folder {folder} in this checkout.", f"Build it first: inv create-patch --version {version}."
        )
    report = verify_patch(folder, version, verify_key=settings.verify_key)
    files: dict[str, tuple[int, str]] = {}
    sums_bytes = (folder / SHA256SUMS).read_bytes()
    for line in sums_bytes.decode("utf-8").splitlines():
        digest, _, name = line.partition(" ")
        name = name.lstrip(" *")
        if digest and name:
            files[name] = ((folder / name).stat().st_size, digest.lower())
    sums_sha256 = hashlib.sha256(sums_bytes).hexdigest()
    files[SHA256SUMS] = (len(sums_bytes), sums_sha256)
    delta = report.delta or {}
    base = str(delta["base_version"]) if delta else None
    return LocalPatch(version, folder, files, sums_sha256, base, str(delta.get("base_tree_sha256") or "") or None)


def check_delta_bases(patch: LocalPatch, hosts: Sequence[tuple[str, HostFacts]]) -> None:
    """Refuse a delta patch for a fleet where some host to update is not on its base, before
    anything is sent anywhere (each apply would refuse it too, but a rolling deploy would then stop
    half-way with the first hosts updated): the host's version must be the base version and its
    record of its tree must hash to the delta's ``base_tree_sha256`` (not another build of that
    version, not an install without a record). ``hosts``: (name, its host-facts).

    Raises:
        RemoteError: names every host that is not on the base, with its version and why.
    """
    if patch.delta_base is None:
        return
    off = []
    for name, host in hosts:
        installed, tree = host.installed, host.data.get("installed_tree_sha256")
        if installed != patch.delta_base:
            off.append(f"{name} ({installed or 'version unknown'})")
        elif tree != patch.base_tree_sha256:
            if "installed_tree_sha256" not in host.data:
                why = f"patchflow {host.data.get('patchflow_version', '?')} there cannot read delta patches"
            else:
                why = "no record of its tree" if not tree else "another build of it"
            off.append(f"{name} ({installed}, but {why})")
    if off:
        raise RemoteError(
            f"Patch {patch.version} is a delta built on {patch.delta_base}, and not every host is on that "
            f"tree: {', '.join(off)}.",
            f"Deploy the full patch of {patch.version} (create-patch without --base), or bring those hosts to "
            f"{patch.delta_base} first. Nothing was sent to any host.",
        )


@dataclass
class UploadResult:
    """One host's upload: ``state`` is ``placed`` (sent, checked there, renamed) or ``already`` (that
    exact patch was there); bytes ``sent`` now, ``reused`` (same SHA-256 there, or the first
    ``resumed`` bytes of partial files); ``seconds`` it took."""

    state: str
    sent: int = 0
    reused: int = 0
    resumed: int = 0
    seconds: float = 0.0

    def describe(self) -> str:
        if self.state == "already":
            return "the same patch is already there (not sent again)"
        parts = [f"{self.sent} bytes sent"]
        if self.reused:
            parts.append(f"{self.reused} bytes already there")
        if self.resumed:
            parts.append(f"continued a partial upload at {self.resumed} bytes")
        return ", ".join(parts) + f" in {self.seconds:.1f} s; checked there and placed"


def _prefix_sha256(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    left = size
    with open(path, "rb") as handle:
        while left > 0:
            chunk = handle.read(min(CHUNK, left))
            if not chunk:
                break
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def upload_patch(session: HostSession, facts: HostFacts, patch: LocalPatch) -> UploadResult:
    """Upload ``patch`` into ``patches/.upload-vX-<id>/`` on the host, continuing what an earlier
    upload left, then have ``receive-patch`` check it there and rename it to ``patches/vX``.

    Raises:
        ConnectionLost: the connection broke (run again: the upload continues where it stopped).
        RemoteError: ``patches/vX`` there holds a different patch, or the upload does not verify
            there (it is not put in place).
    """
    started = time.monotonic()
    state = facts.data.get("upload") or {}
    final = state.get("final")
    tag = patch.version.tag
    if isinstance(final, dict):
        if final.get("sums_sha256") == patch.sums_sha256:
            return UploadResult("already", reused=patch.total_bytes, seconds=time.monotonic() - started)
        raise RemoteError(
            f"{session.name}: patches/{tag} there holds a different patch than this checkout's.",
            f"Patch versions must be unique: build a new version, or move patches/{tag} away on the host.",
        )
    partial = (state.get("partial") or {}).get(patch.upload_name, {})
    patches_dir = facts.path("patches")
    remote_dir = f"{patches_dir}/{patch.upload_name}"
    result = UploadResult("placed")
    where = "upload"
    try:
        with session.sftp_call("creating the upload folder") as sftp:
            for folder in (patches_dir, remote_dir):
                try:
                    sftp.stat(folder)
                except FileNotFoundError:
                    sftp.mkdir(folder, 0o755)
        for name, (size, digest) in sorted(patch.files.items(), key=lambda item: item[0] == SHA256SUMS):
            there = partial.get(name)
            offset = 0
            if isinstance(there, list) and len(there) == 2:
                their_size, their_digest = int(there[0]), str(there[1])
                if their_size == size and their_digest == digest:
                    result.reused += size
                    continue
                if 0 < their_size < size and _prefix_sha256(patch.folder / name, their_size) == their_digest:
                    offset = their_size
            where = f"sending {name}"
            with (
                session.sftp_call(where) as sftp,
                sftp.open(f"{remote_dir}/{name}", "r+b" if offset else "wb") as remote,
                open(patch.folder / name, "rb") as local,
            ):
                remote.set_pipelined(True)
                if offset:
                    remote.seek(offset)
                    local.seek(offset)
                    result.resumed += offset
                    result.reused += offset
                while chunk := local.read(session.chunk_size(CHUNK)):
                    remote.write(chunk)
                    result.sent += len(chunk)
                    session.count_sent(len(chunk))
    except ConnectionLost as exc:
        raise ConnectionLost(
            f"{session.name}: the upload was interrupted after {result.sent + result.reused} of "
            f"{patch.total_bytes} bytes ({where}): {exc.message}",
            f"Run the same deploy again: the upload continues where it stopped ({patches_dir}/{patch.upload_name} "
            "there); a partial upload is never put in place or applied.",
        ) from None
    done = session.run(
        facts.task(
            "receive-patch", "--root", facts.root, "--version", str(patch.version), "--upload", patch.upload_name
        ),
        what="receive-patch",
    )
    if done.exited != 0:
        raise RemoteError(
            f"{session.name}: the uploaded patch does not verify there, so it was not put in place: "
            f"{done.last_error()}",
            "Run the deploy again (files that differ are sent again); a partial or corrupt upload is never applied.",
            exit_code=1 if done.exited in (1, 2) else None,
        )
    result.state = "already" if done.stdout.strip().endswith("already") else "placed"
    result.seconds = time.monotonic() - started
    return result


# -- detached runs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    """A task started detached on a host (``.patchflow/deploys/<id>.json`` there)."""

    id: str
    action: str
    version: str
    log: str
    pid_file: str
    exit_file: str
    operator: str
    started_at: str
    argv: tuple[str, ...] = ()
    launch_pid: int | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        return cls(
            str(data["id"]),
            str(data.get("action", "")),
            str(data.get("version", "")),
            str(data["log"]),
            str(data["pid_file"]),
            str(data["exit_file"]),
            str(data.get("operator", "")),
            str(data.get("started_at", "")),
            tuple(str(a) for a in data.get("argv", [])),
            int(data["launch_pid"]) if isinstance(data.get("launch_pid"), int) else None,
        )

    def to_json(self) -> dict[str, Any]:
        """The record as written on the host (the launch pid is only known afterwards)."""
        data = dataclasses.asdict(self)
        del data["launch_pid"]
        return data


def start_run(session: HostSession, facts: HostFacts, action: str, version: str, task_args: Sequence[str]) -> RunRecord:
    """Start ``python -m patchflow <task_args>`` detached in the checkout there (see the module
    docstring) and return its record.

    Args:
        action: ``apply`` or ``rollback`` (names the run).
        version: the version it acts on (may be empty for a rollback of the installed version).
        task_args: the task and its flags, e.g. ``["apply-patch", "--version", "2.3.0", "--yes"]``.

    Raises:
        ConnectionLost: the host did not answer (the run may or may not have started: attach tells).
        RemoteError: the launch failed.
    """
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_id = f"{action}-{version or 'installed'}-{stamp}-{secrets.token_hex(3)}"
    deploys, logs = facts.path("deploys"), facts.path("logs")
    argv = (facts.python, "-m", "patchflow", *task_args)
    record = RunRecord(
        run_id,
        action,
        version,
        f"{logs}/{run_id}.log",
        f"{deploys}/{run_id}.pid",
        f"{deploys}/{run_id}.exit",
        operator(),
        str(facts.data.get("now", "")),
        argv,
    )
    q = shlex.quote
    inner = "\n".join(
        [
            f"echo $$ > {q(record.pid_file)}.tmp && mv -f -- {q(record.pid_file)}.tmp {q(record.pid_file)}",
            shlex.join(argv),
            "code=$?",
            f"echo $code > {q(record.exit_file)}.tmp && mv -f -- {q(record.exit_file)}.tmp {q(record.exit_file)}",
            "exit $code",
        ]
    )
    record_file = f"{deploys}/{run_id}.json"
    script = "\n".join(
        [
            f"cd -- {q(facts.root)} || exit {NO_CHECKOUT}",
            f"mkdir -p -- {q(deploys)} {q(logs)} || exit 1",
            f"printf '%s\\n' {q(json.dumps(record.to_json()))} > {q(record_file)}.tmp || exit 1",
            f"mv -f -- {q(record_file)}.tmp {q(record_file)} || exit 1",
            f"setsid nohup sh -c {q(inner)} > {q(record.log)} 2>&1 < /dev/null &",
            'echo "pid=$!"',
        ]
    )
    done = session.run(script, what=f"starting {action}")
    pid = next((line[4:] for line in done.stdout.splitlines() if line.startswith("pid=")), "")
    if done.exited != 0 or not pid.isdigit():
        raise RemoteError(
            f"{session.name}: could not start {action} there: {done.last_error()}",
            f"The host needs sh, setsid and nohup on its PATH; `inv setup-host --host {session.name}` checks them.",
        )
    return dataclasses.replace(record, launch_pid=int(pid))


@dataclass(frozen=True)
class RunOutcome:
    """How a detached run ended: ``state`` is ``exited`` (``exit_code``), ``vanished`` (no exit
    code and no process: killed with its wrapper, or the host restarted), ``running`` (still running
    when deploy stopped following it) or ``unknown`` (the host stopped answering)."""

    state: str
    exit_code: int | None = None
    detail: str = ""


class _LineEmitter:
    """Splits streamed bytes into lines, each logged with the host's name in front."""

    def __init__(self, name: str, log: Log) -> None:
        self.prefix = f"[{name}] "
        self.log = log
        self.pending = b""
        self.last_error = ""

    def feed(self, data: bytes) -> None:
        self.pending += data
        *lines, self.pending = self.pending.split(b"\n")
        for raw in lines:
            self._emit(raw)

    def flush(self) -> None:
        if self.pending:
            self._emit(self.pending)
            self.pending = b""

    def _emit(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r")
        if line.startswith("error:"):
            self.last_error = line[6:].strip()
        self.log(self.prefix + line)


def _exit_code(session: HostSession, record: RunRecord) -> int | None:
    """The exit code the run's wrapper wrote, None while there is none."""
    text = session.read_text(record.exit_file)
    if text is not None and text.strip().lstrip("-").isdigit():
        return int(text.strip())
    return None


def _run_state(session: HostSession, record: RunRecord) -> tuple[int | None, bool]:
    """``(exit code or None, alive)`` of a run, read on the host."""
    code = _exit_code(session, record)
    if code is not None:
        return code, False
    fallback = str(record.launch_pid) if record.launch_pid else ""
    q = shlex.quote
    done = session.run(
        f"pid=$(cat -- {q(record.pid_file)} 2>/dev/null) || pid={q(fallback)}\n"
        'if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then echo alive; else echo gone; fi',
        what="checking the run",
    )
    if "alive" in done.stdout:
        return None, True
    return _exit_code(session, record), False  # it may have ended between the two reads


def follow_run(session: HostSession, record: RunRecord, *, log: Log, offset: int = 0) -> tuple[RunOutcome, str]:
    """Stream the run's log from ``offset`` (each line prefixed with the host name) until it ends.

    A broken connection is retried for ``ssh_reconnect_timeout`` seconds, then the outcome is
    ``unknown``; after ``deploy_timeout`` seconds it is ``running``. Returns the outcome and the
    last ``error:`` line seen in the log.

    Raises:
        RemoteError: a reconnect found the host key unknown or changed; or this process was
            interrupted (exit code 130; the run goes on there, ``deploy --attach`` follows it again).
    """
    emitter = _LineEmitter(session.name, log)
    try:
        return _follow(session, record, emitter, offset, log)
    except KeyboardInterrupt:
        emitter.flush()
        raise RemoteError(
            f"{session.name}: stopped following the {record.action} (interrupted here); it goes on there by "
            "itself, detached from this connection.",
            f"`inv deploy --attach --host {session.name}` follows it again and reports its outcome.",
            exit_code=130,
        ) from None


def _follow(
    session: HostSession, record: RunRecord, emitter: _LineEmitter, offset: int, log: Log
) -> tuple[RunOutcome, str]:
    settings = session.settings
    deadline = time.monotonic() + settings.deploy_timeout
    next_check = 0.0
    while True:
        try:
            chunk = session.read_from(record.log, offset, CHUNK)
            if chunk:
                offset += len(chunk)
                emitter.feed(chunk)
                if len(chunk) == CHUNK:
                    continue
            if time.monotonic() >= next_check:
                code, alive = _run_state(session, record)
                next_check = time.monotonic() + ALIVE_CHECK_SECONDS
            else:
                code = _exit_code(session, record)
                alive = code is None
            if not alive:
                while chunk := session.read_from(record.log, offset, CHUNK):
                    offset += len(chunk)
                    emitter.feed(chunk)
                emitter.flush()
                if code is None:
                    return RunOutcome("vanished", None, "the run ended without an exit code"), emitter.last_error
                return RunOutcome("exited", code), emitter.last_error
        except ConnectionLost as exc:
            wait = settings.ssh_reconnect_timeout
            log(
                f"[{session.name}] {exc.message.removeprefix(session.name + ': ')} The {record.action} goes on "
                f"there by itself; reconnecting for up to {wait:.0f} s"
            )
            if not session.reconnect(wait):
                emitter.flush()
                return (
                    RunOutcome("unknown", None, f"{session.address} stopped answering while the {record.action} ran"),
                    emitter.last_error,
                )
            log(f"[{session.name}] reconnected; following {record.log}")
            continue
        if time.monotonic() > deadline:
            emitter.flush()
            return RunOutcome("running", None, f"still running after {settings.deploy_timeout:.0f} s"), ""
        time.sleep(POLL_SECONDS)


# -- results -----------------------------------------------------------------------------------


OK_RESULTS = ("updated", "already", "uploaded", "rolled back", "ok")


@dataclass
class HostResult:
    """One host's line of the summary: versions ``before`` and ``after``, ``result`` (updated,
    already, uploaded, rolled back, failed, failed and rolled back, rollback incomplete, locked,
    refused, unknown, running, skipped), the ``exit_code`` it stands for and a ``detail``."""

    name: str
    role: str = ""
    before: str | None = None
    after: str | None = None
    result: str = "skipped"
    exit_code: int = 0
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.result in OK_RESULTS or self.result == "skipped"


@dataclass
class FleetReport:
    """The per-host results of a deploy, rollback or attach, in the order the hosts were given."""

    action: str
    version: str
    results: list[HostResult] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 when every host is fine; else the code of the first host that is not (the remote
        task's own exit code; 6 for a host whose outcome is unknown)."""
        return next((r.exit_code or 1 for r in self.results if not r.ok), 0)

    def get(self, name: str) -> HostResult:
        return next(r for r in self.results if r.name == name)


def _history_since(facts: HostFacts, action: str, since: str, version: str) -> dict[str, Any] | None:
    """The newest history record of ``action`` started at or after ``since`` (and of ``version``)."""
    key = "to_version" if action == "apply" else "from_version"
    found = [
        h
        for h in facts.history
        if h.get("action") == action
        and str(h.get("started_at", "")) >= since
        and (not version or str(h.get(key) or "") == version)
    ]
    return found[-1] if found else None


def judge_run(
    result: HostResult, record: RunRecord, outcome: RunOutcome, last_error: str, after: HostFacts | None
) -> None:
    """Fill ``result`` from how the run ended and what the host says now (its installed version,
    history and journal): the true outcome, whatever the connection did meanwhile."""
    if after is not None:
        result.after = after.installed
    attach = f"`inv deploy --attach --host {result.name}`"
    if outcome.state in ("unknown", "running"):
        result.result, result.exit_code = outcome.state, RemoteError.exit_code
        result.detail = f"{outcome.detail}; {attach} " + (
            "reports the outcome" if outcome.state == "unknown" else "follows it"
        )
        return
    seen = _history_since(after, record.action, record.started_at, record.version) if after else None
    if seen is not None and result.before is None:
        result.before = str(seen.get("from_version") or "") or None
    code = outcome.exit_code
    if code is None:  # vanished: no exit code, no process
        interrupted = after.interrupted if after else None
        if interrupted:
            result.result, result.exit_code = "interrupted", 4
            result.detail = (
                f"the {interrupted.get('action')} of {interrupted.get('version')} stopped at step "
                f"{interrupted.get('step')}; `inv apply-patch --version {interrupted.get('version')} --break-lock` "
                "there finishes or undoes it"
            )
            return
        if seen is None:
            result.result, result.exit_code, result.detail = "unknown", RemoteError.exit_code, outcome.detail
            return
        code = 0 if seen.get("result") == "success" else 2
    history_result = str(seen.get("result")) if seen else ""
    if code == 0:
        if record.action == "rollback":
            result.result = "rolled back"
        elif seen is not None:
            result.result = "updated"
        else:
            result.result = "already" if result.before == record.version else "ok"
        return
    result.exit_code = code
    if record.action == "apply" and history_result == "rolled_back":
        result.result = "failed, rolled back"
    elif code == 4 or history_result == "rollback_failed":
        result.result = "rollback incomplete"
    else:
        result.result = EXIT_MEANING.get(code, "failed")
    result.detail = last_error or (str(seen.get("error")) if seen else f"exit code {code}")


# -- fleets ------------------------------------------------------------------------------------


def each_host(items: Sequence[T], work: Callable[[T], R], workers: int) -> list[R | PatchflowError]:
    """``work(item)`` for every item, ``workers`` at a time; a PatchflowError is returned in its place."""

    def guarded(item: T) -> R | PatchflowError:
        try:
            return work(item)
        except PatchflowError as exc:
            return exc

    if workers <= 1 or len(items) <= 1:
        return [guarded(item) for item in items]
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(guarded, items))


class Fleet:
    """The sessions of several targets, opened together (:meth:`connect_all`: every host key
    checked before anything is done anywhere) and closed together."""

    def __init__(self, settings: Settings, targets: Sequence[Target], *, accept_new_key: bool, log: Log) -> None:
        self.settings = settings
        self.targets = list(targets)
        self.log = log
        lock = threading.Lock()

        def locked(line: str) -> None:
            with lock:
                log(line)

        self.locked_log = locked
        self.sessions = {t.name: HostSession(t, settings, accept_new_key=accept_new_key, log=locked) for t in targets}

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        for session in self.sessions.values():
            session.close()

    def connect_all(self) -> None:
        """Open every connection (in parallel).

        Raises:
            RemoteError: one or more hosts refused (unknown or changed host key, keys refused,
                unreachable); every failure is listed, nothing was done on any host.
        """

        def connect(session: HostSession) -> None:
            session.open()

        outcomes = each_host(list(self.sessions.values()), connect, 8)
        problems = [o for o in outcomes if isinstance(o, PatchflowError)]
        if problems:
            raise _combined(problems, "Nothing was done on any host.")

    def facts(self, *, version: PatchVersion | None = None, health: bool = False) -> dict[str, HostFacts]:
        """``host-facts`` of every host (in parallel).

        Raises:
            RemoteError: one or more hosts failed (all listed).
        """
        sessions = list(self.sessions.values())
        outcomes = each_host(sessions, lambda s: fetch_facts(s, version=version, health=health), 8)
        problems = [o for o in outcomes if isinstance(o, PatchflowError)]
        if problems:
            raise _combined(problems, "Nothing was done on any host.")
        return {s.name: o for s, o in zip(sessions, outcomes, strict=True) if isinstance(o, HostFacts)}


def _combined(problems: Sequence[PatchflowError], after: str) -> PatchflowError:
    """One error for several hosts' problems (a single one is returned as it is)."""
    if len(problems) == 1:
        only = problems[0]
        if isinstance(only, (RemoteError, LockError)) and after not in only.message:
            only.message = f"{only.message} {after}"
        return only
    hints = list(dict.fromkeys(p.hint for p in problems if p.hint))
    code = problems[0].exit_code if all(p.exit_code == problems[0].exit_code for p in problems) else 6
    return RemoteError(
        f"{len(problems)} hosts are not ready: " + " | ".join(p.message for p in problems) + f" {after}",
        " ".join(hints),
        exit_code=code,
    )


def _check_ready(
    facts: dict[str, HostFacts], me: str, version: str | None, *, break_lock: bool = False
) -> dict[str, dict[str, Any]]:
    """Refuse hosts missing a tool or locked by someone else; return, per host, a run of ``version``
    that this operator started and that still runs (to attach to instead of starting another).

    Raises:
        RemoteError: tools missing (named, with the environment they were looked up in).
        LockError: another apply or rollback holds a host's lock (its holder named), or a dead one
            left it (stale) and ``break_lock`` is not given.
    """
    problems: list[PatchflowError] = []
    running: dict[str, dict[str, Any]] = {}
    for name, host in facts.items():
        if host.missing:
            problems.append(
                RemoteError(
                    f"{name}: the apply would need {', '.join(host.missing)}, not found in the non-interactive "
                    "SSH environment the apply runs in.",
                    "Install them where the deploy user's non-interactive shell finds them (system-wide, e.g. "
                    "/usr/local/bin), or configure their full path; nvm and login profiles are not loaded there. "
                    f"`inv setup-host --host {name}` lists what is missing.",
                )
            )
        mine = [
            r
            for r in host.runs
            if r.get("state") in ("running", "starting")
            and r.get("operator") == me
            and r.get("action") == "apply"
            and (version is None or r.get("version") == version)
        ]
        lock = host.lock
        if mine:
            running[name] = mine[-1]
        elif lock and lock.get("state") in ("held", "held-too-long"):
            started = [r for r in host.runs if r.get("state") in ("running", "starting")]
            by = f"; started by deploy from {started[-1].get('operator')}" if started else ""
            problems.append(
                LockError(
                    f"{name}: another apply or rollback is running there: {lock.get('action')} of "
                    f"{lock.get('version')} by {lock.get('user')}@{lock.get('host')} (pid {lock.get('pid')}) "
                    f"since {lock.get('started_at')}{by}.",
                    f"Wait for it to finish (`inv patch-status --host {name}`); "
                    f"`inv deploy --attach --host {name}` follows a run deploy started.",
                )
            )
        elif lock and lock.get("state") == "stale" and not break_lock:
            problems.append(
                LockError(
                    f"{name}: a {lock.get('action')} of {lock.get('version')} by {lock.get('user')}@{lock.get('host')} "
                    f"(pid {lock.get('pid')}) did not finish there (stale lock).",
                    f"`inv patch-status --host {name}` shows what it left; repeat with --break-lock to have the "
                    "remote task finish or undo it first.",
                )
            )
    if problems:
        raise _combined(problems, "Nothing was done on any host.")
    return running


def _staging_gate(
    settings: Settings, targets: Sequence[Target], version: str, *, accept_new_key: bool, log: Log
) -> None:
    """Refuse a deploy that includes production hosts unless a staging host of the inventory applied
    ``version`` successfully (read from its history on the host), or a staging host comes before
    every production host in this rolling deploy (the rollout stops there if it fails).

    Raises:
        RemoteError: no staging host passed the version (or none could be read).
    """
    production = [i for i, t in enumerate(targets) if t.role == PRODUCTION_ROLE]
    if not production:
        return
    first = [t.name for t in targets[: production[0]] if t.role == STAGING_ROLE]
    if first:
        log(f"staging: {', '.join(first)} first in this rolling deploy; production hosts follow only if it passes")
        return
    stagers = (
        resolve_targets(settings, role=STAGING_ROLE) if any(e.role == STAGING_ROLE for e in settings.hosts) else []
    )
    skip = "Deploy it to staging first, or pass --skip-staging to deploy to production anyway."
    if not stagers:
        raise RemoteError(
            f"Refusing to deploy {version} to production: the inventory has no host of role {STAGING_ROLE!r} "
            "whose history could show the version passed there.",
            skip,
            exit_code=1,
        )
    with Fleet(settings, stagers, accept_new_key=accept_new_key, log=log) as fleet:
        outcomes = each_host(list(fleet.sessions.values()), lambda s: fetch_facts(s, history=1000), 8)
    passed = []
    unread = []
    for target, outcome in zip(stagers, outcomes, strict=True):
        if isinstance(outcome, PatchflowError):
            unread.append(f"{target.name} ({outcome.message})")
        elif any(
            h.get("action") == "apply" and h.get("to_version") == version and h.get("result") == "success"
            for h in outcome.history
        ):
            passed.append(target.name)
    if passed:
        log(f"staging: {version} was applied and passed its health check on {', '.join(passed)}")
        return
    names = ", ".join(t.name for t in stagers)
    raise RemoteError(
        f"Refusing to deploy {version} to production: no staging host ({names}) has applied it and passed its "
        "health check"
        + (f"; could not read {'; '.join(unread)}" if unread else "")
        + ". Nothing was done on any host.",
        skip,
        exit_code=1,
    )


@dataclass
class DeployOptions:
    """Flags of deploy (see :func:`deploy`)."""

    version: PatchVersion
    canary: str | None = None
    parallel: int = 1
    rollback_on_failure: bool = False
    skip_staging: bool = False
    accept_new_key: bool = False
    upload_only: bool = False
    force: bool = False
    allow_downgrade: bool = False
    break_lock: bool = False


def _order(targets: Sequence[Target], canary: str | None) -> list[Target]:
    if canary is None:
        return list(targets)
    first = [t for t in targets if t.name == canary or t.host == canary]
    if not first:
        raise RemoteError(
            f"The canary {canary!r} is not one of the hosts of this deploy ({', '.join(t.name for t in targets)}).",
            "Name one of them with --canary.",
            exit_code=1,
        )
    return [first[0], *(t for t in targets if t is not first[0])]


def _follow_and_judge(
    session: HostSession, record: RunRecord, result: HostResult, log: Log, *, offset: int = 0
) -> None:
    outcome, last_error = follow_run(session, record, log=log, offset=offset)
    after: HostFacts | None = None
    if outcome.state in ("exited", "vanished"):
        try:
            after = fetch_facts(session, health=True)
        except PatchflowError as exc:
            log(f"[{session.name}] could not read the outcome there: {exc.message}")
            outcome = RunOutcome("unknown", None, f"its outcome could not be read ({exc.message})")
    judge_run(result, record, outcome, last_error, after)


def deploy(
    settings: Settings, targets: Sequence[Target], options: DeployOptions, *, log: Log, confirm: Callable[[str], None]
) -> FleetReport:
    """Upload and apply a patch on hosts (see the module docstring for the order of things).

    Args:
        settings: this checkout's settings (the patch comes from its ``patches/vX``).
        targets: the hosts, in rolling order (the canary first when given).
        options: version, canary, parallel uploads, rollback on failure, staging gate...
        log: receives progress lines (remote log lines prefixed with ``[host]``).
        confirm: asked once before anything is changed (raises to refuse).

    Returns:
        The report: per host versions before/after and the result; ``exit_code`` is the first
        failing host's remote exit code (6 when unknown).

    Raises:
        VerifyError: the local patch folder is missing or does not verify.
        RemoteError: a host refused before anything changed (host key, patchflow or tools missing,
            staging gate), or an upload failed (nothing was applied anywhere).
        LockError: a host's lock is held by another apply or rollback.
        ConfirmationRefused: not confirmed.
    """
    version = str(options.version)
    ordered = _order(targets, options.canary)
    patch = local_patch(settings, options.version)
    me = operator()
    report = FleetReport("deploy", version, [HostResult(t.name, t.role) for t in ordered])
    with Fleet(settings, ordered, accept_new_key=options.accept_new_key, log=log) as fleet:
        log(f"connecting to {', '.join(t.name for t in ordered)}")
        fleet.connect_all()
        facts = fleet.facts(version=options.version)
        running = _check_ready(facts, me, version, break_lock=options.break_lock)
        for target in ordered:
            host = facts[target.name]
            result = report.get(target.name)
            result.before = host.installed
            if host.data.get("patchflow_version") != __version__:
                log(
                    f"[{target.name}] note: patchflow {host.data.get('patchflow_version')} there, "
                    f"{__version__} here"
                )
        if not options.skip_staging and not options.upload_only:
            _staging_gate(settings, ordered, version, accept_new_key=options.accept_new_key, log=fleet.locked_log)
        todo = [
            t
            for t in ordered
            if t.name not in running and (options.force or options.upload_only or facts[t.name].installed != version)
        ]
        if not options.upload_only:
            check_delta_bases(patch, [(t.name, facts[t.name]) for t in todo if t.name not in running])
        for target in ordered:
            if target.name in running:
                log(f"[{target.name}] a deploy of {version} you started is still running there: attaching to it")
            elif target not in todo:
                log(f"[{target.name}] {version} is already installed (--force applies it again)")
        plan = (
            "upload only"
            if options.upload_only
            else ("rolling" + (f", canary {ordered[0].name}" if options.canary else ""))
        )
        if todo:
            confirm(
                f"{'Upload' if options.upload_only else 'Deploy'} {version} to {', '.join(t.name for t in todo)} "
                f"({plan}; before: " + ", ".join(f"{t.name} {facts[t.name].installed or '?'}" for t in todo) + ")?"
            )

        def upload(target: Target) -> UploadResult:
            session = fleet.sessions[target.name]
            uploaded = upload_patch(session, facts[target.name], patch)
            fleet.locked_log(f"[{target.name}] upload: {uploaded.describe()}")
            return uploaded

        if todo:
            log(
                f"uploading {patch.folder.name} ({patch.total_bytes} bytes) to {len(todo)} host(s), "
                f"{options.parallel} at a time"
            )
        uploads = each_host(todo, upload, max(1, options.parallel))
        failed = [(t, o) for t, o in zip(todo, uploads, strict=True) if isinstance(o, PatchflowError)]
        if failed:
            for target, error in failed:
                result = report.get(target.name)
                result.result, result.exit_code = "refused", error.exit_code
                result.detail = error.message
            raise _combined(
                [e for _, e in failed],
                "No host was changed: the deploy applies nothing until every upload is checked in place.",
            )
        for target in ordered:
            result = report.get(target.name)
            if target.name not in running and target not in todo:
                result.result, result.after = "already", result.before
            elif options.upload_only and target in todo:
                result.result, result.after = "uploaded", result.before
        if options.upload_only:
            return report

        updated: list[Target] = []
        failure: HostResult | None = None
        for position, target in enumerate(ordered):
            result = report.get(target.name)
            session = fleet.sessions[target.name]
            if target.name not in running and target not in todo:
                continue
            try:
                if target.name in running:
                    record = RunRecord.from_json(running[target.name])
                    log(
                        f"[{target.name}] attached to {record.id} (started by {record.operator} at {record.started_at})"
                    )
                else:
                    args = ["apply-patch", "--root", target.path, "--version", version, "--yes"]
                    args += [flag for flag, on in (
                        ("--force", options.force),
                        ("--allow-downgrade", options.allow_downgrade),
                        ("--break-lock", options.break_lock),
                    ) if on]  # fmt: skip
                    record = start_run(session, facts[target.name], "apply", version, args)
                    log(f"[{target.name}] apply started there (pid {record.launch_pid}, log {record.log})")
                _follow_and_judge(session, record, result, fleet.locked_log)
                if result.ok and options.canary and position == 0:
                    checked = fetch_facts(session, health=True)
                    health = checked.health or {}
                    if not health.get("healthy") or checked.installed != version:
                        result.result, result.exit_code = "failed", 2
                        result.detail = f"canary not healthy after its apply: {health.get('detail')}"
                    else:
                        log(f"[{target.name}] canary healthy on {version}: {health.get('detail')}")
            except PatchflowError as exc:
                result.result = "unknown" if isinstance(exc, ConnectionLost) else "failed"
                result.exit_code, result.detail = exc.exit_code, exc.message
            if result.ok:
                if result.result == "updated":
                    updated.append(target)
                continue
            failure = result
            break
        if failure is not None:
            log(f"[{failure.name}] {failure.result}: stopping the rollout (the remaining hosts are left as they are)")
            if options.rollback_on_failure and updated:
                _roll_back_updated(fleet, facts, updated, report, version, log)
    return report


def _roll_back_updated(
    fleet: Fleet, facts: dict[str, HostFacts], updated: list[Target], report: FleetReport, version: str, log: Log
) -> None:
    """Roll back, newest first, the hosts this deploy updated (``--rollback-on-failure``)."""
    for target in reversed(updated):
        session = fleet.sessions[target.name]
        result = report.get(target.name)
        log(f"[{target.name}] rolling back {version} (--rollback-on-failure)")
        back = HostResult(target.name, target.role, before=version)
        try:
            record = start_run(
                session, facts[target.name], "rollback", version,
                ["rollback-patch", "--root", target.path, "--version", version, "--yes"],
            )  # fmt: skip
            _follow_and_judge(session, record, back, fleet.locked_log)
        except PatchflowError as exc:
            back.result, back.exit_code, back.detail = "unknown", exc.exit_code, exc.message
        result.after = back.after
        if back.result == "rolled back":
            result.result, result.detail = "rolled back", f"updated to {version}, then rolled back after the failure"
        else:
            result.result = back.result if back.result.startswith("rollback") else f"rollback {back.result}"
            result.exit_code = back.exit_code or 4
            result.detail = back.detail


@dataclass
class RollbackOptions:
    """Flags of the remote rollback-patch (passed to the task on each host)."""

    version: PatchVersion | None = None
    force: bool = False
    backup: str | None = None
    break_lock: bool = False
    restore_database: bool = False
    accept_new_key: bool = False


def rollback(
    settings: Settings, targets: Sequence[Target], options: RollbackOptions, *, log: Log, confirm: Callable[[str], None]
) -> FleetReport:
    """Run ``rollback-patch`` on each host, one at a time, stopping at the first failure.

    Returns:
        The report (``exit_code``: the first failing host's remote exit code).

    Raises:
        RemoteError, LockError: a host refused before anything changed (see :func:`deploy`).
        ConfirmationRefused: not confirmed.
    """
    version = str(options.version) if options.version else ""
    report = FleetReport("rollback", version, [HostResult(t.name, t.role) for t in targets])
    with Fleet(settings, targets, accept_new_key=options.accept_new_key, log=log) as fleet:
        fleet.connect_all()
        facts = fleet.facts()
        _check_ready(facts, "", None, break_lock=options.break_lock)
        for target in targets:
            report.get(target.name).before = facts[target.name].installed
        confirm(
            f"Roll back {version or 'the installed version'} on "
            + ", ".join(f"{t.name} ({facts[t.name].installed or '?'})" for t in targets)
            + ", one host at a time?"
        )
        for target in targets:
            session = fleet.sessions[target.name]
            result = report.get(target.name)
            args = ["rollback-patch", "--root", target.path, "--yes"]
            if version:
                args += ["--version", version]
            if options.backup:
                args += ["--backup", options.backup]
            args += [flag for flag, on in (
                ("--force", options.force),
                ("--break-lock", options.break_lock),
                ("--restore-database", options.restore_database),
            ) if on]  # fmt: skip
            try:
                record = start_run(session, facts[target.name], "rollback", version, args)
                log(f"[{target.name}] rollback started there (pid {record.launch_pid}, log {record.log})")
                _follow_and_judge(session, record, result, fleet.locked_log)
            except PatchflowError as exc:
                result.result = "unknown" if isinstance(exc, ConnectionLost) else "failed"
                result.exit_code, result.detail = exc.exit_code, exc.message
            if not result.ok:
                log(f"[{target.name}] {result.result}: stopping (the remaining hosts are left as they are)")
                break
    return report


def attach(
    settings: Settings, targets: Sequence[Target], version: PatchVersion | None, *, accept_new_key: bool, log: Log
) -> FleetReport:
    """Follow again the newest run deploy started on each host (of ``version`` when given), from
    the start of its log, and report its true outcome (exit code, history, journal, VERSION there).

    Raises:
        RemoteError: a host cannot be reached, or has no run recorded.
    """
    report = FleetReport("attach", str(version or ""), [HostResult(t.name, t.role) for t in targets])
    with Fleet(settings, targets, accept_new_key=accept_new_key, log=log) as fleet:
        fleet.connect_all()
        facts = fleet.facts()
        for target in targets:
            runs = [r for r in facts[target.name].runs if version is None or r.get("version") == str(version)]
            if not runs:
                raise RemoteError(
                    f"{target.name}: no run of deploy is recorded there" + (f" for {version}." if version else "."),
                    f"`inv patch-status --host {target.name}` shows its history.",
                )
            record = RunRecord.from_json(runs[-1])
            result = report.get(target.name)
            log(
                f"[{target.name}] {record.action} of {record.version or 'the installed version'} started by "
                f"{record.operator} at {record.started_at}: {runs[-1].get('state')}; its log follows"
            )
            _follow_and_judge(fleet.sessions[target.name], record, result, fleet.locked_log)
    return report


@dataclass
class HostStatus:
    """One host's status: its facts (with a health probe), or why they could not be read."""

    target: Target
    facts: HostFacts | None
    error: PatchflowError | None = None


def fleet_status(
    settings: Settings, targets: Sequence[Target], *, history: int, accept_new_key: bool
) -> list[HostStatus]:
    """Read every host's status (``host-facts --health``), in parallel; a host that cannot be read
    is listed with its error, never skipped."""

    with Fleet(settings, targets, accept_new_key=accept_new_key, log=_quiet) as fleet:
        outcomes = each_host(list(fleet.sessions.values()), lambda s: fetch_facts(s, health=True, history=history), 8)
    return [
        HostStatus(t, o, None) if isinstance(o, HostFacts) else HostStatus(t, None, o)
        for t, o in zip(targets, outcomes, strict=True)
    ]


# -- setting up a host ----------------------------------------------------------------------------


@dataclass
class SetupOptions:
    """Flags of setup-host: ``yes`` lets the remote ``init`` replace Makefile targets of the same
    name (backed up there); ``wheel`` installs that wheel file, ``wheelhouse`` a folder of wheels
    (patchflow and its dependencies, installed with ``--no-index``: for hosts without a package
    index); ``upgrade`` reinstalls into the checkout's venv even when patchflow already works."""

    yes: bool = False
    accept_new_key: bool = False
    wheel: str | None = None
    wheelhouse: str | None = None
    upgrade: bool = False


@dataclass
class SetupReport:
    """What setup-host found and did on one host: ``checks`` are (what, ok, detail) rows."""

    target: Target
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return all(ok for _, ok, _ in self.checks)

    def check(self, what: str, ok: bool, detail: str) -> None:
        self.checks.append((what, ok, detail))


MIN_PYTHON = (3, 11)
VENV = ".patchflow/venv"


def _probe_script(target: Target) -> str:
    """A shell script printing ``key=value`` lines about the host: checkout, git, python3, patchflow,
    docker compose, node (in the non-interactive environment deploy uses)."""
    q = shlex.quote
    path = q(target.path)
    pythons = " ".join(q(p) for p in target.python_candidates())
    version = "import sys; print('%d.%d.%d' % sys.version_info[:3])"
    return "\n".join(
        [
            f"if cd -- {path} 2>/dev/null; then echo checkout=yes; else echo checkout=no; fi",
            f'[ -f {path}/VERSION ] && echo "version_file=$(head -c 64 {path}/VERSION)"',
            f"if git -C {path} rev-parse --is-inside-work-tree >/dev/null 2>&1; then "
            f'echo "git=$(git -C {path} rev-parse --short HEAD 2>/dev/null)"; else echo git=no; fi',
            f'if command -v python3 >/dev/null 2>&1; then echo "python3=$(command -v python3) '
            f'$(python3 -c {q(version)} 2>/dev/null)"; fi',
            f"for py in {pythons}; do",
            '  if command -v "$py" >/dev/null 2>&1 && out=$("$py" -m patchflow --version 2>/dev/null); then',
            '    echo "patchflow=$py $out"; break',
            "  fi",
            "done",
            'if out=$(docker compose version 2>/dev/null); then echo "compose=$out" | head -n 1; fi',
            'if out=$(node --version 2>/dev/null); then echo "node=$out"; fi',
            'echo "path=$PATH"',
        ]
    )


def _build_wheel(log: Log) -> Path:
    """Build patchflow's wheel from its own source tree (``pip wheel --no-deps``) into a temp folder.

    Raises:
        RemoteError: patchflow does not run from a source tree here, or the build failed.
    """
    import subprocess
    import sys
    import tempfile

    from patchflow.project import is_tool_home

    home = Path(__file__).resolve().parent.parent
    if not is_tool_home(home):
        raise RemoteError(
            "patchflow is not running from its source tree here, so no wheel can be built.",
            "Pass --wheel path/to/patchflow-X-py3-none-any.whl (or --wheelhouse DIR).",
            exit_code=1,
        )
    out = Path(tempfile.mkdtemp(prefix="patchflow-wheel-"))
    source = out / "source"  # a copy: the build writes build/ and *.egg-info beside its sources
    shutil.copytree(home / "patchflow", source / "patchflow", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "VERSION", "README.md"):
        shutil.copy2(home / name, source / name)
    log(f"building patchflow's wheel from {home}")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    wheels = sorted(out.glob("patchflow-*.whl"))
    if done.returncode != 0 or not wheels:
        raise RemoteError(
            f"Building patchflow's wheel failed: {done.stderr.strip()[-500:]}",
            "Pass --wheel with a wheel built elsewhere (pip wheel --no-deps <patchflow source>).",
            exit_code=1,
        )
    return wheels[-1]


def _install_patchflow(session: HostSession, options: SetupOptions, python3: str, log: Log) -> str:
    """Upload a wheel (or a wheelhouse) into ``<path>/.patchflow/wheels`` and install it into a new
    venv ``<path>/.patchflow/venv``; return that venv's python.

    Raises:
        RemoteError: the upload, the venv or pip failed (pip's last lines are in the message).
    """
    target = session.target
    base = target.path.rstrip("/")
    wheels_dir = f"{base}/.patchflow/wheels"
    if options.wheelhouse:
        files = sorted(Path(options.wheelhouse).glob("*.whl"))
        if not any(f.name.startswith("patchflow-") for f in files):
            raise RemoteError(f"No patchflow wheel in {options.wheelhouse}.", "Add it with pip wheel.", exit_code=1)
    else:
        files = [Path(options.wheel) if options.wheel else _build_wheel(log)]
    try:
        with session.sftp_call("uploading wheels") as sftp:
            for folder in (f"{base}/.patchflow", wheels_dir):
                try:
                    sftp.stat(folder)
                except FileNotFoundError:
                    sftp.mkdir(folder, 0o755)
            for item in files:
                sftp.put(str(item), f"{wheels_dir}/{item.name}")
    finally:
        if not options.wheel and not options.wheelhouse:
            shutil.rmtree(files[0].parent, ignore_errors=True)  # the wheel built for this
    log(f"[{target.name}] uploaded {', '.join(f.name for f in files)} to {wheels_dir}")
    q = shlex.quote
    wheel = next(f for f in files if f.name.startswith("patchflow-"))
    index = f"--no-index --find-links {q(wheels_dir)} " if options.wheelhouse else ""
    venv_python = f"{base}/{VENV}/bin/python"
    script = (
        f"{q(python3)} -m venv {q(base + '/' + VENV)} && "
        f"{q(venv_python)} -m pip install -q --disable-pip-version-check {index}{q(wheels_dir + '/' + wheel.name)}"
    )
    log(f"[{target.name}] installing it into {base}/{VENV} (python3 -m venv, pip install)")
    done = session.run(script, what="pip install", timeout=session.settings.deploy_timeout)
    if done.exited != 0:
        raise RemoteError(
            f"{target.name}: installing patchflow failed: {(done.stderr or done.stdout).strip()[-600:]}",
            "Without a package index there, pass --wheelhouse DIR holding patchflow's wheel and its dependencies "
            "(pip download/wheel for the host's Python and platform).",
        )
    return venv_python


def setup_host(settings: Settings, target: Target, options: SetupOptions, *, log: Log) -> SetupReport:
    """Make a server ready for deploy and report what is missing.

    Checks the checkout (and whether it is a git checkout), Python >= 3.11, patchflow (``python3 -m
    patchflow`` or the checkout's ``.patchflow/venv``), and installs patchflow when missing: the wheel
    built from this source tree (or ``--wheel`` / ``--wheelhouse``) goes to ``<path>/.patchflow/wheels``
    and is installed with pip into the venv ``<path>/.patchflow/venv`` (deploy finds it there). Then
    it runs ``init`` in the checkout and ``host-facts`` to list the tools the apply needs there
    (docker compose, node, pg_dump...), looked up in the same non-interactive SSH environment.

    Raises:
        RemoteError: the host cannot be reached or its key is refused (nothing done), or the
            install failed.
    """
    report = SetupReport(target)
    with HostSession(target, settings, accept_new_key=options.accept_new_key, log=log) as session:
        session.open()
        report.check("ssh", True, f"{session.address} (host key known, key authentication)")
        probe = session.run(_probe_script(target), what="probing the host")
        facts_of = dict(line.split("=", 1) for line in probe.stdout.splitlines() if "=" in line)
        if facts_of.get("checkout") != "yes":
            report.check("checkout", False, f"no folder {target.path} there (clone PrimeFlow there, or set path)")
            return report
        git = facts_of.get("git", "no")
        report.check(
            "checkout",
            True,
            f"{target.path}, VERSION {facts_of.get('version_file', '(none)').strip() or '(empty)'}, "
            + (f"git checkout at {git}" if git != "no" else "not a git checkout (fine: patches carry the files)"),
        )
        python3, _, py_version = facts_of.get("python3", "").partition(" ")
        numbers = tuple(int(p) for p in py_version.split(".")[:2] if p.isdigit())
        found = facts_of.get("patchflow", "")
        python = found.split(" ", 1)[0] if found else ""
        if found and not options.upgrade:
            report.check("patchflow", True, f"{found.split(' ', 1)[1]} ({python})")
        else:
            if not python3 or numbers < MIN_PYTHON:
                report.check(
                    "python3",
                    False,
                    f"Python >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]} with venv needed, found {py_version or 'none'} "
                    "(Debian: apt-get install python3 python3-venv)",
                )
                return report
            report.check("python3", True, f"{python3} {py_version}")
            python = _install_patchflow(session, options, python3, log)
            report.actions.append(f"installed patchflow into {target.path.rstrip('/')}/{VENV}")
            check = session.run(shlex.join([python, "-m", "patchflow", "--version"]), what="patchflow --version")
            report.check("patchflow", check.exited == 0, check.stdout.strip() or check.last_error())
            if check.exited != 0:
                return report
        init = session.run(
            f"cd -- {shlex.quote(target.path)} && "
            + shlex.join(
                [python, "-m", "patchflow", "init", "--root", target.path, *(["--yes"] if options.yes else [])]
            ),
            what="init",
        )
        for line in (init.stdout + init.stderr).splitlines():
            if line.strip():
                log(f"[{target.name}] {line}")
        if init.exited == 5:
            report.check("init", False, "init would replace existing Makefile targets or files: run again with --yes")
        else:
            report.check(
                "init",
                init.exited == 0,
                "tasks.py, Makefile targets, settings" if init.exited == 0 else init.last_error(),
            )
        pinned = Target(target.name, target.host, target.path, target.role, python)
        session.target = pinned
        facts = fetch_facts(session)
        session.target = target
        report.check(
            "compose",
            bool(facts_of.get("compose")) or facts.data["settings"]["service_manager"] != "compose",
            facts_of.get("compose", "docker compose not found")
            + f" (service manager: {facts.data['settings']['service_manager']})",
        )
        if facts_of.get("node"):
            report.check("node", True, facts_of["node"])
        for tool in facts.data.get("tools", []):
            if not tool.get("found"):
                report.check(
                    str(tool["name"]), False, f"needed by {tool['purpose']}; not on PATH={facts_of.get('path', '?')}"
                )
    return report
