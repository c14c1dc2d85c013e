"""Queries in this process (patchflow.pg_query) answer what ``psql -A -t`` answered, on a real
PostgreSQL: the same text values (booleans, NULL, numbers, JSON, dates), the same connection
(the run's PG* environment under the URL's), and a one-paragraph DatabaseError naming the target
for a refused statement, a wrong password or a server that is not there."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest
from support.installs import wait_until
from support.services import PostgresCluster, refusing_port

from patchflow.database import Database
from patchflow.errors import DatabaseError
from patchflow.pg_query import connection_keywords, text_rows
from patchflow.pg_target import PgTarget, find_pg_bindir, parse_database_url
from patchflow.runner import LocalRunner

pytestmark = pytest.mark.integration

QUERIES = [
    "SELECT true, false, NULL, 42, 1.50::numeric, 'a b', ''",
    "SELECT to_regclass('public.nothing_here') IS NOT NULL",
    "SELECT jsonb_build_object('k', 'v|w', 'n', 1)::text",
    "SELECT g, g % 2 = 0, CASE WHEN g = 2 THEN NULL ELSE g::text END FROM generate_series(1, 3) AS g",
    "SELECT '2026-12-07 01:02:03+00'::timestamptz::text, interval '90 minutes'",
    "SELECT 1 WHERE false",
    "CREATE TEMP TABLE t (i int)",
    "SHOW server_version_num",
]


def _database(url: str, environ: dict[str, str] | None = None) -> Database:
    parsed = parse_database_url(url)
    target = PgTarget("url", parsed.dbname, parsed.env, bindir=find_pg_bindir(), conninfo=parsed.conninfo)
    return Database(target, LocalRunner(base_env=environ or {}))


@pytest.fixture(scope="module")
def dbname(pg_cluster: PostgresCluster) -> Iterator[str]:
    name = f"pf_query_{uuid.uuid4().hex[:10]}"
    pg_cluster.create_database(name)
    try:
        yield name
    finally:
        pg_cluster.drop_database(name)


def _psql_rows(cluster: PostgresCluster, db: str, sql: str) -> list[list[str]]:
    """What patchflow read before: psql -A -t output split on ``|``."""
    out = subprocess.run(
        [str(cluster.bin("psql")), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql, cluster.url(db)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.split("|") for line in out.splitlines() if line]


@pytest.mark.parametrize("sql", QUERIES)
def test_the_rows_are_what_psql_printed(pg_cluster: PostgresCluster, dbname: str, sql: str) -> None:
    rows = _database(pg_cluster.url(dbname)).query(sql)
    if "jsonb" in sql:  # psql's output split on the | inside the value; the real value has it whole
        assert rows == [['{"k": "v|w", "n": 1}']]
    else:
        assert rows == _psql_rows(pg_cluster, dbname, sql)


def test_a_refused_statement_is_a_database_error_with_postgresqls_message(
    pg_cluster: PostgresCluster, dbname: str
) -> None:
    with pytest.raises(DatabaseError) as caught:
        _database(pg_cluster.url(dbname)).query('SELECT * FROM "NoSuchTable"')
    assert 'relation "NoSuchTable" does not exist' in caught.value.message
    assert dbname in caught.value.hint


def test_a_wrong_password_is_refused_with_the_password_masked(pg_cluster: PostgresCluster, dbname: str) -> None:
    role = f"pf_pw_{uuid.uuid4().hex[:8]}"
    pg_cluster.add_password_role(role, "right-secret")
    url = pg_cluster.url(dbname, role).replace(f"{role}@", f"{role}:wrong-secret@")
    with pytest.raises(DatabaseError) as caught:
        _database(url).query("SELECT 1")
    text = caught.value.message + caught.value.hint
    assert "password authentication failed" in text and "wrong-secret" not in text


def test_a_server_that_is_not_there_is_a_database_error_within_the_connect_timeout(dbname: str) -> None:
    with refusing_port() as port, pytest.raises(DatabaseError) as caught:
        _database(f"postgresql://postgres@127.0.0.1:{port}/{dbname}").query("SELECT 1")
    assert "The database query failed" in caught.value.message


def test_the_connection_takes_the_runs_environment_under_the_urls_values(pg_cluster: PostgresCluster) -> None:
    parsed = parse_database_url("postgresql://app@db.internal:6543/prod?sslmode=require&schema=s1")
    target = PgTarget("url", parsed.dbname, parsed.env, conninfo=parsed.conninfo)
    environ = {"PGPASSWORD": "from-env", "PGHOST": "ignored-host", "PGSSLROOTCERT": "/etc/ca.pem", "HOME": "/root"}
    keywords = connection_keywords(target, environ, database="copy_db", app="patchflow-test")
    assert keywords["password"] == "from-env" and keywords["sslrootcert"] == "/etc/ca.pem"
    assert keywords["host"] == "db.internal" and keywords["port"] == "6543" and keywords["sslmode"] == "require"
    assert keywords["dbname"] == "copy_db" and keywords["application_name"] == "patchflow-test"
    assert "schema" not in keywords and "HOME" not in keywords


def test_no_startup_options_are_sent_so_a_pooler_accepts_the_connection(
    pg_cluster: PostgresCluster, dbname: str
) -> None:
    # PgBouncer refuses a connection whose startup packet carries ``options``; the server's
    # default statement_timeout (0) shows none was sent
    assert _database(pg_cluster.url(dbname)).query("SHOW statement_timeout") == [["0"]]


def test_a_query_past_its_deadline_is_cancelled_on_the_server(pg_cluster: PostgresCluster, dbname: str) -> None:
    db = _database(pg_cluster.url(dbname))
    with pytest.raises(DatabaseError) as caught:
        text_rows(db.target, {}, "SELECT pg_sleep(60)", database=None, app="pf-deadline-test", timeout=0.5)
    assert "did not answer a query within 0.5 s" in caught.value.message
    query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pf-deadline-test';\n"
    # the backend ends once it has seen the cancel and the closed connection: polled, with a deadline
    wait_until(lambda: pg_cluster.psql("postgres", query).strip() == "0", 30, "the cancelled query to end")


def test_a_latin1_database_answers_in_utf8_as_psql_did(pg_cluster: PostgresCluster) -> None:
    name = f"pf_latin1_{uuid.uuid4().hex[:8]}"
    pg_cluster.psql(
        "postgres", f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C';\n"
    )
    try:
        pg_cluster.psql(name, "SET client_encoding = 'UTF8';\nCREATE TABLE \"Café\" (id int);\n")
        rows = _database(pg_cluster.url(name)).query("SELECT relname FROM pg_class WHERE relname LIKE 'Caf%'")
        assert rows == [["Café"]]
    finally:
        pg_cluster.drop_database(name)
