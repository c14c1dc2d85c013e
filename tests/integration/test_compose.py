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
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pytest_docker.plugin import Services, get_docker_services
from support.compose import ComposeInstall, DockerCall, docker_shim, read_shim_log, volume_removals
from support.installs import INV
from support.missing import missing_service

pytestmark = [pytest.mark.docker]
#: the tests on the module's stack run on one worker, in this order (the C14 test and the error
#: tests make their own workspaces: they may run on any worker meanwhile)
on_stack = pytest.mark.xdist_group("compose")

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
# (one behaviour per test, all on the module's one stack: the split adds no start-up)
@on_stack
def test_ps_lists_every_service_running(stack: ComposeInstall) -> None:
    ps = stack.inv("ps", "--json")
    assert ps.returncode == 0, ps.stderr
    states = {row["name"]: row["state"] for row in json.loads(ps.stdout)}
    assert states == {"api": "running", "worker": "running", "postgres": "running"}


@on_stack
def test_logs_of_one_service_or_all_of_them(stack: ComposeInstall) -> None:
    logs = stack.inv("logs", "--service", "api", "--tail", "50")
    assert logs.returncode == 0, logs.stderr
    assert "api listening on 0.0.0.0:3001 version 2.2.0" in logs.stdout
    default_logs = stack.inv("logs", "--tail", "5")
    assert default_logs.returncode == 0 and "worker" in default_logs.stdout


@on_stack
def test_logs_of_an_unknown_service_are_refused_naming_it(stack: ComposeInstall) -> None:
    unknown = stack.inv("logs", "--service", "nope")
    assert unknown.returncode != 0 and "Unknown compose service(s): nope" in unknown.stderr


@on_stack
def test_logs_follow_streams_new_lines(stack: ComposeInstall) -> None:
    assert _follow_heartbeats(stack) >= 2, "logs --follow streams new lines"


@on_stack
def test_restart_of_one_service_keeps_the_others_running(stack: ComposeInstall) -> None:
    ids = stack.container_ids()
    started = {s: stack.started_at(s) for s in ids}
    one = stack.inv("restart", "--service", "worker")
    assert one.returncode == 0, one.stderr
    assert stack.container_ids() == ids
    assert stack.started_at("worker") != started["worker"]
    assert stack.started_at("api") == started["api"]


@on_stack
def test_restart_without_a_service_restarts_only_the_app_services(stack: ComposeInstall) -> None:
    ids = stack.container_ids()
    started = {s: stack.started_at(s) for s in ids}
    apps = stack.inv("restart")
    assert apps.returncode == 0, apps.stderr
    assert stack.started_at("api") != started["api"]
    assert stack.started_at("postgres") == started["postgres"], "restart without --service restarts only app services"
    assert stack.wait_health_version("2.2.0")


@on_stack
def test_down_keeps_the_volume_and_up_brings_everything_back_with_the_data(stack: ComposeInstall) -> None:
    """C25: down keeps the volume; up brings everything back with the data."""
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


@contextmanager
def build_impossible(stack: ComposeInstall) -> Iterator[None]:
    """The install's Dockerfile fails any build (as a base image or a registry out of reach at
    2 a.m. would): a patch does not change it, so a restored tree keeps it broken."""
    dockerfile = stack.root / "docker" / "Dockerfile.local"
    original = dockerfile.read_bytes()
    dockerfile.write_bytes(original + b'RUN echo "no build may run here" && exit 1\n')
    try:
        yield
    finally:
        dockerfile.write_bytes(original)


def kept_image(stack: ComposeInstall, service: str, version: str) -> str:
    """The id of ``service``'s image kept for ``version`` ("" when none)."""
    done = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", f"{stack.project}-{service}:patchflow-{version}"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() if done.returncode == 0 else ""


def assert_no_build_after_the_stop(calls: list[DockerCall]) -> None:
    stop = next(c for c in calls if c.has("compose", "stop"))
    later = [c for c in calls if c.started >= stop.started]
    assert not [c.text for c in later if c.has("compose", "build") or c.has("compose", "up", "--build")], [
        c.text for c in later
    ]
    assert [c for c in later if c.has("compose", "up")], "the old version was started"


