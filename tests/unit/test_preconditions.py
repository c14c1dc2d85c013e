"""The parts of "prove before you stop" that need no install: the record of the health settings a
version was proven with, the ``.env.example`` grammar, compose files read without docker, the
health answer judged before the stop (against a real HTTP server on 127.0.0.1), and the last net
of the command line for a permission error nothing foresaw."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from invoke.exceptions import Exit
from support.services import refusing_port

from patchflow.config import load_settings
from patchflow.files import current_user, describe_owner
from patchflow.installed import HealthRecord, InstalledRecord, read_installed_record
from patchflow.paths import ProjectPaths
from patchflow.preconditions import unhealthy_now
from patchflow.release_checks import compose_model, env_keys
from patchflow.tasks.edge import reports_errors


@contextmanager
def serve(answers: list[tuple[int, dict[str, object]]]) -> Iterator[str]:
    """A real HTTP server answering GETs with ``answers`` in turn (the last one repeats)."""
    calls = iter(range(10**6))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = answers[min(next(calls), len(answers) - 1)]
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/health"
    finally:
        server.shutdown()
        server.server_close()


def _settings(tmp_path: Path, urls: str) -> object:
    return load_settings(tmp_path, environ={"PATCHFLOW_HEALTH_URL": urls})


def test_the_health_record_round_trips_and_ignores_what_it_did_not_write(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, environ={"PATCHFLOW_HEALTH_URL": "http://a/health,http://b/health"})
    record = HealthRecord.of(settings, proven_at="2025-01-01T00:00:00.000000Z")
    assert record.source == "env:PATCHFLOW_HEALTH_URL" and record.urls == ("http://a/health", "http://b/health")
    assert HealthRecord.from_json(json.loads(json.dumps(record.to_json()))) == record
    paths = ProjectPaths.from_settings(settings)  # type: ignore[arg-type]
    InstalledRecord("2.2.0", health=record).save(paths)
    again = read_installed_record(paths)
    assert again is not None and again.health == record
    for bad in (None, [], {"urls": []}, {"urls": "http://a"}, {"urls": [""]}, {"urls": ["http://a"], "timeout": "x"}):
        assert HealthRecord.from_json(bad) is None, bad
    judged = record.applied_to(load_settings(tmp_path, environ={}))
    assert judged.health_url == record.urls and judged.health_timeout == record.timeout
    flagged = load_settings(tmp_path, environ={}, overrides={"health_url": "http://c/health"})
    assert HealthRecord.of(flagged).source == "--health-url"


def test_env_example_keys_follow_dotenv_grammar() -> None:
    text = "# comment\nexport A=1\nB=\nC\n D = 'x y' # note\nE=\"multi\nline\"\n\nF=${A}\n"
    assert env_keys(text) == {"A": "1", "B": "", "C": "", "D": "x y", "E": "multi\nline", "F": "1"}


def test_compose_files_read_without_docker() -> None:
    model = compose_model("services:\n  api: {}\n  db:\n    image: postgres\n")
    assert model is not None and set(model["services"]) == {"api", "db"}
    assert compose_model("not: [valid") is None
    assert compose_model("- a list\n") is None
    assert compose_model("include:\n  - other.yml\n") == {"include": ["other.yml"], "services": {}}


def test_unhealthy_now_names_each_url_and_waits_only_for_what_may_come_up(tmp_path: Path) -> None:
    with (
        serve([(200, {"status": "ok", "version": "2.2.0"})]) as good,
        serve([(404, {})]) as missing,
        serve([(200, {"status": "ok", "version": "1.0.0"})]) as other,
        refusing_port() as port,
    ):
        closed = f"http://127.0.0.1:{port}/health"
        settings = _settings(tmp_path, ",".join([good, missing, other, closed]))
        began = time.monotonic()
        why = unhealthy_now(settings, "2.2.0", 1.5)  # type: ignore[arg-type]
        assert set(why) == {missing, other, closed}
        assert why[missing] == "HTTP 404"
        assert "expected version='2.2.0' but got '1.0.0'" in why[other]
        assert why[closed].startswith("no answer")
        assert time.monotonic() - began < 5, "bounded by the deadline"

        settings = _settings(tmp_path, ",".join([good, missing]))
        began = time.monotonic()
        assert set(unhealthy_now(settings, "2.2.0", 30.0)) == {missing}  # type: ignore[arg-type]
        assert time.monotonic() - began < 10, "a 404 is definite: not polled until the deadline"

    # a 503 while the service warms up is polled again until it answers healthy
    with serve([(503, {"status": "starting"}), (503, {}), (200, {"status": "ok"})]) as warming:
        assert unhealthy_now(_settings(tmp_path, warming), "2.2.0", 10.0) == {}  # type: ignore[arg-type]


def test_a_permission_error_nothing_foresaw_is_one_paragraph(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command line's last net: a PermissionError escaping a task (e.g. a path a later
    patchflow writes that no check foresees) is one error line and a hint, exit 1."""
    locked = tmp_path / "locked.json"
    locked.write_text("{}")

    @reports_errors
    def task() -> None:
        raise PermissionError(13, "Permission denied", str(locked))

    with pytest.raises(Exit) as caught:
        task()
    assert caught.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    owner = describe_owner(locked)
    assert f"Permission denied for user {current_user()}: {locked} ({owner})" in " ".join(err.split())
    assert owner.startswith("owned by ") and "mode 0" in owner
    assert "Run the command as the user who owns the install" in err
