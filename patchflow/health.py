"""HTTP health checks: poll with backoff until a deadline; only 2xx (and the right version) passes.

Field failures guarded: the old script passed on HTTP 500 and slept fixed times; C16 (the check
read the *old* instance): when ``expect_version`` is given the JSON field ``version_field`` must
equal it, and a mismatch is reported with the expected and the actual value.
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

from patchflow.errors import HealthCheckError


@dataclass(frozen=True)
class Probe:
    """One answer: ``status`` (HTTP code, 0 when no connection), ``version`` read, ``detail``."""

    url: str
    status: int
    version: str | None
    detail: str


def probe(url: str, version_field: str, timeout: float = 5.0) -> Probe:
    """GET ``url`` once (``timeout`` seconds) and describe the answer; never raises."""
    if not url.startswith(("http://", "https://")):
        return Probe(url, 0, None, "not an http:// or https:// URL")
    headers = {"Accept": "application/json", "User-Agent": "patchflow"}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - scheme checked above
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - URL is configured
            status = response.status
            body = response.read(65536)
    except urllib.error.HTTPError as exc:
        return Probe(url, exc.code, None, f"HTTP {exc.code}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return Probe(url, 0, None, f"no answer ({reason})")
    version = None
    if version_field:
        try:
            data = json.loads(body)
            if isinstance(data, dict) and version_field in data:
                version = str(data[version_field])
        except ValueError:
            pass
    return Probe(url, status, version, f"HTTP {status}")


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


def wait_healthy(
    urls: Sequence[str],
    *,
    timeout: float,
    expect_version: str | None = None,
    version_field: str = "version",
    check: Callable[[], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> float:
    """Poll every URL until all answer 2xx (and report ``expect_version``) or ``timeout`` seconds pass.

    Backoff starts at 0.25 s and doubles up to 3 s; each request waits at most 5 s and never past
    the deadline. ``check`` (e.g. "no started service has exited") runs before every round and may
    raise to end the wait early. Returns the seconds it took.

    Raises:
        HealthCheckError: not healthy by the deadline; the message gives the last answer of each
            failing URL and, on a version mismatch, the expected and the actual version.
    """
    start = clock()
    delay = 0.25
    pending = list(urls)
    last: dict[str, Probe] = {}
    while True:
        if check is not None:
            check()
        still = []
        for url in pending:
            # one probe never outlives the deadline (a server that accepts but never answers)
            remaining = timeout - (clock() - start)
            answer = probe(url, version_field, timeout=max(0.1, min(5.0, remaining)))
            last[url] = answer
            ok = 200 <= answer.status < 300
            if ok and expect_version and version_field and answer.version != expect_version:
                ok = False
            if not ok:
                still.append(url)
        pending = still
        if not pending:
            return clock() - start
        if clock() - start + delay > timeout:
            details = []
            for url in pending:
                answer = last[url]
                text = f"{url}: {answer.detail}"
                if 200 <= answer.status < 300 and expect_version:
                    text += f", expected {version_field}={expect_version!r} but got {answer.version!r}"
                details.append(text)
            raise HealthCheckError(
                f"Health check failed after {timeout:.0f} s: {'; '.join(details)}.",
                "See the service logs (inv logs).",
            )
        sleep(delay)
        delay = min(delay * 2, 3.0)
