"""patchflow on a real Docker Compose stack (issue 4; field failures C14 and C25).

The sample's ``docker/docker-compose.local.yml`` runs here without any registry: api and worker
images are built locally FROM ``patchflow-local/busybox:latest`` (``scripts/ensure-system.sh``),
node and PostgreSQL are the host's binaries behind read-only bind mounts, the database lives in
the named volume ``pgdata``. pytest-docker's ``docker_services`` brings one stack per module up
(``up -d --build --wait``) and down (``down`` WITHOUT ``-v``: the volume checks below compare its
``CreatedAt``); the project's containers, volume and images are then removed explicitly.

Every patchflow command runs as ``inv`` in a subprocess, as an operator would; a logging
``docker`` shim on its PATH records every docker command it ran (C25).
"""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pytest_docker.plugin import Services, get_docker_services
from support.compose import ComposeInstall, docker_shim, read_shim_log, volume_removals
from support.installs import INV
from support.missing import missing_service

pytestmark = [pytest.mark.docker, pytest.mark.xdist_group("compose")]

SENTINEL = "sentinel-c25@primeflow.test"
#: state handed from the apply test to the rollback test (same module stack)
STATE: dict[str, Any] = {}


def _epoch(docker_time: str) -> float:
    """``2025-01-01T12:00:00.123456789Z`` (docker's RFC 3339 with nanoseconds) -> epoch seconds."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z$", docker_time)
    assert match, docker_time
    whole = datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    return whole + float(f"0.{match.group(2) or '0'}")


# -- pytest-docker: one stack per module -------------------------------------------------------------
@pytest.fixture(scope="module")
def compose_install(docker_engine: None, tmp_path_factory: pytest.TempPathFactory) -> ComposeInstall:
    """The workspace of the module's stack (unique compose project name, free api port)."""
    base = tmp_path_factory.mktemp("compose")
    return ComposeInstall.create(base / "install", f"pftest{uuid.uuid4().hex[:10]}")


@pytest.fixture(scope="module")
def docker_compose_command(compose_install: ComposeInstall) -> str:
    # interpolation (${API_PORT}, ${PG_UID}, ...) from the install's .env, as patchflow does
    return f"docker compose --env-file {shlex.quote(str(compose_install.root / '.env'))}"


@pytest.fixture(scope="module")
def docker_compose_file(compose_install: ComposeInstall) -> str:
    return str(compose_install.compose_file)


@pytest.fixture(scope="module")
def docker_compose_project_name(compose_install: ComposeInstall) -> str:
    return compose_install.project


@pytest.fixture(scope="module")
def docker_setup() -> list[str]:
    return ["up -d --build --wait --wait-timeout 180"]


@pytest.fixture(scope="module")
def docker_cleanup() -> list[str]:
    # pytest-docker's default is `down -v`: never here. The volume is removed explicitly below.
    return ["down -t 2 --remove-orphans"]


@pytest.fixture(scope="module")
def docker_services(
    docker_compose_command: str,
    docker_compose_file: str,
    docker_compose_project_name: str,
    docker_setup: list[str],
    docker_cleanup: list[str],
    compose_install: ComposeInstall,
) -> Iterator[Services]:
    """pytest-docker's stack, module-scoped; afterwards every container, volume and image of
    the test project is removed (also when the set-up failed half-way)."""
    try:
        with get_docker_services(
            docker_compose_command, docker_compose_file, docker_compose_project_name, docker_setup, docker_cleanup
        ) as services:
            yield services
    finally:
        compose_install.remove()


@pytest.fixture(scope="module")
def stack(
    docker_services: Services, compose_install: ComposeInstall, tmp_path_factory: pytest.TempPathFactory
) -> ComposeInstall:
    """The running stack with PrimeFlow 2.2.0 installed through patchflow (migrated database),
    and two releases ready in patches/: 2.3.0 (good) and 2.4.0 (its /health answers 500)."""
    install = compose_install
    assert docker_services.port_for("api", 3001) == install.port
    docker_services.wait_until_responsive(lambda: install.health()[0] == 200, timeout=60, pause=0.5)
    for args in (("create-patch",), ("apply-patch", "--version", "2.2.0", "--force", "--yes")):
        done = install.inv(*args)
        assert done.returncode == 0, done.stderr + done.stdout
    assert install.health_version() == "2.2.0"
    work = tmp_path_factory.mktemp("releases")
    install.release(work, "2.3.0")
    install.release(work, "2.4.0", health_status=500)
    return install


