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

The trials are planned up front from the seed (:func:`_plan`: which action, how, which part at
which fraction, whether its recovery is killed and when) and run in :data:`CHUNKS` slices, each on
its own install and its own xdist worker (an even number of trials each, so every slice alternates
apply and rollback from the old version): the plan, and so the coverage of every part, is the same
as one long run's. ``make test`` runs the first slice (four trials, two of each action, aimed at
distinct parts), ``make test-slow`` (and CI) the second, ``nox -s stress`` the other five.

``KILL_MATRIX_SEED`` and ``KILL_MATRIX_TRIALS`` change the seed and the number of trials.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.installs import Install, build_release, inv_popen, status_json
from support.killing import kill
from support.trials import FIXED_AUDIT_MIGRATION, NEW, check_exact, drop_displaced, read_journal, snapshot

from patchflow.lifecycle.apply import APPLY_STEPS
from patchflow.lifecycle.rollback import ROLLBACK_STEPS

pytestmark = [pytest.mark.integration]

SEED = int(os.environ.get("KILL_MATRIX_SEED", "20261129"))
TRIALS = int(os.environ.get("KILL_MATRIX_TRIALS", "28"))
CHUNKS = 7
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


#: Apply steps that do nothing with the matrix's release: it runs a migration, so ``dump`` (the
#: dump before the stop, taken only when no migration is pending) has a span of ~0.01 s here; its
#: kills (at its boundary and inside pg_dump) are in test_dump_before_stop. The release's migration
#: makes ``snapshot`` and ``dump-snapshot`` do their work, so they are aimed at: 14 apply parts
#: (before, 12 steps, after), one round in the 14 apply trials of the default 28.
IDLE_IN_MATRIX = frozenset({"dump"})

# the journaled steps of the real lists: a step added or moved is aimed at too
APPLY_TARGETS = tuple(s.name for s in APPLY_STEPS if s.journaled and s.name not in IDLE_IN_MATRIX)
ROLLBACK_TARGETS = tuple(s.name for s in ROLLBACK_STEPS if s.journaled)


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


@dataclass(frozen=True)
class Trial:
    """One planned trial: kill ``action`` (``how``: the main process or its tree) at ``fraction``
    of the span of ``part``; when ``kill_recovery``, its recovery is killed once at
    ``recovery_fraction`` of the action's whole span."""

    index: int
    action: str
    how: str
    part: str
    fraction: float
    kill_recovery: bool
    recovery_fraction: float


