"""patchflow.ddl reads what a migration creates with PostgreSQL's own parser: hostile SQL
(comments, quoting, dollar-quoted bodies, case) never invents or hides an object."""

from __future__ import annotations

import pytest

from patchflow.dbwait import classify, reason_of
from patchflow.ddl import SqlUnreadable, schema_effects


def _created(sql: str, schema: str = "public") -> list[tuple[int, str, bool]]:
    return [(e.line, e.describe(), e.guarded) for e in schema_effects(sql, schema) if e.action == "create"]


HOSTILE = """-- CREATE TABLE "InLineComment" (id int);
/* a block /* nested CREATE TABLE "Nested"(); */ still a comment
   CREATE TABLE "InBlock"(); */
CREATE FUNCTION touch(a integer, b varchar(10)[] DEFAULT NULL, OUT c int) RETURNS int AS $body$
  CREATE TABLE "InBody"(id int); -- not run now
$body$ LANGUAGE sql;
SELECT 'CREATE TABLE "InString"(id int);', E'it\\'s; CREATE TABLE "InEscape"()', $$CREATE TABLE "InDollar"()$$;
create table MixedCase (id int); CREATE TABLE "MixedCase" (id int);
DO $$ BEGIN CREATE TYPE "InDo" AS ENUM ('a'); EXCEPTION WHEN duplicate_object THEN NULL; END $$;
ALTER TABLE "User" ADD COLUMN IF NOT EXISTS "a" int, ADD COLUMN "b" int;
CREATE INDEX CONCURRENTLY IF NOT EXISTS "i" ON other."T"(x);
CREATE OR REPLACE VIEW "v" AS SELECT 1;
ALTER TYPE "Role" ADD VALUE 'AUDITOR' AFTER 'ADMIN';
ALTER TABLE "User" ADD CONSTRAINT "User_email_key" UNIQUE ("email");
CREATE SCHEMA IF NOT EXISTS "tenant"; CREATE EXTENSION citext; CREATE SEQUENCE "s";
CREATE TRIGGER "t" BEFORE UPDATE ON "User" FOR EACH ROW EXECUTE FUNCTION touch();
"""


def test_hostile_sql_yields_exactly_the_objects_postgresql_would_create() -> None:
    assert _created(HOSTILE) == [
        (4, 'function "public"."touch"(integer, varchar(10)[])', False),
        (8, 'table "public"."mixedcase"', False),
        (8, 'table "public"."MixedCase"', False),
        (10, 'column "a" of "public"."User"', True),
        (10, 'column "b" of "public"."User"', False),
        (11, 'index "other"."i"', True),
        (12, 'view "public"."v"', True),
        (13, 'value \'AUDITOR\' of enum "public"."Role"', False),
        (14, 'constraint "User_email_key" of "public"."User"', False),
        (14, 'index "public"."User_email_key"', False),
        (15, 'schema "tenant"', True),
        (15, 'extension "citext"', False),
        (15, 'sequence "public"."s"', False),
        (16, 'trigger "t" of "public"."User"', False),
    ]


def test_unqualified_names_live_in_the_migrations_schema_and_renames_are_drop_then_create() -> None:
    effects = schema_effects('ALTER TABLE "A" RENAME TO "B";\nALTER TABLE x.y RENAME COLUMN "c" TO "d";', "tenant_a")
    assert [(e.action, e.ident) for e in effects] == [
        ("drop", ("relation", "tenant_a", "A", "", "")),
        ("create", ("relation", "tenant_a", "B", "", "")),
        ("drop", ("column", "x", "c", "y", "")),
        ("create", ("column", "x", "d", "y", "")),
    ]


def test_the_line_is_the_statements_first_token_not_the_comment_before_it() -> None:
    sql = 'SELECT 1;\n\n-- a comment\n/* and\n another */\n\nCREATE TABLE "T" (id int);\n'
    assert _created(sql) == [(7, 'table "public"."T"', False)]


def test_sql_the_parser_rejects_is_reported_with_its_line() -> None:
    with pytest.raises(SqlUnreadable) as caught:
        schema_effects("SELECT 1;\nCREATE TABLE x (id int;\n")
    assert caught.value.line == 2 and "syntax error" in caught.value.message


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (
            'connection failed: connection to server at "h", port 5432 failed: FATAL:  password authentication '
            'failed for user "app"',
            "credentials",
        ),
        ('FATAL:  no pg_hba.conf entry for host "10.0.0.1", user "app", database "db", no encryption', "credentials"),
        ("fe_sendauth: no password supplied", "credentials"),
        ('connection to server at "h", port 5432 failed: FATAL:  database "nope" does not exist', "missing"),
        ('connection to server at "h", port 5432 failed: FATAL:  role "nobody" does not exist', "missing"),
        ('connection to server at "h", port 5432 failed: Connection refused\n\tIs the server running?', "down"),
        ('connection to server at "h", port 5432 failed: FATAL:  the database system is starting up', "down"),
        ('connection to server at "h", port 5432 failed: timeout expired', "down"),
        ('service "postgres" is not running', "down"),
    ],
)
def test_connection_errors_that_waiting_cannot_fix_are_told_apart(error: str, kind: str) -> None:
    assert classify(error) == kind
    assert reason_of(error) and "connection failed:" not in reason_of(error)
