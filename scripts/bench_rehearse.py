"""Bench row "rehearsal vs apply" (issue 21): ``inv rehearse`` on the sample with a database of
about 100 MB, against the real apply's migrate step of the same patch.

A throwaway PostgreSQL cluster (tests/support/services.py) holds the sample installed at 2.2.0 with
its services running; its ``"User"`` table is filled to about 100 MB. Release 2.3.0 carries the
sample's audit migration plus a backfill of the new column and an index on it, so the migration
works through the whole table (the sample's own migration alone is a metadata change that takes
milliseconds either way). Each round, in alternating order: ``inv rehearse --version 2.3.0 --json``
(its migration's seconds), and ``inv apply-patch --yes`` (the migrate step's seconds from the
history record) followed by ``inv rollback-patch --yes`` (not timed). Around each rehearsal it
checks what the done-list asks: no database left behind, the services' processes unchanged and
answering. Ratios, never absolute thresholds.

Usage: python scripts/bench_rehearse.py [--repeat 3] [--users 240000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from sample_workspace import AUDIT_MIGRATION, copy_patch, make_release  # noqa: E402

INV = [str(Path(sys.executable).parent / "inv"), "-r", str(REPO)]
DBNAME = "rehearse"
MIGRATION = (
    AUDIT_MIGRATION
    + """
-- Backfill
UPDATE "User" SET "nickname" = split_part("email", '@', 1);

-- CreateIndex
CREATE INDEX "User_nickname_idx" ON "User"("nickname");
"""
)
FILL_SQL = """
INSERT INTO "User" ("email", "name", "role", "updatedAt")
SELECT 'user' || g || '@bench.primeflow.test', repeat(md5(g::text), 6), 'MEMBER', CURRENT_TIMESTAMP
FROM generate_series(1, {users}) AS g;
ANALYZE;
"""


def inv(root: Path, *args: str) -> str:
    """``inv <task> --root root <args>``; its stdout. Fails loudly on a non-zero exit."""
    done = subprocess.run(
        [*INV, args[0], "--root", str(root), *args[1:]], stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"inv {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def last_migrate_step(root: Path) -> float:
    """Seconds of the migrate step of the newest apply in ``root``'s history."""
    lines = (root / ".patchflow" / "history.jsonl").read_text(encoding="utf-8").splitlines()
    for line in reversed(lines):
        record = json.loads(line)
        if record.get("action") == "apply" and "migrate" in record.get("steps", {}):
            return float(record["steps"]["migrate"])
    raise SystemExit("bench: no apply with a migrate step in the history")


def measure_rehearsal(work: Path, repeat: int, users: int = 240_000) -> dict[str, Any]:
    """Start a cluster and the sample, fill ~100 MB, and time ``repeat`` rounds (see the module).
    Returns ``rehearsed`` and ``applied`` (seconds per round), ``database_bytes``, ``copied_by``,
    and ``left_behind`` / ``services_stopped`` (rounds where a database was left / a service
    process changed or did not answer)."""
    from support.exact import app_processes  # type: ignore[import-not-found]
    from support.installs import health, start_install  # type: ignore[import-not-found]
    from support.services import PostgresCluster, shared_tempdir  # type: ignore[import-not-found]

    base = shared_tempdir("patchflow-bench-rehearse-pg-")
    cluster = PostgresCluster.start(base)
    result: dict[str, Any] = {"rehearsed": [], "applied": [], "left_behind": 0, "services_stopped": 0}
    try:
        cluster.create_database(DBNAME)
        install = start_install(work / "sample", cluster, DBNAME)
        try:
            cluster.psql(DBNAME, FILL_SQL.format(users=users))
            result["database_bytes"] = int(install.sql("SELECT pg_database_size(current_database())"))
            source = make_release(install.root, work / "sample-2.3.0", "2.3.0", migration=MIGRATION)
            inv(source, "create-patch")
            copy_patch(source, install.root, "2.3.0")

            def databases() -> list[str]:
                return sorted(cluster.psql("postgres", "SELECT datname FROM pg_database;\n").split())

            def rehearse() -> None:
                before, pids = databases(), app_processes(install.root)
                report = json.loads(inv(install.root, "rehearse", "--version", "2.3.0", "--json"))
                (migration,) = report["migrations"]
                result["rehearsed"].append(float(migration["seconds"]))
                result["copied_by"] = report["copied_by"]
                result["left_behind"] += databases() != before
                result["services_stopped"] += app_processes(install.root) != pids or health(install)[0] != 200

            def apply() -> None:
                inv(install.root, "apply-patch", "--version", "2.3.0", "--yes")
                result["applied"].append(last_migrate_step(install.root))
                inv(install.root, "rollback-patch", "--version", "2.3.0", "--yes")

            for index in range(repeat):
                for action in (rehearse, apply) if index % 2 == 0 else (apply, rehearse):
                    os.sync()
                    action()
        finally:
            inv(install.root, "down")
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
    return result


def describe(result: dict[str, Any]) -> str:
    """The bench's lines for ``result``: medians, the ratio and whether it is within 2x both ways."""
    rehearsed, applied = statistics.median(result["rehearsed"]), statistics.median(result["applied"])
    ratio = rehearsed / applied
    within = 0.5 <= ratio <= 2.0
    return (
        f"rehearsal on a {result['database_bytes'] / 1e6:.0f} MB sample database (copied by {result['copied_by']}): "
        f"migration {rehearsed:.2f} s rehearsed vs {applied:.2f} s in the apply's migrate step "
        f"(median of {len(result['applied'])}): ratio {ratio:.2f}, within 2x both ways: {'holds' if within else 'NO'}; "
        f"rounds leaving a database behind: {result['left_behind']}; rounds where a service stopped: "
        f"{result['services_stopped']}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--users", type=int, default=240_000, help="rows added to the sample's User table")
    parser.add_argument("--workdir", type=Path, default=None)
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="patchflow-bench-rehearse-", dir=options.workdir))
    try:
        print(describe(measure_rehearsal(work, options.repeat, options.users)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
