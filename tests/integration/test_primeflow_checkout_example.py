"""examples/primeflow-checkout is a real, runnable PrimeFlow checkout (not a set of file names).

A checkout made by ``scripts/primeflow_checkout.py`` in ``tmp_path``: the api and the worker run as
real node processes and stop cleanly on signals, the flat migrations apply in order with ``psql`` on
a real PostgreSQL (and through the project's own ``make db-migrate``), its Makefile is a real one
whose old patch targets call the old bash scripts, the 3.1.0 release changes exactly what it says
and its migration applies on top. The hosted-PostgreSQL migration of
examples/primeflow-checkout-extras needs the provider's role. Under the ``docker`` marker: both
compose files resolve to the real shape, and the local stack comes up healthy without a registry.

Nothing here waits a fixed time: every wait polls with a deadline.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from support.installs import get, wait_until
from support.missing import missing_service
from support.services import LOCAL_BASE_IMAGE, PostgresCluster, free_port, shared_tempdir

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from primeflow_checkout import (  # noqa: E402
    EXTRAS,
    GROUP_WRITABLE,
    LOCAL_COMPOSE_FILE,
    MIGRATIONS,
    RELEASE_ADDED,
    RELEASE_CHANGED,
    RELEASE_DELETED,
    RELEASE_MIGRATION,
    RELEASE_SCHEMA,
    local_compose_env,
    make_checkout_release,
    prepare_checkout,
)

pytestmark = pytest.mark.integration

SEED_USERS = ["admin@primeflow.dev", "joao.silva@primeflow.dev", "maria.souza@primeflow.dev"]
START_TIMEOUT = 60.0  # seconds for a node process to answer (a busy machine is slow, never stuck)
STOP_TIMEOUT = 30.0


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        missing_service(f"{name} not found (scripts/ensure-system.sh --for test installs it)")
    return found


@dataclass
class Node:
    """A node process of the checkout; its output goes to ``log``."""

    proc: subprocess.Popen[bytes]
    log: Path
    port: int = 0

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Send ``signum``; return the exit code (fails when the process outlives STOP_TIMEOUT)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)
            raise AssertionError(f"node did not exit within {STOP_TIMEOUT} s of signal {signum}:\n{self.output()}")


def _spawn(root: Path, script: str, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [_tool("node"), script],
            cwd=root,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
def processes() -> Iterator[list[Node]]:
    """Node processes started by a test; killed afterwards if the test left them running."""
    started: list[Node] = []
    yield started
    for node in started:
        if node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait(timeout=STOP_TIMEOUT)


def start_api(root: Path, log: Path, processes: list[Node], env: dict[str, str] | None = None) -> Node:
    """Start ``node apps/api/server.js`` of ``root`` on a free port of 127.0.0.1 and wait until
    ``/health`` answers (any status). A port taken between choosing and binding it is retried."""
    for attempt in range(3):
        port = free_port()
        node = Node(
            _spawn(root, "apps/api/server.js", log, {**(env or {}), "PORT": str(port), "HOST": "127.0.0.1"}), log, port
        )
        processes.append(node)

        def answered(node: Node = node) -> str | tuple[int, str]:
            if node.proc.poll() is not None:
                return "exited"
            status, body = get(f"{node.url}/health", timeout=2)
            return (status, body) if status else ""

        if wait_until(answered, START_TIMEOUT, f"the api of {root} on port {port}") != "exited":
            return node
        if "EADDRINUSE" not in node.output() or attempt == 2:
            raise AssertionError(f"the api exited ({node.proc.returncode}):\n{node.output()}")
    raise AssertionError("unreachable")


def dotenv(root: Path) -> dict[str, str]:
    """``KEY=value`` pairs of ``root/.env``."""
    pairs = {}
    for line in (root / ".env").read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value
    return pairs


def psql(cluster: PostgresCluster, url: str, *args: str, sql: str | None = None) -> subprocess.CompletedProcess[str]:
    """``psql -X -q -v ON_ERROR_STOP=1 -d <url> <args>`` (stdin: ``sql``); not checked."""
    return subprocess.run(
        [str(cluster.bin("psql")), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, *args],
        input=sql,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def apply_migration(cluster: PostgresCluster, url: str, path: Path) -> None:
    """Apply one flat migration in one transaction (``psql -1 -f``); fail with psql's output."""
    done = psql(cluster, url, "-1", "-f", str(path))
    assert done.returncode == 0, f"{path.name}: {done.stderr}"


