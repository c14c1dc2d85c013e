"""Smoke checks: PATCH_SYSTEM.md's "test the critical features", done by the apply itself.

The ``smoke_checks`` setting lists checks (comma separated) that run after the health check and
before the commit; one that fails makes the apply roll back automatically, like a failed health
check. Each entry is either

* ``<url> [<status>] [<field>=<value>]``: a GET of ``url`` must answer ``status`` (default 200) and,
  with ``field=value``, a JSON body whose ``field`` (dotted: ``data.items.0.id``) equals ``value``
  (compared as text; ``true``/``false``/``null`` as JSON writes them), e.g.
  ``http://localhost:4000/api/projects?limit=1 200 ok=true``;
* ``cmd:<command>``: a command run in the install's folder (no shell; the app's environment) that
  must exit 0 within :data:`COMMAND_TIMEOUT` seconds, e.g. ``cmd:node scripts/smoke.js``.
"""

from __future__ import annotations

import json
import shlex
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from patchflow.errors import ConfigError
from patchflow.runner import Runner

COMMAND_TIMEOUT = 60.0
HTTP_TIMEOUT = 10.0


@dataclass(frozen=True)
class SmokeCheck:
    """One check: a URL (``status``, optional ``field``/``value``) or a command (``argv``)."""

    text: str
    url: str = ""
    status: int = 200
    field: str = ""
    value: str = ""
    argv: tuple[str, ...] = ()


def parse_checks(entries: Sequence[str]) -> list[SmokeCheck]:
    """The checks of the ``smoke_checks`` setting (see the module docstring).

    Raises:
        ConfigError: an entry is neither a URL check nor ``cmd:`` with a command (named).
    """
    checks = []
    for raw in entries:
        text = raw.strip()
        if not text:
            continue
        if text.startswith("cmd:"):
            try:
                argv = tuple(shlex.split(text[4:]))
            except ValueError as exc:
                argv, why = (), str(exc)
            else:
                why = "no command after cmd:"
            if not argv:
                raise ConfigError(f"The smoke check {text!r} cannot be run: {why}.", _HINT)
            checks.append(SmokeCheck(text, argv=argv))
            continue
        url, *rest = text.split()
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"The smoke check {text!r} is neither an http(s) URL nor cmd:<command>.", _HINT)
        status, field, value = 200, "", ""
        for part in rest:
            if part.isdigit() and 100 <= int(part) <= 599:
                status = int(part)
            elif "=" in part:
                field, _, value = part.partition("=")
            else:
                raise ConfigError(f"The smoke check {text!r} has {part!r}: expected a status or field=value.", _HINT)
        checks.append(SmokeCheck(text, url=url, status=status, field=field, value=value))
    return checks


_HINT = (
    "Write each check as `<url> [<status>] [<field>=<value>]` or `cmd:<command>`, comma separated, in the "
    "smoke_checks setting. Nothing was changed."
)


def _field(data: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            raise KeyError(path)
    return data


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _check_url(check: SmokeCheck) -> str:
    headers = {"Accept": "application/json", "User-Agent": "patchflow"}
    request = urllib.request.Request(check.url, headers=headers)  # noqa: S310 - http(s) checked when parsed
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=HTTP_TIMEOUT) as response:
            status, body = response.status, response.read(1024 * 1024)
    except urllib.error.HTTPError as exc:
        status, body = exc.code, b""
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"no answer ({getattr(exc, 'reason', exc)})"
    if status != check.status:
        return f"HTTP {status}, expected {check.status}"
    if check.field:
        try:
            found = _as_text(_field(json.loads(body), check.field))
        except (ValueError, KeyError):
            return f"no JSON field {check.field} in the answer"
        if found != check.value:
            return f"{check.field} is {found!r}, expected {check.value!r}"
    return ""


def run_smoke_checks(checks: Sequence[SmokeCheck], runner: Runner, root: Any, log: Callable[[str], None]) -> list[str]:
    """Run every check (one line each on ``log``); the failures, ``<check>: <why>``."""
    failures = []
    for check in checks:
        if check.argv:
            try:
                done = runner.run(list(check.argv), cwd=root, check=False, timeout=COMMAND_TIMEOUT, what="smoke check")
                why = (
                    ""
                    if done.returncode == 0
                    else f"exit {done.returncode}: {(done.stderr or done.stdout).strip()[-300:]}"
                )
            except Exception as exc:
                why = str(getattr(exc, "message", exc))
        else:
            why = _check_url(check)
        log(f"   smoke {check.text}: {why or 'ok'}")
        if why:
            failures.append(f"{check.text}: {why}")
    return failures
