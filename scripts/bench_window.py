"""Bench rows "stopped window": how long an apply without a pending migration keeps the services
down, against the floor (issue 26).

A sample install (command service manager: the api and worker node processes; a real PostgreSQL in
a throwaway cluster, tests/support/services.py) at 2.2.0 with a database of about ``rows`` x 290
bytes (~100 MB at 350,000 rows), and a release 2.3.0 without migrations (files added, changed and
deleted). Interleaved, ``repeat`` times:

* the **floor**: the same services stopped, started and answering healthy at the health URL, with
  no patch (patchflow's own stop, bounded start and health check, in this process: no ``inv``
  start-up is counted, as none is counted inside an apply's window);
* ``inv apply-patch --version 2.3.0``: its stopped window as the apply records it
  (``stopped_seconds`` in ``history.jsonl``: from the stop to the new version proven healthy),
  and its ``dump`` step (taken before the stop), then ``inv rollback-patch`` (not timed here).

Kept apart from bench.py so a change of the sample or of the history record touches only this file.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
FILL_SQL = """
CREATE TABLE bench_events (id bigint PRIMARY KEY, kind text NOT NULL, payload text NOT NULL, at timestamptz NOT NULL);
INSERT INTO bench_events
SELECT g, 'kind' || (g % 37), md5(g::text) || repeat(md5((g * 7)::text), 3) || md5(random()::text),
       timestamptz '2025-01-01' + g * interval '1 second'
FROM generate_series(1, {rows}) AS g;
CREATE INDEX bench_events_kind ON bench_events (kind);
ANALYZE;
"""


def _inv(inv: list[str], root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*inv, args[0], "--root", str(root), *args[1:]],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"bench: inv {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def _floor(root: Path) -> float:
    """Seconds to stop the install's application services, start them and see them healthy."""
    from patchflow.config import load_settings
    from patchflow.context import Context
    from patchflow.services import start_with_retries, wait_services_healthy

    ctx = Context.create(load_settings(root))
    started = time.perf_counter()
    ctx.services.stop()
    start_with_retries(
        ctx.services,
        ctx.settings.start_retries,
        urls=ctx.settings.health_url,
        ready_timeout=ctx.settings.health_timeout,
    )
    wait_services_healthy(ctx.services, ctx.settings, expect_version=None)
    return time.perf_counter() - started


def measure_window(repeat: int, inv: list[str], settle: Callable[[], None], rows: int = 350_000) -> dict[str, Any]:
    """Set up the install, then time (interleaved, ``repeat`` times) the floor and the stopped
    window of an apply without migrations. Returns the samples (seconds) and the database size."""
    sys.path.insert(0, str(REPO / "tests"))
    sys.path.insert(0, str(REPO / "scripts"))
    from sample_workspace import copy_patch, make_release, prepare_workspace
    from support.services import PostgresCluster  # type: ignore[import-not-found]

    base = Path(tempfile.mkdtemp(prefix="patchflow-bench-window-pg-"))
    base.chmod(0o755)
    cluster = PostgresCluster.start(base)
    work = Path(tempfile.mkdtemp(prefix="patchflow-bench-window-"))
    root = work / "install"
    try:
        cluster.create_database("window")
        prepare_workspace(
            root, database_url=cluster.url("window"), extra_env={"PATCHFLOW_PG_BINDIR": str(cluster.bindir)}
        )
        _inv(inv, root, "create-patch")
        _inv(inv, root, "apply-patch", "--version", "2.2.0", "--force", "--yes")
        cluster.psql("window", FILL_SQL.format(rows=rows))
        size = int(cluster.psql("window", "SELECT pg_database_size(current_database());").strip())
        source = make_release(root, work / "source", "2.3.0", migration=None)
        _inv(inv, source, "create-patch")
        copy_patch(source, root, "2.3.0")
        samples: dict[str, list[float]] = {"floor": [], "apply": [], "dump": [], "backup": [], "rollback": []}
        history = root / ".patchflow" / "history.jsonl"
        for index in range(repeat):

            def floor() -> None:
                samples["floor"].append(_floor(root))

            def apply() -> None:
                _inv(inv, root, "apply-patch", "--version", "2.3.0", "--yes")
                record = json.loads(history.read_text().splitlines()[-1])
                samples["apply"].append(float(record["stopped_seconds"]))
                samples["dump"].append(float(record["steps"].get("dump", 0.0)))
                samples["backup"].append(float(record["steps"]["backup"]))
                _inv(inv, root, "rollback-patch", "--yes")
                back = json.loads(history.read_text().splitlines()[-1])
                samples["rollback"].append(float(back.get("stopped_seconds") or 0.0))

            for action in (floor, apply) if index % 2 == 0 else (apply, floor):
                settle()
                action()
        return {"samples": samples, "database_bytes": size}
    finally:
        subprocess.run([*inv, "down", "--root", str(root)], capture_output=True, check=False, stdin=subprocess.DEVNULL)
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":  # pragma: no cover - manual use
    print(measure_window(1, [str(Path(sys.executable).parent / "inv"), "-r", str(REPO)], lambda: None))