def _follow_heartbeats(stack: ComposeInstall, wanted: int = 2, timeout: float = 20) -> int:
    """Run ``inv logs --service worker --follow --tail 0`` and count worker heartbeats streamed
    (one every 2 s) until ``wanted`` arrived; the follower's process group is then interrupted."""
    proc = subprocess.Popen(
        [*INV, "logs", "--root", str(stack.root), "--service", "worker", "--follow", "--tail", "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    seen = 0
    deadline = time.monotonic() + timeout
    try:
        assert proc.stdout is not None
        while seen < wanted and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if not ready:
                continue
            line = proc.stdout.readline()
            if not line:
                break
            seen += "worker heartbeat" in line
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    return seen


# -- tests on the module's stack ------------------------------------------------------------------------
def test_ps_logs_restart_down_up(stack: ComposeInstall) -> None:
    ps = stack.inv("ps", "--json")
    assert ps.returncode == 0, ps.stderr
    states = {row["name"]: row["state"] for row in json.loads(ps.stdout)}
    assert states == {"api": "running", "worker": "running", "postgres": "running"}

    logs = stack.inv("logs", "--service", "api", "--tail", "50")
    assert logs.returncode == 0, logs.stderr
    assert "api listening on 0.0.0.0:3001 version 2.2.0" in logs.stdout
    default_logs = stack.inv("logs", "--tail", "5")
    assert default_logs.returncode == 0 and "worker" in default_logs.stdout
    unknown = stack.inv("logs", "--service", "nope")
    assert unknown.returncode != 0 and "Unknown compose service(s): nope" in unknown.stderr
    assert _follow_heartbeats(stack) >= 2, "logs --follow streams new lines"

    ids = stack.container_ids()
    started = {s: stack.started_at(s) for s in ids}
    one = stack.inv("restart", "--service", "worker")
    assert one.returncode == 0, one.stderr
    assert stack.container_ids() == ids
    assert stack.started_at("worker") != started["worker"]
    assert stack.started_at("api") == started["api"]
    apps = stack.inv("restart")
    assert apps.returncode == 0, apps.stderr
    assert stack.started_at("api") != started["api"]
    assert stack.started_at("postgres") == started["postgres"], "restart without --service restarts only app services"
    assert stack.wait_health_version("2.2.0")

    # down keeps the volume (C25); up brings everything back with the data
    stack.psql(
        'INSERT INTO "User" ("email", "name", "role", "updatedAt") '
        "VALUES ('down-up@primeflow.test', 'Down Up', 'MEMBER', now())"
    )
    created = stack.volume_created()
    down = stack.inv("down")
    assert down.returncode == 0, down.stderr
    assert stack.container_ids() == {}
    assert stack.volume_created() == created
    up = stack.inv("up")
    assert up.returncode == 0, up.stderr + up.stdout
    assert stack.health_version() == "2.2.0"
    assert stack.volume_created() == created
    assert stack.psql("SELECT count(*) FROM \"User\" WHERE email = 'down-up@primeflow.test'") == "1"
    stack.psql("DELETE FROM \"User\" WHERE email = 'down-up@primeflow.test'")


def test_unhealthy_patch_is_rolled_back_automatically(stack: ComposeInstall, tmp_path: Path) -> None:
    env, log = docker_shim(tmp_path)
    ids = stack.container_ids()
    created = stack.volume_created()
    dump = stack.pg_dump()

    done = stack.inv(
        "apply-patch", "--version", "2.4.0", "--yes", env={**env, "PATCHFLOW_START_RETRIES": "1"}, timeout=300
    )
    assert done.returncode != 0, done.stdout
    assert "rolled back automatically" in done.stderr, done.stderr
    assert "unhealthy" in done.stderr  # compose's own health check failed `up --wait`
    # the old version answers again, from containers started from the restored tree
    assert stack.health_version() == "2.2.0"
    ps = {row["name"]: row for row in json.loads(stack.inv("ps", "--json").stdout)}
    assert ps["api"]["state"] == "running" and "healthy" in ps["api"]["detail"]
    after = stack.container_ids()
    assert after["postgres"] == ids["postgres"]
    assert after["api"] != ids["api"]
    # database: changed by the migration, then restored exactly from this run's backup
    assert stack.pg_dump() == dump
    assert stack.volume_created() == created

    calls = read_shim_log(log)
    assert volume_removals(calls) == []
    failed_up = [c for c in calls if c.has("compose", "up") and "--no-build" in c.args]
    assert failed_up and failed_up[0].returncode != 0
    rebuild = [c for c in calls if c.has("compose", "up") and "--build" in c.args]
    assert rebuild and rebuild[-1].returncode == 0, "rollback starts from images rebuilt from the restored tree"
    history = [json.loads(line) for line in (stack.root / ".patchflow/history.jsonl").read_text().splitlines()]
    assert history[-1]["result"] == "rolled_back" and history[-1]["to_version"] == "2.4.0"


def test_apply_replaces_app_containers_and_keeps_the_database(stack: ComposeInstall, tmp_path: Path) -> None:
    env, log = docker_shim(tmp_path)
    stack.psql(
        'INSERT INTO "User" ("email", "name", "role", "updatedAt") '
        f"VALUES ('{SENTINEL}', 'Sentinel', 'MEMBER', now())"
    )
    ids = stack.container_ids()
    created = stack.volume_created()
    image_before = stack.image_id("api")
    STATE["dump_before"] = stack.pg_dump()

    done = stack.inv("apply-patch", "--version", "2.3.0", "--yes", env=env)
    assert done.returncode == 0, done.stderr + done.stdout
    window = re.search(r"services were down for ([0-9.]+) s", done.stdout)
    assert window and float(window.group(1)) > 0, done.stdout
    STATE["applied"] = True

    after = stack.container_ids()
    assert after["api"] != ids["api"] and after["worker"] != ids["worker"], "application containers replaced"
    assert after["postgres"] == ids["postgres"], "the database container keeps running"
    assert stack.volume_created() == created, "the pgdata volume is never recreated (C25)"
    assert stack.psql(f"SELECT name FROM \"User\" WHERE email = '{SENTINEL}'") == "Sentinel"
    assert stack.health_version() == "2.3.0"
    assert "20250301090000_audit_log" in stack.psql('SELECT migration_name FROM "_prisma_migrations"')

    calls = read_shim_log(log)
    assert volume_removals(calls) == []
    builds = [c for c in calls if c.has("compose", "build")]
    stops = [c for c in calls if c.has("compose", "stop")]
    ups = [c for c in calls if c.has("compose", "up")]
    assert len(builds) == 1 and len(stops) == 1 and len(ups) == 1, [c.text for c in calls]
    build, stop, up = builds[0], stops[0], ups[0]
    # built from the staging folder, under the install's own project name
    compose_file = build.args[build.args.index("-f") + 1]
    assert "/.patchflow/staging-v2.3.0/" in compose_file
    assert build.args[build.args.index("-p") + 1] == stack.project
    assert build.ended <= stop.started, "images are built before any service stops"
    assert set(stop.args[stop.args.index("stop") :]) >= {"api", "worker"} and "postgres" not in stop.args
    assert {"--wait", "--no-deps", "--no-build"} <= set(up.args) and "postgres" not in up.args
    # the running api is the image built in staging, finished before the stop
    assert stack.image_id("api") != image_before
    assert stack.inspect("api")["Image"] == stack.image_id("api")
    assert _epoch(stack.image_created("api")) <= stop.started


def test_rollback_patch_restores_the_database_exactly(stack: ComposeInstall, tmp_path: Path) -> None:
    if not STATE.get("applied"):
        pytest.fail("needs the apply of 2.3.0 from the previous test, which did not complete", pytrace=False)
    env, log = docker_shim(tmp_path)
    ids = stack.container_ids()
    created = stack.volume_created()
    stack.psql(
        'INSERT INTO "User" ("email", "name", "role", "updatedAt") '
        "VALUES ('late@primeflow.test', 'Late', 'MEMBER', now())"
    )

    done = stack.inv("rollback-patch", "--version", "2.3.0", "--yes", env=env)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "rolled back 2.3.0 -> 2.2.0" in done.stdout
    assert stack.pg_dump() == STATE["dump_before"], "full pg_dump identical to the one before the apply"
    assert stack.health_version() == "2.2.0"
    assert stack.container_ids()["postgres"] == ids["postgres"]
    assert stack.volume_created() == created

    calls = read_shim_log(log)
    assert volume_removals(calls) == []
    restore = [c for c in calls if c.has("exec", "-T", "postgres", "pg_restore") and "--list" not in c.args]
    restore = [c for c in restore if any(a.startswith("--dbname=primeflow_restoring_") for a in c.args)]
    assert restore and restore[0].returncode == 0, "restored into a new database beside the live one"
    assert not [
        c
        for c in calls
        if any("DROP DATABASE" in a and "primeflow" in a.split("DROP DATABASE")[-1][:12] for a in c.args)
    ], "the live database is never dropped"
    named = re.search(r"kept as (primeflow_before_rollback_\d{8}T\d{6}Z)", done.stdout)
    assert named, done.stdout
    displaced = stack.psql("SELECT datname FROM pg_database WHERE datname LIKE 'primeflow_before_rollback_%'").split()
    assert named.group(1) in displaced, displaced
    kept = stack.psql("SELECT name FROM \"User\" WHERE email = 'late@primeflow.test'", db=named.group(1))
    assert kept == "Late", "the row written after the apply is kept in the displaced database"


def test_health_without_a_version_field_is_proven_by_the_new_container(stack: ComposeInstall) -> None:
    """/health without the configured version field (PrimeFlow's real /health): the apply proves the
    answer comes from a container started after the stop (issue 9), then rolls back cleanly."""
    env = {"PATCHFLOW_HEALTH_VERSION_FIELD": "build"}  # a field the sample's /health does not have
    done = stack.inv("apply-patch", "--version", "2.3.0", "--yes", env=env)
    assert done.returncode == 0, done.stderr + done.stdout
    flat = " ".join(done.stdout.split())
    assert "otherwise the container publishing the port was started after the stop" in flat
    assert stack.health_version() == "2.3.0"
    back = stack.inv("rollback-patch", "--version", "2.3.0", "--yes", env=env)
    assert back.returncode == 0, back.stderr + back.stdout
    assert stack.health_version() == "2.2.0"


def test_an_api_container_left_running_fails_the_proof_and_is_rolled_back(stack: ComposeInstall) -> None:
    """C16 without a version field: the stop targets other services (api not among app_services),
    so the old api container keeps answering; the proof names it and the apply rolls back."""
    ids = stack.container_ids()
    dump_before = stack.pg_dump()
    env = {
        "PATCHFLOW_HEALTH_VERSION_FIELD": "build",
        "PATCHFLOW_APP_SERVICES": "worker",
        "PATCHFLOW_HEALTH_TIMEOUT": "4",
    }
    done = stack.inv("apply-patch", "--version", "2.3.0", "--yes", env=env)
    assert done.returncode == 2, done.stderr + done.stdout
    assert "published by api, which this apply does not replace" in done.stderr
    assert "rolled back automatically" in done.stderr
    assert stack.container_ids()["api"] == ids["api"]
    assert stack.health_version() == "2.2.0"
    assert stack.pg_dump() == dump_before


def test_a_service_the_patch_removes_is_removed_and_rollback_brings_it_back(
    stack: ComposeInstall, tmp_path: Path
) -> None:
    """Issue 10.9: 2.3.0 drops the worker from the compose file; the plan names it, the apply stops and
    removes its container (volumes kept), rollback brings it back."""
    import yaml
    from support.compose import COMPOSE_FILE, make_release

    source = make_release(stack.root, tmp_path / "source", "2.3.0")
    model = yaml.safe_load((source / COMPOSE_FILE).read_text())
    del model["services"]["worker"]
    (source / COMPOSE_FILE).write_text(yaml.safe_dump(model, sort_keys=False))
    made = subprocess.run(
        [*INV, "create-patch", "--root", str(source)], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    assert made.returncode == 0, made.stderr
    target = stack.root / "patches" / "v2.3.0"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source / "patches" / "v2.3.0", target)
    assert "worker" in stack.container_ids()
    created = stack.volume_created()

    done = stack.inv("apply-patch", "--version", "2.3.0", "--yes")
    assert done.returncode == 0, done.stderr + done.stdout
    flat = " ".join(done.stdout.split())
    assert (
        "services added: none; removed (stopped and removed, volumes kept; rollback brings them back): worker" in flat
    )
    assert "worker" not in stack.container_ids(), "the removed service's container is gone"
    assert stack.health_version() == "2.3.0"

    back = stack.inv("rollback-patch", "--version", "2.3.0", "--yes")
    assert back.returncode == 0, back.stderr + back.stdout
    assert stack.inspect("worker")["State"]["Running"] is True  # type: ignore[index]
    assert stack.health_version() == "2.2.0"
    assert stack.volume_created() == created


# -- errors named clearly -----------------------------------------------------------------------------------
#: stand-ins so these tests need neither PostgreSQL nor Docker on the machine
NO_HOST_PG = {"PG_UID": "101", "PG_GID": "104", "PG_BINDIR": "/usr/lib/postgresql/15/bin"}


def test_missing_compose_file_or_docker_is_named(tmp_path: Path) -> None:
    install = ComposeInstall.create(tmp_path / "install", f"pferr{uuid.uuid4().hex[:8]}", NO_HOST_PG)
    missing = install.inv("ps", env={"PATCHFLOW_COMPOSE_FILES": "docker/nope.yml"})
    assert missing.returncode != 0
    assert "Compose file(s) not found" in missing.stderr and "docker/nope.yml" in missing.stderr
    assert "PATCHFLOW_COMPOSE_FILES" in missing.stderr
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    for task in (("ps",), ("logs", "--service", "api"), ("up",), ("restart",)):
        no_docker = install.inv(*task, env={"PATH": str(empty)})
        assert no_docker.returncode != 0, task
        assert "Docker is not installed" in no_docker.stderr, (task, no_docker.stderr)
        assert "docker.io" in no_docker.stderr
        assert "Traceback" not in no_docker.stderr


def test_unreachable_engine_is_named(tmp_path: Path) -> None:
    plugin = shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode
    if plugin is None or plugin != 0:
        missing_service("needs the docker CLI and the Compose v2 plugin (not the engine)")
    install = ComposeInstall.create(tmp_path / "install", f"pferr{uuid.uuid4().hex[:8]}", NO_HOST_PG)
    done = install.inv("ps", env={"DOCKER_HOST": f"unix://{tmp_path}/no-such-docker.sock"})
    assert done.returncode != 0
    assert "Docker Engine is not reachable" in done.stderr and "DOCKER_HOST" in done.stderr


# -- C14: a slow first start of the database --------------------------------------------------------------
def _pg_isready(install: ComposeInstall, *extra: str) -> int:
    args = [*install.compose_args(), "exec", "-T", "postgres", "pg_isready", "-q", "-U", "primeflow", *extra]
    return subprocess.run(args, capture_output=True, timeout=30, check=False).returncode


def test_apply_waits_for_tcp_while_the_database_initialises_c14(docker_engine: None, tmp_path: Path) -> None:
    install = ComposeInstall.create(tmp_path / "install", f"pfc14{uuid.uuid4().hex[:8]}")
    (install.root / "docker/initdb.d/50-slow.sh").write_text("echo 'slow init script: sleeping 10 s'\nsleep 10\n")
    # no POSTGRES_DB/POSTGRES_USER in .env: patchflow reads them from the service's environment
    # as compose resolves it (the compose file's defaults, primeflow/primeflow)
    env_file = install.root / ".env"
    env_file.write_text(
        "".join(
            line
            for line in env_file.read_text().splitlines(True)
            if not line.startswith(("POSTGRES_DB=", "POSTGRES_USER="))
        )
    )
    try:
        created = install.inv("create-patch")
        assert created.returncode == 0, created.stderr
        install.compose("up", "-d", "postgres", timeout=300)  # fresh volume, no --wait
        # the trap of C14: during the first initialisation the socket answers, TCP does not
        deadline = time.monotonic() + 60
        trapped = False
        while time.monotonic() < deadline and not trapped:
            trapped = _pg_isready(install) == 0 and _pg_isready(install, "-h", "127.0.0.1") != 0
            if not trapped:
                time.sleep(0.2)
        assert trapped, "expected a socket-only server during the first initialisation"
        health = install.inspect("postgres")["State"]
        assert isinstance(health, dict) and health["Health"]["Status"] != "healthy", "the healthcheck uses TCP"

        # bounded: a short wait gives up with a clear error and changes nothing
        hurried = install.inv(
            "apply-patch", "--version", "2.2.0", "--force", "--yes", env={"PATCHFLOW_DB_WAIT_TIMEOUT": "1"}
        )
        assert hurried.returncode != 0
        assert "does not accept connections" in hurried.stderr, hurried.stderr
        assert set(install.container_ids()) == {"postgres"}

        done = install.inv("apply-patch", "--version", "2.2.0", "--force", "--yes")
        assert done.returncode == 0, done.stderr + done.stdout
        assert "database accepted connections after" in done.stdout
        assert "database       'primeflow' in compose service 'postgres'" in done.stdout
        assert install.psql('SELECT count(*) FROM "_prisma_migrations" WHERE finished_at IS NOT NULL') == "3"
        assert install.health_version() == "2.2.0"
        assert "slow init script" in install.compose("logs", "postgres")
    finally:
        install.remove()
