"""The "exactly old" and "exactly new" version of a sample install, checked independently of
patchflow: the tree, VERSION, the full pg_dump, the running services, no journal, lock or staging.

"Exactly the new version" is computed from the two patch manifests (:func:`expected_tree_after_apply`;
checked against a real clean apply in tests/integration/test_crash_safety.py). "Exactly the old
version" is the tree state and the full ``pg_dump`` taken before the apply.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from support.installs import Install, get, wait_trash_deleted
from support.installs import status_json as status_json  # re-exported for the crash tests

NEW = "2.3.0"
OLD = "2.2.0"
StateMap = dict[str, tuple[str, int, str]]


def entry_state(entry: dict[str, Any]) -> tuple[str, int, str]:
    """A manifest entry in :func:`support.installs.tree_state` form."""
    if entry["type"] == "file":
        return ("file", int(entry["mode"], 8), entry["sha256"])
    if entry["type"] == "dir":
        return ("dir", int(entry["mode"], 8), "")
    return ("symlink", 0, entry["target"])


def read_manifest(install: Install, version: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((install.root / "patches" / f"v{version}" / "manifest.json").read_text())
    return data


def expected_tree_after_apply(before: StateMap, old: dict[str, Any], new: dict[str, Any]) -> StateMap:
    """The tree a clean apply of ``new`` over ``before`` (installed from ``old``) must give:
    whatever the old patch did not own stays as it was (node_modules, uploads, .env, ...),
    paths of the old patch that the new one lacks are gone, every entry of the new patch is
    present with its type, mode and sha256 (or link target), and VERSION holds the new version."""
    old_paths = {e["path"] for e in old["files"]}
    expected = {p: s for p, s in before.items() if p not in old_paths}
    for entry in new["files"]:
        expected[entry["path"]] = entry_state(entry)
    return expected


def app_processes(root: Path) -> set[int]:
    """Pids of live processes whose working directory is ``root`` (the api and worker)."""
    wanted = os.path.realpath(root)
    found = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{pid}/cwd") != wanted:
                continue
            with open(f"/proc/{pid}/stat") as handle:
                if handle.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    continue
        except OSError:
            continue
        found.add(int(pid))
    return found


def assert_clean_after(install: Install) -> dict[str, Any]:
    """No journal, no lock, no staging left, and exactly the two tracked services running
    (no orphan from the killed process). The staging a committed apply renamed aside is deleted
    by a detached process after the command returned (patchflow.trash): waited for first."""
    wait_trash_deleted(install.root)
    status = status_json(install)
    assert status["interrupted"] is None, status["interrupted"]
    assert status["lock"] is None, status["lock"]
    state = install.root / ".patchflow"
    assert not list(state.glob("staging-*")), list(state.glob("staging-*"))
    assert not list(state.glob("trash-*")), list(state.glob("trash-*"))
    assert not list(state.glob(".*.tmp-*")), list(state.glob(".*.tmp-*"))
    assert status["leftovers"] == [], status["leftovers"]
    tracked = {json.loads(p.read_text())["pid"] for p in (state / "run").glob("*.pid")}
    assert len(tracked) == 2
    assert app_processes(install.root) == tracked
    return status


def assert_exactly_new(install: Install, before: StateMap, old: dict[str, Any], new: dict[str, Any]) -> None:
    """The install is exactly what a clean apply of 2.3.0 gives: tree, database, services."""
    status = assert_clean_after(install)
    assert status["installed_version"] == NEW
    assert (install.root / "VERSION").read_text() == f"{NEW}\n"
    actual = install.state()
    expected = expected_tree_after_apply(before, old, new)
    assert actual == expected, {
        "missing": sorted(set(expected) - set(actual)),
        "extra": sorted(set(actual) - set(expected)),
        "different": sorted(p for p in expected.keys() & actual.keys() if expected[p] != actual[p]),
    }
    assert not (install.root / "src/components/Header.js").exists()
    code, body = get(install.health_url)
    assert code == 200 and json.loads(body)["version"] == NEW, body
    assert get(install.health_url.replace("/health", "/audit"))[0] == 200
    names = [m["name"] for m in new["migrations"]]
    rows = install.sql(
        "SELECT migration_name || '|' || (finished_at IS NOT NULL) || '|' || (rolled_back_at IS NULL) "
        'FROM "_prisma_migrations" ORDER BY migration_name'
    ).split()
    assert rows == [f"{n}|true|true" for n in sorted(names)], rows
    assert install.sql("SELECT to_regclass('public.\"AuditLog\"') IS NOT NULL") == "t"
    assert install.sql('SELECT count(*) FROM "AuditLog"') == "1"
    assert install.sql('SELECT count(*) FROM "User"') == "5"
    history = [json.loads(line) for line in (install.root / ".patchflow/history.jsonl").read_text().splitlines()]
    successes = [h for h in history if h["action"] == "apply" and h["to_version"] == NEW and h["result"] == "success"]
    assert len(successes) == 1, successes


def assert_exactly_old(install: Install, tree_before: StateMap, db_before: str) -> None:
    """The install is exactly as before the apply: tree, full pg_dump, services on 2.2.0."""
    status = assert_clean_after(install)
    assert status["installed_version"] == OLD
    after = install.state()
    assert after == tree_before, {
        "missing": sorted(set(tree_before) - set(after)),
        "extra": sorted(set(after) - set(tree_before)),
        "different": sorted(p for p in tree_before.keys() & after.keys() if tree_before[p] != after[p]),
    }
    assert install.pg_dump() == db_before
    code, body = get(install.health_url)
    assert code == 200 and json.loads(body)["version"] == OLD, body
    assert get(install.health_url.replace("/health", "/audit"))[0] == 404


def patchflow_sessions(install: Install) -> list[str]:
    """Server sessions of the tool still open on the install's databases (application_name patchflow*)."""
    rows = install.cluster.psql(
        "postgres",
        "SELECT application_name || ' ' || coalesce(query, '') FROM pg_stat_activity "
        f"WHERE application_name LIKE 'patchflow%' AND datname LIKE '{install.dbname}%';\n",
    )
    return [row for row in rows.splitlines() if row.strip()]
