"""Fault hooks the crash-safety tests inject: kill this process at a named point, cut an upload.

One :class:`FaultHooks` object rides on the settings every command gets (``settings.faults``); it
is :data:`NO_FAULTS` (does nothing) unless a test builds another. Tests reach a patchflow they run
as a subprocess (an ``inv`` task, a remote apply over SSH, the detached trash deleter) through two
environment variables (or, for a server reached over SSH, the same keys in its ``.env``), read once
by :func:`FaultHooks.from_environ` at the edge (:func:`patchflow.config.load_settings`); they are
not settings: no settings table or pyproject/host.toml key names them.

* ``PATCHFLOW_TEST_KILL_AT=<point>[:after][=SIGNAL]``: send this process a real signal (default
  SIGKILL) before (or after) the point: a step or undo name of a lifecycle list, or one of the
  points inside steps (``switch-file#<n>``, ``switch-file@<path>``, ``spawn-<service>:after``,
  ``release``, ``empty-trash``, ``journal-opened``, ``manifest-recorded``, ``receive-check``,
  ``trash-deleter``, ``snapshot-recorded``, ``snapshot-created``, ``restore-created``, ``restore-loaded``,
  ``restore-checked``, ``snapshot-swap``, ``database-restored``).
* ``PATCHFLOW_TEST_UPLOAD_CUT=<bytes>``: deploy drops the SSH connection once that many bytes of an
  upload were sent (the resumable upload's tests).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass

KILL_AT_VARIABLE = "PATCHFLOW_TEST_KILL_AT"
UPLOAD_CUT_VARIABLE = "PATCHFLOW_TEST_UPLOAD_CUT"
_FIRED: set[str] = set()


@dataclass(frozen=True)
class FaultHooks:
    """Where a test wants this process hurt: ``kill_at`` (``<point>[:after][=SIGNAL]``, empty: never)
    and ``upload_cut`` (bytes after which an upload's connection is dropped, 0: never)."""

    kill_at: str = ""
    upload_cut: int = 0

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> FaultHooks:
        """The hooks named by ``PATCHFLOW_TEST_KILL_AT`` / ``PATCHFLOW_TEST_UPLOAD_CUT`` in ``environ``.

        Raises:
            ValueError: ``PATCHFLOW_TEST_UPLOAD_CUT`` is not a whole number of bytes.
        """
        cut = environ.get(UPLOAD_CUT_VARIABLE, "").strip()
        try:
            upload_cut = int(cut) if cut else 0
        except ValueError:
            raise ValueError(f"{UPLOAD_CUT_VARIABLE}={cut!r} is not a number of bytes") from None
        return cls(kill_at=environ.get(KILL_AT_VARIABLE, "").strip(), upload_cut=upload_cut)

    def checkpoint(self, point: str, when: str = "before") -> None:
        """Send this process the signal ``kill_at`` asks for when it names ``point`` at ``when``
        (``before``/``after``, e.g. ``migrate:after=SIGTERM``), the first time only (a step that is
        retried, as a restore after the server came back, runs on); otherwise do nothing."""
        if not self.kill_at:
            return
        where, _, signame = self.kill_at.partition("=")
        name, _, moment = where.partition(":")
        if name == point and (moment or "before") == when and not _FIRED:
            _FIRED.add(self.kill_at)  # once per process: a step retried after SIGSTOP/SIGCONT goes on
            os.kill(os.getpid(), signal.Signals[signame or "SIGKILL"])

    def kill_point(self, name: str) -> Callable[[str], None]:
        """A hook inside a step: a callable whose ``n``-th call, with ``label``, does what
        :meth:`checkpoint` does for ``<name>#<n>`` and for ``<name>@<label>`` (e.g.
        ``switch-file@public/a.js=SIGINT``: the switch is interrupted with the temporary copy of
        ``public/a.js`` written and not yet renamed). A no-op when ``kill_at`` is empty."""
        if not self.kill_at:
            return lambda label: None
        count = 0

        def hit(label: str) -> None:
            nonlocal count
            count += 1
            self.checkpoint(f"{name}#{count}", "before")
            self.checkpoint(f"{name}@{label}", "before")

        return hit

    def upload_chunk(self, size: int, sent: int) -> int:
        """``size`` bytes, or fewer so that an upload with ``sent`` bytes gone stops exactly at
        ``upload_cut``."""
        return min(size, self.upload_cut - sent) if self.upload_cut > sent else size

    def upload_cut_reached(self, sent: int) -> bool:
        """True once ``sent`` bytes reach ``upload_cut`` (the connection is then dropped)."""
        return bool(self.upload_cut) and sent >= self.upload_cut

    def child_environ(self, environ: Mapping[str, str]) -> dict[str, str]:
        """``environ`` for a child patchflow process carrying these hooks on (and no others)."""
        env = {k: v for k, v in environ.items() if k not in (KILL_AT_VARIABLE, UPLOAD_CUT_VARIABLE)}
        if self.kill_at:
            env[KILL_AT_VARIABLE] = self.kill_at
        if self.upload_cut:
            env[UPLOAD_CUT_VARIABLE] = str(self.upload_cut)
        return env


NO_FAULTS = FaultHooks()
