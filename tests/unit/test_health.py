"""Health checks against a real HTTP server on 127.0.0.1 (C16, "passed on HTTP 500", fixed sleeps)."""

from __future__ import annotations

import itertools
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from support.services import refusing_port

from patchflow.errors import HealthCheckError
from patchflow.health import probe, wait_healthy


def _handler(status: int, body: dict[str, object], location: str = "") -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            if location:
                self.send_header("Location", location)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


class _Server(HTTPServer):
    # no SO_REUSEADDR: while it is bound, no other socket can take the port
    allow_reuse_address = False


@contextmanager
def serve(status: int, body: dict[str, object], *, after: float = 0.0, location: str = "") -> Iterator[str]:
    """Serve ``status``/``body`` on 127.0.0.1 (accepting connections ``after`` seconds from now;
    the port is bound at once, so until then connections are refused); yield the URL."""
    server = _Server(("127.0.0.1", 0), _handler(status, body, location), bind_and_activate=False)
    server.server_bind()
    port = server.server_address[1]
    listening = threading.Event()

    def run() -> None:
        time.sleep(after)
        server.server_activate()
        listening.set()
        server.serve_forever(poll_interval=0.05)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    if not after:
        listening.wait(timeout=30)
    try:
        yield f"http://127.0.0.1:{port}/health"
    finally:
        if listening.wait(timeout=after + 30):
            server.shutdown()  # would wait forever for a serve_forever that never ran
        server.server_close()
        thread.join(timeout=5)


def test_200_with_the_right_version_passes() -> None:
    with serve(200, {"status": "ok", "version": "1.3.0"}) as url:
        took = wait_healthy([url], timeout=5, expect_version="1.3.0")
    assert 0 <= took < 1


def test_200_without_version_check_passes_at_once_and_says_how_long() -> None:
    with serve(200, {"status": "ok"}) as url:
        took = wait_healthy([url], timeout=5, sleep=_never_sleeps)
    assert 0 <= took < 1


def _never_sleeps(seconds: float) -> None:
    raise AssertionError(f"a healthy first answer must not wait ({seconds} s)")


