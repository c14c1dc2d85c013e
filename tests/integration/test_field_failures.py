"""Field failures (see /work/shared/FIELD-FAILURES.md) replayed on a running sample install.

Every test drives ``inv`` as a subprocess against real node API/worker processes managed by
patchflow's command manager and a real PostgreSQL database; the expected behaviour of each
scenario is written as assertions. No mocks.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.installs import (
    OWN_FOLDERS,
    Install,
    build_release,
    child_pids,
    get,
    health,
    history,
    inv_popen,
    process_cmdline,
    run_inv,
    set_dotenv,
    status_json,
    tree_state,
    wait_until,
)

pytestmark = pytest.mark.integration

FAST_HEALTH = ("--health-timeout", "4")


def _out(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout + done.stderr


def _ok(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, _out(done)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _kept_paths(install: Install) -> dict[str, object]:
    """What an apply/rollback must never touch: .env, node_modules/, uploads/, backups/."""
    root = install.root
    return {
        ".env": _sha(root / ".env"),
        "node_modules": tree_state(root / "node_modules", skip=()),
        "uploads": tree_state(root / "uploads", skip=()),
        "backups": tree_state(root / "backups", skip=()),
    }


def _assert_kept(install: Install, before: dict[str, object]) -> None:
    now = _kept_paths(install)
    for key in (".env", "node_modules", "uploads"):
        assert now[key] == before[key], f"{key} was modified"
    old_backups = before["backups"]
    assert isinstance(old_backups, dict) and old_backups, "the install should already hold a backup"
    new_backups = now["backups"]
    assert isinstance(new_backups, dict)
    assert {k: v for k, v in new_backups.items() if k in old_backups} == old_backups, "an older backup changed"


def _users(install: Install) -> int:
    return int(install.sql('SELECT count(*) FROM "User"'))


def _table_exists(install: Install, name: str) -> bool:
    return install.sql(f"SELECT to_regclass('public.\"{name}\"') IS NOT NULL") == "t"


def _column_exists(install: Install, table: str, column: str) -> bool:
    return (
        install.sql(
            "SELECT count(*) FROM information_schema.columns "
            f"WHERE table_schema = 'public' AND table_name = '{table}' AND column_name = '{column}'"
        )
        == "1"
    )


def _migrations(install: Install) -> str:
    return install.sql(
        "SELECT id, checksum, finished_at, migration_name, logs, rolled_back_at, started_at, applied_steps_count "
        'FROM "_prisma_migrations" ORDER BY migration_name'
    )


def _status_code(install: Install, path: str) -> int:
    return get(f"http://127.0.0.1:{install.port}{path}")[0]


# -- C03: files deleted in the new version are left behind -----------------------------------


def test_c03_deleted_file_is_removed_and_restored(install: Install, tmp_path: Path) -> None:
    header = install.root / "src/components/Header.js"
    header_bytes = header.read_bytes()
    kept = _kept_paths(install)
    tree_before = install.state()
    install.release(tmp_path, "2.3.0")  # deletes src/components/Header.js, adds routes/audit.js

    _ok(install.inv("apply-patch", "--version", "2.3.0", "--yes"))
    assert not header.exists() and not header.is_symlink()
    assert (install.root / "apps/api/routes/audit.js").is_file()
    _assert_kept(install, kept)
    assert health(install) == (200, "2.3.0")

    _ok(install.inv("rollback-patch", "--version", "2.3.0", "--yes"))
    assert header.read_bytes() == header_bytes
    assert not (install.root / "apps/api/routes/audit.js").exists(), "a file added by the patch stayed"
    _assert_kept(install, kept)
    assert install.state() == tree_before
    assert health(install) == (200, "2.2.0")


LEGACY_ROUTE = """'use strict';
// GET /legacy: registered in 2.2.1, removed in 2.3.0
module.exports = {
  path: '/legacy',
  handler(req, res) {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ legacy: true }));
  },
};
"""


def test_c03_deleted_route_stops_answering_and_comes_back(install: Install, tmp_path: Path) -> None:
    legacy = install.root / "apps/api/routes/legacy.js"
    build_release(
        install,
        tmp_path / "r221",
        "2.2.1",
        sample_changes=False,
        edit=lambda src: (src / "apps/api/routes/legacy.js").write_text(LEGACY_ROUTE),
    )
    _ok(install.inv("apply-patch", "--version", "2.2.1", "--yes"))
    assert health(install) == (200, "2.2.1")
    assert _status_code(install, "/legacy") == 200
    legacy_bytes = legacy.read_bytes()
    kept = _kept_paths(install)
    tree_before = install.state()

    build_release(
        install,
        tmp_path / "r230",
        "2.3.0",
        sample_changes=False,
        edit=lambda src: (src / "apps/api/routes/legacy.js").unlink(),
    )
    manifest = json.loads((install.root / "patches/v2.3.0/manifest.json").read_text())
    assert "apps/api/routes/legacy.js" not in {f["path"] for f in manifest["files"]}

    _ok(install.inv("apply-patch", "--version", "2.3.0", "--yes"))
    assert not legacy.exists(), "the ghost route file stayed on disk"
    assert health(install) == (200, "2.3.0")
    assert _status_code(install, "/legacy") == 404
    assert _status_code(install, "/users") == 200
    _assert_kept(install, kept)

    _ok(install.inv("rollback-patch", "--version", "2.3.0", "--yes"))
    assert legacy.read_bytes() == legacy_bytes
    assert health(install) == (200, "2.2.1")
    assert _status_code(install, "/legacy") == 200
    _assert_kept(install, kept)
    assert install.state() == tree_before


# -- C04: file modes lost ----------------------------------------------------------------------

MODES = {"scripts/start.sh": 0o755, "docker/entrypoint.sh": 0o755, "config/private.json": 0o600}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _assert_sane_ownership(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d not in OWN_FOLDERS]
        for name in dirnames + filenames:
            st = (Path(dirpath) / name).lstat()
            rel = (Path(dirpath) / name).relative_to(root)
            assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid()), f"{rel} owned by {st.st_uid}:{st.st_gid}"
            if stat.S_ISLNK(st.st_mode):
                continue
            assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID), f"{rel} has setuid/setgid"
            assert not st.st_mode & stat.S_IWOTH, f"{rel} is world-writable"


def test_c04_modes_and_owner_survive_apply_and_rollback(install: Install, tmp_path: Path) -> None:
    root = install.root
    assert {rel: _mode(root / rel) for rel in MODES} == MODES
    tree_before = install.state()

    def edit(src: Path) -> None:
        # change the three files so the apply really rewrites them
        for rel in ("scripts/start.sh", "docker/entrypoint.sh"):
            with open(src / rel, "a") as handle:
                handle.write("# 2.3.0\n")
        private = src / "config/private.json"
        data = json.loads(private.read_text())
        data["featureFlags"]["betaDashboard"] = True
        private.write_text(json.dumps(data, indent=2) + "\n")
        assert _mode(private) == 0o600
        # dangerous bits in the source tree and a foreign owner must not reach the install
        risky = src / "scripts/healthcheck.sh"
        risky.write_text("#!/bin/sh\nexit 0\n")
        os.chmod(risky, 0o6777)
        notes = src / "docs/notes.txt"
        notes.write_text("shared notes\n")
        os.chmod(notes, 0o666)
        for rel in ("scripts/start.sh", "scripts/healthcheck.sh", "config/private.json"):
            os.lchown(src / rel, 12345, 12345)

    build_release(install, tmp_path, "2.3.0", edit=edit)
    _ok(install.inv("apply-patch", "--version", "2.3.0", "--yes"))
    assert health(install) == (200, "2.3.0")
    assert (root / "scripts/start.sh").read_text().endswith("# 2.3.0\n")
    assert json.loads((root / "config/private.json").read_text())["featureFlags"]["betaDashboard"] is True
    assert {rel: _mode(root / rel) for rel in MODES} == MODES
    assert _mode(root / "scripts/healthcheck.sh") == 0o755
    assert _mode(root / "docs/notes.txt") == 0o644
    assert os.access(root / "scripts/start.sh", os.X_OK)
    _assert_sane_ownership(root)

    _ok(install.inv("rollback-patch", "--version", "2.3.0", "--yes"))
    assert {rel: _mode(root / rel) for rel in MODES} == MODES
    assert not (root / "scripts/healthcheck.sh").exists()
    _assert_sane_ownership(root)
    assert install.state() == tree_before
    assert health(install) == (200, "2.2.0")


# -- C06: symlinks inside the project ------------------------------------------------------------


def test_c06_relative_and_dangling_links_stay_links(install: Install, tmp_path: Path) -> None:
    root = install.root
    links = {"public/current": "assets/v2", "docs/latest.md": "missing.md"}
    assert {rel: os.readlink(root / rel) for rel in links} == links
    assert not (root / "docs/latest.md").exists()  # dangling
    tree_before = install.state()

    def edit(src: Path) -> None:
        os.symlink("assets/v2/logo.svg", src / "public/logo.svg")

    build_release(install, tmp_path, "2.3.0", edit=edit)
    manifest = json.loads((root / "patches/v2.3.0/manifest.json").read_text())
    entries = {f["path"]: f for f in manifest["files"]}
    for rel, target in {**links, "public/logo.svg": "assets/v2/logo.svg"}.items():
        assert entries[rel]["type"] == "symlink" and entries[rel]["target"] == target

    _ok(install.inv("apply-patch", "--version", "2.3.0", "--yes"))
    for rel, target in links.items():
        assert (root / rel).is_symlink() and os.readlink(root / rel) == target
    assert (root / "public/logo.svg").is_symlink()
    assert os.readlink(root / "public/logo.svg") == "assets/v2/logo.svg"
    assert (root / "public/logo.svg").read_bytes() == (root / "public/assets/v2/logo.svg").read_bytes()
    assert health(install) == (200, "2.3.0")

    _ok(install.inv("rollback-patch", "--version", "2.3.0", "--yes"))
    for rel, target in links.items():
        assert (root / rel).is_symlink() and os.readlink(root / rel) == target
    assert not (root / "public/logo.svg").is_symlink()
    assert install.state() == tree_before


def test_c06_absolute_link_in_source_fails_create_patch(install: Install, tmp_path: Path) -> None:
    source = tmp_path / "source"
    import shutil

    shutil.copytree(install.root, source, symlinks=True, ignore=shutil.ignore_patterns(*OWN_FOLDERS))
    (source / "VERSION").write_text("2.3.0\n")
    (source / "vendor").mkdir()
    os.symlink("/opt/shared-lib", source / "vendor/shared")

    done = run_inv("create-patch", "--root", str(source))
    assert done.returncode != 0
    assert "vendor/shared" in done.stderr
    assert "/opt/shared-lib" in done.stderr
    assert not (source / "patches" / "v2.3.0").exists()
    leftovers = list((source / "patches").iterdir()) if (source / "patches").exists() else []
    assert leftovers == [], f"create-patch left {leftovers}"


# -- C10: restore into a non-empty database ------------------------------------------------------


def test_c10_database_equals_v1_after_each_rollback(install: Install, tmp_path: Path) -> None:
    dump_before = install.pg_dump()
    migrations_before = _migrations(install)
    assert _users(install) == 3

    # a release whose migration changes schema and data, and whose health fails: automatic rollback
    install.release(tmp_path / "bad", "2.3.0", health_status=500)
    applied = install.inv("apply-patch", "--version", "2.3.0", "--yes", *FAST_HEALTH)
    assert applied.returncode != 0
    assert "migration 20250301090000_audit_log" in applied.stdout, "the migration should have run"
    assert "rolled back automatically" in applied.stderr
    assert not _table_exists(install, "AuditLog")
    assert not _column_exists(install, "User", "nickname")
    assert _users(install) == 3
    assert _migrations(install) == migrations_before
    assert install.pg_dump() == dump_before
    assert health(install) == (200, "2.2.0")

    # a good 2.3.0, rolled back by hand twice, each time from the newest backup
    build_release(install, tmp_path / "good", "2.3.0")
    used = []
    for _ in range(2):
        _ok(install.inv("apply-patch", "--version", "2.3.0", "--yes"))
        assert _users(install) == 5 and _table_exists(install, "AuditLog")
        newest = next(b["name"] for b in status_json(install)["backups"] if b["version"] == "2.3.0")
        rolled = install.inv("rollback-patch", "--version", "2.3.0", "--yes")
        _ok(rolled)
        assert newest in rolled.stdout
        assert history(install)[-1]["backup"] == newest
        used.append(newest)
        assert install.pg_dump() == dump_before
        assert _migrations(install) == migrations_before
        assert _users(install) == 3
        assert health(install) == (200, "2.2.0")
    assert used[0] != used[1]


# -- C11: restore as a non-superuser, extension owned by the superuser -----------------------------


@pytest.fixture
def app_role(install: Install) -> Iterator[str]:
    """Make the install's database owned by the non-superuser role ``app`` and connect as it."""
    db = install.dbname
    install.cluster.psql(
        "postgres",
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'app') THEN "
        "CREATE ROLE app LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE; END IF; END $$;\n"
        f'ALTER DATABASE "{db}" OWNER TO app;\n',
    )
    install.cluster.psql(
        db,
        """DO $$ DECLARE r record; BEGIN
  FOR r IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' LOOP
    EXECUTE format('ALTER TABLE public.%I OWNER TO app', r.tablename);
  END LOOP;
  FOR r IN SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
           WHERE n.nspname = 'public' AND t.typtype = 'e' LOOP
    EXECUTE format('ALTER TYPE public.%I OWNER TO app', r.typname);
  END LOOP;
END $$;
CREATE EXTENSION IF NOT EXISTS citext;
""",
    )
    assert (
        install.sql(
            "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner "
            "WHERE c.relnamespace = 'public'::regnamespace AND r.rolname <> 'app'"
        )
        == "0"
    )
    set_dotenv(install, "DATABASE_URL", install.cluster.url(db, user="app"))
    yield "app"


