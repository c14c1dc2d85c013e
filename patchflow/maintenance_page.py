"""The maintenance notice: PATCH_SYSTEM.md's "notify users about maintenance", during the stopped
window (Kamal's ``app maintenance``).

With ``maintenance_ports`` set (the app's published ports, ``4000`` or ``127.0.0.1:4000``), an
apply and a rollback answer on those ports while the app's services are stopped: every request gets
HTTP 503 with ``Retry-After: 30`` and a page (``maintenance_page``: an HTML file of the checkout;
default: a short built-in page), and the ports are closed again before the services start, so the
new (or restored) version binds them. A port that cannot be taken (still held) is skipped with a
line; the notice never fails a run. The server runs inside the patchflow process, so it ends with
it, whatever happens to the run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

RETRY_AFTER_SECONDS = 30
DEFAULT_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Maintenance</title></head>
<body style="font-family: sans-serif; text-align: center; margin-top: 15vh">
<h1>We are updating the application</h1>
<p>It will be back in a minute. Please try again shortly.</p>
</body></html>
"""

_servers: list[ThreadingHTTPServer] = []
_lock = threading.Lock()


def _handler(page: bytes) -> type[BaseHTTPRequestHandler]:
    class Notice(BaseHTTPRequestHandler):
        def _answer(self, body: bool) -> None:
            self.send_response(503)
            self.send_header("Retry-After", str(RETRY_AFTER_SECONDS))
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if body:
                self.wfile.write(page)

        def do_GET(self) -> None:
            self._answer(True)

        def do_HEAD(self) -> None:
            self._answer(False)

        def do_POST(self) -> None:
            self._answer(True)

        def log_message(self, *args: object) -> None:
            pass

    return Notice


def _address(entry: str) -> tuple[str, int]:
    host, _, port = entry.strip().rpartition(":")
    return (host.strip("[]") or "0.0.0.0", int(port))  # noqa: S104 - the app's own published port


def page_on(ports: Sequence[str], page_file: str, root: Path, log: Callable[[str], None]) -> None:
    """Answer 503 on each of ``ports`` until :func:`page_off` (nothing when ``ports`` is empty)."""
    if not ports:
        return
    page = DEFAULT_PAGE.encode()
    if page_file:
        try:
            page = (root / page_file).read_bytes()
        except OSError as exc:
            log(f"   maintenance page {page_file} not read ({exc.strerror}): the built-in one is shown")
    with _lock:
        for entry in ports:
            try:
                server = ThreadingHTTPServer(_address(entry), _handler(page))
            except (OSError, ValueError) as exc:
                log(f"   maintenance notice not shown on {entry}: {getattr(exc, 'strerror', None) or exc}")
                continue
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, name=f"maintenance-{entry}", daemon=True).start()
            _servers.append(server)
        if _servers:
            log(f"   maintenance notice (HTTP 503) on {', '.join(ports)} while the services are stopped")


def page_off(log: Callable[[str], None] = lambda line: None) -> None:
    """Stop answering and free the ports (before the services start)."""
    with _lock:
        if not _servers:
            return
        for server in _servers:
            server.shutdown()
            server.server_close()
        _servers.clear()
        log("   maintenance notice off: the ports are free for the services")
