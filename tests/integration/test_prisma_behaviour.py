"""Migrations, database URLs, versions and files as Prisma and PrimeFlow really behave (issue 10),
on a running sample install with a real PostgreSQL: each fault of the issue, and its neighbours."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from support.crafted import bare_install, craft_patch
from support.exact import assert_exactly_old, status_json
from support.installs import (
    REPO,
    Install,
    build_release,
    copy_patch,
    health,
    history,
    run_inv,
    set_dotenv,
    start_install,
    tree_state,
)

pytestmark = pytest.mark.integration


def _out(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout + done.stderr


def _ok(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, _out(done)


def _apply(install: Install, version: str = "2.3.0", *extra: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return install.inv("apply-patch", "--version", version, "--yes", *extra, env=env)


# -- 1: the app's own DATABASE_URL -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "?schema=public",
        "?schema=public&connection_limit=5&pool_timeout=10&pgbouncer=true",
        "?sslmode=disable&schema=public",
    ],
)
def test_prisma_url_parameters_are_accepted_everywhere(install: Install, tmp_path: Path, query: str) -> None:
    set_dotenv(install, "DATABASE_URL", install.url + query)
    install.release(tmp_path, "2.3.0")
    for task in (("ps",), ("patch-status",), ("apply-patch", "--version", "2.3.0", "--dry-run")):
        done = install.inv(*task)
        assert done.returncode == 0, (task, _out(done))
        assert "invalid URI query parameter" not in _out(done)
    tree_before, db_before = install.state(), install.pg_dump()
    _ok(_apply(install))
    assert health(install) == (200, "2.3.0")
    _ok(install.inv("rollback-patch", "--version", "2.3.0", "--yes"))
    assert install.state() == tree_before and install.pg_dump() == db_before


def test_prismas_schema_parameter_decides_where_tables_and_history_live(
    tmp_path: Path, pg_cluster: object, pg_database: str
) -> None:
    dbname = pg_database.rsplit("/", 1)[1]
    install = start_install(
        tmp_path / "install", pg_cluster, dbname, extra_env={"DATABASE_URL": f"{pg_database}?schema=tenant_a"}
    )
    try:
        assert install.sql("SELECT to_regclass('tenant_a._prisma_migrations') IS NOT NULL") == "t"
        assert install.sql("SELECT to_regclass('public._prisma_migrations') IS NULL") == "t"
        assert install.sql('SELECT count(*) FROM tenant_a."User"') == "3"
        assert install.sql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == "0"
        rows = install.sql("SELECT count(*) FROM tenant_a._prisma_migrations WHERE finished_at IS NOT NULL")
        assert rows == "3"
    finally:
        install.inv("down")


# -- 2: a migrate command that applied nothing ------------------------------------------------------------


def test_a_migrate_command_that_applies_nothing_fails_and_rolls_back(install: Install, tmp_path: Path) -> None:
    tree_before, db_before = install.state(), install.pg_dump()
    install.release(tmp_path, "2.3.0")
    done = _apply(install, env={"PATCHFLOW_MIGRATE_COMMAND": "true"})
    assert done.returncode == 2, _out(done)
    assert "(run by true)" in done.stdout, "the plan says which runner runs which migrations"
    assert "exited 0 but did not apply what the plan listed" in done.stderr
    assert "20250301090000_audit_log" in done.stderr and "rolled back automatically" in done.stderr
    assert_exactly_old(install, tree_before, db_before)


def test_auto_runs_flat_migrations_with_the_builtin_runner_even_with_the_prisma_cli(
    install: Install, tmp_path: Path
) -> None:
    prisma = install.root / "node_modules" / ".bin" / "prisma"
    prisma.parent.mkdir(parents=True, exist_ok=True)
    prisma.write_text("#!/bin/sh\nexit 0\n")  # Prisma ignores flat prisma/migrations/*.sql files
    prisma.chmod(0o755)

    def flat(src: Path) -> None:
        (src / "prisma/migrations/20250301090000_audit_flat.sql").write_text('CREATE TABLE "Flat" (id int);\n')

    build_release(install, tmp_path, "2.3.0", migration=None, edit=flat)
    done = _apply(install, env={"PATCHFLOW_MIGRATE_COMMAND": "auto"})
    _ok(done)
    assert "20250301090000_audit_flat (run by builtin)" in done.stdout
    assert install.sql("SELECT to_regclass('public.\"Flat\"') IS NOT NULL") == "t"


# -- 3: a migration folder without migration.sql ---------------------------------------------------------------


def test_a_migration_folder_without_migration_sql_is_refused_by_create_and_verify(tmp_path: Path) -> None:
    root = bare_install(tmp_path / "install", files={"src/a.js": b"1"})
    folder = craft_patch(
        root / "patches",
        "1.1.0",
        {"src/a.js": b"2", "prisma/migrations/20250301_audit/migrations.sql": b"CREATE TABLE audit (id int);\n"},
    )
    checked = run_inv("verify-patch", "--root", str(root), "--version", "1.1.0")
    assert checked.returncode == 1 and "prisma/migrations/20250301_audit/ has no migration.sql" in checked.stderr
    applied = run_inv("apply-patch", "--root", str(root), "--version", "1.1.0", "--yes")
    assert applied.returncode == 1 and "has no migration.sql" in applied.stderr
    assert (root / "src/a.js").read_bytes() == b"1"
    shutil.rmtree(folder)
    source = tmp_path / "source"
    shutil.copytree(root, source)
    (source / "VERSION").write_text("1.1.0\n")
    (source / "prisma/migrations/20250301_audit").mkdir(parents=True)
    (source / "prisma/migrations/20250301_audit/migrations.sql").write_text("CREATE TABLE audit (id int);\n")
    made = run_inv("create-patch", "--root", str(source))
    assert made.returncode == 1 and "20250301_audit/ has no migration.sql (it holds: migrations.sql)" in made.stderr


# -- 4: an existing database without migration history ----------------------------------------------------------


def test_a_database_without_history_is_refused_before_stop_then_baselined(install: Install, tmp_path: Path) -> None:
    install.sql('DROP TABLE "_prisma_migrations"')
    tree_before, db_before = install.state(), install.pg_dump()
    install.release(tmp_path, "2.3.0")
    refused = _apply(install)
    assert refused.returncode == 1, _out(refused)
    flat = " ".join(refused.stderr.split())
    assert 'there is no _prisma_migrations table while schema "public" holds 2 table(s)' in flat, flat
    assert "inv baseline-migrations" in flat
    assert "-> stop" not in refused.stdout
    assert install.pg_dump() == db_before and health(install) == (200, "2.2.0")

    asked = install.inv("baseline-migrations")
    assert asked.returncode == 5 and "record as applied: 20250101120000_init" in asked.stdout
    assert install.sql("SELECT to_regclass('public._prisma_migrations') IS NULL") == "t", "nothing recorded yet"
    done = install.inv("baseline-migrations", "--yes")
    _ok(done)
    assert "recorded 3 migrations as applied" in done.stdout
    checksums = install.sql("SELECT migration_name || ' ' || checksum FROM _prisma_migrations ORDER BY 1").splitlines()
    import hashlib

    expected = sorted(
        f"{p.parent.name} {hashlib.sha256(p.read_bytes()).hexdigest()}"
        for p in (install.root / "prisma/migrations").glob("*/migration.sql")
    )
    assert checksums == expected
    again = install.inv("baseline-migrations", "--yes")
    assert "nothing to record" in again.stdout
    _ok(_apply(install))
    assert install.sql("SELECT count(*) FROM _prisma_migrations WHERE finished_at IS NOT NULL") == "4"
    assert tree_before != install.state()


# -- 5: migration errors point at the migration's own line -------------------------------------------------------


def test_a_failing_statement_is_reported_with_the_line_of_the_migration_file(install: Install, tmp_path: Path) -> None:
    sql = 'CREATE TABLE "Ok" (id int);\n\n-- the fourth line fails\nSELECT no_such_function();\n'
    build_release(install, tmp_path, "2.3.0", migration=sql)
    done = _apply(install)
    assert done.returncode == 2, _out(done)
    assert "prisma/migrations/20250301090000_audit_log/migration.sql line 4:" in done.stderr, done.stderr
    assert "no_such_function" in done.stderr
    # patchflow's own set-up (CREATE TABLE IF NOT EXISTS _prisma_migrations) says nothing: issue 18, fault 7
    assert "already exists, skipping" not in done.stderr and "line 1:" not in done.stderr, done.stderr


def test_a_migration_whose_last_statement_ends_in_a_comment_is_applied_and_recorded(
    install: Install, tmp_path: Path
) -> None:
    sql = 'CREATE TABLE "Ok" (id int);\nCREATE TABLE "AuditLog" (id int) -- no semicolon, a comment last'
    build_release(install, tmp_path, "2.3.0", migration=sql)
    _ok(_apply(install))
    assert install.sql("SELECT to_regclass('public.\"AuditLog\"') IS NOT NULL") == "t"
    assert install.sql("SELECT count(*) FROM _prisma_migrations WHERE migration_name LIKE '%audit_log'") == "1"


def test_a_migration_ending_inside_a_comment_fails_instead_of_swallowing_the_record(
    install: Install, tmp_path: Path
) -> None:
    tree_before, db_before = install.state(), install.pg_dump()
    build_release(install, tmp_path, "2.3.0", migration='CREATE TABLE "AuditLog" (id int);\n/* never closed\n')
    done = _apply(install)
    assert done.returncode == 2, _out(done)
    assert "20250301090000_audit_log" in done.stderr and "rolled back automatically" in done.stderr
    assert_exactly_old(install, tree_before, db_before)


# -- 7: the VERSION a patch carries ---------------------------------------------------------------------------------


def test_the_installed_version_file_keeps_the_patchs_exact_bytes(install: Install, tmp_path: Path) -> None:
    build_release(install, tmp_path, "2.3.0", edit=lambda src: (src / "VERSION").write_bytes(b"v2.3.0"))
    _ok(_apply(install))
    assert (install.root / "VERSION").read_bytes() == b"v2.3.0"
    assert status_json(install)["installed_version"] == "2.3.0"


def test_a_patch_carrying_another_version_is_refused_before_stop(tmp_path: Path) -> None:
    root = bare_install(tmp_path / "install", files={"src/a.js": b"1"})
    craft_patch(root / "patches", "1.1.0", {"src/a.js": b"2", "VERSION": b"1.0.9\n"})
    before = tree_state(root, skip=("patches",))
    done = run_inv("apply-patch", "--root", str(root), "--version", "1.1.0", "--yes")
    assert done.returncode == 2, _out(done)
    assert "carries a VERSION file saying 1.0.9" in done.stderr and "Nothing was stopped or changed" in done.stderr
    after = tree_state(root, skip=("patches",))
    assert {k: v for k, v in after.items() if not k.startswith(".patchflow")} == {
        k: v for k, v in before.items() if not k.startswith(".patchflow")
    }


def test_create_patch_with_a_newer_version_than_the_trees_applies_and_rolls_back(
    install: Install, tmp_path: Path
) -> None:
    """PATCH_SYSTEM.md's `make create-patch VERSION=2.3.0` on a tree whose VERSION still says 2.2.0."""
    from sample_workspace import make_release

    source = make_release(install.root, tmp_path / "source", "2.3.0")
    (source / "VERSION").write_bytes(b"2.2.0\n")
    made = run_inv("create-patch", "--root", str(source), "--version", "2.3.0")
    _ok(made)
    assert (
        "VERSION: the tree's VERSION says 2.2.0; the patch carries VERSION 2.3.0 (the tree's file is left unchanged)"
        in made.stdout
    )
    assert (source / "VERSION").read_bytes() == b"2.2.0\n"
    copy_patch(source, install.root, "2.3.0")
    _ok(install.inv("verify-patch", "--version", "2.3.0", "--deep"))
    tree_before, db_before = install.state(), install.pg_dump()
    _ok(_apply(install))
    assert (install.root / "VERSION").read_bytes() == b"2.3.0\n"
    assert status_json(install)["installed_version"] == "2.3.0" and health(install) == (200, "2.3.0")
    _ok(install.inv("rollback-patch", "--version", "2.3.0", "--yes"))
    assert (install.root / "VERSION").read_bytes() == b"2.2.0\n"
    assert_exactly_old(install, tree_before, db_before)


