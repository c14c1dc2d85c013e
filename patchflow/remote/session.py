"""One host's SSH connection and its host-key policy: the only module that imports Fabric or Paramiko.

:class:`HostSession` opens a :class:`fabric.Connection` (key or agent authentication only, never a
password; connect, handshake and authentication bounded by ``ssh_connect_timeout``), checks the host
key as OpenSSH does (a key missing from ``known_hosts`` is refused unless ``accept_new_key``, then
appended; a changed key is always refused), runs shell commands with a deadline
(``ssh_command_timeout``) and gives SFTP access. A connection that breaks, a command that gets no
answer in time or ends without an exit status raises :class:`ConnectionLost` (its outcome unknown),
never a failure of the command itself; only a command's own exit code and output are its answer.
The shell text it runs is built in :mod:`patchflow.commands.remote`.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
from fabric import Config as FabricConfig
from fabric import Connection
from invoke.exceptions import CommandTimedOut, ThreadException

from patchflow.config import Settings
from patchflow.errors import RemoteError
from patchflow.remote.hosts import Log, Target, quiet

# Paramiko logs a dead peer's traceback from its transport thread; our errors say it in one line.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

KEEPALIVE_SECONDS = 15
_NETWORK_ERRORS = (paramiko.SSHException, EOFError, OSError, ThreadException)


def fingerprint(key: Any) -> str:
    """The OpenSSH ``SHA256:`` fingerprint of a Paramiko key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class ConnectionLost(RemoteError):
    """The SSH connection broke, or a remote step got no answer in time or ended without an exit
    status: what it did there is unknown (exit 6), never read as the step's own answer."""


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

    def __init__(self, target: Target, settings: Settings, *, accept_new_key: bool = False, log: Log = quiet) -> None:
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

        Returns:
            The command's own exit code and output, only when it reported an exit code.

        Raises:
            ConnectionLost: no answer within the timeout, the connection broke, or the command
                ended without an exit status (its session cut, or it was killed by a signal there):
                its outcome there is unknown, never a failure of the command itself.
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
        if result.exited is None or int(result.exited) < 0:  # Paramiko's -1: no exit status came
            transport = conn.transport
            alive = transport is not None and transport.is_active()
            self.close()
            raise ConnectionLost(
                f"{self.name}: {what} ended without an exit status from {self.address} ("
                + ("killed there, or its session was cut" if alive else "the connection broke")
                + ").",
                "What it did there is unknown; nothing is assumed done.",
            )
        return Completed(int(result.exited), str(result.stdout), str(result.stderr))

    def sftp(self) -> Any:
        """The connection's SFTP client (each request bounded by ``ssh_command_timeout``).

        Raises:
            ConnectionLost: the connection broke or did not answer.
            RemoteError: the host answers, but not in SFTP (no sftp subsystem, or a ForceCommand).
        """
        if self._sftp is None:
            conn = self._require()
            try:
                client = conn.sftp()
                client.get_channel().settimeout(self.settings.ssh_command_timeout or None)
            except paramiko.SFTPError as exc:
                raise self._not_sftp("opening SFTP", exc) from None
            except _NETWORK_ERRORS as exc:
                # a forced command that exits may close the channel before Paramiko reads its
                # answer ("Socket is closed", "EOF during negotiation"): the SFTP channel closed
                # while the connection still opens a new one is the host's refusal of SFTP
                if not isinstance(exc, TimeoutError) and self._opens_channels():
                    raise self._not_sftp("opening SFTP", exc) from None
                raise self._lost("opening SFTP", exc) from None
            self._sftp = client
        return self._sftp

    def _not_sftp(self, what: str, exc: BaseException) -> RemoteError:
        self.close()
        return RemoteError(
            f"{self.name}: {what} got an answer from {self.address} that is not SFTP ({_describe(exc)}).",
            "deploy moves files over SFTP: the sshd there needs an sftp subsystem (Subsystem sftp internal-sftp) "
            "and no ForceCommand for the deploy user.",
        )

    @contextmanager
    def sftp_call(self, what: str) -> Iterator[Any]:
        """The SFTP client, for requests made inside the block: a missing file stays
        FileNotFoundError; a broken connection or timeout becomes :class:`ConnectionLost`; any other
        refusal of the server (permissions, disk full) a :class:`RemoteError` naming ``what``. An
        error is taken for the server's refusal only when the server still answers right after it
        (:meth:`_answers`): Paramiko raises the same OSError for a closed socket."""
        try:
            yield self.sftp()
        except FileNotFoundError:
            raise
        except paramiko.SFTPError as exc:  # the server's answer, in a form SFTP does not have
            raise self._not_sftp(what, exc) from None
        except _NETWORK_ERRORS as exc:
            if isinstance(exc, OSError) and not isinstance(exc, TimeoutError) and self._answers():
                raise RemoteError(
                    f"{self.name}: {what} failed there: {exc}.",
                    "Check that the deploy user owns the checkout there and that its disk has room.",
                ) from None
            raise self._lost(what, exc) from None

    def _opens_channels(self) -> bool:
        """True when the SSH connection opens a new channel now (one round trip, bounded by
        ``ssh_command_timeout``; the channel is closed at once, nothing runs in it)."""
        transport = self._conn.transport if self._conn is not None else None
        if transport is None or not transport.is_active():
            return False
        try:
            transport.open_session(timeout=self.settings.ssh_command_timeout or None).close()
        except (paramiko.SSHException, OSError, EOFError):
            return False
        return True

    def _answers(self) -> bool:
        """True when the SFTP server answers a request now (one round trip, bounded by
        ``ssh_command_timeout``)."""
        transport = self._conn.transport if self._conn is not None else None
        if self._sftp is None or transport is None or not transport.is_active():
            return False
        try:
            self._sftp.normalize(".")
        except Exception:  # any failure of the round trip: no answer
            return False
        return True

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
        """``size``, or less so that an upload stops exactly where the fault hook cuts it (tests)."""
        return self.settings.faults.upload_chunk(size, self._sent)

    def count_sent(self, size: int) -> None:
        """Fault hook (upload cut, tests): drop the connection once that many bytes were sent."""
        self._sent += size
        if (
            self.settings.faults.upload_cut_reached(self._sent)
            and self._conn is not None
            and self._conn.transport is not None
        ):
            self._conn.transport.close()
