"""What a database carries outside its contents, given to the copy that takes its place.

A rollback puts a restored copy or a snapshot in place of the live database by renaming
(:meth:`patchflow.database.Database.restore_beside`, :func:`patchflow.snapshot.restore_from_snapshot`).
``CREATE DATABASE`` (from ``template0`` or ``TEMPLATE <live>``) and ``pg_restore`` give the copy
the contents, but not what belongs to the database object in the shared catalogs: who may connect
(``GRANT CONNECT ON DATABASE``, often with ``REVOKE ... FROM PUBLIC`` on a hardened server), its
``ALTER DATABASE ... SET`` and ``ALTER ROLE ... IN DATABASE ... SET`` settings, its connection
limit and its comment. Without them the app's role could lose CONNECT after a rollback and the old
version would fail its health check. :func:`copy_database_settings` reads them from the live
database just before the swap (what they are now, not at the backup) and applies them to the copy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from patchflow.commands import postgres as pg

if TYPE_CHECKING:  # database.py imports this module
    from patchflow.database import Database


def database_settings_sql(database: Database, live: str, copy: str) -> list[str]:
    """The statements that give ``copy`` the live database ``live``'s ACL, settings, per-role
    settings, connection limit and comment (read through ``database`` as its admin role); empty
    when there is nothing to give.

    Raises:
        DatabaseError: the catalogs cannot be read.
    """
    target, where = pg.quote_ident(copy), f"d.datname = {pg.quote_literal(live)}"

    def rows(sql: str) -> list[list[str]]:
        return database.query(sql, database="postgres", admin=True)

    statements: list[str] = []
    for role, setting in rows(
        "SELECT coalesce(r.rolname, ''), unnest(s.setconfig) FROM pg_db_role_setting s "
        "JOIN pg_database d ON d.oid = s.setdatabase LEFT JOIN pg_roles r ON r.oid = s.setrole "
        f"WHERE {where} ORDER BY 1, 2"
    ):
        name, _, value = setting.partition("=")
        if role:
            statements.append(
                f"ALTER ROLE {pg.quote_ident(role)} IN DATABASE {target} SET {name} = {pg.quote_literal(value)};"
            )
        else:
            statements.append(f"ALTER DATABASE {target} SET {name} = {pg.quote_literal(value)};")
    facts = rows(
        "SELECT coalesce(shobj_description(d.oid, 'pg_database'), ''), d.datconnlimit, d.datacl IS NULL "
        f"FROM pg_database d WHERE {where}"
    )
    if facts:
        comment, limit, default_acl = facts[0]
        if comment:
            statements.append(f"COMMENT ON DATABASE {target} IS {pg.quote_literal(comment)};")
        if limit != "-1":
            statements.append(f"ALTER DATABASE {target} CONNECTION LIMIT {int(limit)};")
        if default_acl != "t":  # an explicit ACL: PUBLIC's default rights go, the live grants come
            statements.append(f"REVOKE ALL ON DATABASE {target} FROM PUBLIC;")
            for grantee, privilege, grantable in rows(
                "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END, "
                f"a.privilege_type, a.is_grantable FROM pg_database d, aclexplode(d.datacl) a WHERE {where} "
                "ORDER BY 1, 2"
            ):
                option = " WITH GRANT OPTION" if grantable == "t" and grantee != "PUBLIC" else ""
                statements.append(f"GRANT {privilege} ON DATABASE {target} TO {grantee}{option};")
    return statements


def copy_database_settings(database: Database, live: str, copy: str) -> None:
    """Give ``copy`` what :func:`database_settings_sql` reads from ``live`` (one psql script, as
    the admin role, on the maintenance database).

    Raises:
        DatabaseError: reading or applying them failed (the live database is unchanged).
    """
    statements = database_settings_sql(database, live, copy)
    if statements:
        database.run_script("\n".join(statements) + "\n", what="database settings", admin=True, database="postgres")
