"""Build throwaway PrimeFlow checkouts from examples/primeflow-checkout (the real repository's shape).

A *checkout* is a copy of the example as it sits on a developer's or a server's disk: modes git
cannot store (0664 files, executable scripts), what the host adds and no patch owns
(``node_modules/``, ``dist/``, ``uploads/``, ``storage/``, a generated ``public/sitemap.xml``,
``docker/docker-compose.override.yml``), a ``.env`` made from ``.env.example``, and a git repository
holding the committed tree. It carries **no** patchflow settings: patchflow's ``init`` configures it.

:func:`make_checkout_release` copies a checkout and changes it into the next version (a flat
migration, added, changed and deleted files, a changelog section) the way a developer would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from sample_workspace import free_port, host_pg_bindir, host_postgres_ids

REPO = Path(__file__).resolve().parent.parent
CHECKOUT = REPO / "examples" / "primeflow-checkout"
EXTRAS = REPO / "examples" / "primeflow-checkout-extras"
VERSION = "3.0.0"
LOCAL_COMPOSE_FILE = "docker/docker-compose.local.yml"

#: Files a checkout made with umask 002 has with mode 0664 (git stores them as 0644).
GROUP_WRITABLE = ("src/main.js", "src/styles.css", "apps/api/routes/users.js", "CHANGELOG.md")
#: Files with the executable bit (git stores 0755, a copy of the example may not).
EXECUTABLES = (
    "scripts/db/migrate.sh",
    "scripts/patch/create-patch.sh",
    "scripts/patch/apply-patch.sh",
    "scripts/patch/rollback-patch.sh",
    "scripts/patch/patch-status.sh",
    "docker/postgres-entrypoint.sh",
)
#: Migrations of the example in apply order (flat files).
MIGRATIONS = ("001_init.sql", "002_add_projects.sql", "003_add_sessions.sql")
#: Files a host adds at run time that no patch owns (relative path -> content).
HOST_FILES: dict[str, bytes] = {
    "node_modules/.modules.yaml": b"layoutVersion: 5\nnodeLinker: isolated\npackageManager: pnpm@9.12.0\n",
    "node_modules/.pnpm/lock.yaml": b"lockfileVersion: '9.0'\n",
    "node_modules/.pnpm/ms@2.1.3/node_modules/ms/index.js": b"module.exports = function ms() { return 0; };\n",
    "dist/index.html": b"<!doctype html><title>PrimeFlow</title>\n",
    "dist/build.json": b'{\n  "version": "3.0.0"\n}\n',
    "uploads/photo.jpg": b"\xff\xd8\xff\xe0\x00\x10JFIF fake jpeg",
    "uploads/avatars/1.png": b"\x89PNG\r\n\x1a\n fake png",
    "storage/sessions/sess_6f1c2a9e.json": b'{"userId": 1, "expiresAt": "2030-01-01T00:00:00.000Z"}\n',
    "public/sitemap.xml": (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">\n'
        b"  <url><loc>https://primeflow.example/</loc></url>\n</urlset>\n"
    ),
    "docker/docker-compose.override.yml": (
        b"# Added on this server only (not in git): more verbose api logs.\n"
        b"services:\n  api:\n    environment:\n      LOG_LEVEL: debug\n"
    ),
}
#: Fixed identity and dates of the commits made by this module (reproducible commit ids).
GIT_ENV = {
    "GIT_AUTHOR_NAME": "PrimeFlow Dev",
    "GIT_AUTHOR_EMAIL": "dev@primeflow.test",
    "GIT_COMMITTER_NAME": "PrimeFlow Dev",
    "GIT_COMMITTER_EMAIL": "dev@primeflow.test",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}
INITIAL_COMMIT_DATE = "2025-05-12T10:00:00+00:00"
RELEASE_COMMIT_DATE = "2025-06-02T10:00:00+00:00"


def run_git(repo: Path, *args: str, date: str = INITIAL_COMMIT_DATE) -> str:
    """Run ``git <args>`` in ``repo`` with the fixed identity and ``date`` (ISO 8601) as author and
    committer date, ignoring the machine's git configuration; returns stdout.

    Raises:
        subprocess.CalledProcessError: git failed (its stderr is in the exception).
    """
    env = {**os.environ, **GIT_ENV, "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
    done = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=True)
    return done.stdout


def with_prisma_schema(url: str) -> str:
    """``url`` with Prisma's ``?schema=public`` appended when it has no query parameters."""
    return url if "?" in url else f"{url}?schema=public"


