"""Every kill at any instant ends exactly old or exactly new, by the recovery patch-status names
(issue 13).

A release big enough that every step takes measurable time (thousands of files changed and added,
a database of several MB, a migration that sleeps) is applied and rolled back once to measure
both; then, trial after trial, alternately an apply (from the old version) and a rollback (from
the new one; a clean run brings the install there first when needed) is started and SIGKILLed at a
random instant of that measured span, either the ``inv`` process alone (its commands run on as
orphans) or with every command below it. The instants are stratified: each action's parts (before
the lock, each step, after the journal closes) are taken in a shuffled order, every part once per
round, at a random fraction of the part's span.
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

import os
import random
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from support.installs import Install, build_release, inv_popen, status_json
from support.killing import kill
from support.trials import FIXED_AUDIT_MIGRATION, NEW, check_exact, drop_displaced, read_journal, snapshot

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("kill-matrix")]

SEED = int(os.environ.get("KILL_MATRIX_SEED", "20261129"))
TRIALS = int(os.environ.get("KILL_MATRIX_TRIALS", "24"))
BULK_FILES = 600
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


APPLY_TARGETS = ("lock", "stage", "stop", "backup", "switch", "migrate", "start", "health", "commit", "cleanup")
ROLLBACK_TARGETS = ("lock", "stop", "restore-code", "restore-database", "start", "health", "commit")


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
        journal = read_journal(install)
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
            journal = read_journal(install)
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
    versions = {"old": snapshot(install)}
    spans = {"apply": _watch(install, apply_args, "apply")[0]}
    versions["new"] = snapshot(install)
    assert versions["new"]["tree"] != versions["old"]["tree"]
    spans["rollback"] = _watch(install, rollback_args, "rollback")[0]
    drop_displaced(install)
    assert check_exact(install, versions) == "old"

    rng = random.Random(SEED)
    rounds: dict[str, list[str]] = {"apply": [], "rollback": []}
    aimed: Counter[str] = Counter()
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
            drop_displaced(install)
        if not rounds[action]:  # a new round: every part of this action once, in a shuffled order
            parts = ("before", *(APPLY_TARGETS if action == "apply" else ROLLBACK_TARGETS), "after")
            rounds[action] = rng.sample(parts, len(parts))
        target = (rounds[action].pop(), rng.random())
        _, where = _watch(
            install, apply_args if action == "apply" else rollback_args, action, target, how, spans[action]
        )
        aimed[f"{action}: {target[0]}"] += 1
        landed[f"{action}: {where}"] += 1
        span = sum(spans[action].values())
        command, recovery_killed = _run_recovery(install, rng, span, trial % 3 == 2, how)
        recoveries[f"{command}{' (itself killed once)' if recovery_killed else ''}"] += 1
        try:
            current = check_exact(install, versions)
        except AssertionError as exc:
            raise AssertionError(
                f"trial {trial} (seed {SEED}): {action} killed ({how}) aiming at {target[0]} +{target[1]:.2f}, "
                f"landed {where}; recovery {command}: {exc}"
            ) from None
        outcomes[f"{action} killed -> {current}"] += 1
        drop_displaced(install)

    summary = (
        f"kill matrix: seed {SEED}, {TRIALS} trials; spans apply "
        f"{ {k: round(v, 2) for k, v in spans['apply'].items()} }, rollback "
        f"{ {k: round(v, 2) for k, v in spans['rollback'].items()} }; aimed {dict(sorted(aimed.items()))}; "
        f"landed {dict(sorted(landed.items()))}; "
        f"recovery {dict(sorted(recoveries.items()))}; ended {dict(sorted(outcomes.items()))}"
    )
    record_property("summary", summary)
    print(summary)
    assert sum(outcomes.values()) == TRIALS
