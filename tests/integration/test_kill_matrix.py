"""Every kill at any instant ends exactly old or exactly new, by the recovery patch-status names
(issue 13).

A release big enough that every step takes measurable time (thousands of files changed and added,
a database of several MB, a migration that sleeps) is applied and rolled back once to measure
both; then, trial after trial, alternately an apply (from the old version) and a rollback (from
the new one; a clean run brings the install there first when needed) is started and SIGKILLed at a
random instant of that measured span, either the ``inv`` process alone (its commands run on as
orphans) or with every command below it.
Some recoveries are themselves killed at a random instant and recovered again.

After each trial the test runs exactly the command ``patch-status --json`` gives as ``recovery``
(nothing when it gives none), then checks, independently of patchflow, that the install is
*exactly* the old or the new version: the whole tree (types, modes, content: no stray temporary
file or folder), VERSION, the full database dump, the migration history, the services (two
tracked processes, no orphan, answering with that version), no lock, journal, staging, trash or
half-restored database. The seed and the counts (where the kills landed, how each trial ended)
are printed in the test summary (``user_properties``, see conftest).

``KILL_MATRIX_SEED`` and ``KILL_MATRIX_TRIALS`` change the seed and the number of trials.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from support.exact import app_processes
from support.installs import Install, build_release, get, inv_popen, status_json
from support.killing import kill

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("kill-matrix")]

OLD, NEW = "2.2.0", "2.3.0"
SEED = int(os.environ.get("KILL_MATRIX_SEED", "20261129"))
TRIALS = int(os.environ.get("KILL_MATRIX_TRIALS", "24"))
BULK_FILES = 600
# the sample's migration with fixed times, so the new version's dump is the same after every apply
FIXED_AUDIT_MIGRATION = """CREATE TABLE "AuditLog" (
    "id" SERIAL NOT NULL,
    "action" TEXT NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT "AuditLog_pkey" PRIMARY KEY ("id")
);
ALTER TABLE "User" ADD COLUMN "nickname" TEXT;
INSERT INTO "AuditLog" ("action", "createdAt") VALUES ('upgrade to 2.3.0', '2025-03-01 09:00:00');
INSERT INTO "User" ("email", "name", "role", "createdAt", "updatedAt") VALUES
    ('dana@primeflow.test', 'Dana', 'MEMBER', '2025-03-01 09:00:00', '2025-03-01 09:00:00'),
    ('eli@primeflow.test', 'Eli', 'MEMBER', '2025-03-01 09:00:00', '2025-03-01 09:00:00');
