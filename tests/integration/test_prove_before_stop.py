"""Issue 19, "prove before you stop": what an apply needs after the stop is checked before it.

Each test reproduces one fault of the issue on a running sample install (real node processes,
real PostgreSQL, ``inv`` as a subprocess without a terminal) or on the PrimeFlow-shaped checkout,
and checks that the apply is refused before anything stops (services untouched: the same api
process still answers the old version, no journal, no backup), or, after a failure, that the
automatic rollback judges the old version with the settings it was proven healthy with and always
starts it. The answers a health URL may give (another version, a redirect, an error status) come
from a real HTTP server started by the test.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from support.checkouts import checkout_release, installed_checkout
from support.installs import Install, backup_names, get, health, history, run_inv, set_dotenv, status_json
from support.services import refusing_port

from patchflow.state_files import seal

pytestmark = pytest.mark.integration

REFUSE_HINT = "fix health_url (host setting, .patchflow/host.toml) or pass --force"
FAST = {"PATCHFLOW_START_RETRIES": "1"}


def _out(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout + done.stderr


def _api_pid(root: Path) -> int:
    return int(json.loads((root / ".patchflow/run/api.pid").read_text())["pid"])


def _snapshot(install: Install) -> dict[str, object]:
    return {
        "tree": install.state(),
        "dump": install.pg_dump(),
        "backups": backup_names(install),
        "api": _api_pid(install.root),
        "history": len(history(install)),
    }


def _assert_untouched(install: Install, before: dict[str, object], version: str = "2.2.0") -> None:
    """Nothing changed and the services were never stopped: the same api process answers."""
    assert health(install) == (200, version)
    assert _api_pid(install.root) == before["api"], "the services were restarted"
    assert install.state() == before["tree"]
    assert install.pg_dump() == before["dump"]
    assert backup_names(install) == before["backups"]
    assert len(history(install)) == before["history"], "a refused apply records nothing"
    assert not (install.root / ".patchflow/journal.json").exists(), "no journal is left"
    assert not list((install.root / ".patchflow").glob("staging-*"))


def _refused(done: subprocess.CompletedProcess[str]) -> str:
    """The one-paragraph error (message and hint) of a refused run, whitespace folded."""
    assert done.returncode == 1, _out(done)
    assert "Traceback" not in _out(done)
    assert "-> stop" not in done.stdout, "refused before the stop"
    assert done.stderr.count("error:") == 1
    return " ".join(done.stderr.split())


def _write_host_settings(root: Path, values: dict[str, object]) -> None:
    """Set ``values`` in ``root/.patchflow/host.toml`` (edited with tomlkit, whatever else it holds;
    created 0600)."""
    import tomlkit

    path = root / ".patchflow" / "host.toml"
    document = tomlkit.parse(path.read_text()) if path.is_file() else tomlkit.document()
    for key, value in values.items():
        document[key] = value
    path.parent.mkdir(exist_ok=True)
    path.write_text(tomlkit.dumps(document))
    path.chmod(0o600)


def _drop_dotenv(root: Path, key: str) -> None:
    path = root / ".env"
    path.write_text("".join(f"{line}\n" for line in path.read_text().splitlines() if not line.startswith(f"{key}=")))


@contextmanager
def answering(status: int, body: dict[str, object], headers: dict[str, str] | None = None) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 answering every GET with ``status``, JSON ``body`` and
    ``headers``; yields its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# -- fault 1: a typo in the health URL ------------------------------------------------------------


@pytest.mark.parametrize("mistake", ["path", "port"])
def test_a_typo_in_the_health_url_flag_is_refused_before_the_stop(
    install: Install, tmp_path: Path, mistake: str
) -> None:
    install.release(tmp_path, "2.3.0")
    before = _snapshot(install)
    with refusing_port() as closed:
        port = install.port if mistake == "path" else closed
        wrong = f"http://127.0.0.1:{port}/{'healht' if mistake == 'path' else 'health'}"
        done = install.inv("apply-patch", "--version", "2.3.0", "--yes", "--health-url", wrong, "--health-timeout", "4")
    err = _refused(done)
    assert f"{wrong}: " + ("HTTP 404" if mistake == "path" else "no answer") in err
    assert "health_url from --health-url" in err
    assert REFUSE_HINT in err
    _assert_untouched(install, before)


def test_a_typo_in_the_host_setting_is_refused_before_the_stop_and_by_a_dry_run(
    install: Install, tmp_path: Path
) -> None:
    install.release(tmp_path, "2.3.0")
    _drop_dotenv(install.root, "PATCHFLOW_HEALTH_URL")  # this host's URL lives in its host settings
    wrong = f"http://127.0.0.1:{install.port}/helth"
    _write_host_settings(install.root, {"health_url": [wrong]})
    before = _snapshot(install)
    for extra in (["--dry-run"], ["--yes"]):
        err = _refused(install.inv("apply-patch", "--version", "2.3.0", *extra))
        assert f"{wrong}: HTTP 404" in err and "health_url from .patchflow/host.toml" in err
        assert REFUSE_HINT in err
    _assert_untouched(install, before)

    _write_host_settings(install.root, {"health_url": [install.health_url]})
    dry = install.inv("apply-patch", "--version", "2.3.0", "--dry-run")
    assert dry.returncode == 0, _out(dry)
    assert f"before stop    health: 2.2.0 answers healthy now at {install.health_url}" in dry.stdout
    applied = install.inv("apply-patch", "--version", "2.3.0", "--yes")
    assert applied.returncode == 0, _out(applied)
    recorded = json.loads((install.root / ".patchflow/installed.json").read_text())["health"]
    assert recorded["urls"] == [install.health_url] and recorded["source"] == ".patchflow/host.toml"


def test_answers_that_do_not_prove_the_installed_version_are_named(install: Install, tmp_path: Path) -> None:
    """Another app's version, a redirect to a login page, a 200 saying "error", one of several
    URLs: each refused with what answered; the install's own URL alone passes."""
    install.release(tmp_path, "2.3.0")
    before = _snapshot(install)
    cases = [
        (200, {"status": "ok", "version": "1.9.0"}, {}, "expected version='2.2.0' but got '1.9.0'"),
        (302, {}, {"Location": "/login"}, "HTTP 302 redirect to /login"),
        (200, {"status": "error"}, {}, "the body reports status 'error'"),
        (404, {"error": "not_found"}, {}, "HTTP 404"),
    ]
    for status, body, headers, expected in cases:
        with answering(status, body, headers) as base:
            urls = f"{install.health_url},{base}/health"  # several URLs: only the failing one is named
            err = _refused(install.inv("apply-patch", "--version", "2.3.0", "--yes", "--health-url", urls))
        assert f"{base}/health: HTTP {status}" in err and expected in err, err
        assert f"{install.health_url}:" not in err, "the URL that answers healthy is not blamed"
        if status == 302:
            assert "health_follow_redirects" in err
    _assert_untouched(install, before)