def _write_env(dest: Path, values: dict[str, str]) -> None:
    """Write ``dest/.env`` from ``.env.example``: keys of ``values`` replace the example's lines
    in place, the others are appended; comments stay."""
    pending = dict(values)
    lines = []
    for line in (dest / ".env.example").read_text(encoding="utf-8").splitlines():
        key = line.split("=", 1)[0].strip() if "=" in line and not line.lstrip().startswith("#") else None
        if key is not None and key in pending:
            lines.append(f"{key}={pending.pop(key)}")
        else:
            lines.append(line)
    lines.extend(f"{key}={value}" for key, value in pending.items())
    (dest / ".env").write_text("\n".join(lines) + "\n", encoding="utf-8")


def prepare_checkout(
    dest: Path,
    *,
    database_url: str | None,
    port: int | None = None,
    extra_env: dict[str, str] | None = None,
    git: bool = True,
) -> Path:
    """Copy examples/primeflow-checkout to ``dest`` (which must not exist) and make it a checkout as
    found on a host; returns ``dest``.

    ``.env`` is ``.env.example`` with ``PORT`` = ``port`` (default: a free TCP port), ``DATABASE_URL``
    = ``database_url`` when given (``?schema=public`` appended when it has no query) and every key
    of ``extra_env``. No ``PATCHFLOW_*`` key is written unless ``extra_env`` holds it. With
    ``git`` the tree is committed (fixed author and date) to a new repository on branch ``main``
    and tagged ``v3.0.0``; ``.env`` and the host's files stay untracked (``.gitignore``).

    Raises:
        FileExistsError: ``dest`` exists.
        subprocess.CalledProcessError: a git command failed.
    """
    shutil.copytree(CHECKOUT, dest, symlinks=True)
    for rel in GROUP_WRITABLE:
        os.chmod(dest / rel, 0o664)
    for rel in EXECUTABLES:
        os.chmod(dest / rel, 0o755)
    for rel, content in HOST_FILES.items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    # pnpm links workspace packages into each app's node_modules (a relative link inside the tree)
    link = dest / "apps" / "api" / "node_modules" / "@primeflow" / "shared"
    link.parent.mkdir(parents=True)
    os.symlink("../../../../packages/shared", link)
    env = {"PORT": str(port or free_port())}
    if database_url:
        env["DATABASE_URL"] = with_prisma_schema(database_url)
    env.update(extra_env or {})
    _write_env(dest, env)
    if git:
        _git_init(dest)
    return dest


def _git_init(dest: Path) -> None:
    """Commit ``dest`` as the checkout's first commit on ``main`` and tag it with its version."""
    run_git(dest, "init", "-q", "-b", "main")
    run_git(dest, "add", "-A")
    run_git(dest, "commit", "-q", "-m", "PrimeFlow 3.0.0 - Fluxos paralelos")
    run_git(dest, "tag", f"v{(dest / 'VERSION').read_text().strip()}")


def local_compose_env(prefix: str, *, api_port: int | None = None, frontend_port: int | None = None) -> dict[str, str]:
    """``.env`` keys that let ``docker/docker-compose.local.yml`` run on this machine (for
    :func:`prepare_checkout`'s ``extra_env``): container names ``<prefix>-api`` ..., free host
    ports (or the given ones), the host's postgres uid/gid and PostgreSQL binaries."""
    uid, gid = host_postgres_ids()
    return {
        "CONTAINER_PREFIX": prefix,
        "API_PORT": str(api_port or free_port()),
        "FRONTEND_PORT": str(frontend_port or free_port()),
        "POSTGRES_DB": "primeflow",
        "POSTGRES_USER": "primeflow",
        "POSTGRES_PASSWORD": "primeflow",
        "PG_UID": str(uid),
        "PG_GID": str(gid),
        "PG_BINDIR": host_pg_bindir(),
    }