def test_c11_non_superuser_without_createdb_falls_back_in_place_and_an_admin_url_restores_beside(
    install: Install, app_role: str, tmp_path: Path
) -> None:
    """The app's role may not create databases: a restore beside the live database is impossible,
    so the plan falls back to a restore in place (test_in_place_restore runs it), naming the cost
    and the fix; with ``PATCHFLOW_DATABASE_ADMIN_URL`` (the superuser) apply and rollback are exact,
    beside the live database."""
    assert install.sql("SELECT extname FROM pg_extension WHERE extname = 'citext'") == "citext"
    dump_before = install.pg_dump()
    tree_before = install.state()
    install.release(tmp_path, "2.3.0")

    planned = install.inv("apply-patch", "--version", "2.3.0", "--dry-run")
    assert planned.returncode == 0, _out(planned)
    flat = " ".join(planned.stdout.split())
    assert "may not create databases" in flat and "PATCHFLOW_DATABASE_ADMIN_URL" in flat, flat
    assert "database undo in place, in one transaction" in flat, flat
    assert install.pg_dump() == dump_before
    assert health(install) == (200, "2.2.0")

    set_dotenv(install, "PATCHFLOW_DATABASE_ADMIN_URL", install.cluster.url(install.dbname))
    _ok(install.inv("apply-patch", "--version", "2.3.0", "--yes"))
    assert _users(install) == 5
    assert install.sql("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'AuditLog'") == app_role

    _ok(install.inv("rollback-patch", "--version", "2.3.0", "--yes"))
    assert install.pg_dump() == dump_before
    assert install.sql("SELECT extname FROM pg_extension WHERE extname = 'citext'") == "citext"
    state = install.state()
    assert state.pop(".env") != tree_before.pop(".env")  # the admin URL was added
    assert state == tree_before
    assert health(install) == (200, "2.2.0")


