"""Build throwaway PrimeFlow installs from examples/primeflow-sample (used by `inv demo` and tests).

A *workspace* is a copy of the sample that plays a production install: a ``.env`` with fake
secrets and the patchflow settings for this machine (command service manager, a free port, the
test database), plus what git cannot carry: ``node_modules/``, ``dist/``, ``uploads/``, an empty
directory, an in-tree symlink, a dangling symlink and a 0600 file.

:func:`make_release` copies a workspace into a *source tree* and changes it into the next
version (a new migration, added, changed and deleted files) the way a developer would.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "examples" / "primeflow-sample"


_SERVICE_PORTS = (20000, 32000)  # below Linux's default ephemeral range (32768-60999)
_GIVEN: set[int] = set()  # ports this process handed out (also without pytest-xdist)


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A TCP port on 127.0.0.1 for a service to listen on later: free now, outside the kernel's
    ephemeral range (an outgoing connection never takes it meanwhile, which a bind-to-0 port may
    suffer), never handed out twice by this process and, under pytest-xdist, never handed to another
    worker of the same run (a file of handed-out ports in the temp folder, named by
    ``PYTEST_XDIST_TESTRUNUID``, under a file lock).
    A service is stopped and started again many times during a test; only a port nobody else was
    given stays its own meanwhile.

    Raises:
        RuntimeError: no free port in the range (20000-32000 minus the ephemeral range).
    """
    import contextlib
    import random
    import tempfile

    from filelock import FileLock

    low, high = _ephemeral_range()
    candidates = [p for p in range(*_SERVICE_PORTS) if not low <= p <= high]
    random.SystemRandom().shuffle(candidates)
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID", "")
    registry = Path(tempfile.gettempdir()) / f"patchflow-ports-{run}" if run else None
    lock = FileLock(f"{registry}.lock") if registry else None
    with lock or contextlib.nullcontext():
        if registry is not None and not registry.exists():
            _remove_old_registries(registry.parent)
        given = set(registry.read_text().split()) if registry and registry.exists() else set()
        given |= {str(port) for port in _GIVEN}
        for port in candidates:
            if str(port) in given:
                continue
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))  # no SO_REUSEADDR: in TIME_WAIT counts as taken
                except OSError:
                    continue
            if registry is not None:
                with open(registry, "a") as handle:
                    handle.write(f"{port}\n")
            _GIVEN.add(port)
            return port
    raise RuntimeError(f"no free TCP port on 127.0.0.1 in {_SERVICE_PORTS[0]}-{_SERVICE_PORTS[1]}")


def _remove_old_registries(folder: Path, age: float = 86400.0) -> None:
    """Remove port registries (and their locks) of test runs that ended over ``age`` seconds ago."""
    import time

    for path in folder.glob("patchflow-ports-*"):
        try:
            if time.time() - path.stat().st_mtime > age:
                path.unlink()
        except OSError:
            pass