@on_stack
def test_unhealthy_patch_is_rolled_back_automatically(stack: ComposeInstall, tmp_path: Path) -> None:
    """2.4.0 fails compose's health check; the automatic rollback starts 2.2.0's kept images: no
    build runs after the stop (the restored tree's Dockerfile could not build anyway)."""
    env, log = docker_shim(tmp_path)
    ids = stack.container_ids()
    created = stack.volume_created()
    dump = stack.pg_dump()
    images_before = {s: stack.image_id(s) for s in ("api", "worker")}

    with build_impossible(stack):
        done = stack.inv(
            "apply-patch", "--version", "2.4.0", "--yes", env={**env, "PATCHFLOW_START_RETRIES": "1"}, timeout=300
        )
        assert stack.health_version() == "2.2.0"
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
    assert_no_build_after_the_stop(calls)
    assert failed_up[-1].returncode == 0, "the old version starts from its kept images"
    assert "starting 2.2.0's kept images (no build)" in done.stdout, done.stdout
    for service, image in images_before.items():
        assert kept_image(stack, service, "2.2.0") == image, "kept before the staging build"
        assert stack.inspect(service)["Image"] == image == stack.image_id(service), "the old image runs again"
    history = [json.loads(line) for line in (stack.root / ".patchflow/history.jsonl").read_text().splitlines()]
    assert history[-1]["result"] == "rolled_back" and history[-1]["to_version"] == "2.4.0"


@on_stack
def test_apply_replaces_app_containers_and_keeps_the_database(stack: ComposeInstall, tmp_path: Path) -> None:
    env, log = docker_shim(tmp_path)
    stack.psql(
        'INSERT INTO "User" ("email", "name", "role", "updatedAt") '
        f"VALUES ('{SENTINEL}', 'Sentinel', 'MEMBER', now())"
    )
    ids = stack.container_ids()
    created = stack.volume_created()
    image_before = stack.image_id("api")
    STATE["image_before"] = image_before
    STATE["dump_before"] = stack.pg_dump()

    done = stack.inv("apply-patch", "--version", "2.3.0", "--yes", env=env)
    assert done.returncode == 0, done.stderr + done.stdout
    # reached only through docker compose exec: no snapshot, the dump inside the stopped window (the plan says so)
    flat = " ".join(done.stdout.split())
    assert "inside the stopped window: 1 migration(s) pending" in flat, flat
    assert "no snapshot: the database is reached through docker compose exec" in flat, flat
    assert "database dump (after the stop)" in flat and "_snap_" not in flat, flat
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


@on_stack
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

    with build_impossible(stack):
        done = stack.inv("rollback-patch", "--version", "2.3.0", "--yes", env=env)
        assert stack.health_version() == "2.2.0"
    assert done.returncode == 0, done.stderr + done.stdout
    assert "rolled back 2.3.0 -> 2.2.0" in done.stdout
    assert "starting 2.2.0's kept images (no build)" in done.stdout, done.stdout
    assert stack.inspect("api")["Image"] == STATE["image_before"] == stack.image_id("api"), "2.2.0's image runs"
    assert stack.pg_dump() == STATE["dump_before"], "full pg_dump identical to the one before the apply"
    assert stack.health_version() == "2.2.0"
    assert stack.container_ids()["postgres"] == ids["postgres"]
    assert stack.volume_created() == created

    calls = read_shim_log(log)
    assert volume_removals(calls) == []
    assert_no_build_after_the_stop(calls)
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


@on_stack
def test_prune_backups_removes_the_kept_images_no_backup_restores(stack: ComposeInstall) -> None:
    """Kept images go with the backups: a tag of a version no backup restores (and not installed)
    is removed by prune-backups; 2.2.0's, which the backups restore, is kept; no image a container
    runs is removed."""
    api = stack.image_id("api")
    stale = f"{stack.project}-api:patchflow-1.9.0"
    subprocess.run(["docker", "tag", api, stale], check=True, capture_output=True)
    done = stack.inv("prune-backups")
    assert done.returncode == 0, done.stderr + done.stdout
    assert f"removed kept image {stale}" in done.stdout, done.stdout
    assert kept_image(stack, "api", "1.9.0") == ""
    assert kept_image(stack, "api", "2.2.0") and kept_image(stack, "worker", "2.2.0")
    assert stack.image_id("api") == api and stack.health_version() == "2.2.0"


