"""Zero data lost (issue 8): a dump that is not complete is never a backup, the newest backup is
chosen by sequence and not by clock, SIGTERM and SIGHUP undo like SIGINT and leave no database
session of the tool behind, a migration has a deadline enforced on the server, backups on another
filesystem work or are refused before stop, and owners and modes survive apply and rollback.

Real PostgreSQL, real node services, real signals; a tmpfs mount and another uid where the
scenario is about them (the suite runs as root, as CI does).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.exact import (
    NEW,
    OLD,
    assert_clean_after,
    assert_exactly_new,
    assert_exactly_old,
    patchflow_sessions,
    read_manifest,
    status_json,
)
from support.installs import Install, backup_names, build_release, health, history, inv_popen, set_dotenv, wait_until
from support.killing import backups_on_tmpfs as on_tmpfs
from support.missing import missing_service
from support.pgbin import wrapped_pg_bindir

from patchflow.trust import CONTROLLING

pytestmark = pytest.mark.integration


def _out(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout + done.stderr


def _ok(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, _out(done)


# -- a dump cut short is never a backup (fault 8.2) -----------------------------------------------------


def _short_pg_dump(folder: Path, real_bindir: Path) -> Path:
    """A pg_bindir whose pg_dump writes only the first half of the real dump and exits 0 (a faulty
    disk or wrapper); psql and pg_restore are the real ones."""
    return wrapped_pg_bindir(
        folder,
        real_bindir,
        "pg_dump",
        'full=$(mktemp)\n"$REAL" "$@" > "$full" || exit $?\n'
        'size=$(stat -c %s "$full")\nhead -c $((size / 2)) "$full"\nrm -f "$full"\nexit 0\n',
    )


def test_a_short_dump_never_counts_as_a_backup(install: Install, tmp_path: Path) -> None:
    """Dumped inside the stopped window (no snapshot): the apply rolls back before switching."""
    tree_before = install.state()
    db_before = install.pg_dump()
    backups_before = backup_names(install)
    install.release(tmp_path, NEW)
    bindir = _short_pg_dump(tmp_path / "pgbin", install.cluster.bindir)
    set_dotenv(install, "PATCHFLOW_PG_BINDIR", str(bindir))
    set_dotenv(install, "PATCHFLOW_DATABASE_SNAPSHOT", "off")
    tree_before = install.state()

    done = install.inv("apply-patch", "--version", NEW, "--yes")
    assert done.returncode == 2, _out(done)
    assert "does not read to the end" in done.stderr and "rolled back automatically" in done.stderr
    assert "-> switch" not in done.stdout, "nothing was switched"
    assert backup_names(install) == backups_before, "the incomplete backup was removed"
    assert install.state() == tree_before
    assert install.pg_dump() == db_before
    assert health(install) == (200, OLD)
    assert history(install)[-1]["result"] == "rolled_back"
    assert status_json(install)["lock"] is None


def test_a_short_dump_of_the_snapshot_is_no_backup_and_the_snapshot_stays_one(install: Install, tmp_path: Path) -> None:
    """Dumped from the snapshot after the commit: the apply is applied, the short dump is not
    recorded, and the snapshot stays the backup's copy of the database, which a rollback puts back."""
    install.release(tmp_path, NEW)
    set_dotenv(install, "PATCHFLOW_PG_BINDIR", str(_short_pg_dump(tmp_path / "pgbin", install.cluster.bindir)))
    tree_before, db_before = install.state(), install.pg_dump()
    done = install.inv("apply-patch", "--version", NEW, "--yes")
    assert done.returncode == 0, _out(done)
    assert "does not read to the end" in done.stdout and "warning: the dump of the snapshot failed" in done.stdout
    backup = history(install)[-1]["backup"]
    assert "database" not in [k for k, v in _backup_json(install, backup).items() if v]
    assert not (install.root / "backups" / backup / "database.dump").exists(), "the short dump is removed"
    [snapshot] = status_json(install)["snapshots"]
    assert snapshot["dump"] == "failed" and snapshot["exists"] is True
    _ok(install.inv("rollback-patch", "--yes"))
    assert install.state() == tree_before and install.pg_dump() == db_before
    assert health(install) == (200, OLD)


def _backup_json(install: Install, name: str) -> dict[str, object]:
    import json

    data: dict[str, object] = json.loads((install.root / "backups" / name / "backup.json").read_text())
    return data


