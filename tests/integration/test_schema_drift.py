"""Drift of the live schema (issue 21): before the stop, the plan compares the live database with a
scratch database built from the installed migrations recorded as applied, and names each change
made by hand. Real PostgreSQL and a running sample install; the scratch database is dropped."""

from __future__ import annotations

import json
import subprocess

import pytest
from support.exact import app_processes
from support.installs import Install, health

pytestmark = pytest.mark.integration

DRIFT = "The live schema differs from what its 3 recorded migration(s) produce"


def _out(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout + done.stderr


def _flat(text: str) -> str:
    return " ".join(text.split())


def _databases(install: Install) -> list[str]:
    rows = install.cluster.psql(
        "postgres", f"SELECT datname FROM pg_database WHERE datname LIKE '{install.dbname}%';\n"
    )
    return sorted(rows.split())


def _plan(install: Install, **env: str) -> str:
    done = install.inv("apply-patch", "--version", "2.3.0", "--dry-run", env=env)
    assert done.returncode == 0, _out(done)
    return _flat(done.stdout)


def test_changes_made_by_hand_are_named_in_the_plan_and_refused_when_told(install: Install) -> None:
    install.release(install.root.parent, "2.3.0")
    databases = _databases(install)
    assert "The live schema differs" not in _plan(install), "the sample's schema is what its migrations produce"
    cache = install.root / ".patchflow" / "schema-expected.json"
    assert [name for name, _ in json.loads(cache.read_text())["key"]["migrations"]] == [
        "20250101120000_init",
        "20250115093000_add_projects",
        "20250201101500_seed_defaults",
    ]
    install.sql(
        'ALTER TABLE "User" ADD COLUMN "legacyCode" TEXT; DROP INDEX "Project_ownerId_idx"; '
        'ALTER TABLE "Project" ALTER COLUMN "slug" TYPE VARCHAR(200)'
    )
    plan = _plan(install)
    slug = "column Project.slug differs (live: character varying(200) NOT NULL; migrations: text NOT NULL)"
    assert f"{DRIFT} (3 difference(s)): {slug}" in plan, plan
    assert "column User.legacyCode (text) only in the live database" in plan
    assert 'index Project_ownerId_idx (CREATE INDEX "Project_ownerId_idx" ON public."Project" USING btree ' in plan
    assert "missing from the live database" in plan and "(schema_drift_check = warn)" in plan
    assert _databases(install) == databases, "the scratch database is dropped"

    db_before, pids = install.pg_dump(), app_processes(install.root)
    refused = install.inv("apply-patch", "--version", "2.3.0", "--yes", env={"PATCHFLOW_SCHEMA_DRIFT_CHECK": "refuse"})
    assert refused.returncode == 1, _out(refused)
    flat = _flat(refused.stderr)
    assert f"{DRIFT} (3 difference(s))" in flat and "Nothing was stopped or changed" in flat, flat
    assert "-> stop" not in refused.stdout
    assert install.pg_dump() == db_before and app_processes(install.root) == pids
    assert health(install) == (200, "2.2.0")
    assert "The live schema differs" not in _plan(install, PATCHFLOW_SCHEMA_DRIFT_CHECK="off")


def test_the_expected_schema_is_kept_and_what_cannot_be_rebuilt_is_said_not_checked(install: Install) -> None:
    install.release(install.root.parent, "2.3.0")
    databases = _databases(install)
    assert "The live schema differs" not in _plan(install)
    cache = install.root / ".patchflow" / "schema-expected.json"
    kept = json.loads(cache.read_text())
    del kept["catalog"]["column User.name"]  # the next plan reads this, not a new scratch database
    cache.write_text(json.dumps(kept))
    assert "column User.name (text) only in the live database" in _plan(install)
    kept["key"]["migrations"][0][1] = "0" * 64  # built from other migrations: built again
    cache.write_text(json.dumps(kept))
    assert "The live schema differs" not in _plan(install)
    # what cannot be rebuilt: the plan says the check was not made, and why
    seed = install.root / "prisma/migrations/20250201101500_seed_defaults/migration.sql"
    seed.write_text("SELECT 1/0;\n")  # the installed file no longer builds (the patch's still matches its row)
    plan = _plan(install)
    assert "schema drift not checked: a scratch database built from the recorded migrations failed" in plan, plan
    assert "division by zero" in plan and _databases(install) == databases, "the failed scratch database is dropped"
    install.sql(
        "INSERT INTO _prisma_migrations (id, checksum, migration_name, started_at, finished_at) "
        "VALUES ('x', 'x', '20250210000000_hotfix', now(), now())"
    )
    plan = _plan(install)
    assert "schema drift not checked: _prisma_migrations records applied migration(s) this install does not have" in (
        plan
    ), plan
    assert "(20250210000000_hotfix)" in plan
