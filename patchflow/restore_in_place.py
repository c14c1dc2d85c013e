"""Restore a dump IN PLACE, in one transaction: the fallback of a role that owns its database but
may not create databases (no CREATEDB, not superuser), the most common PrimeFlow set-up
(``CREATE USER primeflow; CREATE DATABASE primeflow OWNER primeflow;``).

Such a role can neither snapshot the database (:mod:`patchflow.snapshot`) nor restore a dump
beside it (:meth:`patchflow.database.Database.restore_beside`: both create a database). What it
can do is replace the contents of the database it owns, so :func:`restore_in_place`:

1. ends the other sessions on the database it may end, and waits until they are gone;
2. keeps the live database's contents: dumps it into ``displaced-<stamp>.dump`` in the backup
   folder (proven; taken once per restore stamp, so a run again after a kill never overwrites it
   with the restored database);
3. turns the backup's dump into an SQL script (``pg_restore --file``, owners and privileges
   included) without the entries the role could not replay over what it keeps;
4. runs, through ``psql --single-transaction --set ON_ERROR_STOP=1``, one script: drop every
   schema the role owns (``CASCADE``: the tables a migration added, ``_prisma_migrations``,
   sequences, types, functions, the extensions living there), put ``public`` back as ``initdb``
   makes it (PostgreSQL 15 and later: owned by ``pg_database_owner``, ``USAGE`` for everyone,
   its standard comment; the dump then sets its owner, grants and comment), drop the role's own
   objects in the schemas it does not own, its extensions and large objects; replay the dump;
   check that the tables are exactly the dump's (none missing, none the dump lacks), and commit.
   A deferred foreign key between two temporary tables makes the commit fail unless the script's
   last statement ran, so a script cut short (psql commits at the end of its input) never commits.

Any error, a kill of patchflow or of psql at any instant, or a server crash rolls the whole
transaction back: the database is exactly as before the restore, or (once committed) exactly the
dump, never half. A run again restores again (idempotent for one stamp).

What it cannot undo (said by :func:`in_place_problems` before anything stops, or left as it is):
objects of other roles in the database (the restore could neither drop nor recreate them),
extensions in replaced schemas the role may not create again (not trusted), and changes outside
schemas (database settings, default privileges for all schemas, publications).
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from patchflow.commands import postgres as pg
from patchflow.database import Database
from patchflow.errors import DatabaseError

BESIDE, IN_PLACE = "beside", "in-place"
METHODS = (BESIDE, IN_PLACE)
DISPLACED_DUMP = "displaced-{stamp}.dump"
SCRIPT = ".restore-{stamp}.sql"
MARK = "-- patchflow: schemas emptied; the dump follows"
GUARD = "patchflow_restore_guard"  # temporary tables: the commit needs the script's last statement
LOCK_TIMEOUT = 60  # seconds a statement of the restore waits for a lock another session holds
SESSIONS_GONE = 30.0  # seconds to wait for the sessions ended to go
_USER_SCHEMA = "n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'"


def restore_method(database: Database) -> str:
    """How a dump is restored with the role that restores (``database_admin_url`` when set):
    :data:`BESIDE` (a copy beside the live database, swapped in) when it may create databases or is
    superuser, or the database is reached through docker compose (its superuser); :data:`IN_PLACE`
    otherwise.

    Raises:
        DatabaseError: the role's rights cannot be read.
    """
    if database.admin.mode != "url":
        return BESIDE
    props = database.properties(admin=True)
    return BESIDE if props["superuser"] or props["createdb"] else IN_PLACE


def restore_plan(database: Database) -> tuple[str, list[str]]:
    """``(method, problems)``: :func:`restore_method` and why a restore that way would fail, as
    sentences (empty: it can run).

    Raises:
        DatabaseError: the database cannot be queried.
    """
    method = restore_method(database)
    problems = database.restore_problems() if method == BESIDE else in_place_problems(database)
    return method, problems


def _replaced(replace_public: bool) -> str:
    """SQL: the schema ``n`` is one the restore drops and the dump creates again."""
    public = "" if replace_public else " AND n.nspname <> 'public'"
    return f"(pg_catalog.pg_has_role(n.nspowner, 'USAGE'){public})"


def in_place_problems(database: Database) -> list[str]:
    """Why an in-place restore by the restoring role would fail, as sentences (empty: it can run):
    the role does not own the live database; objects of other roles in the schemas it replaces
    (the dump could not give them back their owner) or in the schemas it keeps (it could neither
    drop nor recreate them); extensions the restore drops that the role may not create again.

    Raises:
        DatabaseError: the database cannot be queried.
    """
    props = database.properties(admin=True)
    role, live = props["role"], database.target.dbname
    if not (props["superuser"] or props["owner_member"]):
        return [
            f"role {role} may not create databases (no CREATEDB) and does not own database {live} (the restore "
            f"replaces its contents in place, which only its owner may do; it is owned by {props['owner']})"
        ]
    problems: list[str] = []
    if database.query("SELECT has_database_privilege(current_database(), 'TEMPORARY')", admin=True) != [["t"]]:
        problems.append(
            f"role {role} may not create temporary tables in database {live} (the restore's guard against a "
            f"half-run script is one): GRANT TEMPORARY ON DATABASE {live} TO {role}"
        )
    replaced = _replaced((database.server_version(admin=True) or 0) >= 150000)
    rows = database.query(
        "WITH objects AS ("
        " SELECT c.relnamespace AS ns, c.relname AS name, c.relowner AS owner, 'pg_catalog.pg_class'::regclass AS cls,"
        " c.oid FROM pg_catalog.pg_class c WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c')"
        " UNION ALL SELECT t.typnamespace, t.typname, t.typowner, 'pg_catalog.pg_type'::regclass, t.oid"
        " FROM pg_catalog.pg_type t WHERE t.typtype IN ('d', 'e', 'r')"
        " UNION ALL SELECT p.pronamespace, p.proname, p.proowner, 'pg_catalog.pg_proc'::regclass, p.oid"
        " FROM pg_catalog.pg_proc p) "
        f"SELECT n.nspname, pg_catalog.pg_get_userbyid(n.nspowner), {replaced}, o.name, "
        "pg_catalog.pg_get_userbyid(o.owner) FROM objects o JOIN pg_catalog.pg_namespace n ON n.oid = o.ns "
        f"WHERE {_USER_SCHEMA} AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid = o.cls "
        "AND d.objid = o.oid AND d.deptype = 'e') "
        f"AND CASE WHEN {replaced} THEN NOT pg_catalog.pg_has_role(o.owner, 'MEMBER') "
        "ELSE NOT pg_catalog.pg_has_role(o.owner, 'USAGE') END ORDER BY 1, 4 LIMIT 50",
        admin=True,
    )
    for schema in dict.fromkeys(row[0] for row in rows):
        mine = [row for row in rows if row[0] == schema]
        named = ", ".join(f"{row[3]} (owned by {row[4]})" for row in mine[:5]) + (" ..." if len(mine) > 5 else "")
        if mine[0][2] == "t":
            problems.append(
                f"schema {schema}, which the in-place restore replaces, holds {named}: role {role} may not "
                "give them back to their owner"
            )
        else:
            problems.append(
                f"schema {schema} (owned by {mine[0][1]}, not by role {role}) holds {named}: the in-place restore "
                "could neither replace nor keep them"
            )
    if not props["superuser"]:
        rows = database.query(
            "SELECT e.extname, coalesce(bool_or(v.trusted), false) FROM pg_catalog.pg_extension e "
            "JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace "
            "LEFT JOIN pg_catalog.pg_available_extension_versions v ON v.name = e.extname "
            f"WHERE e.extname <> 'plpgsql' AND (pg_catalog.pg_has_role(e.extowner, 'USAGE') OR {replaced}) "
            "GROUP BY e.extname ORDER BY 1",
            admin=True,
        )
        untrusted = [name for name, trusted in rows if trusted != "t"]
        if untrusted:
            problems.append(
                f"extension(s) {', '.join(untrusted)} would be dropped with the schema holding them and role {role} "
                "may not create them again (not trusted)"
            )
    return problems


# -- the script -------------------------------------------------------------------------------------


def filter_listing(listing: str, kept_schemas: dict[str, str], kept_extensions: set[str]) -> tuple[str, list[str]]:
    """``(listing, tables)``: the table of contents ``listing`` (``pg_restore --list``) without the
    entries the restore may not replay over what it keeps: the schema, its comment and its grants of
    each schema in ``kept_schemas`` (name -> owner), the comment of each extension in
    ``kept_extensions``; and the dump's tables as ``"<schema> <name> <owner>"`` (the check after
    the replay compares them with the database's)."""
    kept: list[str] = []
    tables: list[str] = []
    for line in listing.splitlines():
        match = re.match(r"^\d+; \d+ \d+ (.*)$", line)
        if match:
            entry = match.group(1)
            if any(
                entry == f"{kind} {name} {owner}"
                for name, owner in kept_schemas.items()
                for kind in ("SCHEMA -", "COMMENT - SCHEMA", "ACL - SCHEMA")
            ):
                continue
            if any(entry.rstrip(" ") == f"COMMENT - EXTENSION {name}" for name in kept_extensions):
                continue
            table = re.match(r"^TABLE (?!DATA |ATTACH )(.*)$", entry)
            if table:
                tables.append(table.group(1))
        kept.append(line)
    return "\n".join(kept) + "\n", tables


