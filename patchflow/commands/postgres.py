"""Argument lists for PostgreSQL client programs (pg_dump, pg_restore, psql).

``base`` is how the program is invoked: ``["/usr/lib/postgresql/15/bin/psql"]`` for a local
client (connection in ``PG*`` environment variables, so no password appears in ``ps``), or
``["docker", "compose", ..., "exec", "-T", "-e", "PGDATABASE=app", "postgres", "psql"]`` inside
a compose service. Nothing here runs anything.
"""

from __future__ import annotations

from collections.abc import Sequence


def pg_dump(base: Sequence[str]) -> list[str]:
    """``pg_dump --format=custom`` to stdout (the caller sends stdout to the dump file)."""
    return [*base, "--format=custom", "--no-password"]


def pg_restore_list(base: Sequence[str], archive: str | None = None) -> list[str]:
    """``pg_restore --list`` of ``archive`` (or stdin): the table of contents of a dump."""
    return [*base, "--list", *([archive] if archive else [])]


def pg_restore_to_null(base: Sequence[str]) -> list[str]:
    """``pg_restore --file=/dev/null`` of an archive read from stdin: reads every entry and every
    data block to the end (a dump cut short fails here; ``--list`` reads only the front)."""
    return [*base, "--file=/dev/null", "--no-password"]


def pg_restore(base: Sequence[str], dbname: str, *, keep_owners: bool, use_list: str | None = None) -> list[str]:
    """``pg_restore`` of an archive read from stdin into ``dbname``: stop at the first error, one
    transaction. Without ``keep_owners``: ``--no-owner --no-privileges`` (a non-superuser restore)."""
    args = [*base, "--exit-on-error", "--single-transaction", "--no-password", f"--dbname={dbname}"]
    if not keep_owners:
        args += ["--no-owner", "--no-privileges"]
    if use_list:
        args += [f"--use-list={use_list}"]
    return args


def pg_restore_script(base: Sequence[str], output: str, *, use_list: str | None = None) -> list[str]:
    """``pg_restore`` of an archive read from stdin into the SQL script ``output`` (``--file``;
    nothing is restored): the statements and ``COPY`` data a restore would run, in order, owners and
    privileges included. ``use_list``: only the entries of that table of contents."""
    return [*base, "--no-password", f"--file={output}", *([f"--use-list={use_list}"] if use_list else [])]


def psql(
    base: Sequence[str],
    *,
    sql: str | None = None,
    tuples: bool = False,
    host: str | None = None,
    single_transaction: bool = False,
) -> list[str]:
    """``psql`` that stops on the first error and reads no ``.psqlrc``; runs ``sql`` (``-c``) or
    a script from stdin (``-f -``). ``tuples``: unaligned rows, ``|`` separated.
    ``single_transaction``: the whole script in one transaction (``--single-transaction``: an
    error rolls all of it back)."""
    args = [*base, "-X", "-q", "--no-password", "-v", "ON_ERROR_STOP=1"]
    if single_transaction:
        args.append("--single-transaction")
    if host:
        args += ["-h", host]
    if tuples:
        args += ["-A", "-t"]
    args += ["-c", sql] if sql is not None else ["-f", "-"]
    return args


def quote_ident(name: str) -> str:
    """Quote an SQL identifier: ``my"db`` -> ``"my""db"``."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """Quote an SQL string literal: ``it's`` -> ``'it''s'``."""
    return "'" + value.replace("'", "''") + "'"
