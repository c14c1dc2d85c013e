"""Waiting for PostgreSQL: only when waiting can help, never in silence.

Two situations differ:

* **the plan** (:func:`check_answers_now`): the installed version is running, so its database
  should answer now. A refused password, an unknown role or database fail at once (waiting cannot
  fix them), naming the URL with its password masked and what to check; a server that does not
  accept connections is waited for only briefly (:data:`PLAN_WAIT` seconds at most), with a line
  saying so;
* **after a restart** (:func:`wait_for_server`: the migrate step, a restore, a recovery): the
  server may be failing over or recovering, so it is waited for up to ``db_wait_timeout``, with a
  line when the wait starts and one every :data:`PROGRESS_EVERY` seconds. Errors that waiting
  cannot fix still end the wait at once.

Connection errors carry no SQLSTATE through libpq, so they are told apart by libpq's and the
server's (English) messages; an error not recognised counts as "not accepting connections yet".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from patchflow.errors import DatabaseError

if TYPE_CHECKING:
    from patchflow.database import Database

PLAN_WAIT = 15.0
PROGRESS_EVERY = 10.0

#: Fragments of connection errors that waiting cannot fix: (fragment, kind).
PERMANENT = (
    ("password authentication failed", "credentials"),
    ("authentication failed", "credentials"),
    ("no password supplied", "credentials"),
    ("no pg_hba.conf entry", "credentials"),
    ("pg_hba.conf rejects", "credentials"),
    ("is not permitted to log in", "credentials"),
    ("permission denied for database", "credentials"),
    ("server does not support ssl", "credentials"),
    ("does not exist", "missing"),
    ("no such service", "missing"),
)

HINTS = {
    "credentials": (
        "Check the user and password in DATABASE_URL (the project's .env or the environment; "
        "database_admin_url for the admin role) and the server's pg_hba.conf: waiting cannot fix this."
    ),
    "missing": (
        "Check the database name and the user in DATABASE_URL (the project's .env or the environment), or "
        "database_name / database_user in compose mode: waiting cannot fix this."
    ),
}


def classify(error: str) -> str:
    """``credentials``, ``missing`` (an unknown database, role or service) or ``down`` (anything
    else: refused, timed out, starting up, shutting down, too many clients...)."""
    lowered = error.lower()
    for fragment, kind in PERMANENT:
        if fragment in lowered:
            return kind
    return "down"


def reason_of(error: str) -> str:
    """The useful line of a connection error (libpq's ``connection failed:`` prefix removed)."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    if not lines:
        return "no answer"
    reason = lines[0].removeprefix("connection failed: ")
    if "FATAL:" in reason:
        reason = "FATAL: " + reason.split("FATAL:", 1)[1].strip()
    return reason


def answers(database: Database, *, admin: bool = False) -> str | None:
    """None when the database answers ``SELECT 1`` now (no wait), else the error text."""
    import psycopg

    try:
        database.ping(admin=admin)
        return None
    except DatabaseError as exc:
        return exc.message
    except (psycopg.Error, OSError) as exc:  # url mode: the connection or the query failed
        return str(exc)


def _refuse(database: Database, admin: bool, kind: str, error: str, hint: str) -> DatabaseError:
    target = database.admin if admin else database.target
    what = "refused the credentials" if kind == "credentials" else "cannot be used"
    return DatabaseError(f"The {target.describe()} {what}: {reason_of(error)}.", hint)


def wait_for_server(
    database: Database,
    timeout: float,
    log: Callable[[str], None] = lambda line: None,
    *,
    hint: str = "Start PostgreSQL or fix DATABASE_URL; nothing was changed by this step.",
    note: str = "Nothing was changed by this step.",
    admin: bool = False,
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """Wait until the database answers ``SELECT 1`` (polls 0.1 s doubling to 2 s), at most
    ``timeout`` seconds; returns the seconds waited. A line goes to ``log`` when the wait starts,
    every :data:`PROGRESS_EVERY` seconds, and when it ends after a wait. ``admin``: the role of
    ``database_admin_url``; ``hint`` ends the timeout's error, ``note`` the others'.

    Raises:
        DatabaseError: an error waiting cannot fix (credentials, unknown database or role), at
            once; or no answer before the deadline (names the target, the last error and ``hint``).
    """
    target = database.admin if admin else database.target
    start = time.monotonic()
    delay = 0.1
    announced = 0.0
    error = answers(database, admin=admin)
    while error is not None:
        kind = classify(error)
        if kind != "down":
            raise _refuse(database, admin, kind, error, f"{HINTS[kind]} {note}")
        waited = time.monotonic() - start
        if not announced:
            log(
                f"   waiting up to {timeout:.0f} s for the {target.describe()} to accept connections "
                f"({reason_of(error)})"
            )
            announced = waited or 1e-9
        elif waited - announced >= PROGRESS_EVERY:
            log(f"   still waiting for the database: {waited:.0f} s of {timeout:.0f} s ({reason_of(error)})")
            announced = waited
        if waited + delay > timeout:
            raise DatabaseError(
                f"The {target.describe()} does not accept connections (waited {timeout:.0f} s): {reason_of(error)}.",
                hint,
            )
        sleep(delay)
        delay = min(delay * 2, 2.0)
        error = answers(database, admin=admin)
    waited = time.monotonic() - start
    if announced:
        log(f"   database accepted connections after {waited:.1f} s")
    return waited


def check_answers_now(database: Database, db_wait_timeout: float, log: Callable[[str], None]) -> None:
    """The plan's check (the installed version runs, so its database should answer now): the
    application's role, and the admin role when ``database_admin_url`` names another, connect
    with a short timeout; a server not accepting connections is waited for at most
    :data:`PLAN_WAIT` seconds (or ``db_wait_timeout`` when shorter), with a visible line.

    Raises:
        DatabaseError: refused credentials, an unknown database or role (at once), or no answer in
            the short wait; the message names the URL with its password masked. Nothing changed.
    """
    roles = [False]
    if database.admin.mode == "url" and database.admin.conninfo != database.target.conninfo:
        roles.append(True)
    for admin in roles:
        wait_for_server(
            database,
            min(PLAN_WAIT, db_wait_timeout),
            log,
            hint="The installed version's database should answer now: start PostgreSQL (or its compose service), "
            "or fix the host and port in DATABASE_URL, then run again. Nothing was stopped or changed.",
            note="Nothing was stopped or changed.",
            admin=admin,
        )