def _plan(seed: int, trials: int) -> list[Trial]:
    """The whole matrix from ``seed``: alternately apply and rollback, ``main`` and ``tree`` kills
    two by two, every third recovery killed; each action's parts in shuffled rounds (every part
    once per round)."""
    rng = random.Random(seed)
    rounds: dict[str, list[str]] = {"apply": [], "rollback": []}
    plan = []
    for index in range(trials):
        action = "apply" if index % 2 == 0 else "rollback"
        if not rounds[action]:
            parts = ("before", *(APPLY_TARGETS if action == "apply" else ROLLBACK_TARGETS), "after")
            rounds[action] = rng.sample(parts, len(parts))
        part = rounds[action].pop()
        how = "main" if (index // 2) % 2 == 0 else "tree"
        plan.append(Trial(index, action, how, part, rng.random(), index % 3 == 2, rng.random()))
    return plan


def _chunk(plan: list[Trial], chunk: int) -> list[Trial]:
    """Slice ``chunk`` of :data:`CHUNKS` (each of an even length, starting with an apply)."""
    size = -(-len(plan) // CHUNKS)
    size += size % 2
    return plan[chunk * size : (chunk + 1) * size]


def test_the_plan_covers_every_part_of_both_actions_in_even_slices() -> None:
    plan = _plan(SEED, TRIALS)
    assert {t.part for t in plan if t.action == "apply"} == {"before", *APPLY_TARGETS, "after"}
    assert {t.part for t in plan if t.action == "rollback"} == {"before", *ROLLBACK_TARGETS, "after"}
    slices = [_chunk(plan, chunk) for chunk in range(CHUNKS)]
    assert [t for part in slices for t in part] == plan
    assert all(part and part[0].action == "apply" for part in slices)
    assert all(len(part) % 2 == 0 for part in slices[:-1])


def _run_recovery(install: Install, kill_after: float | None, how: str) -> tuple[str, bool]:
    """Run the recovery patch-status names (killing it once ``kill_after`` seconds after its start
    when given, then recovering again). Returns ``(command run or '-', whether a kill landed in it)``."""
    advice = status_json(install)["recovery"]
    if advice is None:
        return "-", False
    assert advice["command"], advice
    args = list(advice["args"])
    killed = False
    if kill_after is not None:
        proc = inv_popen(install, *args)
        try:
            proc.wait(timeout=kill_after)
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


def _slice_marks(chunk: int) -> list[pytest.MarkDecorator]:
    """Slice 0 runs in ``make test``, slice 1 in ``make test-slow``, the others are ``stress`` (``nox
    -s stress``): each slice is about a minute of one worker, and make test's 8-minute budget on two
    cores holds one beside everything else."""
    group = pytest.mark.xdist_group(f"kill-matrix-{chunk}")
    return [group, *([pytest.mark.slow] if chunk == 1 else [pytest.mark.stress] if chunk > 1 else [])]


@pytest.mark.parametrize(
    "chunk",
    [  # a slice a small KILL_MATRIX_TRIALS leaves empty is not collected (never a skipped test)
        pytest.param(c, marks=_slice_marks(c)) for c in range(CHUNKS) if _chunk(_plan(SEED, TRIALS), c)
    ],
)
def test_random_instant_kills_end_exactly_old_or_new(
    install: Install, tmp_path: Path, record_property: Any, chunk: int
) -> None:
    trials = _chunk(_plan(SEED, TRIALS), chunk)
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

    aimed: Counter[str] = Counter()
    landed: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    recoveries: Counter[str] = Counter()
    current = "old"
    for trial in trials:
        action, how = trial.action, trial.how
        if action == "rollback" and current == "old":
            _timed(install, *apply_args)  # a rollback needs the new version
        elif action == "apply" and current == "new":
            _timed(install, *rollback_args)
            drop_displaced(install)
        target = (trial.part, trial.fraction)
        _, where = _watch(
            install, apply_args if action == "apply" else rollback_args, action, target, how, spans[action]
        )
        aimed[f"{action}: {target[0]}"] += 1
        landed[f"{action}: {where}"] += 1
        span = sum(spans[action].values())
        kill_after = trial.recovery_fraction * span if trial.kill_recovery else None
        command, recovery_killed = _run_recovery(install, kill_after, how)
        recoveries[f"{command}{' (itself killed once)' if recovery_killed else ''}"] += 1
        try:
            current = check_exact(install, versions)
        except AssertionError as exc:
            raise AssertionError(
                f"trial {trial.index} (seed {SEED}): {action} killed ({how}) aiming at {target[0]} "
                f"+{target[1]:.2f}, landed {where}; recovery {command}: {exc}"
            ) from None
        outcomes[f"{action} killed -> {current}"] += 1
        drop_displaced(install)

    summary = (
        f"kill matrix: seed {SEED}, trials {trials[0].index}-{trials[-1].index} of {TRIALS}; spans apply "
        f"{ {k: round(v, 2) for k, v in spans['apply'].items()} }, rollback "
        f"{ {k: round(v, 2) for k, v in spans['rollback'].items()} }; aimed {dict(sorted(aimed.items()))}; "
        f"landed {dict(sorted(landed.items()))}; "
        f"recovery {dict(sorted(recoveries.items()))}; ended {dict(sorted(outcomes.items()))}"
    )
    record_property("summary", summary)
    print(summary)
    assert sum(outcomes.values()) == len(trials)
