"""Bench row "database dump / restore": patchflow's Database.dump/restore against pg_dump -Fc /
pg_restore --clean on a generated database of about 100 MB, in a throwaway PostgreSQL cluster
(tests/support/services.py). Kept small and apart from bench.py: if the Database API changes,
only ``ours_dump`` / ``ours_restore`` below need adapting."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DBNAME = "bench"
FILL_SQL = """
CREATE TABLE events (id bigint PRIMARY KEY, kind text NOT NULL, payload text NOT NULL, at timestamptz NOT NULL);
INSERT INTO events
SELECT g, 'kind' || (g % 37), md5(g::text) || repeat(md5((g * 7)::text), 3) || md5(random()::text),
       timestamptz '2025-01-01' + g * interval '1 second'
FROM generate_series(1, {rows}) AS g;
CREATE INDEX events_kind ON events (kind);
CREATE TABLE users (id serial PRIMARY KEY, email text UNIQUE NOT NULL, profile jsonb NOT NULL);
INSERT INTO users (email, profile)
SELECT 'user' || g || '@example.com', jsonb_build_object('n', g, 'tags', jsonb_build_array('a', 'b', g % 10))
FROM generate_series(1, {users}) AS g;
ANALYZE;
"""


def measure_database(repeat: int, timed: Callable[[Callable[[], Any]], float], rows: int = 500_000) -> dict[str, Any]:
    """Start a cluster, fill ~100 MB, and time (interleaved, ``repeat`` times) patchflow's dump and
    restore against pg_dump -Fc / pg_restore --clean. Returns the samples (seconds) and sizes."""
    import sys

    sys.path.insert(0, str(REPO / "tests"))
    from support.services import PostgresCluster  # type: ignore[import-not-found]

    from patchflow.config import load_settings
    from patchflow.database import Database
    from patchflow.pg_target import target_from_settings
    from patchflow.runner import LocalRunner

    base = Path(tempfile.mkdtemp(prefix="patchflow-bench-pg-"))
    base.chmod(0o755)
    cluster = PostgresCluster.start(base)
    work = Path(tempfile.mkdtemp(prefix="patchflow-bench-db-"))
    try:
        cluster.create_database(DBNAME)
        cluster.psql(DBNAME, FILL_SQL.format(rows=rows, users=rows // 10))
        size = int(cluster.psql(DBNAME, "SELECT pg_database_size(current_database());").strip())
        project = work / "project"
        project.mkdir()
        settings = load_settings(
            project, environ={"DATABASE_URL": cluster.url(DBNAME), "PATCHFLOW_PG_BINDIR": str(cluster.bindir)}
        )
        target = target_from_settings(settings)
        assert target is not None
        database = Database(target, LocalRunner())
        env = {**os.environ, **cluster.env()}
        samples: dict[str, list[float]] = {"ours_dump": [], "pg_dump": [], "ours_restore": [], "pg_restore": []}
        dump_size = 0
        for index in range(repeat):
            ours_file = work / f"ours-{index}.dump"
            theirs_file = work / f"theirs-{index}.dump"

            def ours_dump(path: Path = ours_file) -> Any:
                return database.dump(path)

            def pg_dump(path: Path = theirs_file) -> None:
                subprocess.run([str(cluster.bin("pg_dump")), "-Fc", "-f", str(path), DBNAME], env=env, check=True)

            pairs = [("ours_dump", ours_dump), ("pg_dump", pg_dump)]
            for name, action in pairs if index % 2 == 0 else reversed(pairs):
                samples[name].append(timed(action))
            dump_size = ours_file.stat().st_size

            displaced: list[str] = []

            def ours_restore(
                path: Path = ours_file, stamp: str = f"20250101T0000{index:02}Z", displaced: list[str] = displaced
            ) -> None:
                # what a rollback does: restore into a new database beside the live one, swap names
                displaced.append(database.restore_beside(path, stamp))

            def pg_restore(
                path: Path = theirs_file, name: str = f"{DBNAME}_theirs_{index}", displaced: list[str] = displaced
            ) -> None:
                # the same work by hand: a new database, pg_restore into it
                subprocess.run([str(cluster.bin("createdb")), name], env=env, check=True)
                subprocess.run([str(cluster.bin("pg_restore")), "-d", name, str(path)], env=env, check=True)
                displaced.append(name)

            pairs = [("ours_restore", ours_restore), ("pg_restore", pg_restore)]
            for name, action in pairs if index % 2 == 0 else reversed(pairs):
                samples[name].append(timed(action))
            for name in displaced:  # not timed: a rollback keeps the displaced database for the operator
                cluster.drop_database(name)
        return {"samples": samples, "database_bytes": size, "dump_bytes": dump_size}
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":  # pragma: no cover - manual use

    def _timed(action: Callable[[], Any]) -> float:
        start = time.perf_counter()
        action()
        return time.perf_counter() - start

    print(measure_database(1, _timed))
