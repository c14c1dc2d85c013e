"""patch-status tells the truth (issue 19, fault 5): a running apply is RUNNING and only a killed
one INTERRUPTED; an apply rolled back (by rollback-patch or automatically) is shown rolled back,
not as the install; the displaced databases are listed with their size and age. Every JSON read
here is checked against the README's table. Real ``inv`` processes, a real SIGSTOP and SIGKILL,
a real PostgreSQL."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.exact import NEW, OLD, assert_exactly_old
from support.installs import Install, InstallTemplate, free_port, inv_popen, wait_until
from support.installs import cli_status_json as _status_json
from support.status_schema import assert_matches_readme

pytestmark = pytest.mark.integration

HOOK = "PATCHFLOW_TEST_KILL_AT"


def status_json(install: Install, env: dict[str, str] | None = None) -> dict[str, Any]:
    """``patch-status --json``, checked against the README's table."""
    status = _status_json(install, env)
    assert_matches_readme(status)
    return status


def status_text(install: Install, env: dict[str, str] | None = None) -> str:
    done = install.inv("patch-status", env=env)
    assert done.returncode == 0, done.stderr + done.stdout
    return " ".join(done.stdout.split())


def _stopped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except OSError:
        return False


@pytest.mark.parametrize(
    ("hold", "step", "step_state"), [("switch", "backup", "done"), ("switch-file#2", "switch", "started")]
)
def test_a_running_apply_is_running_and_only_a_killed_one_interrupted(
    install: Install, tmp_path: Path, hold: str, step: str, step_state: str
) -> None:
    """An apply held by a real SIGSTOP (between two steps, and inside the switch) is RUNNING, at
    its step, paused, with nothing 'left by a killed run'; SIGKILLed, the same journal is
    INTERRUPTED with a stale lock and the recovery, which ends exactly on the old version."""
    install.release(tmp_path, NEW)
    tree, db = install.state(), install.pg_dump()
    proc = inv_popen(install, "apply-patch", "--version", NEW, "--yes", env={HOOK: f"{hold}=SIGSTOP"})
    try:
        wait_until(lambda: _stopped(proc.pid) or proc.poll() is not None, 120, "the apply to hold")
        assert proc.poll() is None, proc.communicate()
        status = status_json(install)
        running = status["running"]
        assert running is not None and status["interrupted"] is None, status
        assert (running["action"], running["version"], running["from_version"]) == ("apply", NEW, OLD)
        assert (running["step"], running["step_state"], running["pid"]) == (step, step_state, proc.pid)
        assert running["paused"] is True and running["recovering"] is None
        assert status["lock"]["state"] == "held" and status["leftovers"] == []
        assert status["recovery"]["command"] is None
        text = status_text(install)
        assert f"RUNNING: apply of {NEW} (from {OLD}) at step {step} ({step_state}" in text, text
        assert f"kill -CONT {proc.pid}" in text, text
        assert "INTERRUPTED" not in text and "left by a killed run" not in text and "recover with" not in text, text
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
    status = status_json(install)
    assert status["running"] is None and status["interrupted"] is not None, status
    assert (status["interrupted"]["step"], status["interrupted"]["pid"]) == (step, proc.pid)
    assert status["lock"]["state"] == "stale"
    assert status["leftovers"] == [f"staging-v{NEW}"] and status["recovery"]["args"] == [
        "rollback-patch", "--version", NEW, "--break-lock", "--yes",
    ]  # fmt: skip
    text = status_text(install)
    assert f"INTERRUPTED: apply of {NEW} (from {OLD}) stopped at step {step}" in text, text
    assert "a process that is gone" in text and "RUNNING" not in text, text
    assert "recover with: inv rollback-patch --version 2.3.0 --break-lock --yes" in text, text
    done = install.inv(*status["recovery"]["args"])
    assert done.returncode == 0, done.stderr + done.stdout
    assert_exactly_old(install, tree, db)


@dataclass
class RolledBack:
    """An install where 2.3.0 was applied then rolled back by rollback-patch (module-scoped, made
    once: the tests below read it in this order, the last two change it)."""

    install: Install
    before: dict[str, Any]
    displaced: str


#: the rolled-back story's tests share one install: one worker, this order
rolled_back_group = pytest.mark.xdist_group("status-rolled-back")