def _literal_array(values: list[str]) -> str:
    return "ARRAY[" + ", ".join(pg.quote_literal(v) for v in values) + "]::text[]" if values else "'{}'::text[]"


def in_place_script(body: Path, tables: list[str], server_version: int) -> str:
    """The SQL run in one transaction by :func:`restore_in_place`: empty what the role owns (see the
    module docstring), ``\\i`` the dump's script ``body``, check that the tables (``"<schema>
    <name> <owner>"``) are exactly ``tables``. ``server_version`` is ``server_version_num``."""
    replace_public = server_version >= 150000
    replaced = _replaced(replace_public)
    kept = f"{_USER_SCHEMA} AND NOT {replaced}"
    not_member = (
        "NOT EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid = '{cls}'::pg_catalog.regclass "
        "AND d.objid = {alias}.oid AND d.deptype = 'e')"
    )

    def own(alias: str, owner: str, cls: str) -> str:
        member = not_member.format(cls=cls, alias=alias)
        return f"{kept} AND pg_catalog.pg_has_role({alias}.{owner}, 'USAGE') AND {member}"

    relation_kind = (
        "CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'S' THEN 'SEQUENCE' "
        "WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END"
    )
    drops = " UNION ALL ".join(
        [
            f"SELECT 1, pg_catalog.format('DROP %s IF EXISTS %I.%I CASCADE', {relation_kind}, n.nspname, c.relname) "
            "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            f"WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {own('c', 'relowner', 'pg_catalog.pg_class')}",
            "SELECT 2, pg_catalog.format('DROP %s IF EXISTS %I.%I CASCADE', "
            "CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, n.nspname, t.typname) "
            "FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace "
            "WHERE (t.typtype IN ('d', 'e', 'r') OR (t.typtype = 'c' AND EXISTS (SELECT FROM pg_catalog.pg_class r "
            f"WHERE r.oid = t.typrelid AND r.relkind = 'c'))) AND {own('t', 'typowner', 'pg_catalog.pg_type')}",
            "SELECT 3, pg_catalog.format('DROP ROUTINE IF EXISTS %s CASCADE', p.oid::pg_catalog.regprocedure) "
            "FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace "
            f"WHERE {own('p', 'proowner', 'pg_catalog.pg_proc')}",
            "SELECT 4, pg_catalog.format('DROP OPERATOR IF EXISTS %s CASCADE', o.oid::pg_catalog.regoperator) "
            "FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace "
            f"WHERE {own('o', 'oprowner', 'pg_catalog.pg_operator')}",
            "SELECT 5, pg_catalog.format('DROP OPERATOR FAMILY IF EXISTS %I.%I USING %I CASCADE', n.nspname, "
            "f.opfname, a.amname) FROM pg_catalog.pg_opfamily f JOIN pg_catalog.pg_namespace n ON n.oid = "
            "f.opfnamespace JOIN pg_catalog.pg_am a ON a.oid = f.opfmethod "
            f"WHERE {own('f', 'opfowner', 'pg_catalog.pg_opfamily')}",
            "SELECT 6, pg_catalog.format('DROP COLLATION IF EXISTS %I.%I CASCADE', n.nspname, l.collname) "
            "FROM pg_catalog.pg_collation l JOIN pg_catalog.pg_namespace n ON n.oid = l.collnamespace "
            f"WHERE {own('l', 'collowner', 'pg_catalog.pg_collation')}",
            "SELECT 7, pg_catalog.format('DROP TEXT SEARCH CONFIGURATION IF EXISTS %I.%I CASCADE', n.nspname, "
            "s.cfgname) FROM pg_catalog.pg_ts_config s JOIN pg_catalog.pg_namespace n ON n.oid = s.cfgnamespace "
            f"WHERE {own('s', 'cfgowner', 'pg_catalog.pg_ts_config')}",
            "SELECT 8, pg_catalog.format('DROP TEXT SEARCH DICTIONARY IF EXISTS %I.%I CASCADE', n.nspname, "
            "s.dictname) FROM pg_catalog.pg_ts_dict s JOIN pg_catalog.pg_namespace n ON n.oid = s.dictnamespace "
            f"WHERE {own('s', 'dictowner', 'pg_catalog.pg_ts_dict')}",
            "SELECT 9, pg_catalog.format('DROP STATISTICS IF EXISTS %I.%I', n.nspname, s.stxname) "
            "FROM pg_catalog.pg_statistic_ext s JOIN pg_catalog.pg_namespace n ON n.oid = s.stxnamespace "
            f"WHERE {own('s', 'stxowner', 'pg_catalog.pg_statistic_ext')}",
            "SELECT 10, pg_catalog.format('DROP CONVERSION IF EXISTS %I.%I', n.nspname, v.conname) "
            "FROM pg_catalog.pg_conversion v JOIN pg_catalog.pg_namespace n ON n.oid = v.connamespace "
            f"WHERE {own('v', 'conowner', 'pg_catalog.pg_conversion')}",
        ]
    )
    public = (
        "  IF had_public THEN\n"
        "    CREATE SCHEMA public AUTHORIZATION pg_database_owner;\n"
        "    GRANT USAGE ON SCHEMA public TO PUBLIC;\n"
        "    COMMENT ON SCHEMA public IS 'standard public schema';\n"
        "  END IF;\n"
        if replace_public
        else ""
    )
    # a killed psql is noticed by its backend within a second; no timeout of the role cuts the restore short
    check_interval = "SET LOCAL client_connection_check_interval = '1s';\n" if server_version >= 140000 else ""
    if server_version >= 170000:
        check_interval += "SET LOCAL transaction_timeout = 0;\n"
    path = str(body).replace("\\", "\\\\").replace("'", "''")
    return f"""SET LOCAL statement_timeout = 0;
SET LOCAL idle_in_transaction_session_timeout = 0;
SET LOCAL lock_timeout = '{LOCK_TIMEOUT}s';
SET LOCAL client_min_messages = warning;
{check_interval}SET LOCAL search_path = pg_catalog;
-- the commit fails unless the script's last statement ran: a script cut short never commits half a restore
CREATE TEMPORARY TABLE {GUARD}_done (done integer PRIMARY KEY) ON COMMIT DROP;
CREATE TEMPORARY TABLE {GUARD} (done integer REFERENCES pg_temp.{GUARD}_done DEFERRABLE INITIALLY DEFERRED)
  ON COMMIT DROP;
INSERT INTO pg_temp.{GUARD} VALUES (1);
DO $patchflow$
DECLARE
  item record;
  statement text;
  statements text[];
  had_public boolean := EXISTS (SELECT FROM pg_catalog.pg_namespace n WHERE n.nspname = 'public' AND {replaced});
BEGIN
  -- the schemas the role owns are replaced whole (what a migration added goes with them)
  FOR item IN SELECT n.nspname FROM pg_catalog.pg_namespace n WHERE {_USER_SCHEMA} AND {replaced} ORDER BY 1 LOOP
    EXECUTE pg_catalog.format('DROP SCHEMA IF EXISTS %I CASCADE', item.nspname);
  END LOOP;
{public}  -- its own objects in the schemas it keeps (all named before any is dropped)
  SELECT pg_catalog.array_agg(s ORDER BY o) INTO statements FROM ({drops}) AS d(o, s);
  FOREACH statement IN ARRAY coalesce(statements, '{{}}') LOOP
    EXECUTE statement;
  END LOOP;
  FOR item IN SELECT e.extname FROM pg_catalog.pg_extension e
      WHERE e.extname <> 'plpgsql' AND pg_catalog.pg_has_role(e.extowner, 'USAGE') LOOP
    EXECUTE pg_catalog.format('DROP EXTENSION IF EXISTS %I CASCADE', item.extname);
  END LOOP;
  PERFORM pg_catalog.lo_unlink(l.oid) FROM pg_catalog.pg_largeobject_metadata l
    WHERE pg_catalog.pg_has_role(l.lomowner, 'USAGE');
END
$patchflow$;
{MARK}
\\i '{path}'
DO $patchflow$
DECLARE
  expected text[] := {_literal_array(tables)};
  present text[];
  missing text[];
  extra text[];
BEGIN
  SELECT coalesce(pg_catalog.array_agg(n.nspname || ' ' || c.relname || ' ' || pg_catalog.pg_get_userbyid(c.relowner)),
                  '{{}}') INTO present
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND {_USER_SCHEMA} AND {not_member.format(cls="pg_catalog.pg_class", alias="c")};
  SELECT coalesce(pg_catalog.array_agg(x ORDER BY x), '{{}}') INTO missing FROM pg_catalog.unnest(expected) x
    WHERE x <> ALL (present);
  SELECT coalesce(pg_catalog.array_agg(x ORDER BY x), '{{}}') INTO extra FROM pg_catalog.unnest(present) x
    WHERE x <> ALL (expected);
  IF pg_catalog.cardinality(missing) > 0 OR pg_catalog.cardinality(extra) > 0 THEN
    RAISE EXCEPTION 'patchflow: the restored tables are not the dump''s: missing %, not in the dump %',
      missing[1:10], extra[1:10];
  END IF;
END
$patchflow$;
INSERT INTO pg_temp.{GUARD}_done VALUES (1);
"""


