"""patchflow embedded in a PrimeFlow-shaped checkout (issue 9): ``inv init`` keeps the checkout's own
Makefile targets and is idempotent; every task started anywhere inside the checkout acts on it;
patchflow's own repository is never a default project; an apply with default health settings works
against a ``/health`` without a version field. ``inv`` and ``make`` run as subprocesses, no terminal.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.exact import app_processes
from support.installs import REPO, get, run_inv

sys.path.insert(0, str(REPO / "scripts"))
from primeflow_checkout import make_checkout_release, prepare_checkout

pytestmark = pytest.mark.e2e

INV = str(Path(sys.executable).parent / "inv")
OWN = ("patches", "backups", ".patchflow")


def inv_in(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``inv <args>`` started in ``cwd`` (invoke finds the checkout's tasks.py upwards from there)."""
    return subprocess.run(
        [INV, *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
        check=False,
    )


def make_in(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "-s", *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def snapshot(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not (Path(dirpath) == root and d in (*OWN, ".git"))]
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    return prepare_checkout(tmp_path / "primeflow", database_url=None)


def test_init_keeps_the_checkouts_own_targets_and_is_idempotent(checkout: Path) -> None:
    makefile_before = (checkout / "Makefile").read_text()
    before = snapshot(checkout)

    refused = run_inv("init", "--root", str(checkout))
    assert refused.returncode == 5, refused.stdout + refused.stderr
    for name in ("apply-patch", "create-patch", "rollback-patch", "patch-status", "up", "down", "logs", "ps"):
        assert name in refused.stdout + refused.stderr
    assert "--yes" in refused.stderr
    assert snapshot(checkout) == before, "nothing is written without consent"

    done = run_inv("init", "--root", str(checkout), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "replaces the targets" in done.stdout
    backups = list((checkout / ".patchflow").glob("init-backup-*/Makefile"))
    assert len(backups) == 1 and backups[0].read_text() == makefile_before, "the old Makefile is backed up"

    makefile = (checkout / "Makefile").read_text()
    assert makefile.count("\napply-patch:") == 1, "one apply-patch target, patchflow's"
    assert "bash scripts/db/migrate.sh" in make_in(checkout, "-n", "db-migrate").stdout, "own targets kept"
    assert "scripts/patch/apply-patch.sh" not in makefile, "the old apply-patch rule is gone"
    dry = make_in(checkout, "-n", "apply-patch", "VERSION=3.1.0", "YES=1", "DRY_RUN=1")
    assert dry.returncode == 0, dry.stderr
    assert "inv apply-patch" in dry.stdout and "--version 3.1.0" in dry.stdout
    assert "--yes" in dry.stdout and "--dry-run" in dry.stdout
    assert "apply-patch.sh" not in dry.stdout
    shown = make_in(checkout, "help")
    assert shown.returncode == 0 and "db-migrate" in shown.stdout and "apply-patch" in shown.stdout

    import tomllib

    settings = tomllib.loads((checkout / "pyproject.toml").read_text())["tool"]["patchflow"]
    assert settings["health_url"] == ["http://localhost:4000/health"]
    assert settings["compose_files"] == ["docker/docker-compose.yml"]
    assert settings["app_services"] == ["api", "worker", "frontend"]
    assert settings["data_services"] == ["postgres", "redis"]
    assert settings["database_service"] == "postgres" and settings["database_mode"] == "compose"
    assert "from patchflow.cli import ns" in (checkout / "tasks.py").read_text()
    assert "patchflow.nox_sessions" in (checkout / "noxfile.py").read_text()
    ignored = (checkout / ".gitignore").read_text().splitlines()
    assert any(line.strip("/") == ".patchflow" for line in ignored)

    after_first = snapshot(checkout)
    again = run_inv("init", "--root", str(checkout))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing to change" in again.stdout
    assert snapshot(checkout) == after_first, "a second init changes nothing"
    assert len(list((checkout / ".patchflow").glob("init-backup-*"))) == 1


def test_every_task_started_inside_the_checkout_acts_on_it(checkout: Path) -> None:
    assert run_inv("init", "--root", str(checkout), "--yes").returncode == 0
    deep = checkout / "apps" / "api" / "routes"
    status = inv_in(deep, "patch-status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["root"] == str(checkout)
    assert json.loads(status.stdout)["installed_version"] == "3.0.0"
    made = inv_in(checkout / "src", "create-patch")
    assert made.returncode == 0, made.stderr
    assert (checkout / "patches" / "v3.0.0" / "manifest.json").is_file()
    assert not (checkout / "src" / "patches").exists()
    verified = inv_in(checkout / "prisma" / "migrations", "verify-patch", "--version", "3.0.0")
    assert verified.returncode == 0, verified.stderr
    via_python = subprocess.run(
        [sys.executable, "-m", "patchflow", "patch-status", "--json"],
        cwd=deep,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert via_python.returncode == 0, via_python.stderr
    assert json.loads(via_python.stdout)["root"] == str(checkout)
    explicit = inv_in(deep, "patch-status", "--json", "--root", str(REPO / "examples" / "primeflow-sample"))
    assert json.loads(explicit.stdout)["root"] == str(REPO / "examples" / "primeflow-sample"), "--root wins"


def test_patchflows_own_repository_is_never_the_default_project() -> None:
    before = sorted(p.name for p in REPO.iterdir())
    for task in ("patch-status", "create-patch"):
        done = inv_in(REPO / "patchflow", task)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "patchflow's own repository" in done.stderr and "--root" in done.stderr
    made = make_in(REPO, "create-patch")
    assert made.returncode != 0 and "patchflow's own repository" in made.stderr
    assert sorted(p.name for p in REPO.iterdir()) == before, "nothing was packed or written"


def test_output_without_a_terminal_has_no_ansi_codes_and_h_is_help(checkout: Path) -> None:
    assert run_inv("init", "--root", str(checkout), "--yes").returncode == 0
    for args in (("patch-status",), ("create-patch",), ("verify-patch", "--version", "9.9.9")):
        done = inv_in(checkout, *args)
        assert "\x1b[" not in done.stdout + done.stderr, args
    for task in ("apply-patch", "rollback-patch", "patch-status", "prune-backups", "init"):
        shown = inv_in(checkout, task, "-h")
        assert shown.returncode == 0 and "Usage:" in shown.stdout and "--help" not in shown.stderr, task
    numeric = inv_in(checkout, "apply-patch", "-h").stdout
    assert "--health-timeout" in numeric and "FLOAT" in numeric
    assert "--keep-days=INT" in inv_in(checkout, "prune-backups", "-h").stdout


@pytest.fixture
def running_checkout(tmp_path: Path, pg_cluster: object) -> object:
    """The checkout at 3.0.0 installed by patchflow (command manager, flat migrations, the real
    ``?schema=public`` URL) with its services running; yields ``(checkout, health_url)``."""
    from sample_workspace import free_port

    cluster = pg_cluster
    dbname = f"pf_checkout_{os.urandom(4).hex()}"
    cluster.create_database(dbname)  # type: ignore[attr-defined]
    port = free_port()
    root = prepare_checkout(tmp_path / "primeflow", database_url=cluster.url(dbname), port=port)  # type: ignore[attr-defined]
    assert run_inv("init", "--root", str(root), "--yes").returncode == 0
    health_url = f"http://127.0.0.1:{port}/health"
    with open(root / ".env", "a") as handle:
        handle.write(
            "PATCHFLOW_SERVICE_MANAGER=command\n"
            "PATCHFLOW_COMMANDS=api=node apps/api/server.js;worker=node apps/worker/index.js\n"
            f"PATCHFLOW_HEALTH_URL={health_url}\nPATCHFLOW_DATABASE_MODE=url\nPATCHFLOW_HEALTH_TIMEOUT=6\n"
        )
    for args in (("create-patch",), ("apply-patch", "VERSION=3.0.0", "FORCE=1", "YES=1")):
        done = make_in(root, *args)
        assert done.returncode == 0, done.stdout + done.stderr
    try:
        yield root, health_url
    finally:
        inv_in(root, "down")
        cluster.drop_database(dbname)  # type: ignore[attr-defined]


def _release(root: Path, workdir: Path, version: str, **changes: object) -> None:
    source = make_checkout_release(root, workdir / f"release-{version}", version, **changes)  # type: ignore[arg-type]
    done = make_in(source, "create-patch")
    assert done.returncode == 0, done.stdout + done.stderr
    import shutil

    shutil.copytree(source / "patches" / f"v{version}", root / "patches" / f"v{version}")


def test_default_health_settings_work_with_a_health_body_without_version(
    running_checkout: tuple[Path, str], tmp_path: Path
) -> None:
    root, health_url = running_checkout
    status, body = get(health_url)
    assert status == 200 and "version" not in json.loads(body)
    _release(root, tmp_path, "3.1.0")
    _release(root, tmp_path, "3.1.1", health_status=503)  # made from 3.0.0 too: /health answers 503
    done = make_in(root, "apply-patch", "VERSION=3.1.0", "YES=1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "health proof   the reported version when /health has it; otherwise a new process" in done.stdout
    assert get(health_url.replace("/health", "/audit"))[0] == 200
    assert (root / "VERSION").read_text() == "3.1.0\n"

    failed = make_in(root, "apply-patch", "VERSION=3.1.1", "YES=1")
    assert failed.returncode != 0
    assert "HTTP 503" in failed.stderr and "rolled back automatically" in failed.stderr
    assert (root / "VERSION").read_text() == "3.1.0\n"
    assert get(health_url)[0] == 200


def test_rollback_without_version_rolls_back_the_installed_one(
    running_checkout: tuple[Path, str], tmp_path: Path
) -> None:
    root, _ = running_checkout
    _release(root, tmp_path, "3.1.0")
    assert make_in(root, "apply-patch", "VERSION=3.1.0", "YES=1").returncode == 0
    wrong = inv_in(root, "rollback-patch", "--version", "3.0.0", "--yes")
    assert wrong.returncode == 1, "refusing to roll back a version that is not installed is a bad input"
    assert "installed version is 3.1.0" in wrong.stderr
    done = inv_in(root, "rollback-patch", "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rolling back the installed version 3.1.0" in done.stdout
    assert "rolled back 3.1.0 -> 3.0.0 from backup pre-patch-v3.1.0_" in " ".join(done.stdout.split())
    assert (root / "VERSION").read_text() == "3.0.0\n"


def _pg_dump(url: str) -> str:
    from support.services import find_pg_bindir

    return subprocess.run(
        [str(find_pg_bindir() / "pg_dump"), "--restrict-key=patchflowtest", "--dbname", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


@pytest.mark.parametrize("kill_at", ["spawn-api:after", "switch-file#5", "release"])
def test_a_killed_apply_in_the_checkout_is_recovered_by_the_command_patch_status_names(
    running_checkout: tuple[Path, str], tmp_path: Path, kill_at: str
) -> None:
    """Issue 13 on the PrimeFlow-shaped checkout (its /health reports no version): killed with the
    new api spawned but not recorded, mid-switch, or after the commit; ``make patch-status JSON=1``
    names the command; run from inside the checkout it ends exactly old (or, after the commit,
    exactly new) with one api answering."""
    root, health_url = running_checkout
    url = next(
        line.split("=", 1)[1] for line in (root / ".env").read_text().splitlines() if line.startswith("DATABASE_URL=")
    )
    url = url.split("?", 1)[0]
    _release(root, tmp_path, "3.1.0")
    before, db_before = snapshot(root), _pg_dump(url)
    killed = inv_in(root, "apply-patch", "--version", "3.1.0", "--yes", env={"PATCHFLOW_TEST_KILL_AT": kill_at})
    assert killed.returncode in (-9, 137), killed.stdout + killed.stderr

    shown = make_in(root, "patch-status", "JSON=1")
    assert shown.returncode == 0, shown.stderr
    advice = json.loads(shown.stdout)["recovery"]
    assert advice and advice["command"], advice
    assert "--break-lock" in advice["args"]
    done = inv_in(root, *advice["args"])
    assert done.returncode == 0, done.stdout + done.stderr
    status = json.loads(make_in(root, "patch-status", "JSON=1").stdout)
    assert status["recovery"] is None and status["lock"] is None and status["interrupted"] is None
    if kill_at == "release":  # committed: the apply is complete, the lock and staging cleared
        assert status["installed_version"] == "3.1.0"
        assert get(health_url.replace("/health", "/audit"))[0] == 200
    else:
        assert status["installed_version"] == "3.0.0"
        assert snapshot(root) == before
        assert _pg_dump(url) == db_before
        assert get(health_url.replace("/health", "/audit"))[0] == 404, "the old api answers, not an orphan"
    tracked = {json.loads(p.read_text())["pid"] for p in (root / ".patchflow" / "run").glob("*.pid")}
    assert len(tracked) == 2
    assert app_processes(root) == tracked, "no service process runs untracked"
    assert get(health_url)[0] == 200


@pytest.mark.parametrize("kill_at", ["commit", "manifest-recorded"])
def test_a_killed_delta_apply_in_the_checkout_ends_old_or_new_with_its_whole_tree_recorded(
    running_checkout: tuple[Path, str], tmp_path: Path, kill_at: str
) -> None:
    """Issue 12 on the PrimeFlow-shaped checkout: a delta on the installed 3.0.0 lists only its
    changes. Killed just before its commit, the recovery the status names undoes it and the
    install's record of its tree is 3.0.0's again (the delta applies after it); killed inside the
    commit, after the record was written, the recovery finishes it. Either way the record is a whole
    tree, so the next delta can apply on it."""
    import shutil

    from patchflow.delta import tree_sha256
    from patchflow.manifest import Entry

    root, health_url = running_checkout
    source = make_checkout_release(root, tmp_path / "release-3.1.0", "3.1.0")
    shutil.copytree(root / "patches" / "v3.0.0", source / "patches" / "v3.0.0")
    made = inv_in(source, "create-patch", "--base", "3.0.0")
    assert made.returncode == 0, made.stdout + made.stderr
    shutil.copytree(source / "patches" / "v3.1.0", root / "patches" / "v3.1.0")
    manifest = json.loads((root / "patches/v3.1.0/manifest.json").read_text())
    full = json.loads((root / "patches/v3.0.0/manifest.json").read_text())
    assert manifest["format"] == 2 and len(manifest["files"]) < len(full["files"]) / 3

    def recorded_tree() -> str:
        recorded = json.loads((root / ".patchflow/installed-manifest.json").read_text())
        return tree_sha256(Entry.from_json(item) for item in recorded["files"])

    assert recorded_tree() == manifest["delta"]["base_tree_sha256"]
    killed = inv_in(root, "apply-patch", "--version", "3.1.0", "--yes", env={"PATCHFLOW_TEST_KILL_AT": kill_at})
    assert killed.returncode in (-9, 137), killed.stdout + killed.stderr
    advice = json.loads(make_in(root, "patch-status", "JSON=1").stdout)["recovery"]
    assert advice and advice["command"], advice
    done = inv_in(root, *advice["args"])
    assert done.returncode == 0, done.stdout + done.stderr
    status = json.loads(make_in(root, "patch-status", "JSON=1").stdout)
    assert status["recovery"] is None and status["interrupted"] is None
    if kill_at == "commit":  # not reached: undone, the record is 3.0.0's again
        assert status["installed_version"] == "3.0.0"
        assert recorded_tree() == manifest["delta"]["base_tree_sha256"]
        again = inv_in(root, "apply-patch", "--version", "3.1.0", "--yes")
        assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(make_in(root, "patch-status", "JSON=1").stdout)["installed_version"] == "3.1.0"
    assert recorded_tree() == manifest["delta"]["tree_sha256"], "the whole tree is recorded"
    assert get(health_url.replace("/health", "/audit"))[0] == 200
