"""Where and how PostgreSQL's programs run: ``DATABASE_URL`` split for libpq, local or compose target.

:class:`PgTarget` runs the local client programs, or the same programs inside the compose
database service.

* ``url`` mode: local client programs (``pg_bindir``, the newest ``/usr/lib/postgresql/*/bin``,
  or PATH) connect with the parts of ``DATABASE_URL`` passed as ``PG*`` environment variables
  (the password never appears in a process list). Parameters only Prisma understands
  (``?schema=public``, ``connection_limit``, ``pgbouncer``...) are removed before libpq sees the
  URL; ``schema`` is kept as :attr:`PgTarget.schema` (where ``_prisma_migrations`` lives);
* ``compose`` mode: the same programs run inside the database service through
  ``docker compose exec -T`` as the service's superuser.

Every session patchflow opens carries ``application_name=patchflow`` (:data:`APP_NAME`;
:data:`MIGRATE_APP_NAME` for migrations), so an interrupted run can end them on the server
(:meth:`patchflow.database.Database.terminate_sessions`).
"""

from __future__ import annotations

import glob
import shutil
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from patchflow.config import Settings
from patchflow.errors import ConfigError, DatabaseError
from patchflow.redact import mask_url

APP_NAME = "patchflow"
MIGRATE_APP_NAME = "patchflow-migrate"
CONNECT_TIMEOUT = 10
# libpq's connection keywords (https://www.postgresql.org/docs/current/libpq-connect.html); any
# other URL parameter (Prisma's schema, connection_limit, pgbouncer, ...) is not libpq's
LIBPQ_PARAMS = frozenset(
    [
        "host",
        "hostaddr",
        "port",
        "dbname",
        "user",
        "password",
        "passfile",
        "require_auth",
        "channel_binding",
        "connect_timeout",
        "client_encoding",
        "options",
        "application_name",
        "fallback_application_name",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "tcp_user_timeout",
        "replication",
        "gssencmode",
        "sslmode",
        "requiressl",
        "sslcompression",
        "sslcert",
        "sslkey",
        "sslpassword",
        "sslcertmode",
        "sslrootcert",
        "sslcrl",
        "sslcrldir",
        "sslsni",
        "requirepeer",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
        "krbsrvname",
        "gsslib",
        "gssdelegation",
        "service",
        "target_session_attrs",
        "load_balance_hosts",
    ]
)
#: libpq's connection keyword -> the environment variable that sets it
ENV_OF_KEYWORD = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "passfile": "PGPASSFILE",
    "sslmode": "PGSSLMODE",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcrl": "PGSSLCRL",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "options": "PGOPTIONS",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "service": "PGSERVICE",
    "channel_binding": "PGCHANNELBINDING",
    "gssencmode": "PGGSSENCMODE",
    "client_encoding": "PGCLIENTENCODING",
}


def find_pg_bindir(configured: str = "", path: str | None = None) -> Path | None:
    """Folder of the PostgreSQL client programs: the setting, then the newest
    ``/usr/lib/postgresql/<ver>/bin`` (a client at least as new as the server), then ``path``
    (PATH); None when no ``pg_dump`` is found."""
    if configured:
        return Path(configured)
    candidates = sorted(
        (Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin") if Path(p, "pg_dump").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    if candidates:
        return candidates[0]
    on_path = shutil.which("pg_dump", path=path)
    return Path(on_path).parent if on_path else None


@dataclass(frozen=True)
class DatabaseUrl:
    """A ``DATABASE_URL`` split for libpq: ``conninfo`` (the URL without non-libpq parameters),
    ``dbname``, ``env`` (``PG*`` variables), ``schema`` (Prisma's ``?schema=``, default public),
    ``dropped`` (the parameters removed)."""

    conninfo: str
    dbname: str
    env: dict[str, str]
    schema: str
    dropped: tuple[str, ...]


def parse_database_url(url: str, *, source: str = "DATABASE_URL") -> DatabaseUrl:
    """Split ``url`` (``postgresql://user:pw@host:5432/db?schema=public``) for libpq.

    Raises:
        ConfigError: not a PostgreSQL URL, or no database name (the message names ``source``).
    """
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = urllib.parse.urlsplit(url.strip())
    except ValueError as exc:  # an unbalanced [ or ] around an IPv6 host
        raise ConfigError(
            f"{source} is not a valid PostgreSQL URL ({exc}).",
            "Set it like postgresql://user:password@host:5432/dbname in .env or the environment.",
        ) from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError(
            f"{source} is not a PostgreSQL URL (scheme {parts.scheme or 'missing'!r}).",
            "Set it like postgresql://user:password@host:5432/dbname in .env or the environment.",
        )
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    kept = [(k, v) for k, v in query if k in LIBPQ_PARAMS]
    dropped = tuple(sorted({k for k, _ in query if k not in LIBPQ_PARAMS}))
    schema = next((v for k, v in query if k == "schema" and v), "public")
    cleaned = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(kept)))
    try:
        values = conninfo_to_dict(cleaned)
    except (ProgrammingError, UnicodeEncodeError) as exc:  # libpq's parser; a name that is not UTF-8
        raise ConfigError(
            f"{source} is not a valid PostgreSQL URL ({str(exc).strip()}).",
            "Set it like postgresql://user:password@host:5432/dbname in .env or the environment.",
        ) from None
    env = {var: str(values[key]) for key, var in ENV_OF_KEYWORD.items() if values.get(key) not in (None, "")}
    # libpq waits forever for a host that drops packets: psql, pg_dump and pg_restore give up after
    # CONNECT_TIMEOUT seconds unless the URL says otherwise
    env.setdefault("PGCONNECT_TIMEOUT", str(CONNECT_TIMEOUT))
    dbname = str(values.get("dbname") or values.get("user") or "")
    if not dbname:
        raise ConfigError(f"{source} names no database.", "Add the database name: postgresql://user@host:5432/dbname.")
    return DatabaseUrl(cleaned, dbname, env, schema, dropped)