def test_c11_non_superuser_with_createdb_restores_beside_and_keeps_the_displaced_database(
    install: Install, app_role: str, tmp_path: Path
) -> None:
    """A role with CREATEDB that owns its database restores as itself (--no-owner --no-privileges,
    the extension comment skipped); rows written after the apply survive in the displaced copy."""
    install.cluster.psql("postgres", f"ALTER ROLE {app_role} CREATEDB;\n")
    dump_before = install.pg_dump()
    install.release(tmp_path, "2.3.0")
    _ok(install.inv("apply-patch", "--version", "2.3.0", "--yes"))
    install.cluster.psql(
        install.dbname,
        """INSERT INTO "User" ("email", "name", "role", "updatedAt")
           VALUES ('late@primeflow.test', 'Written after the apply', 'MEMBER', CURRENT_TIMESTAMP);\n""",
    )
    rolled = install.inv("rollback-patch", "--version", "2.3.0", "--yes")
    _ok(rolled)
    assert install.pg_dump() == dump_before
    displaced = re.search(r"kept as (\S+_before_rollback_\d{8}T\d{6}Z)", rolled.stdout)
    assert displaced, rolled.stdout
    kept = install.cluster.psql(displaced.group(1), "SELECT count(*) FROM \"User\" WHERE email = 'late@primeflow.test'")
    assert kept.strip() == "1", "the rows written after the apply are kept in the displaced database"
    listed = status_json(install)["displaced_databases"]
    assert [d["name"] for d in listed] == [displaced.group(1)]
    assert health(install) == (200, "2.2.0")


