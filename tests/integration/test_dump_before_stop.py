"""An apply whose patch changes no schema dumps the database before the stop (issue 26).

With no pending migration the ``dump`` step takes the backup's proven dump while the old version
still serves, so the stopped window holds no database work; ``rollback-patch --restore-database``
still restores that dump exactly. Every new boundary (before, inside and after the dump step, and
the stopped steps after it) is killed with a real SIGKILL and recovered by the command
``patch-status`` names, ending exactly on the old version; a migration that becomes pending after
the plan is refused without running it. Real PostgreSQL and real node services throughout.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from support.exact import NEW, OLD, assert_exactly_old, status_json
from support.installs import Install, get, history, inv_popen, set_dotenv, wait_until
from support.killing import wait_stopped
from support.pgbin import wrapped_pg_bindir
from support.trials import read_journal, recover

from patchflow.lifecycle.apply import APPLY_STEPS
from patchflow.stopped_window import STOPPED_STEPS

pytestmark = pytest.mark.integration

HOOK = "PATCHFLOW_TEST_KILL_AT"
KILLED = (-9, 137)
APPLY = ("apply-patch", "--version", NEW, "--yes")


def _out(done: Any) -> str:
    return str(done.stdout) + str(done.stderr)


def _backup_record(install: Install, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((install.root / "backups" / name / "backup.json").read_text())
    return data


def test_the_dump_step_is_declared_before_the_stop_and_outside_the_stopped_window() -> None:
    names = [s.name for s in APPLY_STEPS]
    dump = next(s for s in APPLY_STEPS if s.name == "dump")
    assert names.index("stage") < names.index("dump") < names.index("stop")
    assert not dump.stopped and dump.undo_label == "drop-dump"
    assert "dump" not in STOPPED_STEPS


def test_without_migrations_the_dump_is_taken_before_the_stop_and_restored_exactly(
    install: Install, tmp_path: Path
) -> None:
    install.release(tmp_path, NEW, migration=None)
    tree_before, db_before = install.state(), install.pg_dump()

    # held just before the stop step: the dump is already complete and proven, the old version serves
    proc = inv_popen(install, *APPLY, env={HOOK: "stop=SIGSTOP"})
    try:
        wait_stopped(proc.pid)
        journal = read_journal(install)
        assert journal is not None
        assert [s["name"] for s in journal["steps"]][-2:] == ["stage", "dump"], journal["steps"]
        assert journal["steps"][-1]["state"] == "done" and journal["notes"]["dump_before_stop"] is True
        record = _backup_record(install, journal["backup"])
        assert record["database"]["taken"] == "before the stop" and not record.get("complete")
        dump = install.root / "backups" / journal["backup"] / record["database"]["file"]
        assert hashlib.sha256(dump.read_bytes()).hexdigest() == record["database"]["sha256"]
        code, body = get(install.health_url)
        assert code == 200 and json.loads(body)["version"] == OLD, body
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    flat = " ".join(out.split())
    assert "database dump" in flat and "taken before the stop" in flat, out  # the plan says where and why
    assert flat.index("-> dump") < flat.index("database dump (before the stop)") < flat.index("dump proven")
    assert flat.index("dump proven") < flat.index("-> stop") < flat.index("database: dumped before the stop")

    last = history(install)[-1]
    assert last["result"] == "success" and last["steps"]["dump"] > 0, last
    # the stopped backup step's work is the files alone: the database is not scaled into the window
    assert last["work"]["backup_bytes"] < record["database"]["properties"]["size"], last["work"]
    assert last["stopped_seconds"] < sum(last["steps"][s] for s in last["steps"]), last
    final = _backup_record(install, journal["backup"])
    assert final["complete"] and final["database"]["sha256"] == record["database"]["sha256"]

    install.sql('CREATE TABLE "WrittenByNew" ("id" INTEGER PRIMARY KEY); INSERT INTO "WrittenByNew" VALUES (1);')
    done = install.inv("rollback-patch", "--yes", "--restore-database")
    assert done.returncode == 0, _out(done)
    assert_exactly_old(install, tree_before, db_before)  # the dump, restored: the full pg_dump compared
    displaced = status_json(install)["displaced_databases"]
    assert len(displaced) == 1, displaced
    name = displaced[0]["name"]
    assert install.cluster.psql(name, 'SELECT count(*) FROM "WrittenByNew";\n').strip() == "1"


def test_a_failed_health_check_without_migrations_keeps_the_live_database(install: Install, tmp_path: Path) -> None:
    install.release(tmp_path, NEW, migration=None, health_status=500)
    tree_before, db_before = install.state(), install.pg_dump()
    done = install.inv(*APPLY, "--health-timeout", "3")
    assert done.returncode != 0 and "rolled back automatically" in " ".join(_out(done).split()), _out(done)
    assert "database kept: no migration was pending" in done.stdout, done.stdout
    assert_exactly_old(install, tree_before, db_before)
    assert not [d for d in install.cluster.psql("postgres", "SELECT datname FROM pg_database;\n").split() if
                d.startswith(f"{install.dbname}_")]  # fmt: skip


@pytest.mark.parametrize(
    "boundary", ["dump:after", pytest.param("stop:after", marks=pytest.mark.stress), "backup:after"]
)
def test_killed_around_the_moved_dump_the_recovery_ends_exactly_old(
    install: Install, tmp_path: Path, boundary: str
) -> None:
    install.release(tmp_path, NEW, migration=None)
    tree_before, db_before = install.state(), install.pg_dump()
    done = install.inv(*APPLY, env={HOOK: boundary})
    assert done.returncode in KILLED, _out(done)
    assert status_json(install)["interrupted"]["step"] == boundary.split(":")[0]
    recover(install)
    assert_exactly_old(install, tree_before, db_before)
    leftover = [p.name for p in (install.root / "backups").glob("pre-patch-v2.3.0_*")]
    complete = [n for n in leftover if _backup_record(install, n).get("complete")]
    assert leftover == complete, "an incomplete backup of the undone apply is removed"
    assert bool(complete) == (boundary == "backup:after"), leftover


def _gated_pg_dump(folder: Path, real_bindir: Path, gate: Path) -> Path:
    """A pg_bindir whose pg_dump notes its start (``<gate>.entered``), waits while ``gate`` exists,
    then runs the real one."""
    return wrapped_pg_bindir(
        folder,
        real_bindir,
        "pg_dump",
        f'touch "{gate}.entered"\nwhile [ -e "{gate}" ]; do sleep 0.05; done\nexec "$REAL" "$@"\n',
    )


def _run_processes(marker_prefix: str) -> list[int]:
    """Live processes whose environment carries a run marker (``PF_RUN_ID``) of this install."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X") and any(
            v.startswith(f"PF_RUN_ID={marker_prefix}".encode()) for v in environ.split(b"\0")
        ):
            found.append(int(entry))
    return found


