"""Bench rows "stopped window": how long an apply keeps the services down, against the floor
(issue 26), without a pending migration and with one.

A sample install (command service manager: the api and worker node processes; a real PostgreSQL in
a throwaway cluster, tests/support/services.py) at 2.2.0 with a database of about ``rows`` x 290
bytes (~100 MB at 350,000 rows), and a release 2.3.0 (files added, changed and deleted) without a
migration, or (``migration=True``) with the sample's migration. Interleaved, ``repeat`` times:

* the **floor**: the same services stopped, started and answering healthy at the health URL, with
  no patch (patchflow's own stop, bounded start and health check, in this process: no ``inv``
  start-up is counted, as none is counted inside an apply's window);
* ``inv apply-patch --version 2.3.0``: its stopped window as the apply records it
  (``stopped_seconds`` in ``history.jsonl``: from the stop to the new version proven healthy), its
  ``dump`` step (taken before the stop, no migration), ``snapshot`` and ``backup`` steps (inside
  the window) and ``dump-snapshot`` step (after the commit, with a migration: read from its
  output), then ``inv rollback-patch`` (its stopped window; the databases a rollback displaced and
  the snapshots left are dropped after it, so every round starts alike).

``snapshot`` sets ``database_snapshot`` (``auto``: the snapshot inside the window; ``off``: the
dump inside it, what an apply with a migration did before the snapshot); None leaves the setting
alone (an ``inv`` of a patchflow that has no such setting: the code before it). ``inv`` may be
another checkout's ``inv -r <checkout>``: the same scenario timed on other code.

Kept apart from bench.py so a change of the sample or of the history record touches only this file.
"""

from __future__ import annotations

import json
import re
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


def _drop_copies(cluster: Any) -> None:
    """Drop the databases rollbacks displaced and the snapshots applies kept (each ~ the database's
    size): every round starts with the one database."""
    rows = cluster.psql("postgres", "SELECT datname FROM pg_database WHERE datname LIKE 'window\\_%';")
    for name in rows.split():
        cluster.drop_database(name)


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


def _disk_copy(cluster: Any, work: Path) -> float:
    """Seconds to copy the live database's files (``cp -r`` of its ``base/<oid>`` folder, then
    ``sync -f``): the disk's own price for a full copy, measured just before the apply (the
    snapshot's ``STRATEGY FILE_COPY`` writes the same bytes and fsyncs them; on a virtual disk
    its speed varies several-fold from minute to minute)."""
    oid = cluster.psql("postgres", "SELECT oid FROM pg_database WHERE datname = 'window';").strip()
    target = work / "disk-copy"
    started = time.perf_counter()
    subprocess.run(["cp", "-r", str(cluster.datadir / "base" / oid), str(target)], check=True)
    subprocess.run(["sync", "-f", str(target)], check=True)
    seconds = time.perf_counter() - started
    shutil.rmtree(target)
    return seconds