# -- the newest backup by sequence, not by clock (fault 8.3) ------------------------------------------------


def _faketime(offset: str) -> dict[str, str]:
    found = glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
    if not found:
        from support.missing import missing_service

        missing_service("libfaketime is not installed (Debian package 'faketime'; scripts/ensure-system.sh)")
    # the monotonic clock is shifted too: with FAKETIME_DONT_FAKE_MONOTONIC, time.sleep fails (EINVAL)
    return {"LD_PRELOAD": found[0], "FAKETIME": offset}


def _add_user(install: Install, email: str) -> None:
    install.cluster.psql(
        install.dbname,
        f'INSERT INTO "User" ("email", "name", "role", "updatedAt") '
        f"VALUES ('{email}', 'row', 'MEMBER', CURRENT_TIMESTAMP);\n",
    )


def _has_user(install: Install, email: str, database: str | None = None) -> bool:
    rows = install.cluster.psql(database or install.dbname, f"SELECT count(*) FROM \"User\" WHERE email = '{email}'")
    return rows.strip() == "1"


def test_rollback_after_the_clock_stepped_back_uses_the_backup_of_the_installed_apply(
    install: Install, tmp_path: Path
) -> None:
    install.release(tmp_path, NEW)
    ahead = install.inv("apply-patch", "--version", NEW, "--yes", env=_faketime("+3h"))
    _ok(ahead)
    backup_a = history(install)[-1]["backup"]
    _ok(install.inv("rollback-patch", "--version", NEW, "--yes"))
    _add_user(install, "between@primeflow.test")  # written between the two applies
    _ok(install.inv("apply-patch", "--version", NEW, "--yes"))
    backup_b = history(install)[-1]["backup"]
    assert backup_a != backup_b
    status = status_json(install)
    created = {b["name"]: b["created_at"] for b in status["backups"]}
    assert created[backup_a] > created[backup_b], "backup A carries the clock that was 3 hours ahead"
    assert status["installed_record"]["backup"] == backup_b
    _add_user(install, "after@primeflow.test")  # written after the second apply

    rolled = install.inv("rollback-patch", "--version", NEW, "--yes")
    _ok(rolled)
    assert backup_b in rolled.stdout and backup_a not in rolled.stdout
    assert _has_user(install, "between@primeflow.test"), "restoring backup A would have lost this row"
    assert not _has_user(install, "after@primeflow.test")
    displaced = status_json(install)["displaced_databases"][-1]["name"]
    assert _has_user(install, "after@primeflow.test", displaced), "the row written after the apply is kept"
    assert health(install) == (200, OLD)

    pruned = install.inv("prune-backups", "--keep-last", "1", "--keep-days", "0")
    _ok(pruned)
    left = backup_names(install)
    assert backup_b in left and backup_a not in left, "keep-last keeps the newest by sequence"


# -- SIGTERM and SIGHUP do what SIGINT does (fault 8.4) -----------------------------------------------------

STEPS = ("stage", "stop", "backup", "switch", "migrate", "start", "health", "commit", "cleanup")
SIGNAL_BOUNDARIES = (
    [("stage", "SIGTERM")]
    + [(f"{s}:after", "SIGTERM") for s in STEPS]
    + [
        # SIGHUP takes SIGTERM's path (patchflow.pipeline.HANDLED_SIGNALS): at a boundary SIGTERM
        # already covers it is a repetition, run by nox -s stress; make test keeps it during health
        pytest.param("migrate:after", "SIGHUP", marks=pytest.mark.stress),
        ("health", "SIGHUP"),
    ]
)