"""
SLOW_MIGRATION = """-- a slow migration: the migrate step takes measurable time
SELECT pg_sleep(0.4);
CREATE TABLE "Report" ("id" INTEGER PRIMARY KEY, "title" TEXT NOT NULL);
INSERT INTO "Report" SELECT g, 'report ' || g FROM generate_series(1, 20000) AS g;
"""


def _enlarge(install: Install) -> None:
    """Give the old version a bulk of files the release changes, and a database of several MB."""
    rng = random.Random(7)
    bulk = install.root / "public" / "bulk"
    bulk.mkdir(parents=True)
    for index in range(BULK_FILES):
        (bulk / f"b{index:05}.js").write_bytes(rng.randbytes(rng.randint(1024, 6144)))
    install.sql(
        'CREATE TABLE "Bulk" ("id" INTEGER PRIMARY KEY, "payload" TEXT NOT NULL); '
        'INSERT INTO "Bulk" SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 20000) AS g;'
    )


def _edit_release(source: Path) -> None:
    rng = random.Random(11)
    for path in sorted((source / "public" / "bulk").iterdir()):
        path.write_bytes(rng.randbytes(rng.randint(1024, 6144)))
    added = source / "public" / "bulk2" / "nested"
    added.mkdir(parents=True)
    for index in range(BULK_FILES):
        (added / f"n{index:05}.js").write_bytes(rng.randbytes(rng.randint(512, 4096)))
    slow = source / "prisma" / "migrations" / "20250302090000_reports"
    slow.mkdir(parents=True)
    (slow / "migration.sql").write_text(SLOW_MIGRATION)


def _dump(install: Install) -> str:
    """The full dump without the data of the migration history (its rows carry times and ids of
    each run; they are compared by :func:`_migrations`)."""
    return subprocess.run(
        [
            str(install.cluster.bin("pg_dump")),
            "--restrict-key=patchflowtest",
            "--exclude-table-data=_prisma_migrations",
            "--dbname",
            install.url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def _migrations(install: Install) -> list[str]:
    return install.sql(
        "SELECT migration_name || '|' || (finished_at IS NOT NULL) || '|' || (rolled_back_at IS NULL) "
        'FROM "_prisma_migrations" ORDER BY migration_name'
    ).split()


def _snapshot(install: Install) -> dict[str, Any]:
    return {"tree": install.state(), "dump": _dump(install), "migrations": _migrations(install)}


def _other_databases(install: Install) -> list[str]:
    rows = install.cluster.psql(
        "postgres", f"SELECT datname FROM pg_database WHERE datname LIKE '{install.dbname}\\_%';\n"
    )
    return rows.split()


def _check_exact(install: Install, versions: dict[str, dict[str, Any]]) -> str:
    """The version the install is exactly on (``old`` or ``new``); fails with the differences."""
    status = status_json(install)
    assert status["interrupted"] is None, status["interrupted"]
    assert status["lock"] is None, status["lock"]
    assert status["leftovers"] == [], status["leftovers"]
    assert status["recovery"] is None, status["recovery"]
    tree = install.state()
    name = next((n for n, v in versions.items() if v["tree"] == tree), None)
    if name is None:
        old = versions["old"]["tree"]
        raise AssertionError(
            {
                "extra vs old": sorted(set(tree) - set(old))[:10],
                "missing vs old": sorted(set(old) - set(tree))[:10],
                "different vs old": sorted(p for p in old.keys() & tree.keys() if old[p] != tree[p])[:10],
                "version": (install.root / "VERSION").read_text(),
            }
        )
    expected = versions[name]
    version = OLD if name == "old" else NEW
    assert status["installed_version"] == version
    assert _dump(install) == expected["dump"], f"the database is not exactly the {name} one"
    assert _migrations(install) == expected["migrations"]
    leftovers = [d for d in _other_databases(install) if "_restoring_" in d]
    assert not leftovers, f"half-restored databases left: {leftovers}"
    state = install.root / ".patchflow"
    tracked = {json.loads(p.read_text())["pid"] for p in (state / "run").glob("*.pid")}
    assert len(tracked) == 2, tracked
    assert app_processes(install.root) == tracked, "a service process runs untracked"
    code, body = get(install.health_url)
    assert code == 200 and json.loads(body)["version"] == version, body
    return name


def _drop_displaced(install: Install) -> None:
    """The databases a restore moved aside are kept for the operator; the matrix drops them so
    dozens of trials do not fill the cluster."""
    for name in _other_databases(install):
        install.cluster.drop_database(name)


APPLY_TARGETS = ("lock", "stage", "stop", "backup", "switch", "migrate", "start", "health", "commit", "cleanup")
ROLLBACK_TARGETS = ("lock", "stop", "restore-code", "restore-database", "start", "health", "commit")


def _journal(install: Install) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((install.root / ".patchflow" / "journal.json").read_text())
    except (OSError, ValueError):
        return None
    return data


def _watch(
    install: Install,
    args: tuple[str, ...],
    action: str,
    kill_at: tuple[str, float] | None = None,
    how: str = "main",
    spans: dict[str, float] | None = None,
) -> tuple[dict[str, float], str]:
    """Run ``inv <args>`` while watching its journal (every 5 ms). Without ``kill_at`` it runs to
    the end and the span of each part is returned: ``before`` (start to journal), each step,
    ``after`` (journal closed to exit). With ``kill_at=(part, fraction)`` it is SIGKILLed
    ``fraction`` of that part's span (from ``spans``) after the part is seen to begin (at once when
    a later part is seen first); returns where the kill landed (the journal's last record)."""
    order = ("before", *(APPLY_TARGETS if action == "apply" else ROLLBACK_TARGETS), "after")
    began = time.monotonic()
    proc = inv_popen(install, *args)
    seen: dict[str, float] = {}
    journal_seen = False
    where = "finished first"
    while proc.poll() is None:
        journal = _journal(install)
        now = time.monotonic() - began
        part = "before"
        if journal is not None:
            journal_seen = True
            steps = [s["name"] for s in journal.get("steps", []) if s["name"] in order]
            part = steps[-1] if steps else "lock"
        elif journal_seen:
            part = "after"
        seen.setdefault(part, now)
        if kill_at is not None and order.index(part) >= order.index(kill_at[0]):
            assert spans is not None
            if part == kill_at[0]:
                time.sleep(kill_at[1] * spans.get(part, 0.0))
            kill(proc.pid, how)
            journal = _journal(install)
            if journal is None:
                where = "no journal (before the lock)" if not journal_seen else "journal closed"
            else:
                last = journal["steps"][-1]
                where = f"{last['name']} ({last['state']}, {journal['phase']})"
            break
        time.sleep(0.005)
    out, err = proc.communicate(timeout=600)
    if kill_at is None:
        assert proc.returncode == 0, out + err
        ends = [*sorted(seen.items(), key=lambda item: item[1]), ("", time.monotonic() - began)]
        return {name: max(0.0, ends[i + 1][1] - at) for i, (name, at) in enumerate(ends[:-1])}, where
    return {}, where


def _timed(install: Install, *args: str) -> None:
    proc = inv_popen(install, *args)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out + err


def _run_recovery(install: Install, rng: random.Random, span: float, kill_it: bool, how: str) -> tuple[str, bool]:
    """Run the recovery patch-status names (killing it once at a random instant when ``kill_it``,
    then recovering again). Returns ``(command run or '-', whether a kill landed in it)``."""
    advice = status_json(install)["recovery"]
    if advice is None:
        return "-", False
    assert advice["command"], advice
    args = list(advice["args"])
    killed = False
    if kill_it:
        proc = inv_popen(install, *args)
        try:
            proc.wait(timeout=rng.uniform(0.0, span))
        except subprocess.TimeoutExpired:
            kill(proc.pid, how)
            killed = True
        proc.communicate()
        advice = status_json(install)["recovery"]
        if advice is None:
            return " ".join(args[:1]), killed
        args = list(advice["args"])
    proc = inv_popen(install, *args)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"recovery {advice['command']} failed:\n{out}\n{err}"
    return " ".join(args[:1]), killed


def test_random_instant_kills_end_exactly_old_or_new(install: Install, tmp_path: Path, record_property: Any) -> None:
    _enlarge(install)
    build_release(install, tmp_path, NEW, edit=_edit_release, migration=FIXED_AUDIT_MIGRATION)
    apply_args = ("apply-patch", "--version", NEW, "--yes")
    rollback_args = ("rollback-patch", "--yes")
    versions = {"old": _snapshot(install)}
    spans = {"apply": _watch(install, apply_args, "apply")[0]}
    versions["new"] = _snapshot(install)
    assert versions["new"]["tree"] != versions["old"]["tree"]
    spans["rollback"] = _watch(install, rollback_args, "rollback")[0]
    _drop_displaced(install)
    assert _check_exact(install, versions) == "old"

    rng = random.Random(SEED)
    landed: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    recoveries: Counter[str] = Counter()
    current = "old"
    for trial in range(TRIALS):
        action = "apply" if trial % 2 == 0 else "rollback"
        how = "main" if (trial // 2) % 2 == 0 else "tree"
        if action == "rollback" and current == "old":
            _timed(install, *apply_args)  # a rollback needs the new version
        elif action == "apply" and current == "new":
            _timed(install, *rollback_args)
            _drop_displaced(install)
        targets = ("before", *(APPLY_TARGETS if action == "apply" else ROLLBACK_TARGETS), "after")
        target = (rng.choice(targets), rng.random())
        _, where = _watch(
            install, apply_args if action == "apply" else rollback_args, action, target, how, spans[action]
        )
        landed[f"{action}: {where}"] += 1
        span = sum(spans[action].values())
        command, recovery_killed = _run_recovery(install, rng, span, trial % 3 == 2, how)
        recoveries[f"{command}{' (itself killed once)' if recovery_killed else ''}"] += 1
        try:
            current = _check_exact(install, versions)
        except AssertionError as exc:
            raise AssertionError(
                f"trial {trial} (seed {SEED}): {action} killed ({how}) aiming at {target[0]} +{target[1]:.2f}, "
                f"landed {where}; recovery {command}: {exc}"
            ) from None
        outcomes[f"{action} killed -> {current}"] += 1
        _drop_displaced(install)

    summary = (
        f"kill matrix: seed {SEED}, {TRIALS} trials; spans apply "
        f"{ {k: round(v, 2) for k, v in spans['apply'].items()} }, rollback "
        f"{ {k: round(v, 2) for k, v in spans['rollback'].items()} }; landed {dict(sorted(landed.items()))}; "
        f"recovery {dict(sorted(recoveries.items()))}; ended {dict(sorted(outcomes.items()))}"
    )
    record_property("summary", summary)
    print(summary)
    assert sum(outcomes.values()) == TRIALS