def test_create_patch_refuses_a_version_older_than_the_trees(install: Install) -> None:
    done = run_inv("create-patch", "--root", str(install.root), "--version", "2.1.9")
    assert done.returncode == 1, _out(done)
    assert "VERSION says 2.2.0, which is newer than the patch version 2.1.9" in " ".join(done.stderr.split())
    assert not (install.root / "patches" / "v2.1.9").exists()


# -- 8: files the host added ----------------------------------------------------------------------------------------

HOST_FILES = {
    "storage/sessions/session-1.json": b'{"user": 1}\n',
    "docker/docker-compose.override.yml": b"services: {}\n",
    "public/sitemap.xml": b"<urlset/>\n",
}


def test_files_the_host_added_are_kept_and_listed(install: Install, tmp_path: Path) -> None:
    for rel, data in HOST_FILES.items():
        (install.root / rel).parent.mkdir(parents=True, exist_ok=True)
        (install.root / rel).write_bytes(data)
    tree_before = install.state()
    install.release(tmp_path, "2.3.0")
    done = _apply(install)
    _ok(done)
    flat = " ".join(done.stdout.split())
    # storage/ and the compose override are host paths (host_paths): never a patch's, not even listed
    assert "unowned: 1 paths here belong to no patch and stay" in flat and "public/sitemap.xml" in flat
    assert "storage/sessions" not in flat and "docker-compose.override.yml" not in flat
    for rel, data in HOST_FILES.items():
        assert (install.root / rel).read_bytes() == data, rel
    assert not (install.root / "src/components/Header.js").exists(), "a file the old patch owned is still deleted"
    _ok(install.inv("rollback-patch", "--version", "2.3.0", "--yes"))
    assert install.state() == tree_before

    removing = _apply(install, "2.3.0", "--remove-unowned")
    _ok(removing)
    assert not (install.root / "public/sitemap.xml").exists()
    assert (install.root / "storage/sessions/session-1.json").is_file(), "--remove-unowned never touches host paths"
    assert (install.root / "docker/docker-compose.override.yml").is_file()
    _ok(install.inv("rollback-patch", "--version", "2.3.0", "--yes"))
    assert install.state() == tree_before, "rollback brings back what --remove-unowned deleted"