@pytest.fixture(scope="module")
def rolled_back(
    install_template: InstallTemplate, pg_cluster: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RolledBack]:
    folder = tmp_path_factory.mktemp("rolled-back")
    running = install_template.new_install(folder / "install")
    try:
        running.release(folder, NEW)
        before = status_json(running)["last_apply"]
        assert before is not None and before["to_version"] == OLD
        for args in (("apply-patch", "--version", NEW, "--yes"), ("rollback-patch", "--version", NEW, "--yes")):
            done = running.inv(*args)
            assert done.returncode == 0, done.stderr + done.stdout
        [displaced] = status_json(running)["displaced_databases"]
        yield RolledBack(running, before, displaced["name"])
    finally:
        running.inv("down")
        rows = pg_cluster.psql("postgres", f"SELECT datname FROM pg_database WHERE datname LIKE '{running.dbname}%';\n")
        for name in rows.split():
            pg_cluster.drop_database(name)


@rolled_back_group
def test_a_rolled_back_apply_is_not_the_install(rolled_back: RolledBack) -> None:
    """Apply then rollback-patch: patch-status names the apply that installed 2.2.0 as the
    install and shows the 2.3.0 apply rolled back by rollback-patch."""
    install, before = rolled_back.install, rolled_back.before
    status = status_json(install)
    assert status["installed_version"] == OLD
    assert status["last_apply"] == {**before, "rolled_back": None}
    latest = status["latest_apply"]
    assert (latest["to_version"], latest["result"], latest["rolled_back"]["by"]) == (NEW, "success", "rollback-patch")
    text = status_text(install)
    assert f"installed by: apply {before['from_version'] or '?'} -> {OLD}" in text, text
    assert f"latest apply: {OLD} -> {NEW}" in text and "rolled back by rollback-patch" in text, text
    assert f"last apply: {OLD} -> {NEW}" not in text, text


@rolled_back_group
def test_the_database_a_restore_displaced_is_listed_with_its_size_and_age(rolled_back: RolledBack) -> None:
    install = rolled_back.install
    status = status_json(install)
    [displaced] = status["displaced_databases"]
    assert displaced["name"].startswith(f"{install.dbname}_before_rollback_")
    assert displaced["exists"] is True and displaced["size_bytes"] > 0 and displaced["age_seconds"] >= 0
    assert status["displaced_databases_note"] is None
    text = status_text(install)
    assert "Displaced databases" in text and displaced["name"] in text, text
    assert "dropped" not in text and "displaced databases: none" not in text, text


@rolled_back_group
def test_displaced_sizes_are_unknown_and_said_so_when_the_server_does_not_answer(rolled_back: RolledBack) -> None:
    install = rolled_back.install
    closed = f"postgresql://nobody@127.0.0.1:{free_port()}/{install.dbname}"
    unknown = status_json(install, env={"PATCHFLOW_DATABASE_URL": closed})
    assert [d["size_bytes"] for d in unknown["displaced_databases"]] == [None]
    assert "does not answer" in unknown["displaced_databases_note"]
    assert "sizes unknown: the database server does not answer" in status_text(
        install, env={"PATCHFLOW_DATABASE_URL": closed}
    )


@rolled_back_group
def test_a_displaced_database_dropped_by_hand_is_shown_dropped(rolled_back: RolledBack) -> None:
    install = rolled_back.install
    install.cluster.drop_database(rolled_back.displaced)
    gone = status_json(install)["displaced_databases"]
    assert [(d["exists"], d["size_bytes"]) for d in gone] == [(False, None)]
    assert "dropped" in status_text(install)


@rolled_back_group
def test_an_automatic_rollback_is_shown_as_such_and_not_as_the_install(rolled_back: RolledBack, tmp_path: Path) -> None:
    install, before = rolled_back.install, rolled_back.before
    install.release(tmp_path, NEW, health_status=500)
    failed = install.inv("apply-patch", "--version", NEW, "--yes", "--health-timeout", "3")
    assert failed.returncode == 2, failed.stderr + failed.stdout
    status = status_json(install)
    assert status["last_apply"]["run_id"] == before["run_id"]
    assert (status["latest_apply"]["result"], status["latest_apply"]["rolled_back"]) == (
        "rolled_back",
        {"by": "automatic rollback", "at": None},
    )
    text = status_text(install)
    assert f"latest apply: {OLD} -> {NEW}" in text and "rolled back by automatic rollback after health" in text, text
