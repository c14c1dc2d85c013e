"""PostgreSQL operations on one database: readiness, proven dumps, restore beside the live one.

Where and how the programs run is :mod:`patchflow.pg_target`. Dumps (``pg_dump --format=custom``,
file mode 0600) count only when proven (:meth:`Database.dump`): the bytes streamed are hashed, the
file read back matches, and ``pg_restore`` reads the whole archive to the end.

A restore never drops or changes the live database (:meth:`Database.restore_beside`): the dump
is restored into a new database next to it, checked, and only then the names are swapped in one
transaction; the displaced database is kept as ``<name>_before_rollback_<UTC stamp>``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

from patchflow.commands import postgres as pg
from patchflow.db_settings import copy_database_settings
from patchflow.digests import file_digest
from patchflow.errors import BackupError, CommandError, DatabaseError
from patchflow.pg_query import ping_url, text_rows
from patchflow.pg_target import APP_NAME, PgTarget
from patchflow.runner import LocalRunner, Runner

DISPLACED_MARK = "_before_rollback_"
RESTORING_MARK = "_restoring_"
MAX_IDENT = 63


class DatabaseProperties(TypedDict):
    """What :meth:`Database.properties` reads (a backup records it as its dump's ``properties``):
    the database's ``name``, ``owner``, ``encoding``, ``collate``, ``ctype``, ``tablespace`` and
    ``size`` (bytes), and the connecting ``role``'s rights: ``superuser``, ``createdb``,
    ``owner_member`` (member of the owning role)."""

    tablespace: str
    name: str
    owner: str
    encoding: str
    collate: str
    ctype: str
    size: int
    superuser: bool
    createdb: bool
    owner_member: bool
    role: str


@dataclass(frozen=True)
class DumpInfo:
    """A proven dump: file, size (bytes), sha256 hex, and the database's properties."""

    path: Path
    size: int
    sha256: str
    properties: DatabaseProperties


def stamp_now() -> str:
    """A UTC stamp for database names: ``20250101T143022Z``."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def derived_name(live: str, mark: str, stamp: str) -> str:
    """``<live><mark><stamp>`` within PostgreSQL's 63-byte identifier limit (a long name is cut
    and given a short hash, so two long names never collide)."""
    name = f"{live}{mark}{stamp}"
    if len(name.encode()) <= MAX_IDENT:
        return name
    digest = hashlib.sha256(live.encode()).hexdigest()[:6]
    room = MAX_IDENT - len(f"_{digest}{mark}{stamp}".encode())
    head = live.encode()[:room].decode("utf-8", "ignore")
    return f"{head}_{digest}{mark}{stamp}"


class Database:
    """Operations on one PostgreSQL database through a :class:`PgTarget` and the runner.

    ``admin`` (from ``database_admin_url``) is the role used for dumps, restores and the name swap
    when the application's role may not do them; by default the application's own target.
    """

    def __init__(self, target: PgTarget, runner: Runner, admin: PgTarget | None = None) -> None:
        self.target = target
        self.runner = runner
        self.admin = admin or target

    def beside(self, name: str) -> Database:
        """This server and roles on the database ``name`` (a copy or scratch database beside this one)."""
        return Database(
            dataclasses.replace(self.target, dbname=name), self.runner, dataclasses.replace(self.admin, dbname=name)
        )

    # -- plumbing -------------------------------------------------------------------------
    def _run(
        self,
        build: Callable[[list[str]], list[str]],
        program: str,
        *,
        database: str | None = None,
        admin: bool = False,
        app: str = APP_NAME,
        timeout: float | None = 3600,
        what: str = "",
        input_file: Path | None = None,
        output_file: Path | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> tuple[str, int, str]:
        target = self.admin if admin else self.target
        base, env = target.command(program, database=database, app=app)
        try:
            result = self.runner.run(
                build(base),
                env=env,
                timeout=timeout,
                what=what or program,
                input_file=input_file,
                output_file=output_file,
                progress=progress,
            )
        except CommandError as exc:
            raise DatabaseError(exc.message, f"Target: {target.describe()}.") from None
        return result.stdout, result.output_bytes, result.output_sha256

    def query(self, sql: str, *, database: str | None = None, admin: bool = False) -> list[list[str]]:
        """Run ``sql`` and return rows as lists of strings (psql ``-A -t``'s values, NULL as "");
        in this process for a URL target and a local runner (:mod:`patchflow.pg_query`), else psql.

        Raises:
            DatabaseError: psql failed (PostgreSQL's error in the message).
        """
        target = self.admin if admin else self.target
        if target.mode == "url" and isinstance(self.runner, LocalRunner):  # in this process (pg_query)
            return text_rows(target, self.runner.base_env, sql, database=database, app=APP_NAME, timeout=300)
        out, _, _ = self._run(
            lambda b: pg.psql(b, sql=sql, tuples=True),
            "psql",
            database=database,
            admin=admin,
            what="psql query",
            timeout=300,
        )
        return [line.split("|") for line in out.splitlines() if line]

    def execute(self, sql: str, *, database: str | None = None, admin: bool = False, what: str = "psql") -> None:
        """Run one SQL command (``-c``) with ON_ERROR_STOP.

        Raises:
            DatabaseError: the command failed.
        """
        self._run(lambda b: pg.psql(b, sql=sql), "psql", database=database, admin=admin, what=what, timeout=600)

    def run_script(
        self,
        sql: str,
        *,
        what: str = "psql script",
        app: str = APP_NAME,
        timeout: float | None = 3600,
        admin: bool = False,
        database: str | None = None,
    ) -> str:
        """Run the SQL ``sql`` through psql with ON_ERROR_STOP (stdin); returns stdout.

        Raises:
            DatabaseError: psql failed (the message carries PostgreSQL's error) or timed out.
        """
        with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False, encoding="utf-8") as handle:
            handle.write(sql)
            script = Path(handle.name)
        try:
            out, _, _ = self._run(
                lambda b: pg.psql(b),
                "psql",
                input_file=script,
                what=what,
                app=app,
                timeout=timeout,
                admin=admin,
                database=database,
            )
            return out
        finally:
            script.unlink(missing_ok=True)

    # -- readiness ------------------------------------------------------------------------
    def wait_ready(self, timeout: float, log: Callable[[str], None] = lambda line: None) -> float:
        """Wait until the database accepts a real connection and answers ``SELECT 1`` (C14), at
        most ``timeout`` seconds, saying so on ``log`` (:func:`patchflow.dbwait.wait_for_server`).
        Returns the seconds waited.

        Raises:
            DatabaseError: credentials refused or database unknown (at once), or not ready before
                the deadline (names the target and the last error).
        """
        from patchflow.dbwait import wait_for_server

        return wait_for_server(self, timeout, log)

    def server_version(self, *, admin: bool = False) -> int | None:
        """The server's ``server_version_num`` (e.g. 150018 for 15.18; None when it cannot be read
        as a number), asked as the admin role with ``admin``.

        Raises:
            DatabaseError: the database cannot be queried.
        """
        rows = self.query("SHOW server_version_num", admin=admin)
        text = rows[0][0] if rows and rows[0] else ""
        return int(text) if text.isdigit() else None

    def ping(self, *, admin: bool = False) -> None:
        """Connect (5 s connect timeout) and run ``SELECT 1``, as the admin role with ``admin``.

        Raises:
            DatabaseError: compose mode, the command failed (its error in the message).
            psycopg.OperationalError: url mode, the connection failed.
        """
        target = self.admin if admin else self.target
        if target.mode == "url":
            ping_url(target)
        else:
            # TCP inside the container: a socket-only init server does not count as ready (C14)
            self._run(
                lambda b: pg.psql(b, sql="SELECT 1", tuples=True, host="127.0.0.1"),
                "psql",
                timeout=15,
                what="database ping",
                admin=admin,
            )

    # -- information ----------------------------------------------------------------------
    def create_empty_like(self, name: str, *, what: str) -> None:
        """``CREATE DATABASE name`` from ``template0`` with the live database's encoding and locale
        (a scratch or copy beside it), as the admin role; ``what`` names it in an error.

        Raises:
            DatabaseError: the server refused (no CREATEDB, the name taken...).
        """
        props = self.properties(admin=True)
        self.execute(
            f"CREATE DATABASE {pg.quote_ident(name)} TEMPLATE template0 ENCODING {pg.quote_literal(props['encoding'])} "
            f"LC_COLLATE {pg.quote_literal(props['collate'])} LC_CTYPE {pg.quote_literal(props['ctype'])}",
            database="postgres",
            admin=True,
            what=what,
        )

    def properties(self, *, admin: bool = False) -> DatabaseProperties:
        """Owner, encoding, collation, ctype, size (bytes), tablespace of the database, and the
        connecting role's rights (``superuser``, ``createdb``, ``owner``: member of the owning role).

        Raises:
            DatabaseError: the database cannot be queried.
        """
        rows = self.query(
            "SELECT pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding), d.datcollate, d.datctype, "
            "pg_database_size(d.datname), r.rolsuper, r.rolcreatedb, pg_has_role(current_user, d.datdba, 'MEMBER'), "
            "current_user, t.spcname "
            "FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace, pg_roles r "
            "WHERE d.datname = current_database() AND r.rolname = current_user",
            admin=admin,
        )
        if not rows or len(rows[0]) < 10:
            raise DatabaseError(f"Cannot read the properties of the {self.target.describe()}.", "")
        owner, encoding, collate, ctype, size, superuser, createdb, member, role, tablespace = rows[0][:10]
        return {
            "tablespace": tablespace,
            "name": self.target.dbname,
            "owner": owner,
            "encoding": encoding,
            "collate": collate,
            "ctype": ctype,
            "size": int(size),
            "superuser": superuser == "t",
            "createdb": createdb == "t",
            "owner_member": member == "t",
            "role": role,
        }

    def exists(self, name: str) -> bool:
        """True when a database called ``name`` exists on the server."""
        rows = self.query(f"SELECT 1 FROM pg_database WHERE datname = {pg.quote_literal(name)}", admin=True)
        return bool(rows)

    def displaced_databases(self) -> list[str]:
        """Databases kept by earlier restores (``<name>_before_rollback_<stamp>``), oldest first."""
        prefix = self.target.dbname.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = self.query(
            "SELECT datname FROM pg_database WHERE datname LIKE "
            f"{pg.quote_literal(prefix + DISPLACED_MARK.replace('_', chr(92) + '_') + '%')} ORDER BY datname",
            admin=True,
        )
        return [r[0] for r in rows]

    def restore_problems(self) -> list[str]:
        """Why a restore beside the live database would fail, as sentences (empty: it can run).

        Checked with the role that restores (``database_admin_url`` when set): it may create
        databases, it owns the live database (a rename needs it), and every extension of the live
        database can be created by it or already exists in ``template1``.
        """
        if self.admin.mode == "compose":
            return []
        props = self.properties(admin=True)
        role = props["role"]
        problems = []
        if not (props["superuser"] or props["createdb"]):
            problems.append(f"role {role} may not create databases (the copy is restored beside the live one)")
        if not (props["superuser"] or props["owner_member"]):
            problems.append(f"role {role} does not own database {self.target.dbname} (the swap renames it)")
        if not props["superuser"]:
            missing = self._extensions_not_creatable()
            if missing:
                problems.append(
                    f"role {role} cannot create extension(s) {', '.join(missing)} in a new database "
                    "and template1 does not have them"
                )
        return problems

    def server_folder(self) -> Path | None:
        """The folder holding this database's files on the server (its tablespace, else the data
        directory), when the server runs on this machine and the folder is reachable here, so a
        restore beside the live database can be checked for room; None when that cannot be known:
        the server is elsewhere or in a container (its backend is not a ``postgres`` process here),
        compose mode, or the role may not read ``data_directory`` (superuser or
        ``pg_read_all_settings`` may)."""
        if self.admin.mode != "url":
            return None
        try:
            # the checkpointer lives as long as the server (this session's backend is gone by the
            # time /proc is read); every server process runs in the data directory
            rows = self.query(
                "SELECT (SELECT min(pid) FROM pg_stat_activity WHERE backend_type = 'checkpointer'), "
                "current_setting('data_directory'), pg_tablespace_location(d.dattablespace) "
                "FROM pg_database d WHERE d.datname = current_database()",
                admin=True,
            )
            pid, data_directory, location = rows[0][:3]
            process = Path(f"/proc/{int(pid)}/comm").read_text(encoding="utf-8").strip()
        except (DatabaseError, OSError, ValueError, IndexError):
            return None
        try:
            cwd: str | None = os.readlink(f"/proc/{int(pid)}/cwd")
        except OSError:
            cwd = None  # another user's process: only root may read where it runs
        data = Path(data_directory)
        if process != "postgres" or not data.is_absolute() or (cwd is not None and Path(cwd) != data.resolve()):
            return None
        folder = Path(location) if location else data
        return folder if folder.is_dir() else None

    def _untrusted_extensions(self) -> list[str]:
        rows = self.query(
            "SELECT e.extname, coalesce(bool_or(v.trusted), false) FROM pg_extension e "
            "LEFT JOIN pg_available_extension_versions v ON v.name = e.extname AND v.version = e.extversion "
            "WHERE e.extname <> 'plpgsql' GROUP BY e.extname ORDER BY e.extname",
            admin=True,
        )
        return [name for name, trusted in rows if trusted != "t"]

    def _template1_extensions(self) -> set[str]:
        try:
            rows = self.query("SELECT extname FROM pg_extension", database="template1", admin=True)
        except DatabaseError:
            return set()
        return {r[0] for r in rows}

    def _extensions_not_creatable(self) -> list[str]:
        untrusted = self._untrusted_extensions()
        if not untrusted:
            return []
        in_template = self._template1_extensions()
        return [name for name in untrusted if name not in in_template]

    # -- sessions -------------------------------------------------------------------------
    def terminate_sessions(self, databases: Sequence[str] | None = None, *, only_patchflow: bool = True) -> int:
        """End server sessions on ``databases`` (default: this database): patchflow's own
        (``application_name`` patchflow*) or, with ``only_patchflow=False``, every session the role
        may end. Returns how many were ended; never raises (best effort after an abort)."""
        names = ", ".join(pg.quote_literal(d) for d in (databases or [self.target.dbname]))
        condition = "AND application_name LIKE 'patchflow%' " if only_patchflow else ""
        try:
            rows = self.query(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                f"WHERE datname IN ({names}) {condition}AND pid <> pg_backend_pid()",
                database="postgres",
                admin=True,
            )
        except DatabaseError:
            return 0
        return int(rows[0][0]) if rows and rows[0][0].isdigit() else 0

    # -- dump -----------------------------------------------------------------------------
    def dump(self, path: Path, progress: Callable[[int], None] | None = None) -> DumpInfo:
        """Write a custom-format dump to ``path`` (mode 0600) and prove it (:meth:`prove_dump`);
        ``progress(bytes)`` is called as the dump streams to disk.

        Raises:
            DatabaseError: pg_dump failed, or the dump is not complete (short, unreadable to the
                end, or different on disk from what was streamed); the file is removed.
        """
        properties = self.properties()
        try:
            _, size, digest = self._run(
                pg.pg_dump, "pg_dump", admin=True, output_file=path, what="pg_dump", progress=progress
            )
            self.prove_dump(path, size, digest)
        except BaseException:  # any exit, an interrupt too: a dump not proven is never left; re-raised
            path.unlink(missing_ok=True)
            raise
        return DumpInfo(path, size, digest, properties)

    def prove_dump(self, path: Path, size: int, sha256: str) -> None:
        """Prove that ``path`` is the complete dump recorded as ``size`` bytes with ``sha256``:
        the file on disk has exactly those bytes, and ``pg_restore`` reads it to the end (a dump
        cut short passes ``pg_restore --list``, which reads only the table of contents).

        Raises:
            DatabaseError: the file is missing, differs, or does not read to the end.
        """
        if not path.is_file():
            raise DatabaseError(f"The database dump {path} is missing.", "The backup is incomplete.")
        on_disk, length = file_digest(path)
        if (on_disk, length) != (sha256, size):
            raise DatabaseError(
                f"The database dump {path} is not what was written: sha256 {on_disk} ({length} bytes), "
                f"expected {sha256} ({size} bytes).",
                "The disk or the backup folder is faulty; nothing was restored from it.",
            )
        if size == 0:
            raise DatabaseError(f"The database dump {path} is empty.", "Check pg_dump and the database logs.")
        try:
            self._run(
                pg.pg_restore_to_null, "pg_restore", admin=True, input_file=path, what="pg_restore (read-through)"
            )
        except DatabaseError as exc:
            raise DatabaseError(
                f"The database dump {path} does not read to the end, so it is not a backup: {exc.message}",
                "Check disk space and the pg_dump in use (pg_bindir).",
            ) from None

    # -- restore --------------------------------------------------------------------------
    def restore_beside(
        self,
        dump: Path,
        stamp: str,
        log: Callable[[str], None] = lambda line: None,
        checkpoint: Callable[[str], None] = lambda point: None,
    ) -> str:
        """Make the database equal to ``dump`` without ever changing the live database first:
        restore into ``<name>_restoring_<stamp>``, check it, then swap names in one transaction.
        Returns the name the displaced (previously live) database is kept under.

        Idempotent for one ``stamp``: after the swap a second call only returns the name; whether
        the swap happened is read from the server (which names exist), never assumed from a reply
        a dying server may not have sent. ``checkpoint(point)`` is called between the parts
        (``restore-created``, ``restore-loaded``, ``restore-checked``: the kill hooks of the tests
        that stop the server inside a restore).

        Raises:
            DatabaseError: creating, restoring, checking or swapping failed; the live database is
                unchanged (a half-restored copy is dropped).
        """
        live = self.target.dbname
        restoring = derived_name(live, RESTORING_MARK, stamp)
        displaced = derived_name(live, DISPLACED_MARK, stamp)
        if self.exists(displaced) and not self.exists(restoring):
            return displaced  # swapped already (an interrupted run is finished by running again)
        props = self.properties(admin=True)
        superuser = bool(props["superuser"])
        if self.exists(restoring):
            self.execute(f"DROP DATABASE {pg.quote_ident(restoring)} WITH (FORCE)", database="postgres", admin=True)
        template = "template0"
        if not superuser and self._untrusted_extensions():
            template = "template1"  # restore_problems() proved template1 carries them
        locale = (
            f" ENCODING {pg.quote_literal(props['encoding'])} LC_COLLATE {pg.quote_literal(props['collate'])}"
            f" LC_CTYPE {pg.quote_literal(props['ctype'])}"
            if template == "template0"
            else ""
        )
        owner = f" OWNER {pg.quote_ident(props['owner'])}" if superuser else ""
        # in the live database's tablespace: a rollback must not move the database to pg_default
        tablespace = f" TABLESPACE {pg.quote_ident(props['tablespace'])}" if props["tablespace"] != "pg_default" else ""
        log(f"   restoring the dump into {restoring} (beside {live})")
        self.execute(
            f"CREATE DATABASE {pg.quote_ident(restoring)}{owner} TEMPLATE {template}{locale}{tablespace}",
            database="postgres",
            admin=True,
            what="create database",
        )
        try:
            checkpoint("restore-created")
            self._restore_into(dump, restoring, superuser)
            checkpoint("restore-loaded")
            self._check_restored(dump, restoring)
            copy_database_settings(self, live, restoring)
            checkpoint("restore-checked")
            self._swap(live, restoring, displaced)
        except BaseException:  # any exit, an interrupt too: the half-restored copy is dropped; re-raised
            self.execute_quietly(f"DROP DATABASE IF EXISTS {pg.quote_ident(restoring)} WITH (FORCE)")
            raise
        log(f"   database {live} restored; the displaced one is kept as {displaced}")
        return displaced

    def execute_quietly(self, sql: str) -> None:
        """Run ``sql`` on the maintenance database as the admin role, ignoring errors (clean-up)."""
        try:
            self.execute(sql, database="postgres", admin=True, what="clean-up")
        except DatabaseError:
            pass

    def _restore_into(self, dump: Path, database: str, superuser: bool) -> None:
        list_file: Path | None = None
        if not superuser:
            # extension comments belong to their (superuser) owner: a plain role cannot restore them
            listing, _, _ = self._run(pg.pg_restore_list, "pg_restore", admin=True, input_file=dump, what="toc")
            kept = [line for line in listing.splitlines() if not re.search(r"\bCOMMENT - EXTENSION\b", line)]
            if self.admin.mode == "url":
                with tempfile.NamedTemporaryFile("w", suffix=".list", delete=False, encoding="utf-8") as handle:
                    handle.write("\n".join(kept) + "\n")
                    list_file = Path(handle.name)
        try:
            self._run(
                lambda b: pg.pg_restore(
                    b, database, keep_owners=superuser, use_list=str(list_file) if list_file else None
                ),
                "pg_restore",
                admin=True,
                input_file=dump,
                what="pg_restore",
            )
        finally:
            if list_file is not None:
                list_file.unlink(missing_ok=True)

    def _check_restored(self, dump: Path, database: str) -> None:
        listing, _, _ = self._run(pg.pg_restore_list, "pg_restore", admin=True, input_file=dump, what="toc")
        expected = set()
        for line in listing.splitlines():
            match = re.match(r"^\d+; \d+ \d+ TABLE (?!DATA )(\S+) (\S+) ", line)
            if match:
                expected.add(f"{match.group(1)}.{match.group(2)}")
        rows = self.query(
            "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p')",
            database=database,
            admin=True,
        )
        present = {r[0] for r in rows}
        missing = sorted(expected - present)
        if missing:
            raise DatabaseError(
                f"The restored copy {database} lacks table(s) {', '.join(missing[:10])} of the dump.",
                "The live database was not touched; check the dump and pg_restore's version.",
            )

    def _swap(self, live: str, restoring: str, displaced: str, attempts: int = 5) -> None:
        swap = (
            f"BEGIN;\nALTER DATABASE {pg.quote_ident(live)} RENAME TO {pg.quote_ident(displaced)};\n"
            f"ALTER DATABASE {pg.quote_ident(restoring)} RENAME TO {pg.quote_ident(live)};\nCOMMIT;\n"
        )
        for attempt in range(1, attempts + 1):
            # a rename needs the database free of sessions: end them (the services are stopped)
            self.terminate_sessions([live, restoring], only_patchflow=False)
            try:
                self.run_script(swap, what="swap databases", admin=True, database="postgres")
                return
            except DatabaseError as exc:
                if "being accessed by other users" not in exc.message or attempt == attempts:
                    raise DatabaseError(
                        f"The restored copy {restoring} could not take the place of {live}: {exc.message}",
                        f"The live database {live} is unchanged. Disconnect other clients and run the rollback again.",
                    ) from None
                time.sleep(0.2 * attempt)


def verify_recorded_dump(database: Database, path: Path, recorded: Mapping[str, Any], backup: str) -> None:
    """Check a backup's dump against what its ``backup.json`` recorded, before any restore.

    Raises:
        BackupError: missing, different or not readable to the end (the message names the backup).
    """
    try:
        database.prove_dump(path, int(recorded.get("size", -1)), str(recorded.get("sha256", "")))
    except DatabaseError as exc:
        raise BackupError(
            f"The database dump of backup {backup} is corrupt or incomplete: {exc.message}",
            "The live database was left as it is; choose another backup (--backup) or restore by hand.",
        ) from None
