"""How deploy judges a remote run's outcome: from how the run ended *and* what the server says now.

A detached apply or rollback (see :mod:`patchflow.remote.runs`) ends in one of four ways
(:class:`RunOutcome`): it exited with its own code; it **died without finishing** (killed by a
signal, so its wrapper wrote ``128 + n`` such as 137 for SIGKILL or the out-of-memory killer, or it
``vanished`` with its wrapper: killed with its whole process group, or the host restarted); it was
still running when deploy stopped following it; or the host stopped answering (``unknown``).

The exit code alone is never the answer. :func:`judge_run` reads the host's facts after the run
(``host-facts``: its ``VERSION``, its history, its journal, whether the lock holder is alive, and
the recovery command its ``patch-status`` computes) and gives each host one result and the exit
code the README documents for it. For a run that died:

* a live process holds the lock there: ``unknown`` (6), that process named;
* a journal is left and the apply had not committed (or it was a rollback): ``interrupted``, exit 4
  (the install is left mid-way), with the one command that recovers it (:func:`remote_recovery`);
* the apply had committed (with or without its journal): ``updated``, exit 0, what the killed run
  left (lock, clean-up) named with the command that clears it;
* no journal, and the history records this run rolled back, or the version before the run is still
  installed with no record of it: exit 2 (the old version was kept), any stale lock named with its
  recovery;
* anything else: ``unknown`` (6).

The recovery is the host's own (``patch-status`` there, run by ``host-facts``), given in the form
an operator runs from this checkout (``inv rollback-patch --host H ...``, ``inv deploy --host H
...``); deploy prints it, and ``deploy --attach`` later gives the same answer from the same facts.
"""

from __future__ import annotations

import shlex
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field

from patchflow.errors import RemoteError
from patchflow.remote.wire import HostFacts, RunRecord

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
#: a wrapper's exit code above this is 128 + the number of the signal that killed the task
SIGNALLED = 128
OK_RESULTS = ("updated", "already", "uploaded", "rolled back", "ok")
#: what the services are, by the journal's ``services`` (see :func:`patchflow.remote.serverside.journal_facts`)
SERVICES = {
    "untouched": "its services were never stopped",
    "stopped": "the services are stopped (the site is down)",
    "started": "the services of the version it was going to were started, not yet proven healthy",
    "restarted": "its automatic rollback had started the old version again",
}


@dataclass(frozen=True)
class RunOutcome:
    """How a detached run ended: ``state`` is ``exited`` (``exit_code``), ``vanished`` (no exit
    code and no process: killed with its wrapper, or the host restarted), ``running`` (still running
    when deploy stopped following it) or ``unknown`` (the host stopped answering)."""

    state: str
    exit_code: int | None = None
    detail: str = ""

    def death(self) -> str | None:
        """How the run died without finishing, for messages; None when it ended by itself (or
        deploy does not know how it ended)."""
        if self.state == "vanished":
            return "ended without an exit code (killed with its process group, or the host restarted)"
        code = self.exit_code
        if self.state != "exited" or code is None or code <= SIGNALLED:
            return None
        try:
            name = signal.Signals(code - SIGNALLED).name
        except ValueError:
            name = f"signal {code - SIGNALLED}"
        return f"was killed by {name}" + (" (kill -9, or the out-of-memory killer)" if name == "SIGKILL" else "")


@dataclass
class HostResult:
    """One host's line of the summary: versions ``before`` and ``after``, ``result`` (updated,
    already, uploaded, rolled back, failed, failed and rolled back, rollback incomplete, locked,
    refused, interrupted, unknown, running, skipped), the ``exit_code`` it stands for and a
    ``detail``; ``recovery`` is the command (run from this checkout) that recovers what a run that
    died left on the host, ``recovery_does`` what it does (or, without a command, what to do)."""

    name: str
    role: str = ""
    before: str | None = None
    after: str | None = None
    result: str = "skipped"
    exit_code: int = 0
    detail: str = ""
    recovery: str = ""
    recovery_does: str = ""

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


def _history_since(facts: HostFacts, action: str, since: str, version: str) -> Mapping[str, object] | None:
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


