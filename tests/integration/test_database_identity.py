"""The identity of a database (issue 24: deploy groups hosts by it), against a real PostgreSQL: the
same for every way a host may reach one database (TCP address, unix socket, another role), another
for another database of the same server; and the clients a migration refuses, as the server lists
them."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest
from support.installs import wait_until
from support.services import PostgresCluster

from patchflow.database import Database
from patchflow.errors import PreconditionError
from patchflow.pg_target import PgTarget, find_pg_bindir, parse_database_url
from patchflow.runner import LocalRunner
from patchflow.shared_database import database_identity, other_clients, refuse_other_clients

pytestmark = pytest.mark.integration


def _database(url: str) -> Database:
    parsed = parse_database_url(url)
    target = PgTarget("url", parsed.dbname, parsed.env, bindir=find_pg_bindir(), conninfo=parsed.conninfo)
    return Database(target, LocalRunner())


@pytest.fixture(scope="module")
def two_databases(pg_cluster: PostgresCluster) -> Iterator[tuple[str, str]]:
    names = (f"pf_ident_{uuid.uuid4().hex[:8]}", f"pf_ident_{uuid.uuid4().hex[:8]}")
    for name in names:
        pg_cluster.create_database(name)
    role = f"pf_ident_role_{uuid.uuid4().hex[:6]}"
    pg_cluster.psql("postgres", f"CREATE ROLE {role} LOGIN; GRANT CONNECT ON DATABASE {names[0]} TO {role};")
    try:
        yield names
    finally:
        for name in names:
            pg_cluster.drop_database(name)
        pg_cluster.psql("postgres", f"DROP ROLE IF EXISTS {role};")


def test_every_way_to_reach_one_database_gives_one_identity_and_another_database_another(
    pg_cluster: PostgresCluster, two_databases: tuple[str, str]
) -> None:
    first, second = two_databases
    by_tcp = database_identity(_database(pg_cluster.url(first)))
    by_socket = database_identity(_database(pg_cluster.socket_url(first)))
    role = pg_cluster.psql("postgres", "SELECT rolname FROM pg_roles WHERE rolname LIKE 'pf_ident_role_%' LIMIT 1")
    as_other_role = database_identity(_database(pg_cluster.url(first, user=role.strip())))
    assert by_tcp == by_socket == as_other_role
    server, name = by_tcp.split("/", 1)
    assert name == first and all(part.isdigit() for part in server.split("-")), by_tcp
    assert database_identity(_database(pg_cluster.url(second))) == f"{server}/{second}"


def test_a_client_left_on_the_database_is_named_and_refuses_the_migration(
    pg_cluster: PostgresCluster, two_databases: tuple[str, str]
) -> None:
    first, second = two_databases
    database = _database(pg_cluster.url(first))
    assert other_clients(database) == []
    refuse_other_clients(database, "migrate", wait=0.0)  # nobody else: no refusal
    client = subprocess.Popen(
        [str(pg_cluster.bin("psql")), "-q", pg_cluster.url(first) + "?application_name=reports-job"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert client.stdin is not None
        client.stdin.write("SELECT 1;\n")
        client.stdin.flush()
        wait_until(lambda: other_clients(database), 30, "the reports job's session")
        assert other_clients(_database(pg_cluster.url(second))) == [], "a session on another database is not counted"
        with pytest.raises(PreconditionError) as refused:
            refuse_other_clients(database, "migrate", wait=0.3)
        assert f"Refusing to migrate database {first}: 1 other client session(s)" in refused.value.message
        assert 'app "reports-job"' in refused.value.message and "--others-stopped" in refused.value.hint
        # a role without pg_read_all_stats sees the superuser's session with its type and address hidden
        role = pg_cluster.psql("postgres", "SELECT rolname FROM pg_roles WHERE rolname LIKE 'pf_ident_role_%' LIMIT 1")
        seen = other_clients(_database(pg_cluster.url(first, user=role.strip())))
        assert [(c.application, c.role, c.address) for c in seen] == [
            ("reports-job", "postgres", "an address hidden from this role")
        ], seen
    finally:
        client.terminate()
        client.wait(timeout=30)
    refuse_other_clients(database, "migrate", wait=10.0)  # its session gone: no refusal
