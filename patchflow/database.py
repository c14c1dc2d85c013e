"""PostgreSQL: wait until ready, dump, exact restore, and a Prisma-compatible migration runner.

Two targets share one implementation (:class:`PgTarget`):

* ``url`` mode: local client programs (``pg_bindir``, PATH, or the newest
  ``/usr/lib/postgresql/*/bin``) connect with the parts of ``DATABASE_URL`` passed as ``PG*``
  environment variables (the password never appears in a process list);
* ``compose`` mode: the same programs run inside the database service through
  ``docker compose exec -T`` as the service's superuser.

Dumps use ``pg_dump --format=custom`` into a 0600 file and are checked with ``pg_restore --list``.
A restore makes the database equal to the dump (field failure C10): it drops and recreates the
database (after terminating other sessions) when the role may create databases, else it drops
every schema of the database; then ``pg_restore --exit-on-error --single-transaction``. Errors
are fatal. A role that is not a superuser restores with ``--no-owner --no-privileges`` and skips
extension comments (C11).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchflow.commands import postgres as pg
from patchflow.commands import split_command
from patchflow.config import Settings, mask_url
from patchflow.errors import CommandError, ConfigError, DatabaseError, MigrationError
from patchflow.manifest import sha256_file
from patchflow.migrations import Migration, find_migrations
from patchflow.runner import Runner

MIGRATIONS_TABLE = "_prisma_migrations"
CREATE_MIGRATIONS_TABLE = f"""CREATE TABLE IF NOT EXISTS "{MIGRATIONS_TABLE}" (
    "id" VARCHAR(36) PRIMARY KEY NOT NULL,
    "checksum" VARCHAR(64) NOT NULL,
    "finished_at" TIMESTAMPTZ,
    "migration_name" VARCHAR(255) NOT NULL,
    "logs" TEXT,
    "rolled_back_at" TIMESTAMPTZ,
    "started_at" TIMESTAMPTZ NOT NULL DEFAULT now(),
    "applied_steps_count" INTEGER NOT NULL DEFAULT 0
);"""
# SQL statements that give a recreated public schema the owner, comment and grants it has now
PUBLIC_SCHEMA_STATEMENTS = """SELECT concat_ws(E'\\n',
  format('ALTER SCHEMA public OWNER TO %I;', pg_get_userbyid(n.nspowner)),
  format('COMMENT ON SCHEMA public IS %L;', obj_description(n.oid, 'pg_namespace')),
  (SELECT string_agg(format('GRANT %s ON SCHEMA public TO %s%s;', a.privilege_type,
          CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
          CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END), E'\\n' ORDER BY a.grantee, a.privilege_type)
   FROM aclexplode(n.nspacl) a WHERE a.grantee <> n.nspowner))
