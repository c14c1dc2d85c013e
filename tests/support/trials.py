"""Helpers of the crash trials (tests/integration/test_kill_matrix.py, test_crash_probes.py):
snapshots of the old and new version and the exact check against them (tree, full dump without the
migration rows' times, migration history, services, no lock, journal, leftovers, half-restored
database or snapshot patch-status does not list), reading the journal while a run goes on, hitting
a run at a journal instant (SIGKILL of the main process or of the whole tree, or a signal), and
running the recovery patch-status names."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from typing import Any

from support.exact import app_processes
from support.installs import Install, get, inv_popen, status_json
from support.killing import kill

OLD, NEW = "2.2.0", "2.3.0"
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


def dump(install: Install) -> str:
    """The full dump without the data of the migration history (its rows carry times and ids of
    each run; :func:`migrations` compares them)."""
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


def migrations(install: Install) -> list[str]:
    """Each migration row as ``name|finished|not rolled back``, sorted."""
    return install.sql(
        "SELECT migration_name || '|' || (finished_at IS NOT NULL) || '|' || (rolled_back_at IS NULL) "
        'FROM "_prisma_migrations" ORDER BY migration_name'
    ).split()


def snapshot(install: Install) -> dict[str, Any]:
    return {"tree": install.state(), "dump": dump(install), "migrations": migrations(install)}


def other_databases(install: Install) -> list[str]:
    rows = install.cluster.psql(
        "postgres", f"SELECT datname FROM pg_database WHERE datname LIKE '{install.dbname}\\_%';\n"
    )
    return rows.split()


def drop_displaced(install: Install) -> None:
    """The databases a restore moved aside are kept for the operator; trials drop them so dozens of
    runs do not fill the cluster."""
    for name in other_databases(install):
        install.cluster.drop_database(name)


def diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {
        "extra": sorted(set(a) - set(b))[:10],
        "missing": sorted(set(b) - set(a))[:10],
        "different": sorted(p for p in a.keys() & b.keys() if a[p] != b[p])[:10],
    }


def check_exact(install: Install, versions: dict[str, dict[str, Any]]) -> str:
    """The version the install is exactly on (``old`` or ``new``); fails with the differences."""
    status = status_json(install)
    assert status["interrupted"] is None, status["interrupted"]
    assert status["lock"] is None, status["lock"]
    assert status["leftovers"] == [], status["leftovers"]
    assert status["recovery"] is None, status["recovery"]
    tree = install.state()
    name = next((n for n, v in versions.items() if v["tree"] == tree), None)
    if name is None:
        raise AssertionError(
            {
                "vs old": diff(tree, versions["old"]["tree"]),
                **({"vs new": diff(tree, versions["new"]["tree"])} if "new" in versions else {}),
                "version": (install.root / "VERSION").read_text(),
            }
        )
    expected = versions[name]
    version = OLD if name == "old" else NEW
    assert status["installed_version"] == version
    assert dump(install) == expected["dump"], f"the database is not exactly the {name} one"
    assert migrations(install) == expected["migrations"]
    leftovers = [d for d in other_databases(install) if "_restoring_" in d]
    assert not leftovers, f"half-restored databases left: {leftovers}"
    snapshots = {d for d in other_databases(install) if "_snap_" in d}
    listed = {s["name"] for s in status["snapshots"]}
    assert snapshots <= listed, f"snapshots patch-status does not list: {sorted(snapshots - listed)}"
    state = install.root / ".patchflow"
    tracked = {json.loads(p.read_text())["pid"] for p in (state / "run").glob("*.pid")}
    assert len(tracked) == 2, tracked
    assert app_processes(install.root) == tracked, "a service process runs untracked"
    code, body = get(install.health_url)
    assert code == 200 and json.loads(body)["version"] == version, body
    return name


def read_journal(install: Install) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((install.root / ".patchflow" / "journal.json").read_text())
    except (OSError, ValueError):
        return None
    return data


def reached(install: Install, label: str, phase: str) -> bool:
    data = read_journal(install)
    if data is None:
        return False
    return any(s["name"] == label and s.get("phase", "forward") == phase for s in data.get("steps", []))


def last_record(install: Install) -> str:
    data = read_journal(install)
    if data is None:
        return "no journal"
    last = data["steps"][-1] if data.get("steps") else {"name": "-", "state": "-"}
    return f"{last['name']} ({last['state']}, {last.get('phase')})"


def measure(
    install: Install, args: tuple[str, ...], label: str, phase: str, env: dict[str, str] | None = None
) -> tuple[float, subprocess.CompletedProcess[str] | tuple[int, str]]:
    """Run ``inv args`` to the end; return how long ``label`` (in ``phase``) ran (to the next record)."""
    proc = inv_popen(install, *args, env=env)
    began = None
    ended = None
    while proc.poll() is None:
        data = read_journal(install)
        if data is not None:
            steps = data.get("steps", [])
            idx = next(
                (i for i, s in enumerate(steps) if s["name"] == label and s.get("phase", "forward") == phase), None
            )
            if idx is not None and began is None:
                began = time.monotonic()
            if idx is not None and ended is None and (steps[idx]["state"] != "started" or idx < len(steps) - 1):
                ended = time.monotonic()
        elif began is not None and ended is None:
            ended = time.monotonic()
        time.sleep(0.002)
    out, err = proc.communicate()
    found = re.search(rf"{re.escape(label)} done in ([0-9.]+) s", out)
    if found:
        return float(found.group(1)), (proc.returncode, out + err)
    if began is not None and ended is None:
        ended = time.monotonic()
    return ((ended or 0) - (began or 0)), (proc.returncode, out + err)


def run_and_hit(
    install: Install,
    args: tuple[str, ...],
    label: str,
    phase: str,
    delay: float,
    how: str,
    env: dict[str, str] | None = None,
) -> tuple[str, int, str]:
    """Start ``inv args``; ``delay`` s after the journal shows ``label`` started in ``phase``, hit it:
    ``how`` is ``main``/``tree`` (SIGKILL) or a signal name sent to the main process. Returns
    (where it landed, exit code, output)."""
    proc = inv_popen(install, *args, env=env)
    where = "finished first"
    while proc.poll() is None:
        if reached(install, label, phase):
            time.sleep(delay)
            if proc.poll() is not None:
                break
            where = last_record(install)
            if how in ("main", "tree"):
                kill(proc.pid, how)
            else:
                os.kill(proc.pid, signal.Signals[how])
            break
        time.sleep(0.002)
    out, err = proc.communicate(timeout=600)
    return where, proc.returncode, out + err


def recover(
    install: Install, rng: random.Random | None = None, kills: int = 0, span: float = 1.0, how: str = "main"
) -> list[str]:
    """Run the recovery patch-status names, killing it ``kills`` times at random instants first.
    Returns the commands run."""
    ran = []
    for attempt in range(kills + 1):
        advice = status_json(install)["recovery"]
        if advice is None:
            return ran
        assert advice["command"], advice
        args = list(advice["args"])
        ran.append(" ".join(args))
        proc = inv_popen(install, *args)
        if attempt < kills:
            assert rng is not None
            try:
                proc.wait(timeout=rng.uniform(0.05, span))
            except subprocess.TimeoutExpired:
                kill(proc.pid, how)
            proc.communicate()
            continue
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"recovery {' '.join(args)} failed ({proc.returncode}):\n{out}\n{err}"
    advice = status_json(install)["recovery"]
    assert advice is None, advice
    return ran
