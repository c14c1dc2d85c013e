"""Notifications: PATCH_SYSTEM.md's "notify that the deploy succeeded", sent by the apply itself.

The ``notify_urls`` setting lists Apprise URLs (https://github.com/caronc/apprise: Slack, Teams,
Discord, e-mail ``mailto://``, a webhook ``json://``...; this host's, never carried by a patch) that
hear of each apply and rollback: when it starts (the plan was confirmed), and how it ended
(success, rolled back, failed, rollback incomplete), with the host, the versions, the stopped window
and, when something is left to do, the command that recovers. A notification that cannot be sent is
a line in the run's output, never a failure of the run; each channel gets at most
:data:`SEND_SECONDS` seconds (Apprise's connect and read timeouts).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence

SEND_SECONDS = 5
TITLES = {
    "started": "started",
    "success": "succeeded",
    "rolled_back": "FAILED, rolled back automatically",
    "failed": "FAILED before anything changed",
    "rollback_failed": "FAILED, rollback incomplete: the install may be down",
}


def message(
    action: str,
    result: str,
    version: str,
    previous: str,
    *,
    stopped_seconds: float | None = None,
    detail: str = "",
    recovery: str = "",
) -> tuple[str, str]:
    """``(title, body)`` of one notification (see the module docstring)."""
    host = socket.gethostname()
    title = f"[{host}] {action} of {version} {TITLES.get(result, result)}"
    lines = [
        f"host: {host}",
        f"{action}: {previous or '?'} -> {version}" if action == "apply" else f"{action}: {version}",
    ]
    lines.append(f"result: {result}")
    if stopped_seconds is not None:
        lines.append(f"services were down for {stopped_seconds:.1f} s")
    if detail:
        lines.append(detail)
    if recovery:
        lines.append(f"to recover: {recovery}")
    return title, "\n".join(lines)


def _with_timeouts(url: str) -> str:
    if "cto=" in url or "rto=" in url:
        return url
    return f"{url}{'&' if '?' in url else '?'}cto={SEND_SECONDS}&rto={SEND_SECONDS}"


def send(urls: Sequence[str], title: str, body: str, failed: bool, log: Callable[[str], None]) -> bool:
    """Send one notification to every URL; True when all took it. Never raises: what could not be
    sent is one line on ``log``."""
    if not urls:
        return True
    from patchflow.redact import redact

    title, body = redact(title), redact(body)
    try:
        import apprise

        channels = apprise.Apprise()
        bad = [url for url in urls if not channels.add(_with_timeouts(url))]
        kind = apprise.NotifyType.FAILURE if failed else apprise.NotifyType.SUCCESS
        sent = bool(channels.notify(title=title, body=body, notify_type=kind)) if len(channels) else False
    except Exception as exc:
        log(f"   !! notification not sent: {exc}")
        return False
    if bad:
        log(f"   !! notification: {len(bad)} notify_urls entry(ies) are not Apprise URLs Apprise knows")
    if not sent:
        log("   !! notification: not every channel took it (notify_urls; the run's result stands)")
    return sent and not bad
