"""Smoke tests: the real services the integration tests rely on can be started and used."""

from __future__ import annotations

import subprocess

import psycopg
import pytest
from support.services import LOCAL_BASE_IMAGE, PostgresCluster, SshServer

pytestmark = pytest.mark.integration


def test_postgres_database_over_tcp_and_socket(pg_cluster: PostgresCluster, pg_database: str) -> None:
    with psycopg.connect(pg_database) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (42)")
    db = pg_database.rsplit("/", 1)[1]
    with psycopg.connect(pg_cluster.socket_url(db)) as conn:
        assert conn.execute("SELECT x FROM t").fetchone() == (42,)
        assert conn.execute("SHOW server_encoding").fetchone() == ("UTF8",)
    assert pg_cluster.psql(db, "SELECT x FROM t;").strip() == "42"


def test_postgres_drop_database_with_open_connection(pg_cluster: PostgresCluster) -> None:
    pg_cluster.create_database("pf_smoke_drop")
    conn = psycopg.connect(pg_cluster.url("pf_smoke_drop"))
    try:
        pg_cluster.drop_database("pf_smoke_drop")
    finally:
        conn.close()
    names = pg_cluster.psql("postgres", "SELECT datname FROM pg_database;").split()
    assert "pf_smoke_drop" not in names


@pytest.mark.ssh
def test_ssh_with_openssh_client(ssh_server: SshServer) -> None:
    out = subprocess.run(ssh_server.ssh_argv("echo", "ok"), capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == "ok"


@pytest.mark.ssh
def test_ssh_with_fabric(ssh_server: SshServer) -> None:
    fabric = pytest.importorskip("fabric")
    with fabric.Connection(
        ssh_server.host,
        user=ssh_server.user,
        port=ssh_server.port,
        connect_kwargs=ssh_server.connect_kwargs(),
    ) as conn:
        # in_stream=False: invoke otherwise mirrors our stdin, which pytest's capture forbids.
        result = conn.run("echo ok", hide=True, in_stream=False)
    assert result.stdout.strip() == "ok"


@pytest.mark.docker
def test_docker_runs_local_base_image(docker_engine: None) -> None:
    out = subprocess.run(
        ["docker", "run", "--rm", LOCAL_BASE_IMAGE, "echo", "ok"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