def query(cluster: PostgresCluster, url: str, sql: str) -> list[str]:
    """Rows of ``sql`` (unaligned, tuples only), one string per row."""
    done = psql(cluster, url, "-A", "-t", "-c", sql)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.fixture
def checkout(tmp_path: Path, pg_database: str) -> Path:
    """A 3.0.0 checkout whose ``.env`` points at a fresh database (with ``?schema=public``)."""
    return prepare_checkout(tmp_path / "primeflow", database_url=pg_database)


# -- the api and the worker ---------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_api_health_has_no_version_and_the_api_stops_on_signals(
    checkout: Path, tmp_path: Path, processes: list[Node], signum: int
) -> None:
    database_url = dotenv(checkout)["DATABASE_URL"]
    api = start_api(checkout, tmp_path / "api.log", processes, {"DATABASE_URL": database_url})

    status, body = get(f"{api.url}/health")
    assert status == 200, body
    health = json.loads(body)
    assert set(health) == {"status", "timestamp", "uptime"}, "no version field: patchflow cannot check one"
    assert health["status"] == "ok"
    assert datetime.fromisoformat(health["timestamp"].replace("Z", "+00:00")).tzinfo is not None
    assert isinstance(health["uptime"], int | float) and health["uptime"] >= 0

    status, body = get(f"{api.url}/users")
    assert status == 200 and [u["email"] for u in json.loads(body)["data"]] == SEED_USERS
    status, body = get(f"{api.url}/projects?status=archived")
    assert status == 200 and json.loads(body)["total"] == 1
    assert get(f"{api.url}/nothing-here")[0] == 404

    host, name = database_url.split("@", 1)[1].split("?")[0].split("/")
    assert f"banco: {host}/{name} (schema public)" in api.output()
    assert api.stop(signum) == 0, api.output()
    assert f"{signal.Signals(signum).name} recebido" in api.output()


def test_health_status_env_sets_the_http_status(checkout: Path, tmp_path: Path, processes: list[Node]) -> None:
    api = start_api(checkout, tmp_path / "api.log", processes, {"HEALTH_STATUS": "503"})
    status, body = get(f"{api.url}/health")
    assert status == 503 and json.loads(body)["status"] == "error"
    assert api.stop() == 0


def test_api_without_database_url_still_starts(tmp_path: Path, processes: list[Node]) -> None:
    root = prepare_checkout(tmp_path / "primeflow", database_url=None, git=False)
    api = start_api(root, tmp_path / "api.log", processes)
    assert get(f"{api.url}/health")[0] == 200
    assert "DATABASE_URL não definido" in api.output()
    assert api.stop() == 0


def test_worker_logs_a_line_per_cycle_and_exits_on_sigterm(
    checkout: Path, tmp_path: Path, processes: list[Node]
) -> None:
    log = tmp_path / "worker.log"
    worker = Node(_spawn(checkout, "apps/worker/index.js", log, {"WORKER_INTERVAL_MS": "50"}), log)
    processes.append(worker)
    wait_until(lambda: worker.output().count("fila vazia") >= 3, START_TIMEOUT, "three worker cycles")
    assert worker.proc.poll() is None
    assert worker.stop() == 0, worker.output()
    assert "SIGTERM recebido" in worker.output()