def test_fault_8_1_extension_the_role_cannot_create_is_refused_before_stop(install: Install, tmp_path: Path) -> None:
    """Fault 8.1: a CREATEDB (not superuser) role owns the database, a superuser created the
    untrusted extension pg_buffercache in it: the restore beside could not recreate it, so the
    apply is refused before anything stops; once template1 carries the extension it works, and
    the rollback is exact."""
    db = install.dbname
    install.cluster.psql(
        "postgres",
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'owner81') THEN "
        "CREATE ROLE owner81 LOGIN NOSUPERUSER CREATEDB; END IF; END $$;\n"
        f'ALTER DATABASE "{db}" OWNER TO owner81;\n',
    )
    install.cluster.psql(
        db,
        "DO $$ DECLARE r record; BEGIN FOR r IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' LOOP "
        "EXECUTE format('ALTER TABLE public.%I OWNER TO owner81', r.tablename); END LOOP; "
        "FOR r IN SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
        "WHERE n.nspname = 'public' AND t.typtype = 'e' LOOP "
        "EXECUTE format('ALTER TYPE public.%I OWNER TO owner81', r.typname); END LOOP; END $$;\n"
        "CREATE EXTENSION pg_buffercache;\n",
    )
    set_dotenv(install, "DATABASE_URL", install.cluster.url(db, user="owner81"))
    dump_before = install.pg_dump()
    tree_before = install.state()
    install.release(tmp_path, "2.3.0", health_status=500)
    refused = install.inv("apply-patch", "--version", "2.3.0", "--yes", *FAST_HEALTH)
    assert refused.returncode == 1, _out(refused)
    assert "pg_buffercache" in refused.stderr and "template1" in refused.stderr
    assert "Nothing was stopped or changed" in refused.stderr
    assert install.pg_dump() == dump_before and health(install) == (200, "2.2.0")
    assert install.state() == tree_before
    try:
        install.cluster.psql("template1", "CREATE EXTENSION pg_buffercache;\n")
        failed = install.inv("apply-patch", "--version", "2.3.0", "--yes", *FAST_HEALTH)
        assert failed.returncode == 2, _out(failed)
        assert "rolled back automatically" in failed.stderr
    finally:
        install.cluster.psql("template1", "DROP EXTENSION IF EXISTS pg_buffercache;\n")
    assert install.pg_dump() == dump_before
    assert install.sql("SELECT extname FROM pg_extension WHERE extname = 'pg_buffercache'") == "pg_buffercache"
    assert health(install) == (200, "2.2.0")
    assert install.state() == tree_before


