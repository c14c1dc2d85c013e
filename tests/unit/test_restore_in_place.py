"""The in-place restore of a role without CREATEDB (issue 26's fallback), without a server: which
entries of a dump's table of contents it replays, the script it runs in one transaction, and what
the plan says. The server side is in tests/integration/test_in_place_restore.py."""

from __future__ import annotations

from pathlib import Path

from patchflow.lifecycle.apply_dump import dump_place, undo_place
from patchflow.lifecycle.planning import Plan
from patchflow.manifest import TreeDiff
from patchflow.restore_in_place import BESIDE, IN_PLACE, MARK, filter_listing, in_place_script, kept_as
from patchflow.space import Need

# as pg_restore --list prints it (an extension's entries end with a space: they have no owner)
LISTING = "\n".join(
    [
        ";",
        "; Archive created at 2025-03-01 09:00:00 UTC",
        ";",
        "6; 2615 2200 SCHEMA - public app",
        "3399; 0 0 COMMENT - SCHEMA public app",
        "7; 2615 16500 SCHEMA - extensions postgres",
        "3400; 0 0 COMMENT - SCHEMA extensions postgres",
        "3401; 0 0 ACL - SCHEMA extensions postgres",
        "8; 2615 16501 SCHEMA - extensions_more app",
        "3; 3079 16447 EXTENSION - citext ",
        "3490; 0 0 COMMENT - EXTENSION citext ",
        "2; 3079 16410 EXTENSION - pgcrypto ",
        "3491; 0 0 COMMENT - EXTENSION pgcrypto ",
        "217; 1259 16388 TABLE public User app",
        "218; 1259 16403 TABLE public _prisma_migrations app",
        "219; 1259 16404 TABLE public My Table app",
        "220; 1259 16405 FOREIGN TABLE public remote app",
        "3482; 0 16388 TABLE DATA public User app",
        "3483; 0 0 TABLE ATTACH public part_1 app",
        "",
    ]
)


def test_the_replay_leaves_out_what_the_restore_keeps_and_lists_the_dumps_tables() -> None:
    kept, tables = filter_listing(LISTING, {"extensions": "postgres"}, {"citext"})
    lines = kept.splitlines()
    assert not [line for line in lines if "extensions postgres" in line], "the kept schema, its comment and grants"
    assert "8; 2615 16501 SCHEMA - extensions_more app" in lines, "a schema whose name starts alike stays"
    assert "3490; 0 0 COMMENT - EXTENSION citext " not in lines, "the comment of a kept extension"
    assert "3491; 0 0 COMMENT - EXTENSION pgcrypto " in lines and "3; 3079 16447 EXTENSION - citext " in lines
    assert "6; 2615 2200 SCHEMA - public app" in lines and lines[0] == ";", "comments and the rest stay, in order"
    assert tables == ["public User app", "public _prisma_migrations app", "public My Table app"]
    untouched, _ = filter_listing(LISTING, {}, set())
    assert untouched == LISTING


def test_the_script_empties_replays_and_checks_in_that_order() -> None:
    body = Path("/srv/app/backups/pre-patch-v2.3.0_x/it's here.sql")
    script = in_place_script(body, ["public User app", "public O'Brien app"], 150004)
    emptied, _, rest = script.partition(MARK)
    assert "DROP SCHEMA IF EXISTS %I CASCADE" in emptied and "CREATE SCHEMA public AUTHORIZATION pg_database_owner" in (
        emptied
    )
    assert "COMMENT ON SCHEMA public IS 'standard public schema'" in emptied
    assert "client_connection_check_interval" in emptied and "lock_timeout = '60s'" in emptied
    assert "DROP EXTENSION IF EXISTS %I CASCADE" in emptied and "lo_unlink" in emptied
    assert rest.lstrip("\n").startswith("\\i '/srv/app/backups/pre-patch-v2.3.0_x/it''s here.sql'\n")
    assert "ARRAY['public User app', 'public O''Brien app']::text[]" in rest
    assert "RAISE EXCEPTION 'patchflow: the restored tables are not the dump''s" in rest
    # the commit needs the last statement: a script cut short fails its deferred foreign key
    assert "REFERENCES pg_temp.patchflow_restore_guard_done DEFERRABLE INITIALLY DEFERRED" in emptied
    assert "INSERT INTO pg_temp.patchflow_restore_guard VALUES (1);" in emptied
    assert rest.endswith("$patchflow$;\nINSERT INTO pg_temp.patchflow_restore_guard_done VALUES (1);\n")
    older = in_place_script(Path("/b/s.sql"), [], 130010)
    assert "CREATE SCHEMA public" not in older, "before 15 public is kept, not replaced"
    assert "nspname <> 'public'" in older and "client_connection_check_interval" not in older
    assert "expected text[] := '{}'::text[]" in older


def _plan(method: str, *, snapshot: bool = False) -> Plan:
    needs = [Need(Path("/srv"), "database dump", 5000, 1)]
    plan = Plan("2.3.0", "2.2.0", TreeDiff([], [], []), [], [], ["m1"], "builtin", [], "db", [], needs, "")
    plan.snapshot = snapshot
    plan.no_snapshot = "" if snapshot else "role app may not create databases (no CREATEDB)"
    plan.restore_method, plan.restore_role = method, "app" if method == IN_PLACE else ""
    return plan


def test_the_plan_says_the_fallback_its_cost_and_how_to_avoid_it() -> None:
    place = dump_place(_plan(IN_PLACE))
    assert place.startswith("after the stop, inside the stopped window: 1 migration(s) pending")
    assert "no snapshot: role app may not create databases (no CREATEDB), so the dump runs while the services" in place
    assert "the stopped window grows with the database" in place
    assert "give role app CREATEDB, or set PATCHFLOW_DATABASE_ADMIN_URL" in place
    assert undo_place(_plan(IN_PLACE)).startswith("in place, in one transaction (role app may not create databases")
    assert "never half restored" in undo_place(_plan(IN_PLACE))
    assert "CREATEDB" not in dump_place(_plan(BESIDE)).split("no snapshot:")[0]
    assert undo_place(_plan(BESIDE)).startswith("the dump is restored beside the live database")
    assert undo_place(_plan(BESIDE, snapshot=True)).startswith("the snapshot is put back by a rename")
    quiet = _plan(BESIDE)
    quiet.pending_migrations = []
    assert undo_place(quiet) == ""


def test_where_the_replaced_database_is_kept_is_named_either_way() -> None:
    assert kept_as("/srv/backups/b/displaced-20250301T090000Z.dump") == (
        "the dump /srv/backups/b/displaced-20250301T090000Z.dump"
    )
    assert kept_as("app_before_rollback_20250301T090000Z") == "app_before_rollback_20250301T090000Z"
