"""patchflow.history looks every kind of object a migration creates up in a real PostgreSQL's
catalogs: each one is found when it exists and not when it does not (or lives elsewhere), and a
whole pending set is followed statement by statement (drops, renames, IF NOT EXISTS)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from support.services import PostgresCluster

from patchflow.database import Database
from patchflow.history import find_conflicts
from patchflow.migrations import Migration
from patchflow.pg_target import PgTarget, find_pg_bindir, parse_database_url
from patchflow.runner import LocalRunner

pytestmark = pytest.mark.integration

SCHEMA = """
CREATE SCHEMA other;
CREATE EXTENSION IF NOT EXISTS plpgsql;
CREATE TYPE "Role" AS ENUM ('ADMIN', 'MEMBER');
CREATE DOMAIN "Email" AS text;
CREATE TABLE "User" ("id" SERIAL PRIMARY KEY, "email" "Email", "role" "Role");
CREATE UNIQUE INDEX "User_email_key" ON "User"("email");
ALTER TABLE "User" ADD CONSTRAINT "User_email_check" CHECK ("email" <> '');
CREATE SEQUENCE "Counter";
CREATE VIEW "Admins" AS SELECT * FROM "User" WHERE "role" = 'ADMIN';
CREATE FUNCTION touch(a integer, b varchar(10)[]) RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;
CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;
CREATE TRIGGER "User_stamp" BEFORE UPDATE ON "User" FOR EACH ROW EXECUTE FUNCTION stamp();
ALTER TABLE "User" ENABLE ROW LEVEL SECURITY;
CREATE POLICY "own_rows" ON "User" USING (true);
CREATE TABLE other."Thing" (id int);
"""

EXISTING = [
    "CREATE SCHEMA other;",
    "CREATE TYPE \"Role\" AS ENUM ('X');",
    'CREATE DOMAIN "Email" AS text;',
    'CREATE TABLE "User" (id int);',
    'CREATE TYPE "User" AS (a int);',  # a table's row type
    'CREATE INDEX "User_email_key" ON "User"("id");',
    'CREATE SEQUENCE "Counter";',
    'CREATE VIEW "Admins" AS SELECT 1;',
    'CREATE TABLE "Admins" (id int);',
    'ALTER TABLE "User" ADD COLUMN "email" text;',
    'ALTER TABLE "User" ADD CONSTRAINT "User_email_check" CHECK (true);',
    'ALTER TABLE "User" ADD CONSTRAINT "User_pkey" PRIMARY KEY ("id");',
    "ALTER TYPE \"Role\" ADD VALUE 'ADMIN';",
    "ALTER TYPE \"Role\" RENAME VALUE 'MEMBER' TO 'ADMIN';",
    "CREATE FUNCTION touch(x int, y character varying[]) RETURNS int LANGUAGE sql AS $$ SELECT 2 $$;",
    "CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NULL; END$$;",
    'CREATE TRIGGER "User_stamp" AFTER INSERT ON "User" FOR EACH ROW EXECUTE FUNCTION stamp();',
    'CREATE POLICY "own_rows" ON "User" USING (false);',
    "CREATE EXTENSION plpgsql;",
    'ALTER TABLE "Counter" RENAME TO "User";',
    'ALTER TABLE "User" RENAME COLUMN "role" TO "email";',
    'CREATE TABLE other."Thing" (id int);',
]

ABSENT = [
    'CREATE TABLE "Thing" (id int);',  # exists only in schema other
    'CREATE TABLE IF NOT EXISTS "User" (id int);',
    'CREATE OR REPLACE VIEW "Admins" AS SELECT 1;',
    'CREATE INDEX IF NOT EXISTS "User_email_key" ON "User"("id");',
    'ALTER TABLE "User" ADD COLUMN IF NOT EXISTS "email" text;',
    'ALTER TABLE "User" ADD COLUMN "name" text;',
    "ALTER TYPE \"Role\" ADD VALUE IF NOT EXISTS 'ADMIN';",
    "ALTER TYPE \"Role\" ADD VALUE 'AUDITOR';",
    "CREATE FUNCTION touch(a integer) RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;",  # another signature
    "CREATE OR REPLACE FUNCTION touch(a integer, b varchar(10)[]) RETURNS int LANGUAGE sql AS $$ SELECT 2 $$;",
    'CREATE FUNCTION touch(a "NoSuchType", b varchar[]) RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;',
    'CREATE TRIGGER "Other_stamp" BEFORE UPDATE ON "User" FOR EACH ROW EXECUTE FUNCTION stamp();',
    "CREATE EXTENSION IF NOT EXISTS plpgsql;",
    "CREATE SCHEMA IF NOT EXISTS other;",
    "CREATE TYPE \"Status\" AS ENUM ('A');",
    'DROP VIEW "Admins"; CREATE TABLE "Admins" (id int);',  # dropped first
    'ALTER TABLE "User" RENAME TO "Person"; CREATE TABLE "User" (id int);',  # renamed away first
    'DROP TABLE "User" CASCADE; CREATE TABLE "User" (id int); ALTER TABLE "User" ADD COLUMN "email" text;',
    'DROP SCHEMA other CASCADE; CREATE SCHEMA other; CREATE TABLE other."Thing" (id int);',
]


@pytest.fixture(scope="module")
def database(pg_cluster: PostgresCluster) -> Iterator[Database]:
    """One database with every kind of object, shared by the module (the lookups only read)."""
    name = f"pf_catalog_{uuid.uuid4().hex[:10]}"
    pg_cluster.create_database(name)
    parsed = parse_database_url(pg_cluster.url(name))
    target = PgTarget("url", parsed.dbname, parsed.env, bindir=find_pg_bindir(), conninfo=parsed.conninfo)
    db = Database(target, LocalRunner())
    db.run_script(SCHEMA)
    try:
        yield db
    finally:
        pg_cluster.drop_database(name)


def _conflicts(database: Database, sql: str) -> list[str]:
    migration = Migration("20250301_test", "prisma/migrations/20250301_test/migration.sql", "")
    conflicts, unreadable = find_conflicts(database, [(migration, sql)], "public")
    assert unreadable == []
    return [c.what for c in conflicts]


@pytest.mark.parametrize("sql", EXISTING)
def test_each_kind_of_existing_object_is_found(database: Database, sql: str) -> None:
    assert len(_conflicts(database, sql)) == 1, sql


@pytest.mark.parametrize("sql", ABSENT)
def test_absent_guarded_or_replaced_objects_are_not_conflicts(database: Database, sql: str) -> None:
    assert _conflicts(database, sql) == [], sql


def test_a_pending_set_is_followed_across_migrations(database: Database) -> None:
    first = Migration("1_drop", "p/1.sql", "")
    second = Migration("2_create", "p/2.sql", "")
    conflicts, _ = find_conflicts(
        database, [(first, 'DROP TABLE "User" CASCADE;\n'), (second, 'CREATE TABLE "User" (id int);\n')], "public"
    )
    assert conflicts == []
    conflicts, unreadable = find_conflicts(
        database, [(first, "CREATE TABLE (;"), (second, '\n\nCREATE SEQUENCE "Counter";')], "public"
    )
    assert [(c.migration, c.line, c.what) for c in conflicts] == [("2_create", 3, 'sequence "public"."Counter"')]
    assert unreadable and unreadable[0][0] == "1_drop" and "syntax error" in unreadable[0][1]