@pytest.mark.parametrize(("boundary", "signame"), SIGNAL_BOUNDARIES)
def test_a_signal_at_a_step_ends_on_exactly_the_old_or_the_new_version(
    install: Install, tmp_path: Path, boundary: str, signame: str
) -> None:
    """The signal arrives at ``boundary``: before the commit the reached steps are undone and the
    old version is proven healthy (exit 2); from the commit on the apply completes (exit 0).
    Either way: services up, no journal, no lock, no session of the tool left on the server."""
    tree_before = install.state()
    db_before = install.pg_dump()
    install.release(tmp_path, NEW)
    done = install.inv(
        "apply-patch", "--version", NEW, "--yes", env={"PATCHFLOW_TEST_KILL_AT": f"{boundary}={signame}"}
    )
    step, _, moment = boundary.partition(":")
    committed = STEPS.index(step) > STEPS.index("commit") or (step == "commit" and moment == "after")
    if committed:
        _ok(done)
        assert_exactly_new(install, tree_before, read_manifest(install, OLD), read_manifest(install, NEW))
    else:
        assert done.returncode == 2, _out(done)
        assert f"interrupted by {signame}" in done.stderr
        if step != "stage" or moment:
            assert "rolled back automatically" in done.stderr or "Nothing was stopped" in done.stderr
        assert_exactly_old(install, tree_before, db_before)
    assert patchflow_sessions(install) == []


def _wait_for_migration(install: Install, proc: subprocess.Popen[str]) -> None:
    def running() -> bool:
        if proc.poll() is not None:
            raise AssertionError("the apply ended early: " + "".join(proc.communicate()))
        return any("pg_sleep" in row for row in patchflow_sessions(install))

    wait_until(running, 60, "the migration to run pg_sleep on the server")


SLOW_MIGRATION = 'CREATE TABLE "Slow" (id int);\nSELECT pg_sleep(120);\n'


@pytest.mark.parametrize(("signame", "whole_group"), [("SIGTERM", False), ("SIGHUP", True)])
def test_a_signal_during_a_running_migration_ends_its_statement_on_the_server(
    install: Install, tmp_path: Path, signame: str, whole_group: bool
) -> None:
    """SIGTERM to the apply alone (as ``kill``), or SIGHUP to its whole process group (a closed SSH
    session) while psql runs a long statement: the statement is ended on the server, the apply is
    rolled back, nothing is left running."""
    tree_before = install.state()
    db_before = install.pg_dump()
    build_release(install, tmp_path, NEW, migration=SLOW_MIGRATION)
    proc = inv_popen(install, "apply-patch", "--version", NEW, "--yes")
    try:
        _wait_for_migration(install, proc)
        sig = signal.Signals[signame]
        if whole_group:
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
        started = time.monotonic()
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 2, out + err
    assert time.monotonic() - started < 60
    assert f"interrupted by {signame}" in err and "rolled back automatically" in err
    assert patchflow_sessions(install) == [], "no statement of the tool keeps running on the server"
    assert_exactly_old(install, tree_before, db_before)


def test_a_migration_past_migrate_timeout_is_cancelled_on_the_server_and_rolled_back(
    install: Install, tmp_path: Path
) -> None:
    tree_before = install.state()
    db_before = install.pg_dump()
    build_release(install, tmp_path / "slow", NEW, migration=SLOW_MIGRATION)
    started = time.monotonic()
    done = install.inv("apply-patch", "--version", NEW, "--yes", env={"PATCHFLOW_MIGRATE_TIMEOUT": "3"})
    assert done.returncode == 2, _out(done)
    assert time.monotonic() - started < 60
    assert "longer than migrate_timeout (3 s)" in done.stderr
    assert "rolled back automatically" in done.stderr
    assert patchflow_sessions(install) == []
    assert_exactly_old(install, tree_before, db_before)

    build_release(install, tmp_path / "fixed", NEW)
    _ok(install.inv("apply-patch", "--version", NEW, "--yes"))  # no --break-lock needed
    assert health(install) == (200, NEW)


# -- backups on another filesystem (fault 8.6) -----------------------------------------------------------------


@pytest.fixture
def backups_on_tmpfs(install: Install) -> Iterator[Path]:
    """Mount a 48 MiB tmpfs on the install's backups/ (its existing backups moved onto it)."""
    with on_tmpfs(install, "48m") as backups:
        set_dotenv(install, "PATCHFLOW_FREE_SPACE_MARGIN", str(1024 * 1024))
        yield backups


BUILD = "sh -c 'mkdir -p dist && echo built-for-2.3.0 > dist/bundle.js'"