def remote_recovery(name: str, advice: Mapping[str, object] | None, version: str) -> tuple[str, str]:
    """The command an operator runs from this checkout to carry out, on host ``name``, the recovery
    that host's ``patch-status`` computed (``advice``: its ``recovery``, ``{"command", "args",
    "does"}`` from :func:`patchflow.lifecycle.recovery.recovery_advice`), and what it does.

    ``rollback-patch ARGS`` there is ``inv rollback-patch --host NAME ARGS`` here; ``apply-patch
    --version V [--break-lock]`` there is ``inv deploy --host NAME --version V [--break-lock]
    --yes`` here (deploy runs apply-patch there, recovering first, also where V is installed). When
    the advice names another version than ``version`` (the one this run applied), only to take over
    a stale lock on the version still installed, deploy of ``version`` does that too and then
    applies it. Returns ``("", does)`` when no command can recover (a run still active, a damaged
    journal: ``does`` says what to do), ``("", "")`` when nothing needs recovering.
    """
    if not advice:
        return "", ""
    does = str(advice.get("does") or "")
    given = advice.get("args")
    args = [str(a) for a in given] if isinstance(given, list) else []
    if not advice.get("command") or not args:
        return "", does
    task, rest = args[0], args[1:]
    if task == "rollback-patch":
        return shlex.join(["inv", "rollback-patch", "--host", name, *rest]), does
    if task == "apply-patch" and "--version" in rest[:-1]:
        advised = rest[rest.index("--version") + 1]
        breaking = ["--break-lock"] if "--break-lock" in rest else []
        chosen = advised
        if version and advised != version:
            chosen = version
            does = f"takes over what the killed run left ({does}), then applies {version} there"
        return shlex.join(["inv", "deploy", "--host", name, "--version", chosen, *breaking, "--yes"]), does
    return "", f"on {name}, in its checkout: {advice.get('command')} ({does})"


def judge_run(
    result: HostResult, record: RunRecord, outcome: RunOutcome, last_error: str, after: HostFacts | None
) -> None:
    """Fill ``result`` from how the run ended and what the host says now (its installed version,
    history, journal and lock): the true outcome, whatever the connection did meanwhile. A run that
    died without finishing is judged by :func:`_judge_death` (see the module docstring)."""
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
    if result.before is None:
        result.before = (str(seen.get("from_version") or "") if seen else "") or record.from_version or None
    death = outcome.death()
    if death is not None:
        _judge_death(result, record, death, after, seen)
        return
    code = outcome.exit_code if outcome.exit_code is not None else 2
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


def _judge_death(
    result: HostResult, record: RunRecord, death: str, after: HostFacts | None, seen: Mapping[str, object] | None
) -> None:
    """Judge a run that died without finishing from the host's state (see the module docstring)."""
    what = f"the {record.action} of {record.version or 'the installed version'} there {death}"
    if after is None:
        result.result, result.exit_code = "unknown", RemoteError.exit_code
        result.detail = f"{what}; what it left could not be read: `inv patch-status --host {result.name}`"
        return
    lock = after.lock
    if lock is not None and lock.get("state") in ("held", "held-too-long"):
        result.result, result.exit_code = "unknown", RemoteError.exit_code
        result.detail = (
            f"{what}, and a live process holds the install's lock there now: the {lock.get('action')} of "
            f"{lock.get('version')} by {lock.get('user')}@{lock.get('host')} (pid {lock.get('pid')}); "
            f"`inv patch-status --host {result.name}` shows when it ends"
        )
        return
    result.recovery, result.recovery_does = remote_recovery(
        result.name, after.recovery, record.version if record.action == "apply" else ""
    )
    left = [f"VERSION there: {after.installed or 'unreadable'}"]
    if lock:
        left.append(f"its lock is left (pid {lock.get('pid')}, no longer running)")
    journal = after.journal
    interrupted = after.interrupted
    if interrupted is not None:
        if journal and journal.get("committed"):
            result.result, result.exit_code = "updated", 0
            result.detail = (
                f"{what} after its commit: {record.version} is installed and was proven healthy; "
                f"its journal is left for the clean-up; {'; '.join(left)}"
            )
            return
        step = interrupted.get("step")
        where = f"its journal there stops at step {step} ({interrupted.get('step_state')})" if step else "its journal"
        if interrupted.get("action") == "apply" and interrupted.get("phase") == "rolling_back":
            where += ", in its automatic rollback"
        services = journal.get("services") if journal else None
        if services in SERVICES:
            where += f"; {SERVICES[str(services)]}"
        if journal and journal.get("damaged"):
            where = f"its journal there is damaged ({journal.get('damaged')})"
        result.result, result.exit_code = "interrupted", 4
        result.detail = f"{what}: {where}; {'; '.join(left)}; the install is left mid-way"
        return
    history_result = str(seen.get("result")) if seen else ""
    if history_result == "success":
        result.result = "rolled back" if record.action == "rollback" else "updated"
        result.exit_code = 0
        result.detail = f"{what} after it completed; {'; '.join(left)}"
    elif record.action == "apply" and history_result in ("rolled_back", "interrupted"):
        result.result, result.exit_code = "failed, rolled back", 2
        result.detail = f"{what} after it was undone ({history_result}); {'; '.join(left)}"
    elif seen is None and after.installed is not None and after.installed == result.before:
        result.result, result.exit_code = "interrupted", 2
        result.detail = f"{what} before it changed anything: {result.before} is still installed; {'; '.join(left)}"
    else:
        result.result, result.exit_code = "unknown", RemoteError.exit_code
        result.detail = (
            f"{what}, and the host's record does not tell how far it got ({'; '.join(left)}"
            + (f"; history: {history_result}" if history_result else "")
            + f"): check it with `inv patch-status --host {result.name}`"
        )
