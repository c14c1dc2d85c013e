"""Run external commands: the one place patchflow starts a process.

Every program patchflow runs (pg_dump, psql, docker compose, git, the install/build/migrate
commands, the services of the command manager) goes through a :class:`Runner`, so every command
is logged the same way and a test can replace the runner. Commands are argument lists; no shell.

Each child runs in its own process group (``start_new_session``): when patchflow is interrupted
(SIGINT, SIGTERM, SIGHUP) or a deadline passes, the whole group is ended (SIGTERM, then SIGKILL),
so no child keeps working for a parent that gave up.

A parent killed outright (SIGKILL, power cut of the tool only, OOM killer) cannot do that. So every
command (not the services, which have their own marker) carries ``PF_RUN_ID=<marker>`` in
its environment, the marker of the run that started it; the run records its marker in the journal
before it starts anything, and recovery ends every process still carrying a dead run's marker
(:func:`end_marked`) before it touches the install: no orphaned ``psql``, ``pg_restore`` or
migrate command keeps working under the recovery.
"""

from __future__ import annotations

import hashlib
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from patchflow.commands import display
from patchflow.errors import CommandError
from patchflow.redact import shown

CHUNK = 1024 * 1024
KILL_GRACE_SECONDS = 3.0
DRAIN_SECONDS = 5.0
RUN_MARKER = "PF_RUN_ID"


@dataclass(frozen=True)
class Result:
    """What a command did: ``returncode``, captured ``stdout``/``stderr`` (text, UTF-8), and for
    a command whose stdout went to a file, that file's ``output_bytes`` and ``output_sha256``
    (computed from the bytes as they streamed through)."""

    args: tuple[str, ...]
    returncode: int
    stdout: str = ""
    stderr: str = ""
    output_bytes: int = 0
    output_sha256: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def output(self) -> str:
        return (self.stdout + ("\n" if self.stdout and self.stderr else "") + self.stderr).strip()


class Runner(Protocol):
    """What the core needs to run programs (see :class:`LocalRunner`)."""

    def run(
        self,
        args: Sequence[str],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        timeout: float | None = None,
        input_file: Path | None = None,
        output_file: Path | None = None,
        what: str = "",
        progress: Callable[[int], None] | None = None,
    ) -> Result: ...

    def spawn(self, args: Sequence[str], *, cwd: Path, env: Mapping[str, str], log_file: Path) -> int: ...

    def attach(
        self,
        args: Sequence[str],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        escape: bool = False,
    ) -> int: ...


def end_group(pid: int, grace: float = KILL_GRACE_SECONDS, poll: Callable[[], object] | None = None) -> None:
    """End the process group led by ``pid``: SIGTERM, then SIGKILL after ``grace`` seconds.

    ``poll`` reaps the leader when it is our child (``Popen.poll``); otherwise a zombie leader is
    reaped with ``waitpid`` when it is ours, and ignored when it is not.
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if group_gone(pid, poll):
                return
            time.sleep(0.02)


def end_groups(groups: Sequence[int], grace: float = KILL_GRACE_SECONDS) -> None:
    """End the process groups ``groups`` together, under one deadline: SIGTERM to each, then SIGKILL
    to those left ``grace`` seconds later (a group that ignores SIGTERM costs ``grace`` once, not
    once per group). Groups that are gone or not ours are skipped."""
    left = list(dict.fromkeys(groups))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for group in list(left):
            try:
                os.killpg(group, sig)
            except (ProcessLookupError, PermissionError):
                left.remove(group)
        deadline = time.monotonic() + grace
        while left and time.monotonic() < deadline:
            left = [group for group in left if not group_gone(group, None)]
            if left:
                time.sleep(0.02)
        if not left:
            return


def process_start_ticks(pid: int) -> str | None:
    """The kernel start time of ``pid`` (``/proc/<pid>/stat`` field 22), None when it is gone or a
    zombie. Together with the pid it names one process even after pid reuse."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def processes_with_env(key: str, value: str, *, prefix: bool = False) -> list[int]:
    """Pids of live processes whose environment holds ``key=value`` (with ``prefix``: a value
    starting with ``value``), read from ``/proc/<pid>/environ`` (processes of other users that
    cannot be read are skipped); oldest first, by kernel start time."""
    wanted = f"{key}={value}".encode()
    found: list[tuple[int, int]] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = handle.read()
        except OSError:
            continue
        if wanted not in environ:  # the common case, decided without splitting every environment
            continue
        variables = environ.split(b"\0")
        hit = any(v.startswith(wanted) for v in variables) if prefix else wanted in variables
        if not hit:
            continue
        ticks = process_start_ticks(int(entry))
        if ticks is not None:
            found.append((int(ticks), int(entry)))
    return [pid for _, pid in sorted(found)]