def measure_window(
    repeat: int,
    inv: list[str],
    settle: Callable[[], None],
    rows: int = 350_000,
    *,
    migration: bool = False,
    snapshot: str | None = None,
    files: int = 0,
) -> dict[str, Any]:
    """Set up the install, then time (interleaved, ``repeat`` times) the floor and the stopped
    window of an apply (with the sample's migration when ``migration``; ``snapshot`` sets
    ``database_snapshot``; ``files``: the release also adds that many small files in a new folder,
    which its rollback must take away). With ``migration``, each apply follows a plain copy of the
    database's files (``disk_copy``: the baseline of its snapshot step). Returns the samples
    (seconds) and the database size (bytes)."""
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
        settings = {"PATCHFLOW_PG_BINDIR": str(cluster.bindir)}
        if snapshot is not None:
            settings["PATCHFLOW_DATABASE_SNAPSHOT"] = snapshot
        prepare_workspace(root, database_url=cluster.url("window"), extra_env=settings)
        _inv(inv, root, "create-patch")
        _inv(inv, root, "apply-patch", "--version", "2.2.0", "--force", "--yes")
        _drop_copies(cluster)  # the first apply's snapshot, if it took one
        cluster.psql("window", FILL_SQL.format(rows=rows))
        size = int(cluster.psql("window", "SELECT pg_database_size(current_database());").strip())
        if migration:
            source = make_release(root, work / "source", "2.3.0")
        else:
            source = make_release(root, work / "source", "2.3.0", migration=None)
        for index in range(files):  # a release adding a generated folder (a build, a vendored package)
            item = source / "src" / "generated" / f"part{index // 500:03d}" / f"module{index}.js"
            item.parent.mkdir(parents=True, exist_ok=True)
            item.write_text(f"export const value{index} = {index};\n")
        _inv(inv, source, "create-patch")
        copy_patch(source, root, "2.3.0")
        samples: dict[str, list[float]] = {
            "floor": [],
            "apply": [],
            "dump": [],
            "snapshot": [],
            "backup": [],
            "dump_after": [],
            "migrate": [],
            "rollback": [],
            "disk_copy": [],
        }
        history = root / ".patchflow" / "history.jsonl"
        for index in range(repeat):

            def floor() -> None:
                samples["floor"].append(_floor(root))

            def apply() -> None:
                if migration:
                    samples["disk_copy"].append(_disk_copy(cluster, work))
                    settle()
                done = _inv(inv, root, "apply-patch", "--version", "2.3.0", "--yes")
                record = json.loads(history.read_text().splitlines()[-1])
                samples["apply"].append(float(record["stopped_seconds"]))
                samples["dump"].append(float(record["steps"].get("dump", 0.0)))
                samples["snapshot"].append(float(record["steps"].get("snapshot", 0.0)))
                samples["backup"].append(float(record["steps"]["backup"]))
                samples["migrate"].append(float(record["steps"].get("migrate", 0.0)))
                after = re.search(r"dump-snapshot done in ([0-9.]+) s", done.stdout)
                samples["dump_after"].append(float(after.group(1)) if after else 0.0)
                _inv(inv, root, "rollback-patch", "--yes")
                back = json.loads(history.read_text().splitlines()[-1])
                samples["rollback"].append(float(back.get("stopped_seconds") or 0.0))
                _drop_copies(cluster)

            for action in (floor, apply) if index % 2 == 0 else (apply, floor):
                settle()
                action()
        return {"samples": samples, "database_bytes": size}
    finally:
        subprocess.run([*inv, "down", "--root", str(root)], capture_output=True, check=False, stdin=subprocess.DEVNULL)
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:  # pragma: no cover - manual use
    """``python scripts/bench_window.py [--repeat N] [--rows N] [--migration] [--snapshot auto|off]
    [--files N] [--inv-root CHECKOUT]``: print the medians of one scenario (``--inv-root``: time another
    checkout's patchflow, with its own ``.venv``)."""
    import argparse
    import os
    import statistics

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rows", type=int, default=350_000)
    parser.add_argument("--migration", action="store_true")
    parser.add_argument("--snapshot", choices=("auto", "off"), default=None)
    parser.add_argument("--files", type=int, default=0, help="files the release adds in a new folder")
    parser.add_argument("--inv-root", type=Path, default=REPO)
    options = parser.parse_args()
    checkout = options.inv_root.resolve()
    inv = [str(checkout / ".venv" / "bin" / "inv"), "-r", str(checkout)]

    def settle() -> None:
        os.sync()
        time.sleep(0.5)

    result = measure_window(
        options.repeat,
        inv,
        settle,
        options.rows,
        migration=options.migration,
        snapshot=options.snapshot,
        files=options.files,
    )
    samples = result["samples"]
    print(f"database {result['database_bytes'] / 1e6:.0f} MB, {options.repeat} rounds, patchflow of {checkout}")
    for key, values in samples.items():
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"  {key:<10} median {statistics.median(values):6.2f} s   ({shown})")


if __name__ == "__main__":  # pragma: no cover - manual use
    main()