def test_services_down_on_purpose_are_refused_and_force_applies(install: Install, tmp_path: Path) -> None:
    install.release(tmp_path, "2.3.0")
    assert install.inv("down").returncode == 0
    tree = install.state()
    err = _refused(install.inv("apply-patch", "--version", "2.3.0", "--yes"))
    assert f"{install.health_url}: no answer" in err and REFUSE_HINT in err
    assert install.state() == tree and get(install.health_url)[0] == 0, "refused: nothing was started either"

    forced = install.inv("apply-patch", "--version", "2.3.0", "--yes", "--force")
    assert forced.returncode == 0, _out(forced)
    flat = " ".join(forced.stdout.split())
    assert "health: 2.2.0 is NOT healthy now" in flat and "going on (--force)" in flat
    assert "the new version must still pass at" in flat
    assert health(install) == (200, "2.3.0"), "the new version is proven by the same URL after the start"


# -- fault 1, the rollback side: the old version is judged by its own settings and always started ---


def test_the_old_version_is_proven_with_the_settings_it_was_proven_with(install: Install, tmp_path: Path) -> None:
    """2.3.0 is proven healthy (its settings recorded); a forced apply of 2.4.0 with a typo in
    --health-url fails; the automatic rollback proves 2.3.0 with its own settings, not the typo."""
    install.release(tmp_path, "2.3.0")
    assert install.inv("apply-patch", "--version", "2.3.0", "--yes").returncode == 0
    record = json.loads((install.root / ".patchflow/installed.json").read_text())
    assert record["version"] == "2.3.0" and record["health"]["urls"] == [install.health_url]
    install.release(tmp_path, "2.4.0")
    tree = install.state()
    with refusing_port() as closed:
        typo = f"http://127.0.0.1:{closed}/health"
        args = ("--yes", "--force", "--health-url", typo, "--health-timeout", "3")
        done = install.inv("apply-patch", "--version", "2.4.0", *args, env=FAST)
    assert done.returncode == 2, _out(done)
    flat = " ".join(_out(done).split())
    assert f"judging 2.3.0 by {install.health_url} (from .env:PATCHFLOW_HEALTH_URL), the settings recorded" in flat
    assert "2.3.0 is running again and passed its health check" in flat
    assert health(install) == (200, "2.3.0")
    assert install.state() == tree
    assert history(install)[-1]["result"] == "rolled_back"
    assert status_json(install)["interrupted"] is None, "no journal is left"