def prepare_workspace(
    dest: Path, *, database_url: str | None, port: int | None = None, extra_env: dict[str, str] | None = None
) -> Path:
    """Copy the sample to ``dest`` and make it a runnable install; returns ``dest``."""
    shutil.copytree(SAMPLE, dest, symlinks=True)
    port = port or free_port()
    (dest / "node_modules" / ".pnpm" / "left-pad@1.3.0").mkdir(parents=True)
    (dest / "node_modules" / ".pnpm" / "left-pad@1.3.0" / "index.js").write_text("module.exports = 1;\n")
    (dest / "dist").mkdir()
    (dest / "dist" / "bundle.js").write_text("// built at run time\n")
    (dest / "uploads").mkdir()
    (dest / "uploads" / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0 fake jpeg")
    (dest / "src" / "assets" / "empty").mkdir(parents=True)
    os.symlink("assets/v2", dest / "public" / "current")
    os.symlink("missing.md", dest / "docs" / "latest.md")
    os.chmod(dest / "config" / "private.json", 0o600)
    for script in ("scripts/start.sh", "scripts/migrate.sh", "docker/entrypoint.sh", "docker/postgres-entrypoint.sh"):
        os.chmod(dest / script, 0o755)
    env = {
        "JWT_SECRET": "fake-demo-secret-do-not-use",
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "PATCHFLOW_SERVICE_MANAGER": "command",
        "PATCHFLOW_COMMANDS": "api=node apps/api/server.js;worker=node apps/worker/worker.js",
        "PATCHFLOW_HEALTH_URL": f"http://127.0.0.1:{port}/health",
        "PATCHFLOW_HEALTH_TIMEOUT": "15",
        "PATCHFLOW_STOP_TIMEOUT": "5",
        "PATCHFLOW_MIGRATE_COMMAND": "builtin",
        "PATCHFLOW_DB_WAIT_TIMEOUT": "10",
    }
    if database_url:
        env["DATABASE_URL"] = database_url
    else:
        env["PATCHFLOW_DATABASE_MODE"] = "none"
    env.update(extra_env or {})
    (dest / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return dest


COMPOSE_FILE = "docker/docker-compose.local.yml"


def host_postgres_ids() -> tuple[int, int]:
    """Numeric uid and gid of the host's ``postgres`` user (the local compose stack runs the
    host's PostgreSQL binaries as that user)."""
    import pwd

    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


def host_pg_bindir() -> str:
    """The newest ``/usr/lib/postgresql/<ver>/bin`` holding a ``postgres`` server binary."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if not found:
        raise RuntimeError("no PostgreSQL server in /usr/lib/postgresql/<ver>/bin (Debian package 'postgresql')")
    return str(found[-1].parent)


def prepare_compose_workspace(
    dest: Path, *, project: str, api_port: int | None = None, extra_env: dict[str, str] | None = None
) -> Path:
    """Like :func:`prepare_workspace`, but the install runs as the docker compose project ``project``
    (``docker/docker-compose.local.yml``: api + worker images built locally, PostgreSQL in a
    container with the named volume ``pgdata``); patchflow drives it with the compose service
    manager and the compose database mode. Returns ``dest``; nothing is started."""
    port = api_port or free_port()
    extra = dict(extra_env or {})
    if "PG_UID" in extra and "PG_GID" in extra:
        uid, gid = int(extra["PG_UID"]), int(extra["PG_GID"])
    else:
        uid, gid = host_postgres_ids()
    env = {
        "PATCHFLOW_SERVICE_MANAGER": "compose",
        "PATCHFLOW_COMPOSE_FILES": COMPOSE_FILE,
        "PATCHFLOW_COMPOSE_PROJECT": project,
        "PATCHFLOW_DATABASE_MODE": "compose",
        "PATCHFLOW_HEALTH_TIMEOUT": "30",
        "PATCHFLOW_STOP_TIMEOUT": "5",
        "PATCHFLOW_DB_WAIT_TIMEOUT": "60",
        "API_PORT": str(port),
        "POSTGRES_DB": "primeflow",
        "POSTGRES_USER": "primeflow",
        "POSTGRES_PASSWORD": "fake-demo-password",
        "PG_UID": str(uid),
        "PG_GID": str(gid),
        "PG_BINDIR": extra.get("PG_BINDIR") or host_pg_bindir(),
    }
    env.update(extra)
    return prepare_workspace(dest, database_url=None, port=port, extra_env=env)


AUDIT_MIGRATION = """-- CreateTable
CREATE TABLE "AuditLog" (
    "id" SERIAL NOT NULL,
    "action" TEXT NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT "AuditLog_pkey" PRIMARY KEY ("id")
);

-- AlterTable
ALTER TABLE "User" ADD COLUMN "nickname" TEXT;

-- Seed
INSERT INTO "AuditLog" ("action") VALUES ('upgrade to 2.3.0');
INSERT INTO "User" ("email", "name", "role", "updatedAt") VALUES
    ('dana@primeflow.test', 'Dana', 'MEMBER', CURRENT_TIMESTAMP),
    ('eli@primeflow.test', 'Eli', 'MEMBER', CURRENT_TIMESTAMP);
"""

AUDIT_ROUTE = """'use strict';
// GET /audit: added in 2.3.0
module.exports = {
  path: '/audit',
  handler(req, res) {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ entries: [] }));
  },
};
"""


def make_release(
    install: Path,
    dest: Path,
    version: str = "2.3.0",
    *,
    migration: str | None = AUDIT_MIGRATION,
    health_status: int | None = None,
) -> Path:
    """Copy ``install`` to ``dest`` and turn it into ``version``: a new migration, an added route,
    a changed frontend file, a deleted component and a changelog section. ``health_status``
    makes ``/health`` answer that HTTP code (to test automatic rollback)."""
    shutil.copytree(install, dest, symlinks=True, ignore=shutil.ignore_patterns("patches", "backups", ".patchflow"))
    (dest / "VERSION").write_text(f"{version}\n")
    if migration is not None:
        folder = dest / "prisma" / "migrations" / "20250301090000_audit_log"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "migration.sql").write_text(migration)
    (dest / "apps" / "api" / "routes" / "audit.js").write_text(AUDIT_ROUTE)
    main = dest / "src" / "main.js"
    main.write_text(main.read_text() + f"\n// {version}: audit log link in the header\n")
    (dest / "src" / "components" / "Header.js").unlink()
    changelog = dest / "PATCH_CHANGELOG.md"
    text = changelog.read_text()
    head, sep, rest = text.partition("\n## ")
    changelog.write_text(
        f"{head}\n## [{version}] - 2025-03-01\n\n### Added\n- Audit log (table, /audit)\n\n"
        f"### Removed\n- Old header component\n{sep}{rest}"
        if sep
        else text
    )
    if health_status is not None:
        server = dest / "apps" / "api" / "server.js"
        source = server.read_text()
        marker = "routes.set('/health', (req, res) => sendJson(res, 200,"
        assert marker in source, "sample server.js changed: update make_release"
        server.write_text(source.replace(marker, f"routes.set('/health', (req, res) => sendJson(res, {health_status},"))
    return dest


def copy_patch(source: Path, install: Path, version: str) -> Path:
    """Copy ``source/patches/v<version>`` into the install, as an operator would upload it."""
    target = install / "patches" / f"v{version}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source / "patches" / f"v{version}", target)
    return target