AUDIT_MIGRATION = """-- 004_add_audit_log.sql — PrimeFlow 3.1.0
-- Log de auditoria e último login dos usuários.

CREATE TABLE "AuditLog" (
    "id" SERIAL NOT NULL,
    "userId" INTEGER,
    "action" TEXT NOT NULL,
    "entity" TEXT NOT NULL,
    "entityId" TEXT,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "AuditLog_pkey" PRIMARY KEY ("id")
);

CREATE INDEX "AuditLog_userId_createdAt_idx" ON "AuditLog"("userId", "createdAt");

ALTER TABLE "AuditLog" ADD CONSTRAINT "AuditLog_userId_fkey"
    FOREIGN KEY ("userId") REFERENCES "User"("id") ON DELETE SET NULL ON UPDATE CASCADE;

ALTER TABLE "User" ADD COLUMN "lastLoginAt" TIMESTAMP(3);

-- Usuários do time de auditoria
INSERT INTO "User" ("email", "name", "passwordHash", "role") VALUES
    ('auditoria@primeflow.dev', 'Equipe de Auditoria', '$2b$10$3euPcmQFCiblsZeEu5s7p.9OVHgeHWFDk9nhMqZ0m/3pd/lhwZgES', 'MANAGER'),
    ('ana.lima@primeflow.dev', 'Ana Lima', '$2b$10$3euPcmQFCiblsZeEu5s7p.9OVHgeHWFDk9nhMqZ0m/3pd/lhwZgES', 'MEMBER');
"""

AUDIT_ROUTE = """'use strict';
// GET /audit — últimos eventos de auditoria (3.1.0).

module.exports = {
  path: '/audit',
  handler(req, res, { sendJson }) {
    if (req.method !== 'GET') return sendJson(res, 405, { error: 'Method Not Allowed' });
    return sendJson(res, 200, { data: [], total: 0 });
  },
};
"""

AUDIT_USER_FIELDS = "  auditLogs    AuditLog[]\n  lastLoginAt  DateTime?\n"

AUDIT_SCHEMA = """
model AuditLog {
  id        Int      @id @default(autoincrement())
  user      User?    @relation(fields: [userId], references: [id], onDelete: SetNull)
  userId    Int?
  action    String
  entity    String
  entityId  String?
  createdAt DateTime @default(now())

  @@index([userId, createdAt])
}
"""

#: Paths :func:`make_checkout_release` adds, changes and deletes (relative, POSIX); with a migration
#: it also adds ``RELEASE_MIGRATION`` and changes ``RELEASE_SCHEMA``.
RELEASE_ADDED = ("apps/api/routes/audit.js",)
RELEASE_CHANGED = (
    "VERSION",
    "CHANGELOG.md",
    "package.json",
    "src/index.html",
    "src/main.js",
)
RELEASE_DELETED = ("src/components/LegacyBanner.js",)
RELEASE_MIGRATION = "prisma/migrations/004_add_audit_log.sql"
RELEASE_SCHEMA = "prisma/schema.prisma"
HEALTH_LINE = "const HEALTH_STATUS = Number(process.env.HEALTH_STATUS || 200);"


def release_notes(version: str) -> str:
    """The changelog section :func:`make_checkout_release` adds for ``version`` (ends with a blank line)."""
    return (
        f"## Versão {version} - Auditoria\n\n**Data:** 02/06/2025\n\n### ✨ Novidades\n"
        "- Log de auditoria (tabela `AuditLog`, `GET /audit`)\n- Último login dos usuários\n\n"
        "### 🗑️ Removido\n- Aviso da interface antiga (`LegacyBanner`)\n"
    )