# -- the restore ------------------------------------------------------------------------------------


def end_sessions(database: Database, deadline: float = SESSIONS_GONE) -> int:
    """End every other session on the live database that the restoring role may end (its own
    roles'; a superuser's never) and wait, at most ``deadline`` seconds, until they are gone (an
    orphaned psql of a killed run may hold the restore's locks). Returns how many were ended.

    Raises:
        DatabaseError: the server cannot be asked.
    """
    where = (
        "FROM pg_catalog.pg_stat_activity a JOIN pg_catalog.pg_roles r ON r.oid = a.usesysid "
        f"WHERE a.datname = {pg.quote_literal(database.target.dbname)} AND a.pid <> pg_catalog.pg_backend_pid() "
        "AND (NOT r.rolsuper OR (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)) "
        "AND (pg_catalog.pg_has_role(a.usesysid, 'USAGE') OR pg_catalog.pg_has_role('pg_signal_backend', 'USAGE'))"
    )
    rows = database.query(f"SELECT count(pg_catalog.pg_terminate_backend(a.pid)) {where}", admin=True)
    ended = int(rows[0][0]) if rows and rows[0][0].isdigit() else 0
    until = time.monotonic() + deadline
    while ended and time.monotonic() < until:
        left = database.query(f"SELECT count(*) {where}", admin=True)
        if not left or left[0][0] == "0":
            break
        time.sleep(0.1)
    return ended