FROM pg_namespace n WHERE n.nspname = 'public'"""


def find_pg_bindir(configured: str = "") -> Path | None:
    """Folder of the PostgreSQL client programs: the setting, then PATH, then the newest
    ``/usr/lib/postgresql/<ver>/bin``; None when no ``pg_dump`` is found."""
    if configured:
        return Path(configured)
    on_path = shutil.which("pg_dump")
    candidates = sorted(
        (Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin") if Path(p, "pg_dump").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    if candidates:
        return candidates[0]
    if on_path:
        return Path(on_path).parent
    return None


@dataclass(frozen=True)
class PgTarget:
    """Where and how PostgreSQL programs run; :meth:`command` returns ``(argv base, env)``."""

    mode: str
    dbname: str
    local_env: dict[str, str]
    bindir: Path | None = None
    compose_prefix: tuple[str, ...] = ()
    service: str = "postgres"
    user: str = ""
    conninfo: str = ""

    def command(self, program: str, *, maintenance: bool = False) -> tuple[list[str], dict[str, str]]:
        """The invocation of ``program`` against this database (``maintenance``: the ``postgres`` db)."""
        db = "postgres" if maintenance else self.dbname
        if self.mode == "compose":
            prefix = [*self.compose_prefix, "exec", "-T", "-e", f"PGDATABASE={db}"]
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
        return [str(self.bindir / program)], env

    def describe(self) -> str:
        """Human description, password masked."""
        if self.mode == "compose":
            return f"database {self.dbname!r} in compose service {self.service!r}"
        return f"database {mask_url(self.conninfo)}"


def _url_env(url: str) -> tuple[str, dict[str, str]]:
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(url)
    except Exception as exc:
        raise ConfigError(
            f"DATABASE_URL is not a valid PostgreSQL URL ({exc}).",
            "Set it like postgresql://user:password@host:5432/dbname in .env or the environment.",
        ) from None
    mapping = {
        "host": "PGHOST",
        "port": "PGPORT",
        "user": "PGUSER",
        "password": "PGPASSWORD",
        "sslmode": "PGSSLMODE",
        "sslrootcert": "PGSSLROOTCERT",
        "connect_timeout": "PGCONNECT_TIMEOUT",
        "options": "PGOPTIONS",
        "application_name": "PGAPPNAME",
    }
    env = {var: str(parts[key]) for key, var in mapping.items() if parts.get(key) not in (None, "")}
    dbname = str(parts.get("dbname") or parts.get("user") or "")
    if not dbname:
        raise ConfigError(
            "DATABASE_URL names no database.", "Add the database name: postgresql://user@host:5432/dbname."
        )
    return dbname, env


def target_from_settings(
    settings: Settings, compose_prefix: Sequence[str] = (), service_env: Mapping[str, str] | None = None
) -> PgTarget | None:
    """Build the database target of ``settings`` (None when ``database_mode`` is ``none``).

    In compose mode the database and its superuser come from the settings (``database_name``,
    ``database_user``), else from ``service_env`` (the database service's environment as compose
    resolves it: ``POSTGRES_DB``, ``POSTGRES_USER``), else from the project's ``.env``; the user
    defaults to ``postgres`` and the database to the user.

    Raises:
        ConfigError: url mode without ``DATABASE_URL``, or an invalid URL.
    """
    mode = settings.database_mode
    if mode == "none":
        return None
    if mode == "compose":
        service = service_env or {}
        dbname = (
            settings.database_name
            or service.get("POSTGRES_DB", "")
            or settings.dotenv.get("POSTGRES_DB", "")
            or os.environ.get("POSTGRES_DB", "")
        )
        user = (
            settings.database_user
            or service.get("POSTGRES_USER", "")
            or settings.dotenv.get("POSTGRES_USER", "")
            or "postgres"
        )
        if not dbname:
            dbname = user
        return PgTarget(
            "compose", dbname, {}, compose_prefix=tuple(compose_prefix), service=settings.database_service, user=user
        )
    url = settings.database_url
    if not url:
        raise ConfigError(
            "No database configured: DATABASE_URL is not set.",
            "Set DATABASE_URL in the project's .env or the environment, or set PATCHFLOW_DATABASE_MODE=none "
            "for an install without a database.",
        )
    dbname, env = _url_env(url)
    return PgTarget("url", dbname, env, bindir=find_pg_bindir(settings.pg_bindir), conninfo=url)


@dataclass(frozen=True)
class DumpInfo:
    """A written dump: file, size (bytes), sha256, and the database's properties for recreation."""

    path: Path
    size: int
    sha256: str
    properties: dict[str, Any]


