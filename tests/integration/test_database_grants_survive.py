"""A rollback's database keeps who may connect (issue 26's neighbour): on a hardened server the
live database revokes PUBLIC's rights and grants CONNECT to the app's role only, with per-role and
per-database settings, a connection limit and a comment. Both ways a rollback puts a copy in place
of the live database (a dump restored beside it, a snapshot renamed back) must give the copy all of
that, or the app's role cannot connect after the rollback and the old version fails its health
check. Real PostgreSQL; the app role really connects afterwards and another role really cannot.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.services import PostgresCluster

from patchflow.database import Database
from patchflow.pg_target import PgTarget, find_pg_bindir, parse_database_url
from patchflow.runner import LocalRunner
from patchflow.snapshot import create_snapshot, restore_from_snapshot

pytestmark = pytest.mark.integration


@dataclass
class Hardened:
    live: str
    app: str
    other: str
    database: Database


def _database(url: str) -> Database:
    parsed = parse_database_url(url)
    target = PgTarget("url", parsed.dbname, parsed.env, bindir=find_pg_bindir(), conninfo=parsed.conninfo)
    return Database(target, LocalRunner())


@pytest.fixture
def hardened(pg_cluster: PostgresCluster) -> Iterator[Hardened]:
    tag = uuid.uuid4().hex[:8]
    live, app, other = f"pf_acl_{tag}", f"pf_app_{tag}", f"pf_other_{tag}"
    pg_cluster.create_database(live)
    pg_cluster.psql(
        "postgres",
        f'CREATE ROLE "{app}" LOGIN;\nCREATE ROLE "{other}" LOGIN;\n'
        f'REVOKE ALL ON DATABASE "{live}" FROM PUBLIC;\n'
        f'GRANT CONNECT, TEMPORARY ON DATABASE "{live}" TO "{app}";\n'
        f'ALTER ROLE "{app}" IN DATABASE "{live}" SET work_mem = \'8MB\';\n'
        f"ALTER DATABASE \"{live}\" SET statement_timeout = '5s';\n"
        f'ALTER DATABASE "{live}" CONNECTION LIMIT 40;\n'
        f"COMMENT ON DATABASE \"{live}\" IS 'PrimeFlow production';\n",
    )
    pg_cluster.psql(live, 'CREATE TABLE "Order" (id int PRIMARY KEY); INSERT INTO "Order" VALUES (1), (2);\n')
    try:
        yield Hardened(live, app, other, _database(pg_cluster.url(live)))
    finally:
        rows = pg_cluster.psql("postgres", f"SELECT datname FROM pg_database WHERE datname LIKE '{live}%';\n")
        for name in rows.split():
            pg_cluster.drop_database(name)
        pg_cluster.psql("postgres", f'DROP ROLE IF EXISTS "{app}";\nDROP ROLE IF EXISTS "{other}";\n')


def _object_facts(cluster: PostgresCluster, name: str) -> tuple[str, ...]:
    """The live database's ACL entries, settings (per database and per role), limit and comment,
    with its own name left out so two databases compare."""
    acl = cluster.psql(
        "postgres",
        "SELECT string_agg(CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END || ':' "
        "|| a.privilege_type, ',' ORDER BY a.grantee, a.privilege_type) FILTER (WHERE a.grantee <> d.datdba) "
        f"FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = '{name}';\n",
    )
    settings = cluster.psql(
        "postgres",
        "SELECT string_agg(coalesce(r.rolname, '*') || ':' || c, ',' ORDER BY r.rolname NULLS FIRST, c) "
        "FROM pg_db_role_setting s "
        "JOIN pg_database d ON d.oid = s.setdatabase LEFT JOIN pg_roles r ON r.oid = s.setrole, "
        f"unnest(s.setconfig) AS c WHERE d.datname = '{name}';\n",
    )
    other = cluster.psql(
        "postgres",
        f"SELECT datconnlimit, shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = '{name}';\n",
    )
    return acl.strip(), settings.strip(), other.strip()


def _connects(cluster: PostgresCluster, db: str, role: str) -> bool:
    done = subprocess.run(
        [str(cluster.bin("psql")), "-X", "-A", "-t", "-c", "SELECT 1", cluster.url(db, role)],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.returncode == 0


def _assert_kept(cluster: PostgresCluster, db: Hardened, before: tuple[str, ...]) -> None:
    assert _object_facts(cluster, db.live) == before
    assert _connects(cluster, db.live, db.app), "the app's role lost CONNECT in the rollback"
    assert not _connects(cluster, db.live, db.other), "PUBLIC got its default CONNECT back"


def test_a_dump_restored_beside_the_live_database_keeps_its_grants_and_settings(
    pg_cluster: PostgresCluster, hardened: Hardened, tmp_path: Path
) -> None:
    before = _object_facts(pg_cluster, hardened.live)
    assert f"{hardened.app}:CONNECT" in before[0] and "PUBLIC" not in before[0], before
    assert _connects(pg_cluster, hardened.live, hardened.app) and not _connects(
        pg_cluster, hardened.live, hardened.other
    )
    dump = tmp_path / "live.dump"
    hardened.database.dump(dump)
    displaced = hardened.database.restore_beside(dump, "20261207T000000Z")
    _assert_kept(pg_cluster, hardened, before)
    assert _object_facts(pg_cluster, displaced)[0] == before[0], "the displaced database keeps its own"


def test_a_snapshot_put_back_keeps_the_live_databases_grants_and_settings(
    pg_cluster: PostgresCluster, hardened: Hardened
) -> None:
    before = _object_facts(pg_cluster, hardened.live)
    name = f"{hardened.live}_snap_test"
    create_snapshot(hardened.database, name)
    pg_cluster.psql(hardened.live, 'INSERT INTO "Order" VALUES (3);\n')
    restore_from_snapshot(hardened.database, name, "20261207T000001Z")
    _assert_kept(pg_cluster, hardened, before)
    rows = pg_cluster.psql(hardened.live, 'SELECT count(*) FROM "Order";\n')
    assert rows.strip() == "2", "the snapshot is what is live again"


def test_a_database_with_the_default_acl_keeps_publics_connect(pg_cluster: PostgresCluster, tmp_path: Path) -> None:
    live = f"pf_plain_{uuid.uuid4().hex[:8]}"
    pg_cluster.create_database(live)
    try:
        database = _database(pg_cluster.url(live))
        dump = tmp_path / "plain.dump"
        database.dump(dump)
        database.restore_beside(dump, "20261207T000002Z")
        acl = pg_cluster.psql("postgres", f"SELECT datacl IS NULL FROM pg_database WHERE datname = '{live}';\n")
        assert acl.strip() == "t", "a default ACL stays the default (PUBLIC may connect)"
    finally:
        rows = pg_cluster.psql("postgres", f"SELECT datname FROM pg_database WHERE datname LIKE '{live}%';\n")
        for name in rows.split():
            pg_cluster.drop_database(name)
