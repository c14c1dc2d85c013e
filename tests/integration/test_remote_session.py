"""One SSH connection of deploy (patchflow.remote.session.HostSession and the steps built on it) against real
sshd processes on 127.0.0.1: a remote command's own answer stays its answer, and a lost connection,
a cut session, a command killed there or a host that stops answering is never read as one
(issue 19, fault 7, and its neighbours). The fleet tests (test_remote.py) run the same through
``inv deploy``; these hit each step directly, in a few seconds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.hosts import cut_session_of
from support.installs import wait_until
from support.missing import missing_service
from support.services import SshServer

from patchflow.config import load_settings
from patchflow.errors import RemoteError
from patchflow.remote.facts import fetch_facts
from patchflow.remote.hosts import Target
from patchflow.remote.runs import _run_state, start_run
from patchflow.remote.session import Completed, ConnectionLost, HostSession
from patchflow.remote.wire import HostFacts, RunRecord

pytestmark = [pytest.mark.integration, pytest.mark.ssh]


class ForcedCommandSshd(SshServer):
    """An sshd whose account may only run one fixed command (``ForceCommand``, as restricted
    accounts are set up): whatever deploy asks, the answer is that command's output."""

    forced = "echo this account only runs backups"

    def _write_files(self) -> None:
        super()._write_files()
        with self.config.open("a", encoding="utf-8") as handle:
            handle.write(f"ForceCommand {self.forced}\n")


class SilentForcedSshd(ForcedCommandSshd):
    """A forced command that answers nothing and exits at once: the SFTP channel closes before
    Paramiko reads any answer (the OSError "Socket is closed"), while the connection is fine."""

    forced = "true"


class SftpOnlySshd(ForcedCommandSshd):
    """An SFTP-only account (``ForceCommand internal-sftp``): SFTP works, commands answer nothing."""

    forced = "internal-sftp"


def serve(kind: type[SshServer], folder: Path) -> Iterator[SshServer]:
    """A private sshd of ``kind`` in ``folder`` for a module's tests (a set-up failure under CI when
    it cannot start), thawed and stopped after them."""
    try:
        server = kind.start(folder)
    except (RuntimeError, OSError) as exc:
        missing_service(f"cannot start sshd: {exc}")
    try:
        yield server
    finally:
        server.thaw()
        server.stop()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    yield from serve(SshServer, tmp_path_factory.mktemp("sshd"))


