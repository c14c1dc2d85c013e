"""Read-only queries of a URL-mode database in this process (libpq through psycopg), not through a
``psql`` process.

An apply asks the database 20 to 50 small questions (the migration history, the database's
properties, the sessions and locks): as ``psql -A -t -c`` processes each costs a fork, an exec and
a libpq start-up, about 40 ms of CPU; here it is one connection and one round trip. The answer has
the shape ``psql -A -t`` gives (:func:`text_rows`): every value as PostgreSQL's text output
(``t``/``f`` for booleans), ``""`` for NULL, so callers do not change.

The connection gets exactly what psql would: the PG* variables of the run's environment, then
those of the target (from ``DATABASE_URL``), the database and ``application_name``, and no
startup ``options`` (a pooler such as PgBouncer refuses them); a client-side deadline, which
cancels the query on the server, plays psql's process timeout. :func:`ping_url` is the readiness probe's
``SELECT 1``. Compose mode (psql inside the database's
container) and scripts (``psql -f``) keep psql.
"""

from __future__ import annotations

import select
import time
from collections.abc import Mapping
from typing import Any

from patchflow.errors import DatabaseError
from patchflow.pg_target import APP_NAME, ENV_OF_KEYWORD, PgTarget


def connection_keywords(
    target: PgTarget, environ: Mapping[str, str], *, database: str | None, app: str
) -> dict[str, str]:
    """libpq keywords for ``target`` as psql run with ``environ`` would see them: the PG* variables
    of ``environ``, overridden by the target's (its URL), then ``dbname``, ``application_name`` and
    ``client_encoding`` (UTF8 unless one was given)."""
    keywords = {kw: environ[var] for kw, var in ENV_OF_KEYWORD.items() if environ.get(var)}
    keywords.update({kw: target.local_env[var] for kw, var in ENV_OF_KEYWORD.items() if target.local_env.get(var)})
    keywords["dbname"] = database or target.dbname
    keywords["application_name"] = app
    keywords.setdefault("client_encoding", "UTF8")  # as psql under a UTF-8 locale: values come as UTF-8
    return keywords


def ping_url(target: PgTarget) -> None:
    """Connect to a URL target (5 s connect timeout) and run ``SELECT 1``.

    Raises:
        psycopg.OperationalError: the connection failed.
    """
    import psycopg

    with psycopg.connect(target.conninfo, connect_timeout=5, autocommit=True, application_name=APP_NAME) as conn:
        conn.execute("SELECT 1")


def text_rows(
    target: PgTarget, environ: Mapping[str, str], sql: str, *, database: str | None, app: str, timeout: float
) -> list[list[str]]:
    """Run ``sql`` (one statement, or several whose last one answers) and return its rows as lists
    of text values, NULL as ``""`` (what ``psql -A -t`` prints); ``timeout`` in seconds bounds the
    statement.

    Raises:
        DatabaseError: the connection failed or the server refused the statement (PostgreSQL's
            message; the hint names the target).
    """
    import psycopg
    from psycopg import pq

    keywords = connection_keywords(target, environ, database=database, app=app)
    try:
        with psycopg.connect(autocommit=True, **keywords) as conn:  # type: ignore[arg-type]
            result = _answer(conn, sql, timeout)
            if result is None or result.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
                error = result.error_message.decode("utf-8", "replace").strip() if result is not None else "no result"
                raise DatabaseError(f"The database query failed: {error}", f"Target: {target.describe()}.")
            return [
                [(result.get_value(row, col) or b"").decode("utf-8", "replace") for col in range(result.nfields)]
                for row in range(result.ntuples)
            ]
    except psycopg.Error as exc:
        raise DatabaseError(f"The database query failed: {str(exc).strip()}", f"Target: {target.describe()}.") from None


def _answer(conn: Any, sql: str, timeout: float) -> Any:
    """Send ``sql`` and wait for its results, at most ``timeout`` seconds (then cancel it on the
    server); returns the last result (``pq.PGresult``, None when there was none).

    The deadline is kept here, not by a ``statement_timeout`` startup option: a pooler in front
    of PostgreSQL (PgBouncer) refuses connections that send ``options``, and psql sent none.

    Raises:
        DatabaseError: no answer within ``timeout``.
    """
    pgconn = conn.pgconn
    pgconn.send_query(sql.encode("utf-8"))
    deadline = time.monotonic() + timeout
    while True:
        pgconn.consume_input()
        if not pgconn.is_busy():
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            conn.cancel()
            raise DatabaseError(
                f"The database did not answer a query within {timeout:g} s (it was cancelled).",
                "A lock held by another session, or a server under load; see pg_stat_activity and run again.",
            )
        select.select([pgconn.socket], [], [], min(remaining, 1.0))
    last = None
    while (result := pgconn.get_result()) is not None:
        last = result
    return last