def test_c11_missing_role_fails_the_rollback_loudly(install: Install, tmp_path: Path) -> None:
    """Objects owned by ``legacy_owner`` in the dump; the role is gone when rolling back."""
    db = install.dbname
    install.cluster.psql("postgres", "DROP ROLE IF EXISTS legacy_owner;\nCREATE ROLE legacy_owner NOLOGIN;\n")
    try:
        install.cluster.psql(db, 'ALTER TABLE "Project" OWNER TO legacy_owner;\n')
        install.release(tmp_path, "2.3.0")
        # the snapshot dropped once its dump is proven: the rollback restores the dump
        _ok(install.inv("apply-patch", "--version", "2.3.0", "--yes", env={"PATCHFLOW_SNAPSHOT_KEEP_HOURS": "0"}))
        install.cluster.psql(db, "REASSIGN OWNED BY legacy_owner TO postgres;\nDROP OWNED BY legacy_owner;\n")
        install.cluster.psql("postgres", "DROP ROLE legacy_owner;\n")

        rolled = install.inv("rollback-patch", "--version", "2.3.0", "--yes")
        assert rolled.returncode != 0, _out(rolled)
        assert "Rollback incomplete" in rolled.stderr
        assert "legacy_owner" in rolled.stderr
        assert "rolled back" not in rolled.stdout
        status = status_json(install)
        interrupted = status["interrupted"]
        assert interrupted is not None
        assert interrupted["action"] == "rollback"
        assert interrupted["state"] == "rollback incomplete / services may be down"
        assert interrupted["failed_step"] == "restore-database"
        assert history(install)[-1]["result"] == "failed"
        text = install.inv("patch-status")
        assert "ROLLBACK INCOMPLETE" in text.stdout
    finally:
        install.cluster.psql(
            db,
            "DO $$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'legacy_owner') THEN "
            "EXECUTE 'REASSIGN OWNED BY legacy_owner TO postgres'; EXECUTE 'DROP OWNED BY legacy_owner'; "
            "END IF; END $$;\n",
        )
        install.cluster.psql("postgres", "DROP ROLE IF EXISTS legacy_owner;\n")