def _replace_once(path: Path, old: str, new: str) -> None:
    """Replace the single occurrence of ``old`` in ``path`` (mode kept); fail loudly when the
    example changed so that ``old`` is no longer there exactly once."""
    text = path.read_text(encoding="utf-8")
    if text.count(old) != 1:
        raise RuntimeError(f"{path}: expected {old!r} exactly once; update scripts/primeflow_checkout.py")
    path.write_text(text.replace(old, new), encoding="utf-8")


def make_checkout_release(
    checkout: Path,
    dest: Path,
    version: str = "3.1.0",
    *,
    migration: str | None = AUDIT_MIGRATION,
    health_status: int | None = None,
) -> Path:
    """Copy ``checkout`` (without ``patches/``, ``backups/``, ``.patchflow/``, ``.venv``) to ``dest``
    and change it into ``version``; returns ``dest``.

    The changes: ``migration`` (SQL; None: no new migration) as
    ``prisma/migrations/004_add_audit_log.sql`` with the matching ``AuditLog`` model and ``User``
    fields in ``schema.prisma``; a new route ``apps/api/routes/audit.js``;
    the legacy banner dropped from ``src/main.js`` (mode 0664 kept) and ``src/index.html``;
    ``src/components/LegacyBanner.js`` deleted; a ``## Versão <version> - Auditoria`` section on top
    of ``CHANGELOG.md``; ``VERSION`` and ``package.json`` set to ``version``. ``health_status``
    hard-codes that HTTP status for ``/health`` in ``apps/api/server.js`` (to test automatic
    rollback). When ``checkout`` is a git repository the changes are committed (fixed author
    and date) and tagged ``v<version>``.

    Raises:
        RuntimeError: the example no longer holds a text this function edits.
        subprocess.CalledProcessError: a git command failed.
    """
    shutil.copytree(
        checkout, dest, symlinks=True, ignore=shutil.ignore_patterns("patches", "backups", ".patchflow", ".venv")
    )
    old_version = (dest / "VERSION").read_text(encoding="utf-8").strip()
    (dest / "VERSION").write_text(f"{version}\n", encoding="utf-8")
    _replace_once(dest / "package.json", f'"version": "{old_version}"', f'"version": "{version}"')
    if migration is not None:
        (dest / RELEASE_MIGRATION).write_text(migration, encoding="utf-8")
        schema = dest / RELEASE_SCHEMA
        _replace_once(schema, "  sessions     Session[]\n", "  sessions     Session[]\n" + AUDIT_USER_FIELDS)
        schema.write_text(schema.read_text(encoding="utf-8") + AUDIT_SCHEMA, encoding="utf-8")
    (dest / RELEASE_ADDED[0]).write_text(AUDIT_ROUTE, encoding="utf-8")
    _replace_once(dest / "src/main.js", "    app.appendChild(components.LegacyBanner());\n", "")
    _replace_once(dest / "src/index.html", '    <script src="components/LegacyBanner.js"></script>\n', "")
    for rel in RELEASE_DELETED:
        (dest / rel).unlink()
    changelog = dest / "CHANGELOG.md"
    head, sep, rest = changelog.read_text(encoding="utf-8").partition("\n## Versão ")
    if not sep:
        raise RuntimeError(f"{changelog}: no '## Versão' heading; update scripts/primeflow_checkout.py")
    changelog.write_text(f"{head}\n{release_notes(version)}{sep}{rest}", encoding="utf-8")
    if health_status is not None:
        _replace_once(
            dest / "apps/api/server.js", HEALTH_LINE, f"const HEALTH_STATUS = {int(health_status)}; // {version}"
        )
    if (dest / ".git").is_dir():
        run_git(dest, "add", "-A", date=RELEASE_COMMIT_DATE)
        run_git(dest, "commit", "-q", "-m", f"PrimeFlow {version} - Auditoria", date=RELEASE_COMMIT_DATE)
        run_git(dest, "tag", f"v{version}", date=RELEASE_COMMIT_DATE)
    return dest