def test_backups_on_another_filesystem_with_build_outputs(
    install: Install, tmp_path: Path, backups_on_tmpfs: Path
) -> None:
    assert os.stat(backups_on_tmpfs).st_dev != os.stat(install.root).st_dev
    tree_before = install.state()
    db_before = install.pg_dump()
    dist_before = (install.root / "dist" / "bundle.js").read_text()
    install.release(tmp_path, NEW)
    _ok(install.inv("apply-patch", "--version", NEW, "--yes", env={"PATCHFLOW_BUILD_COMMAND": BUILD}))
    assert (install.root / "dist" / "bundle.js").read_text() == "built-for-2.3.0\n"
    assert health(install) == (200, NEW)
    _ok(install.inv("rollback-patch", "--version", NEW, "--yes"))
    assert (install.root / "dist" / "bundle.js").read_text() == dist_before
    assert install.state() == tree_before
    assert install.pg_dump() == db_before
    assert health(install) == (200, OLD)


def test_a_full_backups_filesystem_is_refused_before_stop(
    install: Install, tmp_path: Path, backups_on_tmpfs: Path
) -> None:
    install.release(tmp_path, NEW)
    filler = backups_on_tmpfs / "filler"
    free = shutil.disk_usage(backups_on_tmpfs).free
    with open(filler, "wb") as handle:
        handle.write(b"\0" * max(0, free - 512 * 1024))
    tree_before = install.state()
    db_before = install.pg_dump()
    done = install.inv("apply-patch", "--version", NEW, "--yes")
    assert done.returncode == 1, _out(done)
    assert "Not enough free space" in done.stderr and str(backups_on_tmpfs) in done.stderr
    assert "-> stop" not in done.stdout
    filler.unlink()
    assert install.state() == tree_before and install.pg_dump() == db_before
    assert health(install) == (200, OLD)
    assert_clean_after(install)


# -- the database server's disk: a restore beside the live database needs room there too ---------------------------


@pytest.fixture
def database_on_tmpfs(install: Install) -> Iterator[Path]:
    """The install's database moved into a tablespace on a 64 MiB tmpfs (the database server's disk
    for this test); its services are stopped for the move and started again. Never fill it: the
    test cluster is shared, and a tablespace without room fails its checkpoints."""
    from support.killing import mounted_tmpfs
    from support.services import PG_OS_USER, shared_tempdir

    base = shared_tempdir("pf-tablespace-")
    mount = base / "disk"
    space = f"pf_ts_{install.dbname[-12:]}"
    cluster = install.cluster
    with mounted_tmpfs(mount, "64m"):
        import pwd

        owner = pwd.getpwnam(PG_OS_USER)
        os.chown(mount, owner.pw_uid, owner.pw_gid)
        _ok(install.inv("down"))
        cluster.psql("postgres", f"CREATE TABLESPACE {space} LOCATION '{mount}';\n")
        cluster.psql("postgres", f'ALTER DATABASE "{install.dbname}" SET TABLESPACE {space};\n')
        _ok(install.inv("up"))
        set_dotenv(install, "PATCHFLOW_FREE_SPACE_MARGIN", str(1024 * 1024))
        try:
            yield mount
        finally:
            install.inv("down")
            rows = cluster.psql(
                "postgres", f"SELECT datname FROM pg_database WHERE datname LIKE '{install.dbname}%';\n"
            )
            for name in rows.split():
                cluster.drop_database(name)
            cluster.psql("postgres", f"DROP TABLESPACE IF EXISTS {space};\n")
    shutil.rmtree(base, ignore_errors=True)


def _tablespaces(install: Install) -> dict[str, str]:
    rows = install.cluster.psql(
        "postgres",
        "SELECT d.datname || '=' || t.spcname FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace "
        f"WHERE d.datname LIKE '{install.dbname}%';\n",
    )
    return dict(line.split("=", 1) for line in rows.split())


