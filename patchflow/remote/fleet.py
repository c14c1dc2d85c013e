"""Several hosts at once: sessions opened and closed together, work spread over them, errors combined.

:class:`Fleet` connects every host before anything is done anywhere (every host key checked
first: one refusal stops the deploy before anything was sent to any host) and reads every host's
facts in parallel; :func:`each_host` runs work on several hosts at a time, returning each host's
error in its place; :func:`fleet_status` is ``patch-status --host/--hosts/--role``.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from patchflow.config import Settings
from patchflow.errors import LockError, PatchflowError, RemoteError
from patchflow.remote.facts import fetch_facts
from patchflow.remote.hosts import Log, Target, quiet
from patchflow.remote.session import HostSession
from patchflow.remote.wire import HostFacts
from patchflow.version import PatchVersion

T = TypeVar("T")
R = TypeVar("R")


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
            raise combined_error(problems, "Nothing was done on any host.")

    def facts(self, *, version: PatchVersion | None = None, health: bool = False) -> dict[str, HostFacts]:
        """``host-facts`` of every host (in parallel).

        Raises:
            RemoteError: one or more hosts failed (all listed).
        """
        sessions = list(self.sessions.values())
        outcomes = each_host(sessions, lambda s: fetch_facts(s, version=version, health=health), 8)
        problems = [o for o in outcomes if isinstance(o, PatchflowError)]
        if problems:
            raise combined_error(problems, "Nothing was done on any host.")
        return {s.name: o for s, o in zip(sessions, outcomes, strict=True) if isinstance(o, HostFacts)}


def combined_error(problems: Sequence[PatchflowError], after: str) -> PatchflowError:
    """One error for several hosts' problems (a single one is returned as it is, ``after`` added to
    its message); the exit code is theirs when they share one, else 6."""
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

    with Fleet(settings, targets, accept_new_key=accept_new_key, log=quiet) as fleet:
        outcomes = each_host(list(fleet.sessions.values()), lambda s: fetch_facts(s, health=True, history=history), 8)
    return [
        HostStatus(t, o, None) if isinstance(o, HostFacts) else HostStatus(t, None, o)
        for t, o in zip(targets, outcomes, strict=True)
    ]
