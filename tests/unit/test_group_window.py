"""The pure parts of several app servers on one database (issue 24): how deploy groups hosts by the
database they use, the order a remote rollback takes them in, what a killed group window leaves to
finish, and how the rows written since the new version started are counted. Host facts are built as
``host-facts`` prints them (no host is contacted)."""

from __future__ import annotations

from typing import Any

import pytest

from patchflow.errors import RemoteError
from patchflow.remote.group_window import (
    database_groups,
    left_by_a_window,
    rollback_order,
    sharing,
    unfinished_windows,
)
from patchflow.remote.hosts import Target
from patchflow.remote.wire import HostFacts
from patchflow.shared_database import Client, writes_since

SHARED = "7716667043309673183-1796677200/primeflow"


def facts(identity: str | None, applied: tuple[str, ...] = (), **extra: Any) -> HostFacts:
    database = None if identity is None else {"identity": identity, "applied": list(applied), "error": ""}
    return HostFacts.from_json({"paths": {}, "status": extra.pop("status", {}), "database": database, **extra})


def hosts(*names: str) -> list[Target]:
    return [Target(name, name, f"/srv/{name}") for name in names]


def test_hosts_on_one_database_form_a_group_only_when_a_migration_is_pending_there() -> None:
    a, b, c, d = hosts("a", "b", "c", "d")
    known = {
        "a": facts(SHARED, ("0001_init",)),
        "b": facts(SHARED, ("0001_init",)),
        "c": facts("111-1796677200/other"),
        "d": facts(None),  # no database configured
    }
    groups = database_groups([a, b, c, d], known, ["0001_init", "0002_add_projects"])
    assert [(g.identity, [t.name for t in g.hosts], g.pending) for g in groups] == [
        (SHARED, ["a", "b"], ["0002_add_projects"])
    ]
    assert "used by a, b: one stopped window" in groups[0].describe()
    assert database_groups([a, b, c, d], known, ["0001_init"]) == [], "nothing pending: rolling as before"
    assert sharing([a, b, c, d], known) == [[a, b]]


def test_an_unreadable_database_or_an_older_patchflow_puts_a_host_in_no_group() -> None:
    a, b = hosts("a", "b")
    unreachable = HostFacts.from_json(
        {"paths": {}, "status": {}, "database": {"identity": "", "applied": [], "error": "connection refused"}}
    )
    older = HostFacts.from_json({"paths": {}, "status": {}})  # no "database" key at all
    assert database_groups([a, b], {"a": unreachable, "b": older}, ["0002"]) == []


def test_a_remote_rollback_takes_the_host_that_restores_the_database_first() -> None:
    a, b, c, lone = hosts("a", "b", "c", "lone")
    record = {"installed_record": {"version": "2.3.0", "migrations": ["0002_add_projects"]}}
    known = {
        "a": facts(SHARED, status={"installed_record": {"version": "2.3.0", "migrations": []}}),
        "b": facts(SHARED, status={"installed_record": {"version": "2.3.0", "migrations": []}}),
        "c": facts(SHARED, status=record),
        "lone": facts("222-1796677200/elsewhere"),
    }
    groups = sharing([a, b, c, lone], known)
    order = rollback_order([a, b, c, lone], known, groups, restore_database=False)
    assert order[0] is c and groups == [[c, a, b]]
    assert {t.name for t in order} == {"a", "b", "c", "lone"}


def test_a_remote_rollback_refuses_two_restores_of_one_database() -> None:
    a, b = hosts("a", "b")
    record = {"installed_record": {"version": "2.3.0", "migrations": ["0002_add_projects"]}}
    known = {"a": facts(SHARED, status=record), "b": facts(SHARED, status=record)}
    with pytest.raises(RemoteError) as raised:
        rollback_order([a, b], known, sharing([a, b], known), restore_database=False)
    assert "a, b use one database" in raised.value.message and "second restore" in raised.value.message
    assert raised.value.exit_code == 1
    with pytest.raises(RemoteError):  # --restore-database asks each host of the group to restore it
        plain = {"a": facts(SHARED), "b": facts(SHARED)}
        rollback_order([a, b], plain, sharing([a, b], plain), restore_database=True)


def test_a_killed_window_is_finished_by_the_next_deploy_and_named_by_status() -> None:
    b, c = hosts("b", "c")
    window = {"version": "2.3.0", "first": "a", "hosts": ["a", "b", "c"], "stopped_at": "2026-12-07T21:00:00Z"}
    known = {"a": facts(SHARED), "b": facts(SHARED, group_window=window), "c": facts(SHARED, group_window=window)}
    assert left_by_a_window([b, c], known, "2.3.0", []) == {
        "b": "a (the group's first host)",
        "c": "a (the group's first host)",
    }
    assert left_by_a_window([b, c], known, "2.4.0", []) == {}, "a window of another version is not finished"
    lines = unfinished_windows([("a", known["a"]), ("b", known["b"]), ("c", known["c"]), ("d", None)])
    assert lines == [
        "group window of 2.3.0 left unfinished: b (since 2026-12-07T21:00:00Z), c (since 2026-12-07T21:00:00Z) "
        "stopped by it (first host a); finish it with `inv deploy --hosts a,b,c --version 2.3.0`"
    ]


def test_rows_written_since_are_counted_per_table_from_the_statistics() -> None:
    before = {"public.User": [10, 2, 0], "public.shared_writes": [100, 0, 0]}
    after = {"public.User": [10, 2, 0], "public.shared_writes": [131, 0, 1], "public.Project": [4, 0, 0]}
    assert writes_since(before, after) == [
        "public.Project: 4 inserted, 0 updated, 0 deleted",
        "public.shared_writes: 31 inserted, 0 updated, 1 deleted",
    ]
    assert writes_since(after, before | {"public.Project": [0, 0, 0]}) == [
        "public.Project: unknown (its statistics were reset)",
        "public.shared_writes: unknown (its statistics were reset)",
    ]


def test_a_client_is_described_by_where_it_comes_from() -> None:
    client = Client(4242, "10.0.0.7", "api", "app", "2026-12-07 21:00:01.123+00")
    assert client.describe() == 'pid 4242 from 10.0.0.7 (app "api", role app) since 2026-12-07 21:00:01'
    assert (
        Client(1, "local", "", "postgres", "2026-12-07").describe()
        == "pid 1 from local (role postgres) since 2026-12-07"
    )