def test_the_old_version_is_started_even_when_its_health_check_fails(install: Install, tmp_path: Path) -> None:
    """Nothing proves 2.2.0 (a forced apply with a typo, and the URL it was recorded with is gone):
    the rollback still starts it and says that its health check failed (exit 2, not 4: it runs)."""
    install.release(tmp_path, "2.3.0")
    record_path = install.root / ".patchflow/installed.json"
    record = json.loads(record_path.read_text())
    tree = install.state()
    with refusing_port() as gone, refusing_port() as typo:
        record["health"] = {"urls": [f"http://127.0.0.1:{gone}/health"], "timeout": 3, "source": "an older setting"}
        record_path.write_text(json.dumps(seal(record)))  # as patchflow recorded it then
        done = install.inv(
            "apply-patch",
            "--version",
            "2.3.0",
            "--yes",
            "--force",
            "--health-url",
            f"http://127.0.0.1:{typo}/health",
            "--health-timeout",
            "3",
            env=FAST,
        )
        assert done.returncode == 2, _out(done)
        flat = " ".join(_out(done).split())
        assert f"judging 2.2.0 by http://127.0.0.1:{gone}/health (from an older setting)" in flat
        assert "its services were started and run, but 2.2.0 did NOT pass its health check" in flat
        assert "the services run: they are kept running" in flat
    assert health(install) == (200, "2.2.0"), "the old version runs and answers at its real URL"
    assert {k: v for k, v in install.state().items() if k != ".env"} == {k: v for k, v in tree.items() if k != ".env"}
    last = history(install)[-1]
    assert last["result"] == "rolled_back" and "did not serve" not in str(last.get("error"))
    assert "old_version_unhealthy" in last
    assert status_json(install)["interrupted"] is None


def test_rollback_patch_judges_the_old_version_by_the_settings_that_proved_it(install: Install, tmp_path: Path) -> None:
    """After the apply, this host's health_url gets a typo: rollback-patch still proves 2.2.0 with
    the settings that proved it before the apply stopped it, and records them afresh."""
    install.release(tmp_path, "2.3.0")
    tree = install.state()
    assert install.inv("apply-patch", "--version", "2.3.0", "--yes").returncode == 0
    set_dotenv(install, "PATCHFLOW_HEALTH_URL", f"http://127.0.0.1:{install.port}/healht")
    done = install.inv("rollback-patch", "--version", "2.3.0", "--yes", env=FAST)
    assert done.returncode == 0, _out(done)
    flat = " ".join(done.stdout.split())
    assert f"judging 2.2.0 by {install.health_url} (from .env:PATCHFLOW_HEALTH_URL), the settings that proved" in flat
    assert health(install) == (200, "2.2.0")
    record = json.loads((install.root / ".patchflow/installed.json").read_text())
    assert record["version"] == "2.2.0" and record["health"]["urls"] == [install.health_url]
    assert record["health"]["proven_at"] > history(install)[-2]["started_at"], "recorded when proven again"
    assert {k: v for k, v in install.state().items() if k != ".env"} == {k: v for k, v in tree.items() if k != ".env"}


def test_a_port_this_host_moved_since_gets_a_second_chance(install: Install, tmp_path: Path) -> None:
    """The host moves the api to another port after the apply (PORT and health_url in .env): the
    settings that proved 2.2.0 no longer can; the current ones of this host prove it."""
    from sample_workspace import free_port

    install.release(tmp_path, "2.3.0")
    set_dotenv(install, "PATCHFLOW_HEALTH_TIMEOUT", "4")
    assert install.inv("apply-patch", "--version", "2.3.0", "--yes").returncode == 0
    moved = free_port()
    set_dotenv(install, "PORT", str(moved))
    set_dotenv(install, "PATCHFLOW_HEALTH_URL", f"http://127.0.0.1:{moved}/health")
    done = install.inv("rollback-patch", "--version", "2.3.0", "--yes", env=FAST)
    assert done.returncode == 0, _out(done)
    flat = " ".join(done.stdout.split())
    assert f"judging 2.2.0 by {install.health_url}" in flat
    assert f"not proven by those; trying http://127.0.0.1:{moved}/health (from .env:PATCHFLOW_HEALTH_URL)" in flat
    status, body = get(f"http://127.0.0.1:{moved}/health")
    assert status == 200 and json.loads(body)["version"] == "2.2.0"
    record = json.loads((install.root / ".patchflow/installed.json").read_text())
    assert record["health"]["urls"] == [f"http://127.0.0.1:{moved}/health"], "what proved it is recorded"


# -- the commands of the command manager ---------------------------------------------------------


