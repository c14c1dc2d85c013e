"""Kills at the boundaries of the snapshot steps recover exactly (issue 26).

A real SIGKILL before, inside and after the ``snapshot`` step (its name recorded but no copy yet;
the copy made but not yet the backup's; a ``CREATE DATABASE`` cut off with its ``psql``), inside
its undo ``drop-snapshot`` and around the ``restore-database`` that puts it back, and before,
inside (a gated ``pg_dump`` of the snapshot) and after ``dump-snapshot``; then the recovery
``patch-status`` names. Undone runs end exactly old (tree, full ``pg_dump``, services), finished
ones exactly new with a proven dump; at every instant each snapshot on the server is one
patch-status lists, and none is left once a run is undone.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from support.exact import NEW, OLD, assert_exactly_new, assert_exactly_old, read_manifest, status_json
from support.installs import Install, history, inv_popen, set_dotenv, wait_until
from support.killing import kill
from support.pgbin import wrapped_pg_bindir
from support.trials import recover

pytestmark = pytest.mark.integration

HOOK = "PATCHFLOW_TEST_KILL_AT"
KILLED = (-9, 137)
APPLY = ("apply-patch", "--version", NEW, "--yes")
FAST_HEALTH = ("--health-timeout", "3")


def _out(done: Any) -> str:
    return str(done.stdout) + str(done.stderr)


def _on_server(install: Install) -> list[str]:
    rows = install.cluster.psql(
        "postgres", f"SELECT datname FROM pg_database WHERE datname LIKE '{install.dbname}\\_snap\\_%' ORDER BY 1;\n"
    )
    return rows.split()


def assert_listed(install: Install) -> dict[str, Any]:
    """Every snapshot of the install's database on the server is one patch-status lists."""
    status = status_json(install)
    listed = {s["name"] for s in status["snapshots"]}
    assert set(_on_server(install)) <= listed, (_on_server(install), listed)
    return status


def _killed(install: Install, boundary: str, *extra: str) -> None:
    done = install.inv(*APPLY, *extra, env={HOOK: boundary})
    assert done.returncode in KILLED, _out(done)


@pytest.mark.parametrize(
    ("boundary", "made"),
    [
        ("snapshot", False),  # stopped, nothing noted yet
        ("snapshot-recorded", False),  # noted and recorded, not copied
        ("snapshot-created", True),  # copied, not yet the backup's
        ("snapshot:after", True),
        ("backup:after", True),
        ("migrate:after", True),
    ],
)
def test_killed_around_the_snapshot_the_recovery_drops_it_and_ends_exactly_old(
    install: Install, tmp_path: Path, boundary: str, made: bool
) -> None:
    install.release(tmp_path, NEW)
    tree_before, db_before = install.state(), install.pg_dump()
    _killed(install, boundary)
    status = assert_listed(install)
    assert status["interrupted"] is not None and status["interrupted"]["action"] == "apply"
    assert bool(_on_server(install)) == made
    if boundary != "snapshot":
        [recorded] = status["snapshots"]
        # the copy is recorded as made once the backup names it
        assert (recorded["created_at"] is None) == (boundary in ("snapshot-recorded", "snapshot-created")), recorded
    recover(install)
    assert_exactly_old(install, tree_before, db_before)
    assert _on_server(install) == [] and status_json(install)["snapshots"] == []


def _gated(folder: Path, real: Path, program: str, gate: Path) -> Path:
    """A pg_bindir whose ``program``, when it works on the snapshot, notes its start
    (``<gate>.entered``): ``pg_dump`` of the snapshot then waits while ``gate`` exists; ``psql``
    copying the database into the snapshot starts the real one in the background, notes it and
    waits for it (the statement runs on the server while the tool is killed)."""
    if program == "psql":
        body = (
            f'case "$*" in *CREATE?DATABASE*_snap_*TEMPLATE*) "$REAL" "$@" & touch "{gate}.entered"; wait $!; '
            "exit $? ;; esac\n"
            'exec "$REAL" "$@"\n'
        )
    else:
        body = (
            f'case "$PGDATABASE" in *_snap_*) touch "{gate}.entered"; while [ -e "{gate}" ]; do sleep 0.05; done ;; '
            "esac\n"
            'exec "$REAL" "$@"\n'
        )
    return wrapped_pg_bindir(folder, real, program, body)


