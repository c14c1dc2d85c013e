"""Several app servers, one database (issue 24): three real sshd hosts whose installs (2.2.0) name
one PostgreSQL database, each with a *writer* service beside its API: one ``psql`` session that
inserts a row into ``shared_writes`` every 0.2 s while the host's services run, as PrimeFlow's api
and worker write while they serve. The release 2.3.0 carries a migration.

* ``inv deploy`` gives the group one stopped window: every host stopped, one migration, one
  database backup, every host on 2.3.0.
* A health failure on the third host with ``--rollback-on-failure`` ends exactly old everywhere,
  the database restored once; the rows written since the new version started are named as kept in
  the displaced database, and none of them was written after a restore began.
* A one-host ``apply-patch`` with the migration pending, and a one-host ``rollback-patch`` that
  would restore the database, are refused while the other hosts' writers are connected.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.hosts import BASE, RELEASE, HostFleet
from support.installs import InstallTemplate, rewrite_dotenv, wait_until
from support.missing import missing_service

from patchflow.state_files import seal

pytestmark = [pytest.mark.integration, pytest.mark.ssh]

WRITER = """#!/bin/sh
# a client of the shared database, as a host's app is: one session, a row every 0.2 s until stopped
(while :; do echo "INSERT INTO shared_writes (host) VALUES ('$1');"; sleep 0.2; done) | exec psql -q "$2" >/dev/null
"""


def _migration_rows(fleet: HostFleet, name: str) -> int:
    first = fleet.hosts[0].install
    return int(first.sql(f"SELECT count(*) FROM _prisma_migrations WHERE migration_name = '{name}'"))


def _writers(fleet: HostFleet) -> set[str]:
    """The hosts whose writer session is connected now."""
    first = fleet.hosts[0].install
    rows = first.sql(
        f"SELECT query FROM pg_stat_activity WHERE datname = '{first.dbname}' AND application_name = 'psql'"
    )
    return {h.name for h in fleet.hosts if h.name in rows}


@pytest.fixture
def shared_fleet(
    tmp_path_factory: pytest.TempPathFactory, pg_cluster: object, install_template: InstallTemplate
) -> Iterator[HostFleet]:
    roles = {"app1": "production", "app2": "production", "app3": "production"}
    folder = tmp_path_factory.mktemp("shared-fleet")
    try:
        fleet = HostFleet.start(folder, install_template, roles)
    except (RuntimeError, OSError) as exc:
        missing_service(f"cannot start the sshd fleet: {exc}")
    try:
        first = fleet.hosts[0].install
        first.sql(
            "CREATE TABLE shared_writes "
            "(id bigserial PRIMARY KEY, host text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
        writer = folder / "writer.sh"
        writer.write_text(WRITER)
        for host in fleet.hosts:
            commands = dict(
                item.split("=", 1)
                for item in next(
                    line.split("=", 1)[1] for line in (host.root / ".env").read_text().splitlines()
                    if line.startswith("PATCHFLOW_COMMANDS=")
                ).split(";")
            )  # fmt: skip
            commands["writer"] = f"sh {writer} {host.name} {first.url}"
            host.install.inv("down")
            rewrite_dotenv(
                host.root,
                {"DATABASE_URL": first.url, "PATCHFLOW_COMMANDS": ";".join(f"{k}={v}" for k, v in commands.items())},
            )
            done = host.install.inv("up")
            assert done.returncode == 0, done.stdout + done.stderr
            # the copy's record of how 2.2.0 was proven healthy names the template's port: a server's own
            # record names its own (a rollback judges the restored version by it)
            record = host.root / ".patchflow" / "installed.json"
            data = json.loads(record.read_text())
            if isinstance(data.get("health"), dict):
                data["health"]["urls"] = [host.install.health_url]
                record.write_text(json.dumps(seal(data)))  # as patchflow writes it on that server
            host.install.url, host.install.dbname = first.url, first.dbname
        wait_until(lambda: _writers(fleet) == {"app1", "app2", "app3"}, 30, "the three writers to connect")
        wait_until(lambda: all(h.health_version() == BASE for h in fleet.hosts), 30, "the three APIs")
        yield fleet
    finally:
        fleet.stop()


def _new_migration(fleet: HostFleet) -> str:
    manifest = json.loads((fleet.operator / "patches" / f"v{RELEASE}" / "manifest.json").read_text())
    names = [m["name"] for m in manifest["migrations"]]
    applied = fleet.hosts[0].install.sql("SELECT string_agg(migration_name, ' ') FROM _prisma_migrations").split()
    pending = [n for n in names if n not in applied]
    assert len(pending) == 1, (names, applied)
    return pending[0]


def _backups(fleet: HostFleet) -> dict[str, list[dict[str, object]]]:
    out = {}
    for host in fleet.hosts:
        out[host.name] = [json.loads(p.read_text()) for p in sorted((host.root / "backups").glob("*/backup.json"))]
    return out


def test_a_deploy_stops_the_group_once_migrates_once_backs_up_once_then_a_lone_rollback_is_refused(
    shared_fleet: HostFleet,
) -> None:
    fleet = shared_fleet
    migration = _new_migration(fleet)
    before = {h.name: len(b) for h, b in zip(fleet.hosts, _backups(fleet).values(), strict=True)}
    done = fleet.inv(
        "deploy", "--hosts", "app1,app2,app3", "--version", RELEASE, "--skip-staging", "--yes", timeout=600
    )
    text = done.stdout + done.stderr
    assert done.returncode == 0, text
    print(text)
    assert "is used by app1, app2, app3: one stopped window for the group" in text
    assert "stopping the application services of app2, app3" in text
    for host in fleet.hosts:
        assert host.version() == RELEASE, host.name
        assert host.health_version() == RELEASE, host.name
    assert _migration_rows(fleet, migration) == 1, "migrated once"
    backups = _backups(fleet)
    new = {name: items[before[name] :] for name, items in backups.items()}
    with_database = [n for n, items in new.items() for b in items if b.get("database") or b.get("snapshot")]
    assert with_database == ["app1"], new
    assert all(b.get("database_backup_on", "").startswith("app1") for n in ("app2", "app3") for b in new[n])
    wait_until(lambda: _writers(fleet) == {"app1", "app2", "app3"}, 30, "the writers back")
    # a lone rollback that would restore the shared database under app2's and app3's writers
    alone = fleet.hosts[0].install.inv("rollback-patch", "--version", RELEASE, "--yes")
    said = alone.stdout + alone.stderr
    assert alone.returncode != 0, said
    assert "Refusing to restore database" in said and "other client session(s)" in said, said
    assert fleet.hosts[0].version() == RELEASE
    wait_until(lambda: fleet.hosts[0].health_version() == RELEASE, 30, "app1 serving 2.3.0 again")
    assert _migration_rows(fleet, migration) == 1, "nothing was restored"
    assert not (fleet.hosts[0].root / ".patchflow" / "journal.json").exists()
    # the rollback of the group from the operator's checkout: all stopped, app1 restores the database once
    back = fleet.inv("rollback-patch", "--hosts", "app3,app2,app1", "--version", RELEASE, "--yes", timeout=600)
    text = back.stdout + back.stderr
    assert back.returncode == 0, text
    assert "app1, app3, app2 use one database: all stopped first, app1 rolls back first" in text, text
    assert text.index("[app1] rollback started") < text.index("[app3] rollback started"), text
    assert len(re.findall(r"rows written since the new version started, kept only in", text)) == 1, text
    for host in fleet.hosts:
        assert host.version() == BASE, host.name
    wait_until(lambda: all(h.health_version() == BASE for h in fleet.hosts), 60, "the three on 2.2.0")
    assert _migration_rows(fleet, migration) == 0, "the database restored, once"


def test_a_health_failure_on_the_third_host_undoes_the_group_and_restores_the_database_once(
    shared_fleet: HostFleet, tmp_path: Path
) -> None:
    fleet = shared_fleet
    migration = _new_migration(fleet)
    third = fleet.hosts[2]
    old = tmp_path / "old-version"
    old.mkdir()
    (old / "VERSION").write_text(f"{BASE}\n")
    third.set_env(PRIMEFLOW_ROOT=str(old), PATCHFLOW_HEALTH_TIMEOUT="3")  # its API reports 2.2.0 whatever runs
    done = fleet.inv(
        "deploy",
        "--hosts",
        "app1,app2,app3",
        "--version",
        RELEASE,
        "--rollback-on-failure",
        "--skip-staging",
        "--yes",
        timeout=600,
    )
    text = done.stdout + done.stderr
    assert done.returncode != 0, text
    for host in fleet.hosts:
        assert host.version() == BASE, (host.name, text)
    wait_until(lambda: all(h.health_version() == BASE for h in fleet.hosts), 60, "the three on 2.2.0")
    assert _migration_rows(fleet, migration) == 0, "the database restored"
    restores = re.findall(r"rows written since the new version started, kept only in (\S+):", text)
    assert len(restores) == 1, text  # restored once
    displaced = restores[0]
    assert re.search(r"public\.shared_writes: [1-9]\d* inserted", text), text
    stopping = text.index("undoing the group: stopping")
    assert stopping < text.index("[app1] rolling back")
    # the rows moved out of the live database were all written before any row written after the
    # restore: no host's writer ran while the database was swapped
    cluster, live = fleet.hosts[0].install.cluster, fleet.hosts[0].install.dbname
    wait_until(lambda: _writers(fleet) == {"app1", "app2", "app3"}, 30, "the writers back")

    def rows(database: str) -> dict[str, float]:
        text = cluster.psql(database, "SELECT host || '@' || id || '@' || extract(epoch FROM at) FROM shared_writes")
        return {line.rsplit("@", 1)[0]: float(line.rsplit("@", 1)[1]) for line in text.split() if "@" in line}

    wait_until(lambda: len(set(rows(live)) - set(rows(displaced))) >= 3, 30, "rows written after the restore")
    kept, now = rows(displaced), rows(live)
    moved_out = {k: v for k, v in kept.items() if now.get(k) != v}
    written_after = {k: v for k, v in now.items() if kept.get(k) != v}
    assert moved_out, "the displaced database holds the rows written since the new version started"
    assert max(moved_out.values()) < min(written_after.values()), (moved_out, written_after)


def test_a_lone_apply_with_a_pending_migration_on_the_shared_database_is_refused(shared_fleet: HostFleet) -> None:
    fleet = shared_fleet
    migration = _new_migration(fleet)
    first = fleet.hosts[0]
    patch = fleet.operator / "patches" / f"v{RELEASE}"
    shutil.copytree(patch, first.root / "patches" / f"v{RELEASE}")
    done = first.install.inv("apply-patch", "--version", RELEASE, "--yes")
    said = done.stdout + done.stderr
    assert done.returncode != 0, said
    assert "Refusing to migrate database" in said and "other client session(s)" in said, said
    assert "inv deploy" in said
    assert first.version() == BASE
    wait_until(lambda: first.health_version() == BASE, 30, "app1 serving 2.2.0 again")
    assert _migration_rows(fleet, migration) == 0
    assert _writers(fleet) >= {"app2", "app3"}
    # a host told the group's first host backed the database up and migrated it never migrates itself
    told = first.install.inv("apply-patch", "--version", RELEASE, "--yes", "--database-backup-on", "app9")
    said = told.stdout + told.stderr
    assert told.returncode != 0, said
    assert "this apply was told the database was backed up and migrated by app9: nothing was migrated" in said
    assert first.version() == BASE and _migration_rows(fleet, migration) == 0
    wait_until(lambda: first.health_version() == BASE, 30, "app1 serving 2.2.0 again")


def test_a_deploy_killed_inside_the_group_window_is_shown_by_status_and_finished_by_deploy_again(
    shared_fleet: HostFleet,
) -> None:
    fleet = shared_fleet
    migration = _new_migration(fleet)
    first = fleet.hosts[0]
    first.set_env(PATCHFLOW_TEST_KILL_AT="migrate=SIGSTOP")  # holds app1's apply inside the group's window
    deploy = fleet.popen("deploy", "--hosts", "app1,app2,app3", "--version", RELEASE, "--skip-staging", "--yes")
    try:
        _, group = first.stopped_run("apply")
        os.killpg(deploy.pid, signal.SIGKILL)  # the operator's deploy dies: app2 and app3 are left stopped
        deploy.wait(timeout=30)
        os.killpg(group, signal.SIGCONT)  # app1's own apply goes on to its end (a detached run there)
        wait_until(
            lambda: first.version() == RELEASE and not (first.root / ".patchflow" / "journal.json").exists(),
            180,
            "app1's apply to end",
        )
    finally:
        if deploy.poll() is None:
            deploy.kill()
    first.set_env(PATCHFLOW_TEST_KILL_AT="")
    for host in fleet.hosts[1:]:
        assert host.version() == BASE and host.health_version() is None, host.name  # stopped by the window
        assert (host.root / ".patchflow" / "group-window.json").is_file()
    status = fleet.inv("patch-status", "--hosts", "app1,app2,app3")
    said = " ".join((status.stdout + status.stderr).split())
    assert "group window of 2.3.0 left unfinished: app2 (since" in said and "app3 (since" in said, said
    assert f"inv deploy --hosts app1,app2,app3 --version {RELEASE}" in said, said
    as_json = json.loads(fleet.inv("patch-status", "--hosts", "app1,app2,app3", "--json").stdout)
    identities = {item["database"]["identity"] for item in as_json}
    assert len(identities) == 1, "one database, one identity on every host"
    assert [bool(item["group_window"]) for item in as_json] == [False, True, True]

    again = fleet.inv("deploy", "--hosts", "app1,app2,app3", "--version", RELEASE, "--skip-staging", "--yes")
    text = again.stdout + again.stderr
    assert again.returncode == 0, text
    assert "stopped by an unfinished group window of 2.3.0" in text
    for host in fleet.hosts:
        assert host.version() == RELEASE and host.health_version() == RELEASE, host.name
        assert not (host.root / ".patchflow" / "group-window.json").exists(), host.name
    assert _migration_rows(fleet, migration) == 1
    backups = _backups(fleet)
    assert all(b.get("database_backup_on") for name in ("app2", "app3") for b in backups[name][-1:])
