"""HTTP health checks: poll with backoff until a deadline; only a real success passes.

An answer is healthy when:

* the status is 2xx; a redirect (3xx) is not followed and counts as unhealthy unless
  ``follow_redirects`` (a /health that redirects to a login page that answers 200 is not healthy);
* a JSON body with a status field (``status_field``, default ``status``) carries one of the values
  that mean healthy (``ok``, ``healthy``, ``up``, ``pass``...); a 200 saying ``"status": "error"``
  is not healthy;
* it comes from what this apply deployed (field failure C16): when the body reports the version
  (``version_field``) it must equal the expected one, and the expected and actual values are
  named on a mismatch; when the body has no version (PrimeFlow's ``/health`` answers
  ``{status, timestamp, uptime}``), ``proof(url)`` must show the answer comes from the new
  process (the service's new pid listens on the port, or the container was created after the
  switch).

Requests to loopback hosts never go through a proxy configured on the machine.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from patchflow.errors import HealthCheckError

LOOPBACK = {"localhost", "127.0.0.1", "::1", "[::1]"}
HEALTHY_STATUSES = ("ok", "healthy", "up", "pass", "passing", "success", "ready", "green")


@dataclass(frozen=True)
class Probe:
    """One answer: ``status`` (HTTP code, 0 when no connection), the ``version`` and ``reported``
    status read from a JSON body (None when absent), ``detail`` (human text)."""

    url: str
    status: int
    version: str | None
    detail: str
    reported: str | None = None
    location: str | None = None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx answer itself is returned (as an HTTPError)


def _opener(url: str, follow_redirects: bool) -> urllib.request.OpenerDirector:
    handlers: list[urllib.request.BaseHandler] = []
    host = urllib.parse.urlsplit(url).hostname or ""
    if host in LOOPBACK:
        handlers.append(urllib.request.ProxyHandler({}))
    if not follow_redirects:
        handlers.append(_NoRedirect())
    return urllib.request.build_opener(*handlers)


def probe(
    url: str,
    version_field: str = "version",
    timeout: float = 5.0,
    *,
    status_field: str = "status",
    follow_redirects: bool = False,
) -> Probe:
    """GET ``url`` once (``timeout`` seconds) and describe the answer; never raises."""
    if not url.startswith(("http://", "https://")):
        return Probe(url, 0, None, "not an http:// or https:// URL")
    headers = {"Accept": "application/json", "User-Agent": "patchflow"}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - scheme checked above
    try:
        with _opener(url, follow_redirects).open(request, timeout=timeout) as response:
            status = response.status
            body = response.read(65536)
    except urllib.error.HTTPError as exc:
        location = exc.headers.get("Location") if exc.headers else None
        detail = f"HTTP {exc.code}" + (f" redirect to {location}" if location and 300 <= exc.code < 400 else "")
        return Probe(url, exc.code, None, detail, location=location)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return Probe(url, 0, None, f"no answer ({reason})")
    version = reported = None
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        if version_field and version_field in data:
            version = str(data[version_field])
        if status_field and status_field in data and isinstance(data[status_field], (str, bool, int)):
            reported = str(data[status_field])
    return Probe(url, status, version, f"HTTP {status}", reported)


def accepts_connections(url: str, timeout: float = 1.0) -> bool:
    """True when something accepts a TCP connection at the host and port of ``url`` (readiness of
    a starting service; whether it is *healthy* is :func:`wait_healthy`'s question)."""
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname:
        return False
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def same_version(reported: str, expected: str) -> bool:
    """True when ``reported`` names ``expected`` (``v2.3.0`` and ``2.3.0`` are the same version)."""
    from patchflow.errors import VersionError
    from patchflow.version import parse_version

    if reported.strip() == expected.strip():
        return True
    try:
        return parse_version(reported) == parse_version(expected)
    except VersionError:
        return False


def judge(
    answer: Probe,
    *,
    expect_version: str | None,
    version_field: str,
    healthy_statuses: Sequence[str] = HEALTHY_STATUSES,
    proof: Callable[[str], str | None] | None = None,
) -> str | None:
    """Why ``answer`` is not healthy (None when it is): see the module docstring for the rules."""
    if not 200 <= answer.status < 300:
        return answer.detail
    if answer.reported is not None and answer.reported.strip().lower() not in {s.lower() for s in healthy_statuses}:
        return f"{answer.detail} but the body reports status {answer.reported!r}"
    if expect_version and version_field:
        if answer.version is not None:
            if not same_version(answer.version, expect_version):
                return f"{answer.detail}, expected {version_field}={expect_version!r} but got {answer.version!r}"
        elif proof is not None:
            reason = proof(answer.url)
            if reason:
                return f"{answer.detail} without a {version_field!r} field, and {reason}"
    return None


def wait_healthy(
    urls: Sequence[str],
    *,
    timeout: float,
    expect_version: str | None = None,
    version_field: str = "version",
    status_field: str = "status",
    healthy_statuses: Sequence[str] = HEALTHY_STATUSES,
    follow_redirects: bool = False,
    proof: Callable[[str], str | None] | None = None,
    check: Callable[[], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> float:
    """Poll every URL until all are healthy (see the module docstring) or ``timeout`` seconds pass.

    Backoff starts at 0.25 s and doubles up to 3 s; each request waits at most 5 s and never past
    the deadline. ``check`` (e.g. "no started service has exited") runs before every round and may
    raise to end the wait early. Returns the seconds it took.

    Raises:
        HealthCheckError: not healthy by the deadline; the message gives the last answer of each
            failing URL (and, on a version mismatch, the expected and the actual version).
    """
    start = clock()
    delay = 0.25
    pending = list(urls)
    why: dict[str, str] = {}
    while True:
        if check is not None:
            check()
        still = []
        for url in pending:
            # one probe never outlives the deadline (a server that accepts but never answers)
            remaining = timeout - (clock() - start)
            answer = probe(
                url,
                version_field,
                timeout=max(0.1, min(5.0, remaining)),
                status_field=status_field,
                follow_redirects=follow_redirects,
            )
            reason = judge(
                answer,
                expect_version=expect_version,
                version_field=version_field,
                healthy_statuses=healthy_statuses,
                proof=proof,
            )
            if reason:
                why[url] = reason
                still.append(url)
        pending = still
        if not pending:
            return clock() - start
        if clock() - start + delay > timeout:
            details = "; ".join(f"{url}: {why[url]}" for url in pending)
            raise HealthCheckError(
                f"Health check failed after {timeout:.0f} s: {details}.", "See the service logs (inv logs)."
            )
        sleep(delay)
        delay = min(delay * 2, 3.0)