@pytest.mark.parametrize("how", ["main", "tree"])
def test_a_copy_cut_off_with_its_psql_is_never_left_unlisted(install: Install, tmp_path: Path, how: str) -> None:
    """Killed while the ``CREATE DATABASE`` of the snapshot runs: the server goes on with it after
    its ``psql`` is gone; whichever finishes first, the snapshot is listed until the recovery ends
    that copy and drops what it made."""
    gate = tmp_path / "gate"
    bindir = _gated(tmp_path / "pgbin", install.cluster.bindir, "psql", gate)
    set_dotenv(install, "PATCHFLOW_PG_BINDIR", str(bindir))
    install.release(tmp_path, NEW)
    tree_before, db_before = install.state(), install.pg_dump()
    proc = inv_popen(install, *APPLY)
    wait_until(lambda: gate.with_name("gate.entered").exists(), 120, "the snapshot's CREATE DATABASE")
    kill(proc.pid, how)
    proc.communicate()
    assert_listed(install)
    recover(install)
    assert_exactly_old(install, tree_before, db_before)
    assert _on_server(install) == [] and status_json(install)["snapshots"] == []


@pytest.mark.parametrize("boundary", ["restore-database", "restore-database:after", "drop-snapshot"])
def test_killed_while_a_failed_apply_puts_the_snapshot_back_the_recovery_ends_exactly_old(
    install: Install, tmp_path: Path, boundary: str
) -> None:
    install.release(tmp_path, NEW, health_status=500)
    tree_before, db_before = install.state(), install.pg_dump()
    _killed(install, boundary, *FAST_HEALTH)
    status = assert_listed(install)
    assert status["interrupted"]["phase"] == "rolling_back"
    recover(install)
    assert_exactly_old(install, tree_before, db_before)
    assert _on_server(install) == [] and status_json(install)["snapshots"] == []
    [displaced] = status_json(install)["displaced_databases"]
    assert "AuditLog" in install.cluster.psql(displaced["name"], "SELECT tablename FROM pg_tables;\n")


def _dump_proven(install: Install) -> None:
    last = history(install)[-1]
    record = json.loads((install.root / "backups" / last["backup"] / "backup.json").read_text())
    assert record["database"]["taken"].startswith("from the snapshot"), record["database"]
    [snapshot] = status_json(install)["snapshots"]
    assert snapshot["dump"] == "proven" and snapshot["exists"] is True, snapshot


@pytest.mark.parametrize("boundary", ["commit:after", "dump-snapshot:after"])
def test_killed_around_the_dump_of_the_snapshot_the_recovery_finishes_exactly_new(
    install: Install, tmp_path: Path, boundary: str
) -> None:
    before = install.state()
    install.release(tmp_path, NEW)
    _killed(install, boundary)
    status = assert_listed(install)
    assert status["interrupted"]["step"] == boundary.split(":")[0]
    recover(install)
    assert_exactly_new(install, before, read_manifest(install, OLD), read_manifest(install, NEW))
    _dump_proven(install)


def test_killed_inside_the_dump_of_the_snapshot_the_recovery_dumps_it_again(install: Install, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    bindir = _gated(tmp_path / "pgbin", install.cluster.bindir, "pg_dump", gate)
    set_dotenv(install, "PATCHFLOW_PG_BINDIR", str(bindir))
    before = install.state()
    install.release(tmp_path, NEW)
    gate.write_text("held")
    proc = inv_popen(install, *APPLY)
    wait_until(lambda: gate.with_name("gate.entered").exists(), 120, "the pg_dump of the snapshot")
    os.kill(proc.pid, signal.SIGKILL)  # its pg_dump waits on as an orphan
    proc.communicate()
    assert status_json(install)["interrupted"]["step"] == "dump-snapshot"
    gate.unlink()
    recover(install)
    assert_exactly_new(install, before, read_manifest(install, OLD), read_manifest(install, NEW))
    _dump_proven(install)


@pytest.mark.parametrize("boundary", ["restore-database", "restore-database:after"])
def test_a_rollback_killed_around_the_rename_of_the_snapshot_is_finished_exactly_old(
    install: Install, tmp_path: Path, boundary: str
) -> None:
    install.release(tmp_path, NEW)
    tree_before, db_before = install.state(), install.pg_dump()
    assert install.inv(*APPLY).returncode == 0
    done = install.inv("rollback-patch", "--yes", env={HOOK: boundary})
    assert done.returncode in KILLED, _out(done)
    assert_listed(install)
    recover(install)
    assert_exactly_old(install, tree_before, db_before)
    assert _on_server(install) == [] and status_json(install)["snapshots"] == []
