"""The watch window: PATCH_SYSTEM.md's "monitor logs for 30 minutes", done by the apply itself
(RAUC and Mender commit an update only after it proves itself; Argo Rollouts watches after a rollout).

With ``watch_seconds`` (or ``apply-patch --watch SECONDS``) an apply that committed keeps watching the
new version for that long before it returns: every :data:`ROUND_SECONDS` it probes the health
URL(s) (healthy, with the new version), checks that the app's services still run and did not
restart (a changed pid), and reads what they logged since the last round for ``watch_errors``
(regular expressions; the default catches a Node + Prisma app's fatal errors). When any of them
fails (the health check :data:`HEALTH_FAILURES` rounds running, so one slow answer is not a
failure) the apply rolls the version back at once by the normal rollback (the database restored
beside, the displaced one kept and named, so no row written during the window is lost for good).

While it watches, ``.patchflow/watch.json`` (sealed) says which version, until when and which
process; ``patch-status`` shows ``watching until HH:MM`` (``watch`` in ``--json``); ``inv accept``
ends the window early, keeping the version. The apply lock is given back before the window: the
rollback the window starts takes it again like any rollback. A deploy runs the apply detached on
each host, so the window survives the operator's SSH session there.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from patchflow.errors import ConfigError
from patchflow.health import judge, probe
from patchflow.lifecycle.journal import write_json_atomic
from patchflow.lock import pid_alive
from patchflow.state_files import StateFileError, read_sealed, seal, unsealed

if TYPE_CHECKING:
    from patchflow.context import Context

ROUND_SECONDS = 1.0
HEALTH_FAILURES = 3
WATCH_FILE = "watch.json"


def watch_record(state: Path) -> dict[str, object] | None:
    """The running watch window of the install whose state folder is ``state`` (version, until,
    pid), None when there is none or its process is gone."""
    try:
        data = read_sealed(state / WATCH_FILE, "the watch window record", "")
    except StateFileError:
        return None
    if data is None:
        return None
    record = unsealed(data)
    pid = record.get("pid")
    if not isinstance(pid, int) or not pid_alive(pid):
        return None
    return record


def accept(ctx: Context) -> dict[str, object] | None:
    """End the running watch window early, keeping the version; returns what it watched (None: none)."""
    record = watch_record(ctx.paths.state)
    (ctx.paths.state / WATCH_FILE).unlink(missing_ok=True)
    return record


class _Logs:
    """What the app's services logged since the window began, one round at a time."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.offsets: dict[str, int] = {}
        self.since = time.time()
        for name in ctx.services.app_services():
            path = ctx.paths.logs / f"{name}.log"
            self.offsets[name] = path.stat().st_size if path.is_file() else 0

    def new_text(self) -> str:
        if self.ctx.services.kind == "command":
            parts = []
            for name, offset in self.offsets.items():
                path = self.ctx.paths.logs / f"{name}.log"
                try:
                    with open(path, "rb") as handle:
                        handle.seek(offset)
                        data = handle.read(4 * 1024 * 1024)
                except OSError:
                    continue
                self.offsets[name] = offset + len(data)
                parts.append(data.decode("utf-8", "replace"))
            return "".join(parts)
        if self.ctx.services.kind == "compose":
            prefix = self.ctx.services.prefix()  # type: ignore[attr-defined]
            since, self.since = self.since, time.time()
            done = self.ctx.runner.run(
                [*prefix, "logs", "--no-color", "--since", str(int(since)), *self.ctx.services.app_services()],
                check=False,
                timeout=30,
                what="docker compose logs",
            )
            return done.stdout
        return ""


def compile_errors(patterns: Sequence[str]) -> list[re.Pattern[str]]:
    """The ``watch_errors`` patterns, compiled.

    Raises:
        ConfigError: one is not a regular expression (named); checked before an apply starts.
    """
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise ConfigError(
                f"The watch_errors pattern {pattern!r} is not a regular expression: {exc}.",
                "Fix the watch_errors setting (Python regular expressions, comma separated). Nothing was changed.",
            ) from None
    return compiled


def _failed_round(ctx: Context, tracked: dict[str, str], logs: _Logs, patterns: list[re.Pattern[str]]) -> str:
    """Why this round of the window fails ("" when it passes); its health part counts separately."""
    for state in ctx.services.status():
        if state.name not in tracked:
            continue
        if state.state not in ("running", "healthy"):
            return f"service {state.name} is {state.state} {state.detail}".strip()
        if ctx.services.kind == "command" and state.detail != tracked[state.name]:
            return f"service {state.name} restarted ({tracked[state.name]} -> {state.detail})"
    text = logs.new_text()
    found = next((m.group(0) for p in patterns if (m := p.search(text))), None)
    return f"its log shows {found!r} (watch_errors)" if found else ""


def _health(ctx: Context, version: str) -> str | None:
    settings = ctx.settings
    why = None
    for url in settings.health_url:
        answer = probe(
            url,
            settings.health_version_field,
            status_field=settings.health_status_field,
            follow_redirects=settings.health_follow_redirects,
        )
        why = why or judge(
            answer,
            expect_version=version,
            version_field=settings.health_version_field,
            healthy_statuses=settings.health_status_ok,
        )
    return why


def watch(ctx: Context, version: str, seconds: float, log: Callable[[str], None]) -> tuple[str, str]:
    """Watch the new ``version`` for ``seconds`` (see the module docstring). Returns ``(outcome,
    why)``: ``("passed", "")``, ``("accepted", "")`` (ended early by ``inv accept``, also when it
    came while a round was failing) or ``("rolled_back", why it failed)`` (the caller rolls back).
    Never raises: a round that cannot look (the service manager or the logs failing) counts as a
    failed health round."""
    patterns = compile_errors(ctx.settings.watch_errors)
    until = datetime.now(UTC) + timedelta(seconds=seconds)
    path = ctx.paths.state / WATCH_FILE
    write_json_atomic(
        path, seal({"version": version, "until": until.strftime("%Y-%m-%dT%H:%M:%SZ"), "pid": os.getpid()})
    )
    log(f"-> watch {version} until {until.strftime('%H:%M:%S')} UTC ({seconds:.0f} s; `inv accept` ends it early)")
    unhealthy = 0
    deadline = time.monotonic() + seconds
    try:
        try:
            logs = _Logs(ctx)
            apps = set(ctx.services.app_services())
            # the app's services that run now: a one-off or exited container of the project is not one
            running = ("running", "healthy")
            tracked = {s.name: s.detail for s in ctx.services.status() if s.name in apps and s.state in running}
        except Exception as exc:
            return "rolled_back", f"the services could not be read ({getattr(exc, 'message', exc)})"
        while time.monotonic() < deadline:
            if not path.exists():
                log("   watch ended early (accepted): the version stays")
                return "accepted", ""
            try:
                why = _failed_round(ctx, tracked, logs, patterns)
                health = _health(ctx, version)
            except Exception as exc:
                why, health = "", f"the round could not look ({getattr(exc, 'message', exc)})"
            if not why:
                unhealthy = unhealthy + 1 if health else 0
                if unhealthy >= HEALTH_FAILURES:
                    why = f"unhealthy {HEALTH_FAILURES} times in a row: {health}"
            if why:
                if not path.exists():  # accepted while this round looked: the operator's word stands
                    log("   watch ended early (accepted): the version stays")
                    return "accepted", ""
                return "rolled_back", why
            time.sleep(ROUND_SECONDS)
        log(f"   watch passed: {version} stayed healthy for {seconds:.0f} s")
        return "passed", ""
    finally:
        path.unlink(missing_ok=True)