@dataclass(frozen=True)
class PgTarget:
    """Where and how PostgreSQL programs run; :meth:`command` returns ``(argv base, env)``."""

    mode: str
    dbname: str
    local_env: Mapping[str, str] = field(default_factory=dict)
    bindir: Path | None = None
    compose_prefix: tuple[str, ...] = ()
    service: str = "postgres"
    user: str = ""
    conninfo: str = ""
    schema: str = "public"

    def command(
        self, program: str, *, database: str | None = None, app: str = APP_NAME
    ) -> tuple[list[str], dict[str, str]]:
        """The invocation of ``program`` against ``database`` (default: this target's database)."""
        db = database or self.dbname
        if self.mode == "compose":
            prefix = [*self.compose_prefix, "exec", "-T", "-e", f"PGDATABASE={db}", "-e", f"PGAPPNAME={app}"]
            if self.user:
                prefix += ["-e", f"PGUSER={self.user}"]
            return [*prefix, self.service, program], {}
        if self.bindir is None:
            raise DatabaseError(
                "The PostgreSQL client programs (pg_dump, pg_restore, psql) were not found.",
                "Install postgresql-client (Debian: apt-get install postgresql-client) or set PATCHFLOW_PG_BINDIR.",
            )
        env = dict(self.local_env)
        env["PGDATABASE"] = db
        env["PGAPPNAME"] = app
        return [str(self.bindir / program)], env

    def location(self) -> str:
        """Where the database is, password masked: the URL, or the name in its compose service."""
        if self.mode == "compose":
            return f"{self.dbname!r} in compose service {self.service!r}"
        return mask_url(self.conninfo)

    def describe(self) -> str:
        """Human description for sentences: ``database <location>``."""
        return f"database {self.location()}"


def target_from_settings(
    settings: Settings,
    compose_prefix: Sequence[str] = (),
    service_env: Mapping[str, str] | None = None,
    *,
    url: str | None = None,
) -> PgTarget | None:
    """Build the database target of ``settings`` (None when ``database_mode`` is ``none``).

    In compose mode the database and its superuser come from the settings (``database_name``,
    ``database_user``), else from ``service_env`` (the database service's environment as compose
    resolves it: ``POSTGRES_DB``, ``POSTGRES_USER``), else from the project's ``.env``; the user
    defaults to ``postgres`` and the database to the user. ``url`` replaces ``database_url`` (the
    admin URL).

    Raises:
        ConfigError: url mode without ``DATABASE_URL``, or an invalid URL.
    """
    mode = settings.database_mode
    if mode == "none":
        return None
    schema = "public"
    if settings.database_url:
        schema = parse_database_url(settings.database_url).schema
    if mode == "compose":
        service = service_env or {}
        dbname = (
            settings.database_name
            or service.get("POSTGRES_DB", "")
            or settings.dotenv.get("POSTGRES_DB", "")
            or settings.environ.get("POSTGRES_DB", "")
        )
        user = (
            settings.database_user
            or service.get("POSTGRES_USER", "")
            or settings.dotenv.get("POSTGRES_USER", "")
            or "postgres"
        )
        return PgTarget(
            "compose",
            dbname or user,
            compose_prefix=tuple(compose_prefix),
            service=settings.database_service,
            user=user,
            schema=schema,
        )
    chosen = url or settings.database_url
    if not chosen:
        raise ConfigError(
            "No database configured: DATABASE_URL is not set.",
            "Set DATABASE_URL in the project's .env or the environment, or set PATCHFLOW_DATABASE_MODE=none "
            "for an install without a database.",
        )
    parsed = parse_database_url(chosen, source="database_admin_url" if url else "DATABASE_URL")
    return PgTarget(
        "url",
        parsed.dbname,
        parsed.env,
        bindir=find_pg_bindir(settings.pg_bindir, settings.environ.get("PATH")),
        conninfo=parsed.conninfo,
        schema=schema,
    )