class Database:
    """Operations on one PostgreSQL database through a :class:`PgTarget` and a runner."""

    def __init__(self, target: PgTarget, runner: Runner) -> None:
        self.target = target
        self.runner = runner

    # -- plumbing -------------------------------------------------------------------------
    def _run(
        self,
        build: Callable[[list[str]], list[str]],
        program: str,
        *,
        maintenance: bool = False,
        timeout: float | None = 3600,
        what: str = "",
        input_file: Path | None = None,
        output_file: Path | None = None,
    ) -> str:
        base, env = self.target.command(program, maintenance=maintenance)
        try:
            result = self.runner.run(
                build(base),
                env=env,
                timeout=timeout,
                what=what or program,
                input_file=input_file,
                output_file=output_file,
            )
        except CommandError as exc:
            raise DatabaseError(exc.message, f"Target: {self.target.describe()}.") from None
        return result.stdout

    def query(self, sql: str, *, maintenance: bool = False) -> list[list[str]]:
        """Run ``sql`` with psql and return rows as lists of strings (``|`` separated output)."""
        out = self._run(
            lambda b: pg.psql(b, sql=sql, tuples=True), "psql", maintenance=maintenance, what="psql query", timeout=300
        )
        return [line.split("|") for line in out.splitlines() if line]

    def execute(self, sql: str, *, maintenance: bool = False, what: str = "psql") -> None:
        """Run one SQL command (``-c``) with ON_ERROR_STOP."""
        self._run(lambda b: pg.psql(b, sql=sql), "psql", maintenance=maintenance, what=what, timeout=600)

    def run_script(self, sql: str, *, what: str = "psql script") -> str:
        """Run the SQL ``sql`` through psql with ON_ERROR_STOP; returns stdout.

        Raises:
            DatabaseError: psql failed (the message carries PostgreSQL's error).
        """
        with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False, encoding="utf-8") as handle:
            handle.write(sql)
            script = Path(handle.name)
        try:
            return self._run(lambda b: pg.psql(b), "psql", input_file=script, what=what)
        finally:
            script.unlink(missing_ok=True)

    # -- readiness ------------------------------------------------------------------------
    def wait_ready(self, timeout: float) -> float:
        """Wait until the database accepts a real connection and answers ``SELECT 1`` (C14).

        Polls with backoff (0.25 s doubling to 3 s) until ``timeout`` seconds. Returns the seconds waited.

        Raises:
            DatabaseError: not ready before the deadline (names the target and the last error).
        """
        if self.runner.dry:
            return 0.0
        start = time.monotonic()
        delay = 0.25
        last = ""
        while True:
            try:
                self._ping()
                return time.monotonic() - start
            except (DatabaseError, OSError) as exc:
                last = str(exc)
            except Exception as exc:
                last = str(exc).strip()
            if time.monotonic() - start + delay > timeout:
                raise DatabaseError(
                    f"The {self.target.describe()} does not accept connections "
                    f"(waited {timeout:.0f} s): {last.splitlines()[-1] if last else 'no answer'}.",
                    "Start PostgreSQL or fix DATABASE_URL; nothing was changed by this step.",
                )
            time.sleep(delay)
            delay = min(delay * 2, 3.0)

    def _ping(self) -> None:
        if self.target.mode == "url":
            import psycopg

            with psycopg.connect(self.target.conninfo, connect_timeout=5, autocommit=True) as conn:
                conn.execute("SELECT 1")
        else:
            # TCP inside the container: a socket-only init server does not count as ready (C14)
            self._run(
                lambda b: pg.psql(b, sql="SELECT 1", tuples=True, host="127.0.0.1"),
                "psql",
                timeout=15,
                what="database ping",
            )

    # -- information ----------------------------------------------------------------------
    def properties(self) -> dict[str, Any]:
        """Owner, encoding, collation, ctype, size (bytes) of the database and the role's rights."""
        rows = self.query(
            "SELECT pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding), d.datcollate, d.datctype, "
            "pg_database_size(d.datname), r.rolsuper, r.rolcreatedb "
            "FROM pg_database d, pg_roles r WHERE d.datname = current_database() AND r.rolname = current_user"
        )
        if not rows or len(rows[0]) < 7:
            raise DatabaseError(f"Cannot read the properties of the {self.target.describe()}.", "")
        owner, encoding, collate, ctype, size, superuser, createdb = rows[0][:7]
        return {
            "name": self.target.dbname,
            "owner": owner,
            "encoding": encoding,
            "collate": collate,
            "ctype": ctype,
            "size": int(size),
            "superuser": superuser == "t",
            "createdb": createdb == "t",
        }

    # -- dump -----------------------------------------------------------------------------
    def dump(self, path: Path) -> DumpInfo:
        """Write a custom-format dump to ``path`` (mode 0600) and check it with ``pg_restore --list``.

        Raises:
            DatabaseError: pg_dump failed or the dump is unreadable; the partial file is removed.
        """
        properties = self.properties()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        try:
            self._run(pg.pg_dump, "pg_dump", output_file=path, what="pg_dump")
            listing = self._run(
                pg.pg_restore_list, "pg_restore", input_file=path, what="pg_restore --list", timeout=600
            )
            if not self.runner.dry and ";" not in listing:
                raise DatabaseError(
                    f"The dump {path} is empty or unreadable.", "Check disk space and the database logs."
                )
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        digest, size = sha256_file(path)
        return DumpInfo(path, size, digest, properties)

    # -- restore --------------------------------------------------------------------------
    def restore(self, dump: Path, properties: dict[str, Any]) -> None:
        """Make the database equal to ``dump`` (schema and data), never by replaying over live objects.

        Args:
            dump: a custom-format dump written by :meth:`dump`.
            properties: what :meth:`dump` recorded (owner, encoding, collation, the role's rights).

        Raises:
            DatabaseError: the restore failed; the message carries pg_restore's error.
        """
        if not dump.is_file():
            raise DatabaseError(f"The database dump {dump} is missing.", "The backup is incomplete; restore by hand.")
        current = self.properties() if not self.runner.dry else properties
        superuser = bool(current.get("superuser"))
        if superuser or current.get("createdb"):
            self._recreate_database(properties)
        else:
            self._drop_schemas()
        list_file: Path | None = None
        if not superuser and self.target.mode == "url":
            listing = self._run(lambda b: pg.pg_restore_list(b, str(dump)), "pg_restore", what="pg_restore --list")
            kept = [line for line in listing.splitlines() if not re.search(r"\bCOMMENT - EXTENSION\b", line)]
            with tempfile.NamedTemporaryFile("w", suffix=".list", delete=False, encoding="utf-8") as handle:
                handle.write("\n".join(kept) + "\n")
                list_file = Path(handle.name)
        try:
            self._run(
                lambda b: pg.pg_restore(
                    b, self.target.dbname, keep_owners=superuser, use_list=str(list_file) if list_file else None
                ),
                "pg_restore",
                input_file=dump,
                what="pg_restore",
            )
        finally:
            if list_file is not None:
                list_file.unlink(missing_ok=True)

    def _recreate_database(self, properties: dict[str, Any]) -> None:
        name = pg.quote_ident(self.target.dbname)
        # WITH (FORCE) terminates other sessions atomically (PostgreSQL 13+)
        self.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", maintenance=True, what="drop database")
        self.execute(
            f"CREATE DATABASE {name} OWNER {pg.quote_ident(properties['owner'])} TEMPLATE template0 "
            f"ENCODING {pg.quote_literal(properties['encoding'])} "
            f"LC_COLLATE {pg.quote_literal(properties['collate'])} LC_CTYPE {pg.quote_literal(properties['ctype'])}",
            maintenance=True,
            what="create database",
        )

    def _drop_schemas(self) -> None:
        rows = self.query(
            "SELECT nspname FROM pg_namespace WHERE nspname NOT IN ('pg_catalog','information_schema') "
            "AND nspname NOT LIKE 'pg_toast%' AND nspname NOT LIKE 'pg_temp%'"
        )
        # public is recreated as it was (owner, comment, grants): a dump taken of an untouched
        # public schema carries none of them, and a bare CREATE SCHEMA would drop PUBLIC's USAGE
        restore_public = self._run(
            lambda b: pg.psql(b, sql=PUBLIC_SCHEMA_STATEMENTS, tuples=True), "psql", what="psql query", timeout=300
        )
        statements = [f"DROP SCHEMA IF EXISTS {pg.quote_ident(r[0])} CASCADE;" for r in rows]
        statements.append("CREATE SCHEMA IF NOT EXISTS public;")
        statements.append(restore_public.strip())
        self.run_script("BEGIN;\n" + "\n".join(statements) + "\nCOMMIT;\n", what="drop schemas")

    # -- migrations -----------------------------------------------------------------------
    def migration_rows(self) -> list[dict[str, Any]]:
        """Rows of ``_prisma_migrations`` (empty when the table does not exist)."""
        exists = self.query(f"SELECT to_regclass('public.{MIGRATIONS_TABLE}') IS NOT NULL")
        if not exists or exists[0][0] != "t":
            return []
        rows = self.query(
            f"SELECT migration_name, checksum, finished_at IS NOT NULL, rolled_back_at IS NOT NULL "
            f'FROM "{MIGRATIONS_TABLE}" ORDER BY started_at, migration_name'
        )
        return [{"name": r[0], "checksum": r[1], "finished": r[2] == "t", "rolled_back": r[3] == "t"} for r in rows]

    def pending_migrations(self, migrations: Sequence[Migration]) -> list[Migration]:
        """The migrations not yet applied (finished and not rolled back), in order.

        Raises:
            MigrationError: a failed migration is recorded (Prisma's P3009 state).
        """
        rows = self.migration_rows()
        failed = [r["name"] for r in rows if not r["finished"] and not r["rolled_back"]]
        if failed:
            raise MigrationError(
                f"P3009: migration {failed[0]} is recorded as failed in {MIGRATIONS_TABLE}; "
                "later migrations cannot run.",
                "Roll back the patch that ran it (rollback-patch restores the database), or resolve it with "
                "`prisma migrate resolve`.",
                migration=failed[0],
                code="P3009",
            )
        done = {r["name"] for r in rows if r["finished"] and not r["rolled_back"]}
        return [m for m in migrations if m.name not in done]

    def apply_migration(self, root: Path, migration: Migration) -> None:
        """Run one migration in a transaction and record it in ``_prisma_migrations``.

        Raises:
            MigrationError: the SQL failed (code P3018, the migration's name, PostgreSQL's error).
        """
        sql = (root / migration.path).read_text(encoding="utf-8")
        script = "\n".join(
            [
                "BEGIN;",
                CREATE_MIGRATIONS_TABLE,
                sql.rstrip().rstrip(";") + ";",
                f'INSERT INTO "{MIGRATIONS_TABLE}" (id, checksum, finished_at, migration_name, logs, rolled_back_at, '
                f"started_at, applied_steps_count) VALUES ({pg.quote_literal(str(uuid.uuid4()))}, "
                f"{pg.quote_literal(migration.checksum)}, now(), {pg.quote_literal(migration.name)}, "
                "NULL, NULL, now(), 1);",
                "COMMIT;",
                "",
            ]
        )
        try:
            self.run_script(script, what=f"migration {migration.name}")
        except DatabaseError as exc:
            raise MigrationError(
                f"P3018: migration {migration.name} failed and was not applied: {exc.message}",
                "Fix the migration in a new patch; the failed patch is rolled back.",
                migration=migration.name,
                code="P3018",
            ) from None