def session_for(server: SshServer, folder: Path, **settings: str) -> HostSession:
    """A HostSession to ``server`` as deploy opens it: an inventory host ``box`` named in an ssh
    config, its host key in known_hosts; ``settings`` go into ``[tool.patchflow]``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ssh_config").write_text(
        f"Host box\n  HostName {server.host}\n  Port {server.port}\n  User {server.user}\n"
        f"  IdentityFile {server.client_key}\n  IdentitiesOnly yes\n"
    )
    lines = [
        "[tool.patchflow]",
        f'ssh_config = "{folder / "ssh_config"}"',
        f'ssh_known_hosts = "{server.known_hosts}"',
        *(f"{key} = {value}" for key, value in settings.items()),
    ]
    (folder / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return HostSession(Target("box", "box", str(folder)), load_settings(folder, environ={}))


def facts_for(folder: Path) -> HostFacts:
    """The few host facts start_run uses (a checkout at ``folder`` on the host, which is this machine)."""
    paths = {"root": str(folder), "deploys": str(folder / "deploys"), "logs": str(folder / "logs")}
    return HostFacts.from_json({"paths": paths, "python": "python3", "status": {"installed_version": "2.2.0"}})


def sshd_processes(server: SshServer) -> list[int]:
    """The sshd processes serving connections of ``server`` (below its listener)."""
    from support.services import _descendants

    assert server._proc is not None
    return [pid for pid in _descendants(server._proc.pid) if Path(f"/proc/{pid}/comm").read_text().startswith("sshd")]


def test_a_commands_own_exit_code_is_its_answer_and_a_command_killed_there_is_unknown(
    sshd: SshServer, tmp_path: Path
) -> None:
    with session_for(sshd, tmp_path) as session:
        done = session.run("echo out; echo err >&2; exit 3", what="a failing command")
        assert done == Completed(3, "out\n", "err\n"), "its own failure is its answer, nothing else"
        # a command killed by a signal there reports no exit status: not a failure of its own
        killed = r"ended without an exit status .*killed there, or its session was cut"
        with pytest.raises(ConnectionLost, match=killed):
            session.run("kill -KILL $$", what="a command killed there")
        assert session.run("exit 0", what="the next command").exited == 0, "the session opens again"


def test_a_session_cut_during_a_command_or_an_sftp_request_is_a_lost_connection(
    sshd: SshServer, tmp_path: Path
) -> None:
    with session_for(sshd, tmp_path) as session:
        # the server's own refusal of an SFTP request, the connection fine: a refusal, not a lost connection
        with (
            pytest.raises(RemoteError, match="making a folder failed there") as refused,
            session.sftp_call("making a folder") as sftp,
        ):
            sftp.mkdir(str(tmp_path))  # it exists
        assert not isinstance(refused.value, ConnectionLost)

        marker = f"{tmp_path}/cut-me"
        outcome: dict[str, Any] = {}

        def long_command() -> None:
            try:
                outcome["done"] = session.run(f"sleep 60; echo {marker}", what="a long command")
            except ConnectionLost as exc:
                outcome["lost"] = exc

        worker = threading.Thread(target=long_command, daemon=True)
        worker.start()

        def sleeper() -> int | None:
            for entry in Path("/proc").iterdir():
                try:
                    if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                        return int(entry.name)
                except OSError:
                    continue
            return None

        cut_session_of(sshd, wait_until(sleeper, 30, "the long command to run there"))
        worker.join(timeout=30)
        assert "done" not in outcome, f"a cut session was read as the command's answer: {outcome.get('done')}"
        assert "the connection broke" in outcome["lost"].message, outcome["lost"].message

        # an SFTP request on a connection cut under it: lost, never "failed there" (a refusal)
        session.read_text(str(tmp_path / "pyproject.toml"))  # SFTP open on the new connection
        for pid in sshd_processes(sshd):  # the only connection's sshd processes
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with (
            pytest.raises(ConnectionLost, match="broke during making a folder"),
            session.sftp_call("making a folder") as sftp,
        ):
            sftp.mkdir(str(tmp_path / "new"))
        assert not (tmp_path / "new").exists()


def test_starting_a_run_on_a_host_that_stops_answering_says_whether_it_started_is_unknown(
    sshd: SshServer, tmp_path: Path
) -> None:
    with session_for(sshd, tmp_path, ssh_command_timeout="2") as session:
        session.open()
        sshd.freeze()  # the host stops answering, its TCP connections stay open (C20)
        try:
            started = time.monotonic()
            with pytest.raises(ConnectionLost) as lost:
                start_run(session, facts_for(tmp_path), "apply", "2.3.0", ["apply-patch", "--version", "2.3.0"])
            assert time.monotonic() - started < 20, "bounded by ssh_command_timeout"
        finally:
            sshd.thaw()
    assert "while starting the apply there, so whether it started is unknown" in lost.value.message
    assert "`inv deploy --attach --host box`" in lost.value.hint and "the same deploy again" in lost.value.hint
    assert lost.value.exit_code == 6


@pytest.fixture(scope="module")
def sftp_only_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    yield from serve(SftpOnlySshd, tmp_path_factory.mktemp("sftp-only"))


@pytest.fixture(scope="module")
def forced_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    yield from serve(ForcedCommandSshd, tmp_path_factory.mktemp("forced"))


@pytest.fixture(scope="module")
def silent_forced_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    yield from serve(SilentForcedSshd, tmp_path_factory.mktemp("silent"))


def test_an_answer_that_is_not_the_runs_state_is_never_read_as_the_run_having_ended(
    sftp_only_sshd: SshServer, tmp_path: Path
) -> None:
    """An SFTP-only account answers every command with a refusal, not the command's output: the
    run's state there is unknown (the old reading took any answer but "alive" as the run having
    ended, and judged a run that may still be going); host-facts names the host's refusal."""
    record = RunRecord(
        "apply-2.3.0-x", "apply", "2.3.0", "l", str(tmp_path / "run.pid"), str(tmp_path / "run.exit"), "me", "now"
    )
    with session_for(sftp_only_sshd, tmp_path) as session:
        with pytest.raises(ConnectionLost, match="checking the run gave no answer"):
            _run_state(session, record)
        with pytest.raises(RemoteError, match="host-facts failed there: This service allows sftp connections only"):
            fetch_facts(session)  # the host's own answer, named


def test_a_host_that_answers_sftp_with_something_else_is_refused_in_one_line(
    forced_sshd: SshServer, tmp_path: Path
) -> None:
    with session_for(forced_sshd, tmp_path) as session, pytest.raises(RemoteError, match="that is not SFTP") as refused:
        session.read_text(str(tmp_path / "pyproject.toml"))
    assert not isinstance(refused.value, ConnectionLost), "the host answered: not a lost connection"
    assert "ForceCommand" in refused.value.hint


def test_a_forced_command_that_closes_the_sftp_channel_at_once_is_refused_as_not_sftp(
    silent_forced_sshd: SshServer, tmp_path: Path
) -> None:
    """The channel closed before any answer (CI saw this with the echoing forced command too, when
    it exited before Paramiko read): the connection still opens channels, so it is the host's
    refusal of SFTP, not a lost connection."""
    with (
        session_for(silent_forced_sshd, tmp_path) as session,
        pytest.raises(RemoteError, match="that is not SFTP") as refused,
    ):
        session.read_text(str(tmp_path / "pyproject.toml"))
    assert not isinstance(refused.value, ConnectionLost), "the host answered: not a lost connection"
