"""Notifications (issue 23): Apprise tells the configured channels when an apply starts and how it
ended (host, versions, stopped window), also a failed one rolled back; a channel that cannot be
reached never fails the run; the channel's URL (its token) is never printed. The channel here is a
real HTTP server on loopback (Apprise's ``json://`` webhook); no internet service is involved."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from support.installs import Install, health
from support.services import refusing_port

pytestmark = pytest.mark.integration


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A webhook on loopback: ``(its json:// URL, the notifications it received)``."""
    received: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            received.append(json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"json://127.0.0.1:{server.server_address[1]}/hooks/s3cr3t-t0ken-abc", received
    finally:
        server.shutdown()


def test_a_channel_hears_the_start_and_the_end_of_an_apply_and_of_a_failed_one(
    install: Install, tmp_path: Path, webhook: tuple[str, list[dict[str, str]]]
) -> None:
    url, received = webhook
    install.release(tmp_path, "2.3.0", migration="SELECT 1/0;\n")
    env = {"PATCHFLOW_NOTIFY_URLS": url}
    failed = install.inv("apply-patch", "--version", "2.3.0", "--yes", env=env)
    assert failed.returncode == 2, failed.stdout + failed.stderr
    titles = [n["title"] for n in received]
    assert titles[0].endswith("apply of 2.3.0 started") and "FAILED, rolled back automatically" in titles[-1], titles
    assert received[-1]["type"] == "failure" and "apply: 2.2.0 -> 2.3.0" in received[-1]["message"]

    received.clear()
    install.release(tmp_path, "2.3.0")
    done = install.inv("apply-patch", "--version", "2.3.0", "--yes", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [n["title"].split("] ", 1)[1] for n in received] == ["apply of 2.3.0 started", "apply of 2.3.0 succeeded"]
    assert "services were down for" in received[-1]["message"]
    assert "s3cr3t-t0ken-abc" not in done.stdout + done.stderr + failed.stdout + failed.stderr


def test_a_channel_that_cannot_be_reached_never_fails_the_run(install: Install, tmp_path: Path) -> None:
    install.release(tmp_path, "2.3.0")
    with refusing_port() as port:
        env = {"PATCHFLOW_NOTIFY_URLS": f"json://127.0.0.1:{port}/hooks/x,notaservice://nothing"}
        done = install.inv("apply-patch", "--version", "2.3.0", "--yes", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "!! notification:" in done.stdout
    assert health(install) == (200, "2.3.0")