def test_project_scripts_run_without_any_npm_dependency(checkout: Path) -> None:
    node = _tool("node")
    for script in ("scripts/lint.js", "scripts/typecheck.js", "scripts/build.js"):
        done = subprocess.run([node, script], cwd=checkout, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, f"{script}: {done.stdout}{done.stderr}"
    assert json.loads((checkout / "dist/build.json").read_text()) == {"version": "3.0.0"}
    assert (checkout / "dist/components/LegacyBanner.js").is_file()


# -- database ----------------------------------------------------------------------------------


def test_flat_migrations_apply_in_order_with_psql(
    checkout: Path, pg_cluster: PostgresCluster, pg_database: str
) -> None:
    prisma_url = dotenv(checkout)["DATABASE_URL"]
    assert prisma_url == f"{pg_database}?schema=public"
    refused = psql(pg_cluster, prisma_url, "-c", "SELECT 1")
    assert refused.returncode != 0 and 'invalid URI query parameter: "schema"' in refused.stderr, (
        "libpq refuses Prisma's ?schema=public: whoever passes DATABASE_URL to psql/pg_dump must strip it"
    )

    folder = checkout / "prisma" / "migrations"
    assert sorted(p.name for p in folder.glob("*.sql")) == list(MIGRATIONS)
    for name in MIGRATIONS:
        apply_migration(pg_cluster, pg_database, folder / name)

    assert query(pg_cluster, pg_database, 'SELECT email FROM "User" ORDER BY id') == SEED_USERS
    tables = query(pg_cluster, pg_database, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
    assert tables == ["Project", "Session", "User"]
    enums = query(pg_cluster, pg_database, "SELECT typname FROM pg_type WHERE typtype = 'e' ORDER BY 1")
    assert enums == ["ProjectStatus", "Role"]
    fkeys = query(pg_cluster, pg_database, "SELECT conname FROM pg_constraint WHERE contype = 'f' ORDER BY 1")
    assert fkeys == ["Project_ownerId_fkey", "Session_userId_fkey"]
    # the foreign key is real: a session of a missing user is refused, one of a seed user is kept
    bad = psql(pg_cluster, pg_database, "-c", """INSERT INTO "Session" VALUES ('s1', 999, 't1', NULL, NULL, now())""")
    assert bad.returncode != 0 and "Session_userId_fkey" in bad.stderr
    ok = psql(pg_cluster, pg_database, "-c", """INSERT INTO "Session" VALUES ('s1', 1, 't1', NULL, NULL, now())""")
    assert ok.returncode == 0, ok.stderr
    again = psql(pg_cluster, pg_database, "-1", "-f", str(folder / MIGRATIONS[0]))
    assert again.returncode != 0 and "already exists" in again.stderr, "the flat files are not idempotent"


def test_make_db_migrate_and_seed_use_the_projects_own_table(
    checkout: Path, pg_cluster: PostgresCluster, pg_database: str
) -> None:
    env = {**os.environ, "PATH": f"{pg_cluster.bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("DATABASE_URL", None)  # the Makefile reads it from the checkout's .env (-include .env)
    make = _tool("make")

    def run(*target: str) -> str:
        done = subprocess.run(
            [make, "--no-print-directory", *target],
            cwd=checkout,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, f"make {' '.join(target)}:\n{done.stdout}{done.stderr}"
        return done.stdout

    first = run("db-migrate")
    assert [line for line in first.splitlines() if line.startswith("==> ")] == [
        f"==> {Path(name).stem}" for name in MIGRATIONS
    ]
    assert "Migrações aplicadas: 3" in first
    assert "Migrações aplicadas: 0" in run("db-migrate")
    run("seed")
    run("seed")  # idempotent
    rows = query(pg_cluster, pg_database, "SELECT name FROM schema_migrations ORDER BY name")
    assert rows == [Path(name).stem for name in MIGRATIONS]
    assert query(pg_cluster, pg_database, 'SELECT count(*) FROM "Project"') == ["2"]
    assert query(pg_cluster, pg_database, "SELECT to_regclass('_prisma_migrations') IS NULL") == ["t"], (
        "a checkout migrated the old way has no _prisma_migrations table"
    )


def test_hosted_postgres_migration_needs_the_providers_role(checkout: Path) -> None:
    # a private cluster: the role is cluster-wide and must not leak into the session's cluster
    base = shared_tempdir("patchflow-hosted-pg-")
    try:
        try:
            cluster = PostgresCluster.start(base)
        except (RuntimeError, OSError) as exc:
            missing_service(f"cannot start PostgreSQL: {exc}")
        with cluster:
            cluster.create_database("primeflow")
            url = cluster.url("primeflow")
            for name in MIGRATIONS:
                apply_migration(cluster, url, checkout / "prisma" / "migrations" / name)
            target = checkout / "prisma" / "migrations" / "005_auth_schema.sql"
            shutil.copy2(EXTRAS / "005_auth_schema.sql", target)

            failed = psql(cluster, url, "-1", "-f", str(target))
            assert failed.returncode != 0
            assert 'role "authenticated" does not exist' in failed.stderr
            assert query(cluster, url, "SELECT count(*) FROM pg_namespace WHERE nspname = 'auth'") == ["0"], (
                "in one transaction nothing of the failed migration stays"
            )

            apply_migration(cluster, url, EXTRAS / "hosted-roles.sql")
            apply_migration(cluster, url, target)
            assert query(cluster, url, "SELECT extname FROM pg_extension WHERE extname = 'pgcrypto'") == ["pgcrypto"]
            assert query(cluster, url, "SELECT has_schema_privilege('authenticated', 'auth', 'USAGE')") == ["t"]
            assert query(cluster, url, "SELECT auth.uid() IS NULL") == ["t"]
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- the checkout on disk ----------------------------------------------------------------------


def test_checkout_modes_git_commit_and_untracked_host_files(tmp_path: Path) -> None:
    root = prepare_checkout(tmp_path / "primeflow", database_url=None)
    for rel in GROUP_WRITABLE:
        assert (root / rel).stat().st_mode & 0o777 == 0o664, rel
    git = _tool("git")

    def out(*args: str) -> str:
        return subprocess.run(
            [git, "-C", str(root), *args],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "GIT_CONFIG_GLOBAL": os.devnull},
        ).stdout

    assert out("log", "--format=%an <%ae>|%aI|%s").splitlines() == [
        "PrimeFlow Dev <dev@primeflow.test>|2025-05-12T10:00:00+00:00|PrimeFlow 3.0.0 - Fluxos paralelos"
    ]
    assert out("tag").split() == ["v3.0.0"]
    assert out("status", "--porcelain") == "", "host files and .env are ignored, everything else committed"
    tracked = set(out("ls-files").splitlines())
    assert {"VERSION", "Makefile", "CHANGELOG.md", "prisma/migrations/001_init.sql", ".env.example"} <= tracked
    for rel in (
        ".env",
        "uploads/photo.jpg",
        "dist/index.html",
        "public/sitemap.xml",
        "docker/docker-compose.override.yml",
    ):
        assert rel not in tracked and (root / rel).is_file(), rel
    assert not [p for p in tracked if p.startswith(("node_modules/", "storage/", "apps/api/node_modules/"))]
    # git keeps 0644 for the group-writable files: the 0664 mode exists only on the host
    assert out("ls-files", "-s", "src/main.js").startswith("100644 ")


def test_makefile_keeps_its_targets_and_the_old_patch_targets(tmp_path: Path) -> None:
    root = prepare_checkout(tmp_path / "primeflow", database_url=None, git=False)
    make = _tool("make")

    def dry(*args: str) -> str:
        done = subprocess.run(
            [make, "--no-print-directory", "-n", *args],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "bash scripts/patch/apply-patch.sh 3.0.0" in dry("apply-patch", "VERSION=3.0.0")
    assert "bash scripts/patch/rollback-patch.sh 2.7.0" in dry("rollback-patch", "VERSION=2.7.0")
    assert "bash scripts/patch/create-patch.sh 3.0.0" in dry("create-patch"), "VERSION ?= $(shell cat VERSION)"
    assert "bash scripts/patch/patch-status.sh" in dry("patch-status")
    assert "docker compose -f docker/docker-compose.yml up -d" in dry("up")
    assert "docker compose -f docker/docker-compose.yml logs -f --tail=100 api" in dry("logs")
    assert "docker compose -f docker/docker-compose.yml ps" in dry("ps")
    assert "docker compose -f docker/docker-compose.yml down" in dry("down")

    # the checkout's .env is included (-include .env): help must still list each target once
    shown = subprocess.run(
        [make, "--no-print-directory", "help"], cwd=root, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    lines = re.sub(r"\x1b\[[0-9;]*m", "", shown).splitlines()
    assert lines[0] == "PrimeFlow 3.0.0"
    listed = [line.split()[0] for line in lines[1:]]
    assert len(listed) == len(set(listed))
    assert set(listed) >= {
        "help",
        "install",
        "dev",
        "build",
        "lint",
        "test",
        "db-migrate",
        "seed",
        "up",
        "down",
        "logs",
        "ps",
        "create-patch",
        "apply-patch",
        "rollback-patch",
        "patch-status",
    }
    phony = (root / "Makefile").read_text()
    assert ".PHONY:" in phony and "-include .env" in phony

    bash = _tool("bash")
    for script in sorted((root / "scripts").rglob("*.sh")):
        done = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"{script}: {done.stderr}"
    old_apply = (root / "scripts/patch/apply-patch.sh").read_text()
    assert "read -p" in old_apply and "pg_dump" in old_apply and "md5sum -c" in old_apply


# -- the 3.1.0 release -------------------------------------------------------------------------


def test_release_adds_changes_and_deletes_what_it_says(tmp_path: Path, processes: list[Node]) -> None:
    root = prepare_checkout(tmp_path / "primeflow", database_url=None)
    (root / "patches" / "v3.0.0").mkdir(parents=True)
    (root / "backups").mkdir()
    release = make_checkout_release(root, tmp_path / "release")

    changes = subprocess.run(
        ["git", "-C", str(release), "diff", "--name-status", "--no-renames", "v3.0.0", "v3.1.0"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "GIT_CONFIG_GLOBAL": os.devnull},
    ).stdout
    status = dict(reversed(line.split("\t", 1)) for line in changes.splitlines())
    assert {p for p, s in status.items() if s == "A"} == {*RELEASE_ADDED, RELEASE_MIGRATION}
    assert {p for p, s in status.items() if s == "M"} == {*RELEASE_CHANGED, RELEASE_SCHEMA}
    assert {p for p, s in status.items() if s == "D"} == set(RELEASE_DELETED)
    for rel in RELEASE_DELETED:
        assert not (release / rel).exists()
    assert (release / "VERSION").read_text() == "3.1.0\n"
    assert (release / "src/main.js").stat().st_mode & 0o777 == 0o664, "a changed 0664 file keeps its mode"
    assert "LegacyBanner" not in (release / "src/main.js").read_text()
    changelog = (release / "CHANGELOG.md").read_text()
    assert changelog.index("## Versão 3.1.0 - Auditoria") < changelog.index("## Versão 3.0.0 - Fluxos paralelos")
    assert json.loads((release / "package.json").read_text())["version"] == "3.1.0"
    assert not (release / "patches").exists() and not (release / "backups").exists()
    assert (release / ".env").is_file() and (release / "uploads/photo.jpg").is_file(), "host files come along"

    api = start_api(release, tmp_path / "api.log", processes)
    assert get(f"{api.url}/health")[0] == 200
    status_code, body = get(f"{api.url}/audit")
    assert status_code == 200 and json.loads(body) == {"data": [], "total": 0}
    assert api.stop() == 0


def test_release_with_a_health_status_answers_it(tmp_path: Path, processes: list[Node]) -> None:
    root = prepare_checkout(tmp_path / "primeflow", database_url=None, git=False)
    release = make_checkout_release(root, tmp_path / "release", "3.1.1", migration=None, health_status=503)
    assert not (release / RELEASE_MIGRATION).exists()
    api = start_api(release, tmp_path / "api.log", processes, {"HEALTH_STATUS": "200"})
    assert get(f"{api.url}/health")[0] == 503, "hard-coded in the source: the environment cannot rescue it"
    assert api.stop() == 0


def test_release_migration_applies_on_top(
    checkout: Path, tmp_path: Path, pg_cluster: PostgresCluster, pg_database: str
) -> None:
    for name in MIGRATIONS:
        apply_migration(pg_cluster, pg_database, checkout / "prisma" / "migrations" / name)
    release = make_checkout_release(checkout, tmp_path / "release")
    flat = sorted(p.name for p in (release / "prisma" / "migrations").glob("*.sql"))
    assert flat == [*MIGRATIONS, Path(RELEASE_MIGRATION).name]
    apply_migration(pg_cluster, pg_database, release / RELEASE_MIGRATION)
    users = query(pg_cluster, pg_database, 'SELECT email FROM "User" ORDER BY id')
    assert users[:3] == SEED_USERS and len(users) == 5
    columns = query(
        pg_cluster, pg_database, "SELECT column_name FROM information_schema.columns WHERE table_name = 'User'"
    )
    assert "lastLoginAt" in columns
    assert query(pg_cluster, pg_database, 'SELECT count(*) FROM "AuditLog"') == ["0"]


# -- docker compose ----------------------------------------------------------------------------


def compose(
    root: Path, file: str, *args: str, project: str | None = None, input: str | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """``docker compose --env-file .env -f <file> [-p <project>] <args>`` in ``root`` (not checked)."""
    argv = ["docker", "compose", "--env-file", ".env", "-f", file, *(["-p", project] if project else []), *args]
    return subprocess.run(argv, cwd=root, input=input, capture_output=True, text=True, timeout=timeout, check=False)


def ports(service: dict[str, Any]) -> list[tuple[int, str]]:
    """``(container port, host port)`` pairs of a service of ``docker compose config --format json``."""
    return [(int(p["target"]), str(p["published"])) for p in service.get("ports", [])]


@pytest.mark.docker
def test_compose_files_resolve_to_the_real_shape(docker_engine: None, tmp_path: Path) -> None:
    root = prepare_checkout(
        tmp_path / "primeflow", database_url=None, git=False, extra_env=local_compose_env("pfshape")
    )
    done = compose(root, "docker/docker-compose.yml", "config", "--format", "json")
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)
    assert config["name"] == "docker", "no name: key, so the project is named after the compose file's folder"
    services = config["services"]
    assert {name: svc["container_name"] for name, svc in services.items()} == {
        name: f"primeflow-{name}" for name in ("postgres", "redis", "api", "worker", "frontend")
    }
    api = services["api"]
    assert ports(api) == [(4000, "4000")]
    assert "wget -qO- http://localhost:4000/health" in " ".join(api["healthcheck"]["test"])
    assert (
        api["environment"]["DATABASE_URL"] == "postgresql://primeflow:primeflow@postgres:5432/primeflow?schema=public"
    )
    assert api["depends_on"]["postgres"]["condition"] == "service_healthy"
    postgres_check = " ".join(services["postgres"]["healthcheck"]["test"])
    assert "pg_isready" in postgres_check and "-h" not in postgres_check, "socket check: ready during initdb (C14)"
    assert ports(services["postgres"]) == [(5432, "5432")]
    assert ports(services["frontend"]) == [(80, "3000")]
    assert config["volumes"]["pgdata"]["name"] == "docker_pgdata"

    done = compose(root, LOCAL_COMPOSE_FILE, "config", "--format", "json")
    assert done.returncode == 0, done.stderr
    local = json.loads(done.stdout)["services"]
    assert {name: svc["container_name"] for name, svc in local.items()} == {
        name: f"pfshape-{name}" for name in ("postgres", "api", "worker", "frontend")
    }
    env = dotenv(root)
    assert ports(local["api"]) == [(4000, env["API_PORT"])]
    assert ports(local["frontend"]) == [(80, env["FRONTEND_PORT"])]
    assert local["api"]["environment"]["DATABASE_URL"].endswith("@postgres:5432/primeflow?schema=public")
    assert "-h 127.0.0.1" in " ".join(local["postgres"]["healthcheck"]["test"])


@pytest.mark.docker
def test_local_stack_runs_without_a_registry(docker_engine: None, tmp_path: Path) -> None:
    from support.compose import remove_project

    if subprocess.run(["docker", "image", "inspect", LOCAL_BASE_IMAGE], capture_output=True, check=False).returncode:
        missing_service(f"image {LOCAL_BASE_IMAGE} missing (scripts/ensure-system.sh --for test builds it)")
    project = f"pfcheckout{uuid.uuid4().hex[:8]}"
    root = prepare_checkout(tmp_path / "primeflow", database_url=None, git=False, extra_env=local_compose_env(project))
    env = dotenv(root)

    def psql_in_container(*args: str, sql: str | None = None) -> str:
        argv = ["exec", "-T", "postgres", "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"]
        done = compose(
            root, LOCAL_COMPOSE_FILE, *argv, "-U", "primeflow", "-d", "primeflow", *args, project=project, input=sql
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    try:
        up = compose(
            root,
            LOCAL_COMPOSE_FILE,
            "up",
            "-d",
            "--build",
            "--wait",
            "--wait-timeout",
            "300",
            project=project,
            timeout=900,
        )
        if up.returncode != 0:
            logs = compose(root, LOCAL_COMPOSE_FILE, "logs", "--no-color", project=project, timeout=120)
            raise AssertionError(f"compose up failed:\n{up.stdout}{up.stderr}\n{logs.stdout}")
        names = subprocess.run(
            ["docker", "ps", "--filter", f"label=com.docker.compose.project={project}", "--format", "{{.Names}}"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.split()
        assert sorted(names) == sorted(f"{project}-{name}" for name in ("postgres", "api", "worker", "frontend"))

        status, body = get(f"http://127.0.0.1:{env['API_PORT']}/health")
        assert status == 200 and set(json.loads(body)) == {"status", "timestamp", "uptime"}, body
        status, body = get(f"http://127.0.0.1:{env['FRONTEND_PORT']}/")
        assert status == 200 and "<title>PrimeFlow</title>" in body, body

        # the old apply-patch.sh way: each flat file piped into psql inside the postgres container
        for name in MIGRATIONS:
            psql_in_container("-f", "-", sql=(root / "prisma" / "migrations" / name).read_text(encoding="utf-8"))
        users = psql_in_container("-A", "-t", "-c", 'SELECT email FROM "User" ORDER BY id').split()
        assert users == SEED_USERS

        logs = compose(root, LOCAL_COMPOSE_FILE, "logs", "--no-color", "api", "worker", project=project, timeout=120)
        assert "banco: postgres:5432/primeflow (schema public)" in logs.stdout, logs.stdout
        assert "[worker] iniciado" in logs.stdout, logs.stdout
    finally:
        compose(root, LOCAL_COMPOSE_FILE, "down", "--timeout", "10", project=project, timeout=300)
        remove_project(project)