_PRISMA_CODE = re.compile(r"\b(P\d{4})\b")
_PRISMA_MIGRATION = re.compile(r"`?(\d{8,14}_[A-Za-z0-9_]+)`?")


def run_migrations(
    settings: Settings, database: Database | None, runner: Runner, root: Path, log: Any = None
) -> list[str]:
    """Apply pending migrations of the tree at ``root``; returns the names applied.

    ``migrate_command``: ``builtin`` runs :meth:`Database.apply_migration` for each pending one;
    any other value runs that command in ``root`` with ``DATABASE_URL`` set; ``auto`` picks
    ``pnpm prisma migrate deploy`` when ``node_modules/.bin/prisma`` exists, else builtin.

    Raises:
        MigrationError: a migration failed (with Prisma's error code and the migration's name).
    """
    command = settings.migrate_command.strip()
    if command == "auto":
        command = "pnpm prisma migrate deploy" if (root / "node_modules" / ".bin" / "prisma").exists() else "builtin"
    if command == "builtin":
        if database is None:
            return []
        applied = []
        for migration in database.pending_migrations(find_migrations(root)):
            if log:
                log(f"migration {migration.name}")
            database.apply_migration(root, migration)
            applied.append(migration.name)
        return applied
    env = {"DATABASE_URL": settings.database_url} if settings.database_url else {}
    # what the command is about to apply, read before it runs (its own output is free text)
    pending = [m.name for m in database.pending_migrations(find_migrations(root))] if database else []
    try:
        result = runner.run(split_command(command), cwd=root, env=env, timeout=3600, what="migrations")
    except CommandError as exc:
        code = _PRISMA_CODE.search(exc.output or exc.message)
        name = _PRISMA_MIGRATION.search(exc.output or exc.message)
        raise MigrationError(
            f"{code.group(1) + ': ' if code else ''}the migration command `{command}` failed"
            f"{' at migration ' + name.group(1) if name else ''}: {exc.message}",
            "The patch is rolled back; fix the migration in a new patch.",
            migration=name.group(1) if name else "",
            code=code.group(1) if code else "",
        ) from None
    if log:
        for line in result.stdout.splitlines():
            if line.strip():
                log(f"   {line.strip()}")
    return pending