def test_commands_that_cannot_start_are_refused_before_the_stop(install: Install, tmp_path: Path) -> None:
    install.release(tmp_path, "2.3.0")
    before = _snapshot(install)
    typo = "api=node apps/api/server.js;worker=nodee apps/worker/worker.js"
    previous = set_dotenv(install, "PATCHFLOW_COMMANDS", typo)
    err = _refused(install.inv("apply-patch", "--version", "2.3.0", "--yes"))
    assert "the program of worker (nodee) is not on PATH" in err and "PATCHFLOW_COMMANDS" in err
    assert previous is not None
    set_dotenv(install, "PATCHFLOW_COMMANDS", previous)
    set_dotenv(install, "PATCHFLOW_APP_SERVICES", "api,wroker")
    err = _refused(install.inv("apply-patch", "--version", "2.3.0", "--dry-run"))
    assert "app_services names wroker, which has no command" in err
    _drop_dotenv(install.root, "PATCHFLOW_APP_SERVICES")
    before["tree"] = install.state()
    _assert_untouched(install, before)


# -- the PrimeFlow-shaped checkout: .env keys and compose service names ---------------------------


def test_a_release_needing_a_new_env_key_is_refused_before_the_stop(tmp_path: Path, pg_cluster: object) -> None:
    with installed_checkout(tmp_path, pg_cluster) as (root, health_url):

        def add_keys(source: Path) -> None:
            example = source / ".env.example"
            example.write_text(example.read_text() + "\n# Auditoria\nAUDIT_RETENTION_DAYS=90\nAUDIT_WEBHOOK_URL=\n")

        checkout_release(root, tmp_path, "3.1.0", edit=add_keys)
        api = _api_pid(root)
        for extra in (["--dry-run"], ["--yes"]):
            err = _refused(run_inv("apply-patch", "--root", str(root), "--version", "3.1.0", *extra))
            assert "adds key(s) this host does not set" in err and "AUDIT_RETENTION_DAYS, AUDIT_WEBHOOK_URL" in err
            assert "the example leaves AUDIT_WEBHOOK_URL empty" in err and "env_example_check" in err
        assert (root / "VERSION").read_text() == "3.0.0\n" and _api_pid(root) == api and get(health_url)[0] == 200

        # a first install (no .env.example on the server yet) checks every key of the release's
        aside = tmp_path / "env.example"
        (root / ".env.example").rename(aside)
        err = _refused(run_inv("apply-patch", "--root", str(root), "--version", "3.1.0", "--dry-run"))
        assert "holds key(s) this host does not set" in err and "AUDIT_RETENTION_DAYS, AUDIT_WEBHOOK_URL" in err
        aside.rename(root / ".env.example")

        warn = {"PATCHFLOW_ENV_EXAMPLE_CHECK": "warn"}
        warned = run_inv("apply-patch", "--root", str(root), "--version", "3.1.0", "--dry-run", env=warn)
        assert warned.returncode == 0, _out(warned)
        assert "NOT set on this host: AUDIT_RETENTION_DAYS, AUDIT_WEBHOOK_URL" in warned.stdout

        with open(root / ".env", "a") as handle:
            handle.write("AUDIT_RETENTION_DAYS=30\nAUDIT_WEBHOOK_URL=\n")  # empty: set, on purpose
        done = run_inv("apply-patch", "--root", str(root), "--version", "3.1.0", "--yes")
        assert done.returncode == 0, _out(done)
        assert "env keys: .env.example: the keys it adds (2) are set on this host" in " ".join(done.stdout.split())
        assert (root / "VERSION").read_text() == "3.1.0\n"


def test_a_compose_service_name_that_does_not_exist_is_refused_before_the_stop(
    tmp_path: Path, pg_database: str, docker_engine: None
) -> None:
    import sys

    from support.installs import REPO

    sys.path.insert(0, str(REPO / "scripts"))
    from primeflow_checkout import prepare_checkout

    root = prepare_checkout(tmp_path / "primeflow", database_url=pg_database)
    assert run_inv("init", "--root", str(root), "--yes").returncode == 0
    checkout_release(root, tmp_path, "3.1.0")
    _write_host_settings(root, {"app_services": ["api", "wroker"], "database_mode": "url"})
    tree = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if ".patchflow" not in p.parts)
    err = _refused(run_inv("apply-patch", "--root", str(root), "--version", "3.1.0", "--yes"))
    assert "app_services names wroker, which the release's docker/docker-compose.yml does not define" in err
    assert "(services: api, frontend, postgres, redis, worker)" in err

    _write_host_settings(
        root, {"app_services": ["api", "worker"], "database_service": "postgress", "database_mode": "compose"}
    )
    err = _refused(run_inv("apply-patch", "--root", str(root), "--version", "3.1.0", "--dry-run"))
    assert "database_service names postgress, which the installed and the release's" in err
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if ".patchflow" not in p.parts) == tree
    ps = subprocess.run(
        ["docker", "ps", "--all", "--quiet", "--filter", f"label=com.docker.compose.project.working_dir={root}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert ps.stdout.strip() == "", "nothing was created or started"