# -- 11: versions that are not SemVer ------------------------------------------------------------------------------


def test_versions_with_leading_zeros_are_refused(install: Install) -> None:
    for task in ("create-patch", "apply-patch"):
        done = install.inv(task, "--version", "1.2.0-rc.01", "--yes" if task == "apply-patch" else "--force")
        assert done.returncode == 1 and "leading zero" in done.stderr, _out(done)


def test_an_unreadable_installed_version_is_refused_unless_forced(install: Install, tmp_path: Path) -> None:
    install.release(tmp_path, "2.3.0")
    (install.root / "VERSION").write_text("2.2.0-final.01\n")
    refused = _apply(install)
    assert refused.returncode == 1 and "installed version cannot be read" in refused.stderr
    assert "--force" in refused.stderr
    _ok(_apply(install, "2.3.0", "--force"))
    assert health(install) == (200, "2.3.0")


# -- issue 12: a delta patch applies to the same tree as the full patch ------------------------------------------------


def test_a_delta_patch_ends_on_the_same_tree_as_the_full_patch(install: Install, tmp_path: Path) -> None:
    from sample_workspace import make_release

    source = make_release(install.root, tmp_path / "source", "2.3.0")
    shutil.copytree(install.root / "patches" / "v2.2.0", source / "patches" / "v2.2.0")
    made = run_inv("create-patch", "--root", str(source), "--base", "2.2.0")
    _ok(made)
    assert "delta from 2.2.0" in made.stdout
    manifest = json.loads((source / "patches/v2.3.0/manifest.json").read_text())
    assert manifest["delta"]["base_version"] == "2.2.0" and manifest["format"] == 2
    assert len(manifest["files"]) < 15, "a delta lists only what it changes"

    full = tmp_path / "full"
    shutil.copytree(install.root, full, symlinks=True)
    copy_patch(source, install.root, "2.3.0")
    _ok(_apply(install))
    delta_tree = install.state()
    _ok(install.inv("rollback-patch", "--version", "2.3.0", "--yes"))
    shutil.rmtree(install.root / "patches" / "v2.3.0")
    install.release(tmp_path / "full-release", "2.3.0")
    _ok(_apply(install))
    assert install.state() == delta_tree, "delta and full patch give the same tree"
    recorded = json.loads((install.root / ".patchflow/installed-manifest.json").read_text())
    assert len(recorded["files"]) > 3 * len(manifest["files"]), "an install records its whole tree"

    # a delta on the delta applies on this install, whose 2.3.0 came from another build of the same tree
    (source / "VERSION").write_text("2.3.1\n")
    (source / "apps/api/health.txt").write_text("one more file\n")
    _ok(run_inv("create-patch", "--root", str(source), "--base", "2.3.0"))
    copy_patch(source, install.root, "2.3.1")
    verified = install.inv("verify-patch", "--version", "2.3.1", "--deep")
    _ok(verified)
    assert "a delta on 2.3.0" in verified.stdout
    _ok(_apply(install, "2.3.1"))
    assert health(install) == (200, "2.3.1") and (install.root / "apps/api/health.txt").is_file()

    other = bare_install(tmp_path / "other", "2.1.0")
    copy_patch(source, other, "2.3.0")
    refused = run_inv("apply-patch", "--root", str(other), "--version", "2.3.0", "--yes")
    assert refused.returncode == 1 and "delta built on 2.2.0, but 2.1.0 is installed" in refused.stderr
    unrecorded = bare_install(tmp_path / "unrecorded", "2.2.0")  # at 2.2.0, but not through a patch
    copy_patch(source, unrecorded, "2.3.0")
    before = sorted(str(p.relative_to(unrecorded)) for p in unrecorded.rglob("*"))
    refused = run_inv("apply-patch", "--root", str(unrecorded), "--version", "2.3.0", "--yes")
    assert refused.returncode == 1 and "has no record of its tree" in refused.stderr, _out(refused)
    assert "Apply the full patch of 2.3.0" in " ".join(refused.stderr.split())
    assert sorted(str(p.relative_to(unrecorded)) for p in unrecorded.rglob("*")) == before, "nothing changed"
    assert history(install)[-1]["result"] == "success"
    assert REPO.is_dir()


