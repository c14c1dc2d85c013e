"""What a migration locks, read with PostgreSQL's parser, and PostgreSQL's lock conflicts
(patchflow.migration_locks): pure functions over SQL text; the server side is in
tests/integration/test_migration_locks.py."""

from __future__ import annotations

import pytest

from patchflow.migration_locks import CONFLICTS, MODES, LockPolicy, Session, Wait, describe_wait, locked_tables, words


def _modes(sql: str) -> list[tuple[str, str, str, int]]:
    return [(t.schema, t.name, words(t.mode), t.line) for t in locked_tables(sql, "public")]


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ('ALTER TABLE "User" ADD COLUMN "nickname" TEXT;', [("public", "User", "ACCESS EXCLUSIVE", 1)]),
        ('CREATE INDEX "i" ON app."User" ("email");', [("app", "User", "SHARE", 1)]),
        ('CREATE INDEX CONCURRENTLY "i" ON "User" ("email");', [("public", "User", "SHARE UPDATE EXCLUSIVE", 1)]),
        ('ALTER TABLE "Project" VALIDATE CONSTRAINT "c";', [("public", "Project", "SHARE UPDATE EXCLUSIVE", 1)]),
        (
            'ALTER TABLE "Project" ADD CONSTRAINT "fk" FOREIGN KEY ("ownerId") REFERENCES "User"("id");',
            [("public", "Project", "SHARE ROW EXCLUSIVE", 1), ("public", "User", "SHARE ROW EXCLUSIVE", 1)],
        ),
        (
            'CREATE TABLE "A" ("u" int REFERENCES "User"("id"));',
            [("public", "A", "ACCESS SHARE", 1), ("public", "User", "SHARE ROW EXCLUSIVE", 1)],
        ),
        (
            'INSERT INTO "AuditLog" ("action") SELECT email FROM "User";',
            [("public", "AuditLog", "ROW EXCLUSIVE", 1), ("public", "User", "ACCESS SHARE", 1)],
        ),
        ('UPDATE "User" SET name = upper(name);', [("public", "User", "ROW EXCLUSIVE", 1)]),
        (
            'DROP TABLE "Old", x."Older";',
            [("public", "Old", "ACCESS EXCLUSIVE", 1), ("x", "Older", "ACCESS EXCLUSIVE", 1)],
        ),
        ('TRUNCATE "User";', [("public", "User", "ACCESS EXCLUSIVE", 1)]),
        ('LOCK TABLE "User" IN SHARE MODE;', [("public", "User", "SHARE", 1)]),
        ('ALTER TABLE "User" RENAME COLUMN "a" TO "b";', [("public", "User", "ACCESS EXCLUSIVE", 1)]),
        (
            'CREATE TRIGGER t BEFORE INSERT ON "User" FOR EACH ROW EXECUTE FUNCTION f();',
            [("public", "User", "SHARE ROW EXCLUSIVE", 1)],
        ),
        ("CREATE TYPE r AS ENUM ('a');", []),
        ('DO $$ BEGIN ALTER TABLE "User" ADD COLUMN x int; END $$;', []),
        ("this is not SQL", []),
    ],
)
def test_each_statement_locks_what_postgresql_documents(sql: str, expected: list[tuple[str, str, str, int]]) -> None:
    assert _modes(sql) == expected


def test_lines_are_the_statements_own_after_comments() -> None:
    sql = (
        '-- CreateTable\nCREATE TABLE "A" (id int);\n\n-- AlterTable\n/* why */\nALTER TABLE "User" ADD COLUMN x int;\n'
    )
    assert _modes(sql)[-1] == ("public", "User", "ACCESS EXCLUSIVE", 6)


def test_a_table_named_twice_by_a_statement_keeps_its_strongest_lock() -> None:
    assert _modes('INSERT INTO "User" (id) SELECT id + 1 FROM "User";') == [("public", "User", "ROW EXCLUSIVE", 1)]


def test_conflicts_are_postgresql_s_table() -> None:
    # a few rows of the documentation's "Conflicting Lock Modes" table, both ways
    assert CONFLICTS["AccessExclusiveLock"] == frozenset(MODES)
    assert CONFLICTS["AccessShareLock"] == {"AccessExclusiveLock"}
    assert "RowExclusiveLock" in CONFLICTS["ShareLock"] and "ShareLock" not in CONFLICTS["ShareLock"]
    assert "ShareUpdateExclusiveLock" in CONFLICTS["ShareUpdateExclusiveLock"]
    assert "RowShareLock" not in CONFLICTS["RowExclusiveLock"]
    for mode, conflicting in CONFLICTS.items():
        for other in conflicting:
            assert mode in CONFLICTS[other], "conflicts are symmetric"


def test_the_lock_timeout_statement_is_in_milliseconds_and_none_at_zero() -> None:
    assert LockPolicy(5, 3, 900).set_sql() == "SET lock_timeout = '5000ms';"
    assert LockPolicy(0.25, 3, 900).set_sql() == "SET lock_timeout = '250ms';"
    assert LockPolicy(0, 3, 900).set_sql() == ""


def test_a_wait_is_described_with_its_blockers_or_as_unseen() -> None:
    blocker = Session(4242, "reports", "idle in transaction", 63.4, 'SELECT *\n  FROM "User"')
    text = describe_wait(Wait('"User"', "AccessExclusiveLock", (blocker,)), "its statement at m.sql line 3")
    assert text == (
        'its statement at m.sql line 3 waited for ACCESS EXCLUSIVE on "User", held by pid 4242 (reports, idle in '
        'transaction, transaction open 63 s, query: SELECT * FROM "User")'
    )
    assert "did not see which" in describe_wait(None, "the migration")
    assert "another role" in describe_wait(Wait("transactionid", "ShareLock"), "x")