def _kept_on_server(database: Database, replace_public: bool) -> tuple[dict[str, str], set[str]]:
    """The schemas the restore keeps (name -> owner) and the extensions it keeps (not the role's,
    living in a schema it keeps)."""
    replaced = _replaced(replace_public)
    rows = database.query(
        f"SELECT n.nspname, pg_catalog.pg_get_userbyid(n.nspowner) FROM pg_catalog.pg_namespace n "
        f"WHERE {_USER_SCHEMA} AND NOT {replaced}",
        admin=True,
    )
    schemas = {row[0]: row[1] for row in rows}
    rows = database.query(
        "SELECT e.extname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace "
        f"WHERE NOT pg_catalog.pg_has_role(e.extowner, 'USAGE') AND NOT {replaced}",
        admin=True,
    )
    return schemas, {row[0] for row in rows}


def kept_as(displaced: str) -> str:
    """How a sentence names where a restore kept the database it replaced: ``displaced`` is a
    database's name, or (an in-place restore) the path of its dump."""
    return f"the dump {displaced}" if displaced.endswith(".dump") else displaced


def displaced_dump(folder: Path, stamp: str) -> Path:
    """Where :func:`restore_in_place` keeps the database it replaced (``folder``: the backup's)."""
    return folder / DISPLACED_DUMP.format(stamp=stamp)