def test_killed_inside_the_dump_the_orphan_dump_is_ended_and_nothing_was_stopped(
    install: Install, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    set_dotenv(install, "PATCHFLOW_PG_BINDIR", str(_gated_pg_dump(tmp_path / "pgbin", install.cluster.bindir, gate)))
    install.release(tmp_path, NEW, migration=None)
    tree_before, db_before = install.state(), install.pg_dump()
    gate.write_text("held")
    proc = inv_popen(install, *APPLY)
    # the run's other commands (psql, git of the plan) carry the same marker: wait for the pg_dump itself
    wait_until(lambda: gate.with_name("gate.entered").exists(), 120, "the dump's pg_dump")
    orphans = _run_processes(str(install.root))
    journal = read_journal(install)
    assert journal is not None and journal["steps"][-1]["name"] == "dump" and journal["backup"], journal
    os.kill(proc.pid, signal.SIGKILL)  # the tool dies; its pg_dump waits on as an orphan
    proc.communicate()
    code, body = get(install.health_url)
    assert code == 200 and json.loads(body)["version"] == OLD, "the old version never stopped"
    assert status_json(install)["interrupted"]["step"] == "dump"
    recover(install)
    assert not [p for p in orphans if Path(f"/proc/{p}").exists() and p in _run_processes(str(install.root))]
    gate.unlink()
    assert not (install.root / "backups" / journal["backup"]).exists()
    assert_exactly_old(install, tree_before, db_before)


def test_a_migration_pending_after_the_plan_is_refused_and_the_database_kept(install: Install, tmp_path: Path) -> None:
    """The plan found no pending migration (dump before the stop); while the apply is held before its
    migrate step, a row of the migration history goes: the migrate step refuses, runs nothing, and
    the rollback keeps the database as it is (a restore of the early dump would lose rows)."""
    install.release(tmp_path, NEW, migration=None)
    tree_before = install.state()
    proc = inv_popen(install, *APPLY, env={HOOK: "migrate=SIGSTOP"})
    try:
        wait_stopped(proc.pid)
        first = install.sql('SELECT migration_name FROM "_prisma_migrations" ORDER BY migration_name LIMIT 1')
        install.sql(f"DELETE FROM \"_prisma_migrations\" WHERE migration_name = '{first}'")
        install.sql('CREATE TABLE "WrittenMeanwhile" ("id" INTEGER PRIMARY KEY)')
        db_held = install.pg_dump()
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode != 0, out + err
    flat = " ".join((out + err).split())
    assert f"Migration(s) {first} became pending after the plan" in flat and "none was run" in flat, flat
    assert "rolled back automatically" in flat and "database kept" in flat, flat
    assert_exactly_old(install, tree_before, db_held)
