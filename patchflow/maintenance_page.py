"""The maintenance notice: PATCH_SYSTEM.md's "notify users about maintenance", during the stopped
window (Kamal's ``app maintenance``).

With ``maintenance_ports`` set (the app's published ports, ``4000`` or ``127.0.0.1:4000``), an
apply and a rollback answer on those ports while the app's services are stopped: every request gets
HTTP 503 with ``Retry-After: 30`` and a page (``maintenance_page``: an HTML file of the checkout;
default: a short built-in page), and the ports are closed again before the services start, so the
new (or restored) version binds them. A port that cannot be taken (still held) is skipped with a
line; the notice never fails a run. The server runs inside the patchflow process, so it ends with
it, whatever happens to the run.

For planned work (the app stopped by hand), ``inv maintenance --on`` starts the same notice in a
detached process of its own (``.patchflow/maintenance.json`` names it) and ``--off`` ends it; while
it runs an apply or rollback refuses (the notice holds the ports the app would bind).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
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


# -- planned maintenance: `inv maintenance --on/--off` ------------------------------------------------

PLANNED_FILE = "maintenance.json"


def planned(state: Path) -> dict[str, object] | None:
    """The planned maintenance notice of the install whose state folder is ``state`` (``pid``,
    ``ports``, ``since``), None when none runs (a record whose process is gone is none)."""

    from patchflow.runner import process_start_ticks

    try:
        record = json.loads((state / PLANNED_FILE).read_text(encoding="utf-8"))
        pid = int(record["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if process_start_ticks(pid) is None or process_start_ticks(pid) != record.get("ticks"):
        return None  # gone, or the pid now names another process (a reboot since)
    return dict(record)


def start_planned(
    state: Path, root: Path, ports: Sequence[str], page_file: str, deadline: float = 15.0
) -> dict[str, object]:
    """Start a detached process (its own session) that answers 503 on ``ports`` until
    :func:`stop_planned`; returns its record once it serves them.

    Raises:
        ServiceError: no ports configured, one is held (the app still runs: `inv down` first), or
            the process did not come up within ``deadline`` seconds.
    """

    from patchflow.errors import ServiceError

    if not ports:
        raise ServiceError("No maintenance_ports are set: there is no port to answer on.", "Set maintenance_ports.")
    running = planned(state)
    if running is not None:
        raise ServiceError(
            f"A maintenance notice already answers on {running.get('ports')} (pid {running.get('pid')}).",
            "It stays on until `inv maintenance --off`.",
        )
    record_path = state / PLANNED_FILE
    record_path.unlink(missing_ok=True)
    package_parent = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen(
        [sys.executable, "-X", "utf8", "-m", "patchflow.maintenance_page", str(state), str(root), page_file, *ports],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd="/",
        env=env,
        start_new_session=True,
    )
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            said = (proc.stderr.read().decode(errors="replace") if proc.stderr else "").strip()
            raise ServiceError(
                f"The maintenance notice could not take its ports: {said or f'exit {proc.returncode}'}.",
                "Stop the app first (`inv down`): its services hold the ports the notice answers on.",
            )
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
            if record.get("pid") == proc.pid:
                return dict(record)
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    os.kill(proc.pid, 15)
    raise ServiceError("The maintenance notice did not come up in time.", "Run `inv maintenance --on` again.")


def stop_planned(state: Path, deadline: float = 15.0) -> dict[str, object] | None:
    """End the planned maintenance notice; returns its record (None when none ran)."""

    record = planned(state)
    if record is not None:
        pid = int(str(record["pid"]))
        os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
    (state / PLANNED_FILE).unlink(missing_ok=True)
    return record


def _serve_planned(state: Path, root: Path, page_file: str, ports: list[str]) -> int:
    """The detached notice's own process: serve until SIGTERM; exit 1 when a port is held."""

    from patchflow.lifecycle.journal import utc_now

    def note(line: str) -> None:
        if "not shown" in line:
            sys.stderr.write(line.strip() + "\n")

    page_on(ports, page_file, root, note)
    with _lock:
        taken = len(_servers)
    if taken != len(ports):
        page_off()
        return 1
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    tmp = state / f".{PLANNED_FILE}.tmp"
    from patchflow.runner import process_start_ticks

    record = {"pid": os.getpid(), "ticks": process_start_ticks(os.getpid()), "ports": list(ports), "since": utc_now()}
    tmp.write_text(json.dumps(record), encoding="utf-8")
    os.replace(tmp, state / PLANNED_FILE)
    done.wait()
    page_off()
    return 0


if __name__ == "__main__":
    sys.exit(_serve_planned(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4:]))
