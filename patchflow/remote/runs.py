"""Detached runs on a host: launching a task that survives the SSH connection, following its log, judging its end.

:func:`start_run` starts ``python -m patchflow <task>`` with ``setsid nohup sh -c '...'`` (the
launcher of :mod:`patchflow.commands.remote`): output to ``.patchflow/logs/<run id>.log``, stdin
from ``/dev/null``; the wrapper shell writes its pid to ``.patchflow/deploys/<id>.pid`` and, when
the task ends, its exit code to ``<id>.exit`` (``<id>.json`` records what was started, by whom,
when, from which version: :class:`patchflow.remote.wire.RunRecord`). The process has no
controlling terminal and its own session and process group, so a dropped connection neither
signals nor blocks it (C20); the run is alive while a process of that group is. :func:`follow_run`
streams the log over SFTP (each line prefixed with the host name) and waits for the exit file; a
broken connection is retried for ``ssh_reconnect_timeout`` seconds, then the host is reported
*unknown*, never done. :func:`follow_and_judge` then has :mod:`patchflow.remote.outcome` judge the
run from its exit code *and* the host's facts.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from patchflow.commands.remote import RUN_ALIVE, RUN_GONE, launcher_script, patchflow_argv, run_state_script
from patchflow.errors import PatchflowError, RemoteError
from patchflow.remote.facts import fetch_facts
from patchflow.remote.hosts import Log, operator
from patchflow.remote.outcome import HostResult, RunOutcome, judge_run
from patchflow.remote.session import ConnectionLost, HostSession
from patchflow.remote.transfer import CHUNK
from patchflow.remote.wire import HostFacts, RunRecord

POLL_SECONDS = 0.25
ALIVE_CHECK_SECONDS = 2.0


def start_run(
    session: HostSession,
    facts: HostFacts,
    action: str,
    version: str,
    task_args: Sequence[str],
    *,
    installed: str | None = None,
) -> RunRecord:
    """Start ``python -m patchflow <task_args>`` detached in the checkout there (see the module
    docstring) and return its record.

    Args:
        action: ``apply`` or ``rollback`` (names the run).
        version: the version it acts on (may be empty for a rollback of the installed version).
        task_args: the task and its flags, e.g. ``["apply-patch", "--version", "2.3.0", "--yes"]``.
        installed: the version installed there now, when ``facts`` are older than that (recorded as
            the run's ``from_version``).

    Raises:
        ConnectionLost: the host did not answer (the run may or may not have started: attach tells).
        RemoteError: the launch failed there (its shell said so).
    """
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_id = f"{action}-{version or 'installed'}-{stamp}-{secrets.token_hex(3)}"
    deploys, logs = facts.path("deploys"), facts.path("logs")
    argv = tuple(patchflow_argv(facts.python, task_args))
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
        from_version=(installed if installed is not None else facts.installed) or "",
    )
    script = launcher_script(
        root=facts.root,
        folders=[deploys, logs],
        record_file=f"{deploys}/{run_id}.json",
        record_json=json.dumps(record.to_json()),
        log=record.log,
        pid_file=record.pid_file,
        exit_file=record.exit_file,
        argv=argv,
    )
    try:
        done = session.run(script, what=f"starting the {action}")
    except ConnectionLost as exc:
        raise ConnectionLost(
            f"{session.name}: the connection was lost while starting the {action} there, so whether it started is "
            f"unknown ({exc.message.removeprefix(session.name + ': ')}).",
            f"`inv deploy --attach --host {session.name}` follows it if it started (run {run_id}); the same deploy "
            "again attaches to it, or starts it if it never started.",
        ) from None
    pid = next((line[4:] for line in done.stdout.splitlines() if line.startswith("pid=")), "")
    if done.exited != 0 or not pid.isdigit():
        raise RemoteError(
            f"{session.name}: could not start {action} there: {done.last_error()}",
            f"The host needs sh, setsid and nohup on its PATH; `inv setup-host --host {session.name}` checks them.",
        )
    return dataclasses.replace(record, launch_pid=int(pid))


#: The most bytes of one line from a host held while waiting for its newline; the rest of a longer
#: line is dropped (said so), so a host cannot make this process hold its whole log.
MAX_LINE_BYTES = 64 * 1024


class _LineEmitter:
    """Splits streamed bytes into lines, each logged with the host's name in front; a line longer
    than :data:`MAX_LINE_BYTES` is cut (the operator's terminal and memory are bounded)."""

    def __init__(self, name: str, log: Log) -> None:
        self.prefix = f"[{name}] "
        self.log = log
        self.pending = b""
        self.last_error = ""
        self.dropped = 0  # bytes of the current over-long line not kept

    def feed(self, data: bytes) -> None:
        self.pending += data
        *lines, self.pending = self.pending.split(b"\n")
        for raw in lines:
            self._emit(raw)
        if len(self.pending) > MAX_LINE_BYTES:
            if not self.dropped:
                self._emit(self.pending[:MAX_LINE_BYTES], cut=True)
            self.dropped += len(self.pending) - (0 if self.dropped else MAX_LINE_BYTES)
            self.pending = b""

    def flush(self) -> None:
        if self.pending or self.dropped:
            self._emit(self.pending)
            self.pending = b""

    def _emit(self, raw: bytes, *, cut: bool = False) -> None:
        if self.dropped and not cut:  # the end of an over-long line: said once, not printed
            self.log(f"{self.prefix}(a line of more than {MAX_LINE_BYTES} bytes was cut: {self.dropped} bytes dropped)")
            self.dropped = 0
            return
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
    # the wrapper leads its own process group (setsid): the run is alive while any process of that
    # group is, so a task whose wrapper alone was killed is still followed
    done = session.run(run_state_script(record.pid_file, record.launch_pid), what="checking the run")
    answer = [line for line in done.stdout.splitlines() if line in (RUN_ALIVE, RUN_GONE)]
    if not answer:
        raise ConnectionLost(
            f"{session.name}: checking the run gave no answer (exit {done.exited}: {done.last_error()}).",
            "Its state there is unknown.",
        )
    if answer[-1] == RUN_ALIVE:
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
        if time.monotonic() > deadline:
            emitter.flush()
            return RunOutcome("running", None, f"still running after {settings.deploy_timeout:.0f} s"), ""
        time.sleep(POLL_SECONDS)


def follow_and_judge(session: HostSession, record: RunRecord, result: HostResult, log: Log, *, offset: int = 0) -> None:
    """Follow ``record``'s run to its end (:func:`follow_run`), read the host's facts after it and
    fill ``result`` with its true outcome (:func:`patchflow.remote.outcome.judge_run`); log how a run
    that died ended and the command that recovers what it left."""
    outcome, last_error = follow_run(session, record, log=log, offset=offset)
    after: HostFacts | None = None
    if outcome.state in ("exited", "vanished"):
        try:
            after = fetch_facts(session, health=True)
        except PatchflowError as exc:
            log(f"[{session.name}] could not read the outcome there: {exc.message}")
            outcome = RunOutcome("unknown", None, f"its outcome could not be read ({exc.message})")
    judge_run(result, record, outcome, last_error, after)
    if outcome.death() is not None:
        log(f"[{session.name}] {result.result} (exit {result.exit_code}): {result.detail}")
    if result.recovery:
        log(f"[{session.name}] recover with: {result.recovery}  ({result.recovery_does})")
    elif result.recovery_does:
        log(f"[{session.name}] to recover: {result.recovery_does}")