def end_marked(marker: str, grace: float = KILL_GRACE_SECONDS) -> list[int]:
    """End every process still carrying ``PF_RUN_ID=<marker>`` (the commands of a run that was
    killed), each with its whole process group: SIGTERM, then SIGKILL after ``grace`` seconds.
    Returns the pids found (empty when none was left)."""
    if not marker:
        return []
    pids = processes_with_env(RUN_MARKER, marker)
    for pid in pids:
        try:
            group = os.getpgid(pid)
        except ProcessLookupError:
            continue
        if group == os.getpgrp():
            os.kill(pid, signal.SIGKILL)  # never end our own group
            continue
        end_group(group, grace=grace)
    return pids


def group_members(pgid: int) -> list[int]:
    """Pids of the live processes in process group ``pgid`` (``/proc/<pid>/stat`` field 5);
    zombies do not count (they have exited and wait only to be reaped)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def group_gone(pid: int, poll: Callable[[], object] | None = None) -> bool:
    """True when no live process of the group ``pid`` is left (a leader that is our child is
    reaped first; zombies of other parents count as gone)."""
    if poll is not None:
        poll()
    else:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return not group_members(pid)


#: The prefix of patchflow's own settings in an environment (kept from every child it starts).
OWN_PREFIX = "PATCHFLOW_"


@dataclass
class LocalRunner:
    """Run commands on this machine with :mod:`subprocess` (no shell).

    Args:
        base_env: the environment every child starts from (``Settings.environ``); ``env`` given
            to :meth:`run` is added on top. Variables of patchflow's own settings (``PATCHFLOW_*``)
            are removed from both: no child (a service, an install command, a package's script)
            receives the admin URL or any other patchflow setting.
        log: receives one line per command (``$ <command>``, secrets masked as ``***``) and, for a
            failed command, its output; the operation's log file is fed from here.
        marker: given to every command (not to services) as ``PF_RUN_ID`` so a recovery can
            end the commands of a run that was killed (see the module docstring).
    """

    base_env: Mapping[str, str] = field(default_factory=dict)
    log: Callable[[str], None] | None = None
    marker: str = ""

    def _env(self, env: Mapping[str, str] | None, *, service: bool = False) -> dict[str, str]:
        # patchflow's own settings (PATCHFLOW_*: the admin URL among them) are not the app's: the
        # services, the install/build commands and their packages' scripts never see them
        full = {k: v for k, v in self.base_env.items() if not k.startswith(OWN_PREFIX)}
        full.update({k: v for k, v in (env or {}).items() if not k.startswith(OWN_PREFIX)})
        if self.marker and not service:
            full[RUN_MARKER] = self.marker
        else:
            full.pop(RUN_MARKER, None)
        return full

    def _note(self, line: str) -> None:
        if self.log is not None:
            self.log(line)

    def run(
        self,
        args: Sequence[str],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        timeout: float | None = None,
        input_file: Path | None = None,
        output_file: Path | None = None,
        what: str = "",
        progress: Callable[[int], None] | None = None,
    ) -> Result:
        """Run ``args`` to completion and return its :class:`Result`.

        ``input_file`` feeds stdin from a file; ``output_file`` receives stdout (binary, created
        with mode 0600 when new, hashed with sha256 while it streams; ``progress(bytes written so
        far)`` is called as it does); otherwise stdout is captured as text. ``timeout`` is seconds;
        past it the process group is ended.

        Raises:
            CommandError: the program is missing (127), timed out (124) or, with ``check``,
                exited non-zero (the message carries the last lines of its output).
            BaseException: an interruption (KeyboardInterrupt, a signal) ends the child's whole
                process group before it propagates.
        """
        argv = [str(a) for a in args]
        label = what or display(args)
        self._note(f"$ {display(args)}")
        full_env = self._env(env)
        stdin: IO[bytes] | int = subprocess.DEVNULL
        sink: IO[bytes] | None = None
        try:
            if input_file is not None:
                stdin = open(input_file, "rb")  # noqa: SIM115 - closed in finally
            if output_file is not None:
                fd = os.open(output_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                sink = os.fdopen(fd, "wb")
            try:
                proc = subprocess.Popen(
                    argv,
                    cwd=cwd,
                    env=full_env,
                    stdin=stdin,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                )
            except FileNotFoundError:
                raise CommandError(
                    f"{label}: the program {argv[0]!r} was not found.",
                    f"Install it or put it on PATH (tried PATH={full_env.get('PATH', '')}).",
                    returncode=127,
                ) from None
            try:
                out, err, size, digest = _collect(proc, sink, timeout, progress)
            except subprocess.TimeoutExpired:
                end_group(proc.pid, poll=proc.poll)
                proc.wait()
                self._note(f"  timed out after {timeout:.0f} s: {label}")
                raise CommandError(
                    f"{label}: timed out after {timeout:.0f} s.",
                    "The command was stopped (its whole process group).",
                    returncode=124,
                ) from None
            except BaseException:
                end_group(proc.pid, poll=proc.poll)
                proc.wait()
                raise
        finally:
            if not isinstance(stdin, int):
                stdin.close()
            if sink is not None:
                sink.close()
        result = Result(
            tuple(argv),
            proc.returncode,
            out.decode("utf-8", "replace"),
            err.decode("utf-8", "replace"),
            size,
            digest,
        )
        if not result.ok:
            self._note(f"  exit {proc.returncode}: {_tail(result.output)}")
        if check and not result.ok:
            raise CommandError(
                f"{label} failed with exit code {proc.returncode}: {_tail(result.output)}",
                "",
                returncode=proc.returncode,
                output=result.output,
            )
        return result

    def spawn(self, args: Sequence[str], *, cwd: Path, env: Mapping[str, str], log_file: Path) -> int:
        """Start ``args`` in the background in its own session (a service), output appended to
        ``log_file``; returns its pid without waiting.

        Raises:
            CommandError: the program cannot be started (missing, not executable).
        """
        self._note(f"$ {display(args)} &")
        with open(log_file, "ab") as log:
            try:
                proc = subprocess.Popen(
                    [str(a) for a in args],
                    cwd=cwd,
                    env=self._env(env, service=True),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                raise CommandError(f"Cannot start {display(args)}: {exc.strerror}.", "", returncode=127) from None
        return proc.pid

    def attach(
        self,
        args: Sequence[str],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        escape: bool = False,
    ) -> int:
        """Run ``args`` with this terminal's stdout/stderr (``logs --follow``, preflight checks);
        returns the exit code. An interruption ends the child's process group first. With
        ``escape`` (a service's own output: ``logs``) its lines are relayed through
        :func:`patchflow.redact.shown`: no control character of theirs reaches the terminal."""
        self._note(f"$ {display(args)}")
        try:
            proc = subprocess.Popen(
                [str(a) for a in args],
                cwd=cwd,
                env=self._env(env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if escape else None,
                stderr=subprocess.STDOUT if escape else None,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise CommandError(f"The program {str(args[0])!r} was not found.", "Install it.", returncode=127) from None
        try:
            if escape:
                assert proc.stdout is not None
                for raw in proc.stdout:
                    sys.stdout.write(shown(raw.decode("utf-8", "replace").rstrip("\n")) + "\n")
                    sys.stdout.flush()
            return proc.wait()
        except BaseException:
            end_group(proc.pid, poll=proc.poll)
            proc.wait()
            raise


def _collect(
    proc: subprocess.Popen[bytes],
    sink: IO[bytes] | None,
    timeout: float | None,
    progress: Callable[[int], None] | None = None,
) -> tuple[bytes, bytes, int, str]:
    """Read the child's stdout (into ``sink`` while hashing it, or into memory) and stderr until
    both close; returns ``(stdout, stderr, bytes written to sink, sha256 hex)``.

    A background process left behind by the command (holding the pipes open after the command
    itself exited) does not make this wait forever: reading stops ``DRAIN_SECONDS`` after the
    command exits, and the rest of its process group is ended.

    Raises:
        subprocess.TimeoutExpired: ``timeout`` seconds passed (the caller ends the group).
    """
    assert proc.stdout is not None and proc.stderr is not None
    deadline = None if timeout is None else time.monotonic() + timeout
    out_chunks: list[bytes] = []
    err_chunks: list[bytes] = []
    digest = hashlib.sha256()
    size = 0
    exited_at: float | None = None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ, "out")
        selector.register(proc.stderr, selectors.EVENT_READ, "err")
        while selector.get_map():
            now = time.monotonic()
            if deadline is not None and now > deadline:
                raise subprocess.TimeoutExpired(proc.args, timeout or 0)
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > DRAIN_SECONDS:
                end_group(proc.pid, grace=1.0, poll=proc.poll)
                break
            for key, _ in selector.select(timeout=0.2):
                chunk = os.read(key.fd, CHUNK)
                if not chunk:
                    selector.unregister(key.fileobj)
                elif key.data == "err":
                    err_chunks.append(chunk)
                elif sink is not None:
                    sink.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    if progress is not None:
                        progress(size)
                else:
                    out_chunks.append(chunk)
    remaining = None if deadline is None else max(0.1, deadline - time.monotonic())
    proc.wait(timeout=remaining)
    if sink is not None:
        sink.flush()
        os.fsync(sink.fileno())
    return b"".join(out_chunks), b"".join(err_chunks), size, digest.hexdigest()


def _tail(text: str, lines: int = 12) -> str:
    rows = text.strip().splitlines()
    return "\n".join(rows[-lines:]) if rows else "(no output)"