def restore_in_place(
    database: Database, dump: Path, stamp: str, folder: Path, log: Callable[[str], None] = lambda line: None
) -> Path:
    """Make the live database equal to ``dump`` in one transaction (see the module docstring),
    after keeping it as a proven dump in ``folder`` (:func:`displaced_dump`; once per ``stamp``).
    Returns that dump's path. Idempotent: a run again restores again, and keeps the first dump.

    Raises:
        DatabaseError: the dump of the live database, the script or the restore failed; the live
            database is as it was (the transaction was rolled back).
    """
    live = database.target.dbname
    ended = end_sessions(database)
    if ended:
        log(f"   ended {ended} session(s) still open on {live}")
    kept = displaced_dump(folder, stamp)
    if not kept.is_file():
        partial = kept.with_name(f".{kept.name}.partial")
        log(f"   keeping {live} as it is now: dump into {kept}")
        database.dump(partial)
        os.replace(partial, kept)
    version = database.server_version(admin=True) or 0
    schemas, extensions = _kept_on_server(database, version >= 150000)
    listing, _, _ = database._run(pg.pg_restore_list, "pg_restore", admin=True, input_file=dump, what="toc")
    filtered, tables = filter_listing(listing, schemas, extensions)
    body = folder / SCRIPT.format(stamp=stamp)
    with tempfile.NamedTemporaryFile("w", suffix=".list", delete=False, encoding="utf-8") as handle:
        handle.write(filtered)
        list_file = Path(handle.name)
    try:
        database._run(
            lambda b: pg.pg_restore_script(b, str(body), use_list=str(list_file)),
            "pg_restore",
            admin=True,
            input_file=dump,
            what="pg_restore (script)",
        )
        os.chmod(body, 0o600)
        log(f"   restoring the dump into {live} in place, in one transaction")
        with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False, encoding="utf-8") as handle:
            handle.write(in_place_script(body, tables, version))
            script = Path(handle.name)
        try:
            database._run(
                lambda b: pg.psql(b, single_transaction=True),
                "psql",
                admin=True,
                input_file=script,
                what="restore in place",
            )
        except DatabaseError as exc:
            raise DatabaseError(
                f"The in-place restore of {live} failed and was rolled back, so the database is as it was: "
                f"{exc.message}",
                "Fix the cause (another session holding the database, room on the server) and run again.",
            ) from None
        finally:
            script.unlink(missing_ok=True)
    finally:
        list_file.unlink(missing_ok=True)
        body.unlink(missing_ok=True)
    log(f"   database {live} restored in place; the one it replaced is kept as the dump {kept}")
    return kept