@on_stack
def test_an_apply_undone_before_the_stop_points_the_images_back_at_the_installed_ones(stack: ComposeInstall) -> None:
    """Killed after its staging build replaced the images (nothing stopped): the recovery's
    drop-staging points the image names back at 2.2.0's kept images, so a later `up` does not start
    a build that was never installed."""
    images = {s: stack.image_id(s) for s in ("api", "worker")}
    killed = stack.inv("apply-patch", "--version", "2.3.0", "--yes", env={"PATCHFLOW_TEST_KILL_AT": "stage:after"})
    assert killed.returncode in (-9, 137), killed.stderr + killed.stdout
    assert stack.image_id("api") != images["api"], "the staging build replaced the image"
    done = stack.inv("rollback-patch", "--version", "2.3.0", "--break-lock", "--yes")
    assert done.returncode == 0, done.stderr + done.stdout
    assert {s: stack.image_id(s) for s in images} == images
    assert stack.health_version() == "2.2.0"


@on_stack
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


@on_stack
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


@on_stack
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
#: an init script that holds the first initialisation (socket-only server) until the test creates
#: ``release`` next to it (the folder is bind-mounted), at most 300 s: which side of the race wins
#: is then decided by the test, not by the machine's load
HELD_INIT = """echo 'slow init script: held until the test releases it'
i=0
while [ ! -e /docker-entrypoint-initdb.d/release ] && [ "$i" -lt 3000 ]; do sleep 0.1; i=$((i + 1)); done
echo 'slow init script: released'
"""


def _pg_isready(install: ComposeInstall, *extra: str) -> int:
    args = [*install.compose_args(), "exec", "-T", "postgres", "pg_isready", "-q", "-U", "primeflow", *extra]
    return subprocess.run(args, capture_output=True, timeout=30, check=False).returncode


class _LineReader:
    """Collects a process's output lines in a thread; :meth:`wait_for` blocks until a line
    containing a text arrived (or the deadline passed)."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self.lines.append("")  # end of output
            self._changed.notify_all()

    def wait_for(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not any(text in line for line in self.lines):
                left = deadline - time.monotonic()
                if left <= 0 or (self.lines and self.lines[-1] == ""):
                    return False
                self._changed.wait(left)
            return True

    def text(self) -> str:
        self._thread.join(timeout=60)
        return "".join(self.lines)


@pytest.fixture
def c14_install(docker_engine: None, tmp_path: Path) -> Iterator[ComposeInstall]:
    """A compose install whose database is held in its first initialisation (HELD_INIT) once
    started; no POSTGRES_DB/POSTGRES_USER in .env (patchflow reads them from the service's
    environment as compose resolves it: the compose file's defaults, primeflow/primeflow)."""
    install = ComposeInstall.create(tmp_path / "install", f"pfc14{uuid.uuid4().hex[:8]}")
    (install.root / "docker/initdb.d/50-slow.sh").write_text(HELD_INIT)
    env_file = install.root / ".env"
    env_file.write_text(
        "".join(
            line
            for line in env_file.read_text().splitlines(True)
            if not line.startswith(("POSTGRES_DB=", "POSTGRES_USER="))
        )
    )
    try:
        yield install
    finally:
        install.remove()


def test_apply_waits_for_tcp_while_the_database_initialises_c14(c14_install: ComposeInstall) -> None:
    install = c14_install
    created = install.inv("create-patch")
    assert created.returncode == 0, created.stderr
    install.compose("up", "-d", "postgres", timeout=300)  # fresh volume, no --wait
    # the trap of C14: during the first initialisation the socket answers, TCP does not
    deadline = time.monotonic() + 120
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

    # the apply is seen waiting, then the initialisation is let finish: it goes on by itself
    proc = subprocess.Popen(
        [*INV, "apply-patch", "--root", str(install.root), "--version", "2.2.0", "--force", "--yes"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    try:
        out = _LineReader(proc.stdout)
        err = _LineReader(proc.stderr)
        waiting = out.wait_for("to accept connections", timeout=240)
        (install.root / "docker/initdb.d/release").touch()
        assert proc.wait(timeout=300) == 0, err.text() + out.text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    stdout = out.text()
    assert waiting, stdout
    assert "database accepted connections after" in stdout
    assert "database       'primeflow' in compose service 'postgres'" in stdout
    assert install.psql('SELECT count(*) FROM "_prisma_migrations" WHERE finished_at IS NOT NULL') == "3"
    assert install.health_version() == "2.2.0"
    logs = install.compose("logs", "postgres")
    assert "slow init script: held" in logs and "slow init script: released" in logs