class FakeClock:
    """A clock that only moves when the poller sleeps (no real waiting in these tests)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_probe_describes_the_answer() -> None:
    with serve(200, {"version": "1.3.0"}) as url:
        answer = probe(url, "version")
    assert (answer.status, answer.version, answer.detail) == (200, "1.3.0", "HTTP 200")


def test_500_never_passes() -> None:
    clock = FakeClock()
    with serve(500, {"status": "error", "version": "1.3.0"}) as url, pytest.raises(HealthCheckError) as caught:
        wait_healthy([url], timeout=10, expect_version="1.3.0", sleep=clock.sleep, clock=clock)
    assert f"{url}: HTTP 500" in caught.value.message
    assert "inv logs" in caught.value.hint
    assert clock.sleeps == [0.25, 0.5, 1.0, 2.0, 3.0, 3.0], "backoff capped at 3 s, never past the deadline"
    assert sum(clock.sleeps) <= 10


def test_a_redirect_is_not_healthy_unless_followed_on_purpose() -> None:
    with serve(200, {"status": "ok"}) as login, serve(302, {}, location=login) as url:
        clock = FakeClock()
        with pytest.raises(HealthCheckError) as caught:
            wait_healthy([url], timeout=1, sleep=clock.sleep, clock=clock)
        assert f"HTTP 302 redirect to {login}" in caught.value.message
        assert wait_healthy([url], timeout=5, follow_redirects=True) < 1


@pytest.mark.parametrize(("reported", "healthy"), [("ok", True), ("UP", True), ("error", False), ("degraded", False)])
def test_a_status_field_must_say_healthy(reported: str, healthy: bool) -> None:
    clock = FakeClock()
    with serve(200, {"status": reported}) as url:
        if healthy:
            wait_healthy([url], timeout=1, sleep=clock.sleep, clock=clock)
        else:
            with pytest.raises(HealthCheckError, match=f"the body reports status '{reported}'"):
                wait_healthy([url], timeout=1, sleep=clock.sleep, clock=clock)
        wait_healthy([url], timeout=1, healthy_statuses=[reported], sleep=clock.sleep, clock=clock)
        wait_healthy([url], timeout=1, status_field="", sleep=clock.sleep, clock=clock)


def test_a_version_with_a_v_prefix_is_the_same_version() -> None:
    with serve(200, {"version": "v1.3.0"}) as url:
        wait_healthy([url], timeout=1, expect_version="1.3.0", sleep=_never_sleeps)


def test_without_a_version_field_the_proof_decides() -> None:
    seen: list[str] = []

    def stale(url: str) -> str:
        seen.append(url)
        return "port 9 is held by an old process"

    clock = FakeClock()
    with serve(200, {"status": "ok", "uptime": 3}) as url:
        wait_healthy([url], timeout=1, expect_version="1.3.0", proof=lambda u: None, sleep=_never_sleeps)
        with pytest.raises(HealthCheckError) as caught:
            wait_healthy([url], timeout=1, expect_version="1.3.0", proof=stale, sleep=clock.sleep, clock=clock)
    assert seen and seen[0] == url
    assert "without a 'version' field, and port 9 is held by an old process" in caught.value.message


def test_old_version_answering_fails_with_both_versions_c16() -> None:
    with serve(200, {"status": "ok", "version": "1.2.0"}) as url, pytest.raises(HealthCheckError) as caught:
        wait_healthy([url], timeout=1, expect_version="1.3.0")
    message = caught.value.message
    assert "HTTP 200" in message
    assert "expected version='1.3.0'" in message
    assert "got '1.2.0'" in message


def test_custom_version_field_c16() -> None:
    with (
        serve(200, {"build": "1.2.0", "version": "1.3.0"}) as url,
        pytest.raises(HealthCheckError, match=re.escape("expected build='1.3.0' but got '1.2.0'")),
    ):
        wait_healthy([url], timeout=0.5, expect_version="1.3.0", version_field="build")


def test_server_that_starts_late_passes_with_backoff() -> None:
    delays: list[float] = []

    def recording_sleep(seconds: float) -> None:
        delays.append(seconds)
        time.sleep(seconds)

    with serve(200, {"version": "1.3.0"}, after=1.0) as url:
        took = wait_healthy([url], timeout=10, expect_version="1.3.0", sleep=recording_sleep)
    assert 1.0 <= took < 3.5
    assert delays[:3] == [0.25, 0.5, 1.0]
    assert all(b >= a for a, b in itertools.pairwise(delays))


def test_backoff_is_capped_at_three_seconds() -> None:
    delays: list[float] = []
    ticks = iter(range(1000))
    with refusing_port() as port, pytest.raises(HealthCheckError):
        wait_healthy(
            [f"http://127.0.0.1:{port}/health"],
            timeout=30,
            sleep=delays.append,
            clock=lambda: float(next(ticks)),
        )
    assert max(delays) == 3.0
    assert delays[:5] == [0.25, 0.5, 1.0, 2.0, 3.0]


def test_no_server_fails_with_no_answer() -> None:
    with refusing_port() as port, pytest.raises(HealthCheckError) as caught:
        url = f"http://127.0.0.1:{port}/health"
        wait_healthy([url], timeout=0.5)
    assert f"{url}: no answer" in caught.value.message


def test_every_url_must_pass() -> None:
    with serve(200, {"version": "1.3.0"}) as good, serve(503, {}) as bad, pytest.raises(HealthCheckError) as caught:
        wait_healthy([good, bad], timeout=0.5, expect_version="1.3.0")
    assert f"{bad}: HTTP 503" in caught.value.message
    assert good not in caught.value.message


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/health", "localhost:3001/health"])
def test_non_http_url_is_rejected(url: str) -> None:
    assert probe(url, "version").detail == "not an http:// or https:// URL"
    with pytest.raises(HealthCheckError) as caught:
        wait_healthy([url], timeout=0.3)
    assert f"{url}: not an http:// or https:// URL" in caught.value.message


def test_server_that_never_answers_does_not_outlive_the_deadline() -> None:
    with socket.socket() as listener:  # accepts connections (backlog) but never replies
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/health"
        start = time.monotonic()
        with pytest.raises(HealthCheckError, match="timed out"):
            wait_healthy([url], timeout=1)
        took = time.monotonic() - start
    assert took < 2.5