def test_a_rollback_keeps_the_database_in_its_tablespace_and_the_servers_disk_is_checked(
    install: Install, tmp_path: Path, database_on_tmpfs: Path
) -> None:
    """The restore beside the live database is made in the live one's tablespace (a rollback does
    not move the database to pg_default); and an apply whose rollback could not restore there for
    lack of room on the database server's disk is refused before anything stops."""
    space = _tablespaces(install)[install.dbname]
    assert space != "pg_default"
    db_before = install.pg_dump()
    build_release(install, tmp_path, NEW, health_status=503)
    failed = install.inv("apply-patch", "--version", NEW, "--yes")
    assert failed.returncode == 2 and "rolled back automatically" in failed.stderr, _out(failed)
    assert install.pg_dump() == db_before
    spaces = _tablespaces(install)
    assert spaces[install.dbname] == space, spaces
    assert health(install) == (200, OLD)

    # the server's disk has less room than the database plus the reserve: the reserve is raised to
    # its whole size, rather than filling it (a full tablespace would fail the shared test cluster's
    # checkpoints while it lasts; and its free bytes still grow once PostgreSQL unlinks the files
    # of relations the rollback dropped, at a checkpoint)
    margin = shutil.disk_usage(database_on_tmpfs).total
    tree_before, db_before = install.state(), install.pg_dump()
    refused = install.inv("apply-patch", "--version", NEW, "--yes", env={"PATCHFLOW_FREE_SPACE_MARGIN": str(margin)})
    assert refused.returncode == 1, _out(refused)
    flat = " ".join(refused.stderr.split())
    assert f"{database_on_tmpfs} has" in flat and "a snapshot of the database (database server)" in flat
    assert "-> stop" not in refused.stdout
    assert install.state() == tree_before and install.pg_dump() == db_before
    assert health(install) == (200, OLD)

    # rollback-patch restores beside the live database as well (once the snapshot is dropped):
    # checked the same way before it stops
    build_release(install, tmp_path / "healthy", NEW)
    _ok(install.inv("apply-patch", "--version", NEW, "--yes", env={"PATCHFLOW_SNAPSHOT_KEEP_HOURS": "0"}))
    tree_new, db_new = install.state(), install.pg_dump()
    refused = install.inv("rollback-patch", "--version", NEW, "--yes", env={"PATCHFLOW_FREE_SPACE_MARGIN": str(margin)})
    assert refused.returncode == 1, _out(refused)
    flat = " ".join(refused.stderr.split())
    assert f"{database_on_tmpfs} has" in flat and "and roll back again" in flat, flat
    assert install.state() == tree_new and install.pg_dump() == db_new and health(install) == (200, NEW)
    _ok(install.inv("rollback-patch", "--version", NEW, "--yes"))
    assert install.pg_dump() == db_before and _tablespaces(install)[install.dbname] == space


# -- owners and modes (fault 8.7) -----------------------------------------------------------------------------

APP_UID = 1000


def _owners(root: Path) -> dict[str, tuple[int, int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d not in ("patches", "backups", ".patchflow")]
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            out[str(path.relative_to(root))] = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
    return out


def test_owners_and_exact_modes_survive_apply_and_rollback(install: Install, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        missing_service("changing owners needs root (CI runs as root)")
    root = install.root
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d not in ("patches", "backups", ".patchflow")]
        for name in [*dirnames, *filenames]:
            if Path(dirpath) == root and name in CONTROLLING:
                continue  # what decides what root runs stays root's (patchflow/trust.py)
            os.lchown(Path(dirpath) / name, APP_UID, APP_UID)
    os.chmod(root / "src" / "main.js", 0o664)
    os.chmod(root / "config" / "private.json", 0o600)
    os.chmod(root / "scripts" / "start.sh", 0o755)
    before = _owners(root)

    def edit(src: Path) -> None:
        (src / "config" / "private.json").write_text('{"featureFlags": {"betaDashboard": true}}\n')
        with open(src / "scripts" / "start.sh", "a") as handle:
            handle.write("# 2.3.0\n")

    build_release(install, tmp_path, NEW, edit=edit)
    _ok(install.inv("apply-patch", "--version", NEW, "--yes"))
    after = _owners(root)
    assert after["src/main.js"] == (APP_UID, APP_UID, 0o664), "changed: owner, group and 0664 kept"
    assert after["config/private.json"] == (APP_UID, APP_UID, 0o600)
    assert after["scripts/start.sh"] == (APP_UID, APP_UID, 0o755)
    assert after["apps/api/routes/audit.js"][:2] == (APP_UID, APP_UID), "added: the owner of its folder"
    assert after["prisma/migrations/20250301090000_audit_log"][:2] == (APP_UID, APP_UID)
    assert health(install) == (200, NEW)

    _ok(install.inv("rollback-patch", "--version", NEW, "--yes"))
    restored = _owners(root)
    assert {
        p: (before.get(p), restored.get(p)) for p in before.keys() | restored.keys() if before.get(p) != restored.get(p)
    } == {}, "rollback puts back the exact owner, group and mode of every path"
    assert health(install) == (200, OLD)