def test_c11_corrupt_dump_is_refused_before_anything_changes(install: Install, tmp_path: Path) -> None:
    install.release(tmp_path, "2.3.0")
    # the snapshot dropped once its dump is proven: the rollback restores the dump
    _ok(install.inv("apply-patch", "--version", "2.3.0", "--yes", env={"PATCHFLOW_SNAPSHOT_KEEP_HOURS": "0"}))
    dump_after_apply = install.pg_dump()
    tree_after_apply = install.state()
    history_before = history(install)
    newest = next(b["name"] for b in status_json(install)["backups"] if b["version"] == "2.3.0")
    dump = install.root / "backups" / newest / "database.dump"
    data = bytearray(dump.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    dump.write_bytes(bytes(data))

    rolled = install.inv("rollback-patch", "--version", "2.3.0", "--yes")
    assert rolled.returncode == 1, _out(rolled)
    assert "corrupt or incomplete" in rolled.stderr and newest in rolled.stderr
    assert "The live database was left as it is" in rolled.stderr
    status = status_json(install)
    assert status["interrupted"] is None and status["lock"] is None
    assert history(install) == history_before
    # found before anything changed: the live database, the tree and the services are untouched
    assert install.pg_dump() == dump_after_apply
    assert install.state() == tree_after_apply
    assert health(install) == (200, "2.3.0")


# -- C12: a failed migration must not block later deploys (P3009) ------------------------------

BAD_MIGRATION = 'CREATE TABLE "Tmp"(id int);\nALTER TABLE "User" ADD COLUMN "required" TEXT NOT NULL;\n'
FIXED_MIGRATION = 'CREATE TABLE "Tmp"(id int);\nALTER TABLE "User" ADD COLUMN "required" TEXT NOT NULL DEFAULT \'\';\n'


def test_c12_failed_migration_is_rolled_back_and_fixed_release_applies(install: Install, tmp_path: Path) -> None:
    dump_before = install.pg_dump()
    migrations_before = _migrations(install)
    tree_before = install.state()
    install.release(tmp_path / "bad", "2.3.0", migration=BAD_MIGRATION)

    applied = install.inv("apply-patch", "--version", "2.3.0", "--yes")
    assert applied.returncode != 0
    assert "P3018" in applied.stderr
    assert "20250301090000_audit_log" in applied.stderr
    assert "rolled back automatically" in applied.stderr
    assert not _table_exists(install, "Tmp")
    assert not _column_exists(install, "User", "required")
    assert _migrations(install) == migrations_before
    assert install.sql('SELECT count(*) FROM "_prisma_migrations" WHERE finished_at IS NULL') == "0"
    assert install.pg_dump() == dump_before
    assert install.state() == tree_before
    assert health(install) == (200, "2.2.0")
    last = history(install)[-1]
    assert last["result"] == "rolled_back"
    assert "P3018" in last["error"] and "20250301090000_audit_log" in last["error"]
    assert "P3018" in json.dumps(status_json(install)["history"])

    def fixed(src: Path) -> None:
        folder = src / "prisma/migrations/20250302090000_audit_log_fixed"
        folder.mkdir(parents=True)
        (folder / "migration.sql").write_text(FIXED_MIGRATION)

    build_release(install, tmp_path / "fixed", "2.3.1", migration=None, edit=fixed)
    applied = install.inv("apply-patch", "--version", "2.3.1", "--yes")
    _ok(applied)
    assert "P3009" not in _out(applied)
    assert "20250302090000_audit_log_fixed" in applied.stdout
    assert _table_exists(install, "Tmp") and _column_exists(install, "User", "required")
    assert install.sql('SELECT count(*) FROM "_prisma_migrations" WHERE finished_at IS NULL') == "0"
    assert (
        install.sql(
            "SELECT count(*) FROM \"_prisma_migrations\" WHERE migration_name = '20250302090000_audit_log_fixed' "
            "AND finished_at IS NOT NULL AND rolled_back_at IS NULL"
        )
        == "1"
    )
    assert health(install) == (200, "2.3.1")


# -- C16: the health check sees the old version ----------------------------------------------------


def test_c16_health_reporting_old_version_fails_the_apply(install: Install, tmp_path: Path) -> None:
    tree_before = install.state()
    dump_before = install.pg_dump()

    def stale_version(src: Path) -> None:
        server = src / "apps/api/server.js"
        text = server.read_text()
        marker = "{ status: 'ok', version: VERSION }"
        assert marker in text, "sample server.js changed: update this test"
        server.write_text(text.replace(marker, "{ status: 'ok', version: '2.2.0' }"))

    build_release(install, tmp_path, "2.3.0", edit=stale_version)
    applied = install.inv("apply-patch", "--version", "2.3.0", "--yes", "--health-timeout", "3")
    assert applied.returncode != 0
    assert "expected version='2.3.0' but got '2.2.0'" in applied.stderr
    assert "rolled back automatically" in applied.stderr
    assert health(install) == (200, "2.2.0")
    assert (install.root / "VERSION").read_text().strip() == "2.2.0"
    assert install.state() == tree_before
    assert install.pg_dump() == dump_before
    assert history(install)[-1]["result"] == "rolled_back"


# -- C18: a rollback is not "done" while the restart failed -----------------------------------------


def _bind_port(port: int) -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    deadline = time.monotonic() + 10
    while True:
        try:
            listener.bind(("127.0.0.1", port))
            break
        except OSError:
            if time.monotonic() > deadline:
                listener.close()
                raise
            time.sleep(0.05)
    listener.listen(16)
    return listener


def _assert_rollback_incomplete(install: Install, failed_step: str) -> None:
    interrupted = status_json(install)["interrupted"]
    assert interrupted is not None
    assert interrupted["state"] == "rollback incomplete / services may be down"
    assert interrupted["phase"] == "rolling_back"
    assert interrupted["failed_step"] == failed_step
    assert "start" in (interrupted["error"] or "")


def test_c18_manual_rollback_with_port_taken_fails_then_finishes(install: Install, tmp_path: Path) -> None:
    tree_before = install.state()
    dump_before = install.pg_dump()
    install.release(tmp_path, "2.3.0")
    _ok(install.inv("apply-patch", "--version", "2.3.0", "--yes"))
    _ok(install.inv("down"))

    listener = _bind_port(install.port)
    try:
        rolled = install.inv("rollback-patch", "--version", "2.3.0", "--yes", env={"PATCHFLOW_START_RETRIES": "3"})
        assert rolled.returncode != 0, _out(rolled)
        out = _out(rolled)
        assert "start attempt 1/3 failed" in out and "start attempt 3/3 failed" in out
        assert "did not start after 3 attempts" in rolled.stderr
        assert "Rollback incomplete" in rolled.stderr
        assert "rolled back 2.3.0" not in rolled.stdout
        _assert_rollback_incomplete(install, "start")
        last = history(install)[-1]
        assert last["action"] == "rollback" and last["result"] == "failed"
    finally:
        listener.close()

    finished = install.inv("rollback-patch", "--version", "2.3.0", "--yes", "--break-lock")
    _ok(finished)
    assert health(install) == (200, "2.2.0")
    assert status_json(install)["interrupted"] is None
    assert history(install)[-1]["result"] in ("success", "rolled_back")
    assert install.state() == tree_before
    assert install.pg_dump() == dump_before


SQUATTER = """
// 2.3.0 test build: when stopped, leave a detached process that grabs the API port
// (like a stray old instance), so the automatic rollback cannot start the old version.
const squat = `
const net = require('node:net');
const fs = require('node:fs');
const port = Number(process.argv[1]);
const pidfile = process.argv[2];
const give_up = Date.now() + 15000;
function tryBind() {
  const s = net.createServer();
  s.once('error', () => { if (Date.now() < give_up) setTimeout(tryBind, 20); else process.exit(1); });
  s.listen(port, '127.0.0.1', () => {
    fs.writeFileSync(pidfile, String(process.pid));
    setTimeout(() => process.exit(0), 60000);
  });
}
tryBind();
`;
process.prependListener('SIGTERM', () => {
  require('node:child_process')
    .spawn(process.execPath, ['-e', squat, String(PORT), process.env.SQUATTER_PIDFILE], {
      detached: true,
      stdio: 'ignore',
      env: { PATH: process.env.PATH }, // a stranger to the service, not one of its processes
    })
    .unref();
});
"""


def test_c18_automatic_rollback_with_port_taken_fails_loudly(install: Install, tmp_path: Path) -> None:
    pidfile = tmp_path / "squatter.pid"
    tree_before = install.state()
    dump_before = install.pg_dump()

    def leave_squatter(src: Path) -> None:
        server = src / "apps/api/server.js"
        server.write_text(server.read_text() + SQUATTER)

    build_release(install, tmp_path, "2.3.0", health_status=500, edit=leave_squatter)
    try:
        applied = install.inv(
            "apply-patch",
            "--version",
            "2.3.0",
            "--yes",
            *FAST_HEALTH,
            env={"SQUATTER_PIDFILE": str(pidfile), "PATCHFLOW_START_RETRIES": "3"},
        )
        assert pidfile.exists(), "the squatter did not take the port: " + _out(applied)
        assert applied.returncode == 4, _out(applied)
        out = _out(applied)
        assert "HTTP 500" in applied.stderr
        assert "automatic rollback did not complete" in applied.stderr
        assert "start attempt 3/3 failed" in out
        assert "is running again" not in out
        _assert_rollback_incomplete(install, "start-old")
        assert history(install)[-1]["result"] == "rollback_failed"
    finally:
        if pidfile.exists():
            squatter = int(pidfile.read_text())
            if "node" in " ".join(process_cmdline(squatter)):
                os.kill(squatter, signal.SIGKILL)
            wait_until(lambda: not process_cmdline(squatter), 10, "the squatter to exit")

    finished = install.inv("rollback-patch", "--version", "2.3.0", "--yes", "--break-lock")
    _ok(finished)
    assert health(install) == (200, "2.2.0")
    assert status_json(install)["interrupted"] is None
    assert install.state() == tree_before
    assert install.pg_dump() == dump_before


# -- C19: concurrent deploys and stale locks -------------------------------------------------------


def _lock_holder(install: Install) -> dict[str, object] | None:
    try:
        data: dict[str, object] = json.loads((install.root / ".patchflow/apply.lock.json").read_text())
    except (OSError, ValueError):
        return None
    return data


def _wait_for_sleep_child(proc: subprocess.Popen[str]) -> int:
    def find() -> int | None:
        if proc.poll() is not None:
            raise AssertionError("apply ended early: " + "".join(proc.communicate()))
        for child in child_pids(proc.pid):
            if process_cmdline(child)[:1] == ["sleep"]:
                return child
        return None

    pid: int = wait_until(find, 30, "the install command (sleep) to run in staging")
    return pid


def _stop_group(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


#: an install command that holds the apply in staging until the test creates the file ``argv[1]``
#: (at most 120 s): the lock is held for as long as the test needs, whatever the machine's load
HOLD_UNTIL_RELEASED = """import os, sys, time
deadline = time.monotonic() + 120
while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:
    time.sleep(0.05)
"""


def test_c19a_second_apply_is_refused_naming_the_holder(install: Install, tmp_path: Path) -> None:
    install.release(tmp_path, "2.3.0")
    script, release = tmp_path / "hold.py", tmp_path / "release"
    script.write_text(HOLD_UNTIL_RELEASED)
    first = inv_popen(
        install,
        "apply-patch",
        "--version",
        "2.3.0",
        "--yes",
        env={"PATCHFLOW_INSTALL_COMMAND": f"python3 {script} {release}"},
    )
    try:
        holder = wait_until(lambda: _lock_holder(install), 30, "the first apply to take the lock")
        assert holder["pid"] == first.pid and holder["action"] == "apply" and holder["version"] == "2.3.0"
        second = install.inv("apply-patch", "--version", "2.3.0", "--yes")
        # refused while the holder still holds (it cannot finish before the release): not a wait for it
        assert first.poll() is None and (_lock_holder(install) or {}).get("pid") == first.pid
        release.touch()
        assert second.returncode == 3, _out(second)
        assert "Another apply or rollback is running" in second.stderr
        assert f"pid {first.pid}" in second.stderr
        assert "apply of 2.3.0" in second.stderr
        assert f"since {holder['started_at']}" in second.stderr
        out, err = first.communicate(timeout=90)
        assert first.returncode == 0, out + err
    finally:
        release.touch()  # never leave the install command waiting
        _stop_group(first)
    assert health(install) == (200, "2.3.0")
    applies = [h for h in history(install) if h.get("action") == "apply" and h.get("to_version") == "2.3.0"]
    assert [h["result"] for h in applies] == ["success"]


def test_c19b_sigint_during_staging_releases_the_lock(install: Install, tmp_path: Path) -> None:
    tree_before = install.state()
    dump_before = install.pg_dump()
    install.release(tmp_path, "2.3.0")
    first = inv_popen(
        install, "apply-patch", "--version", "2.3.0", "--yes", env={"PATCHFLOW_INSTALL_COMMAND": "sleep 30"}
    )
    try:
        _wait_for_sleep_child(first)
        os.killpg(first.pid, signal.SIGINT)  # what Ctrl+C in a terminal does
        out, err = first.communicate(timeout=20)
    finally:
        _stop_group(first)
    assert first.returncode not in (0, None), out + err
    assert "Nothing was stopped or changed" in err
    status = status_json(install)
    assert status["lock"] is None
    assert status["interrupted"] is None
    assert not list((install.root / ".patchflow").glob("staging-*"))
    last = history(install)[-1]
    assert last["result"] in ("failed", "interrupted") and last["error"].startswith("stage")
    assert health(install) == (200, "2.2.0")
    assert install.state() == tree_before
    assert install.pg_dump() == dump_before

    again = install.inv("apply-patch", "--version", "2.3.0", "--yes")
    _ok(again)
    assert health(install) == (200, "2.3.0")


def test_c19c_sigkill_leaves_a_stale_lock_broken_only_on_request(install: Install, tmp_path: Path) -> None:
    install.release(tmp_path, "2.3.0")
    first = inv_popen(
        install, "apply-patch", "--version", "2.3.0", "--yes", env={"PATCHFLOW_INSTALL_COMMAND": "sleep 30"}
    )
    try:
        _wait_for_sleep_child(first)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        _stop_group(first)
    status = status_json(install)
    assert status["lock"] is not None and status["lock"]["state"] == "stale"
    assert status["lock"]["pid"] == first.pid
    assert status["interrupted"] is not None and status["interrupted"]["step"] == "stage"
    assert health(install) == (200, "2.2.0")

    refused = install.inv("apply-patch", "--version", "2.3.0", "--yes")
    assert refused.returncode == 3, _out(refused)
    assert "Stale lock" in refused.stderr and "--break-lock" in refused.stderr
    assert f"pid {first.pid}" in refused.stderr
    assert health(install) == (200, "2.2.0")

    recovered = install.inv("apply-patch", "--version", "2.3.0", "--yes", "--break-lock")
    _ok(recovered)
    assert health(install) == (200, "2.3.0")
    status = status_json(install)
    assert status["lock"] is None and status["interrupted"] is None