# -- beyond: migrations you can see before they lock production --------------------------------------------------------

HEAVY = 'CREATE INDEX "User_name_idx" ON "User"("name");\nALTER TABLE "User" ALTER COLUMN "name" TYPE varchar(80);\n'


def test_heavy_locks_are_shown_before_stop_and_refused_on_request(install: Install, tmp_path: Path) -> None:
    build_release(install, tmp_path, "2.3.0", migration=HEAVY)
    dry = install.inv("apply-patch", "--version", "2.3.0", "--dry-run")
    _ok(dry)
    flat = " ".join(dry.stdout.split())
    assert "lock/rewrite: prisma/migrations/20250301090000_audit_log/migration.sql line 1:" in flat
    assert "require-concurrent-index-creation" in flat and "changing-column-type" in flat
    assert '"User": ' in flat and "KiB" in flat, "the size of the table the statement locks"
    tree_before, db_before = install.state(), install.pg_dump()
    refused = _apply(install, env={"PATCHFLOW_MIGRATION_LINT": "refuse"})
    assert refused.returncode == 1, _out(refused)
    assert "take heavy locks or rewrite tables" in refused.stderr and "-> stop" not in refused.stdout
    assert install.state() == tree_before and install.pg_dump() == db_before
    source = tmp_path / "source-2.3.0"
    shutil.rmtree(source / "patches")  # preflight runs before create-patch: a shipped migration is not linted again
    preflight = run_inv("preflight", "--root", str(source), "--skip-tool", env={"PATCHFLOW_MIGRATION_LINT": "refuse"})
    assert "lock/rewrite" in preflight.stdout and "changing-column-type" in preflight.stdout
    assert "migration lint (" in preflight.stderr
