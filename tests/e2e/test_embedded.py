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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.checkouts import CheckoutTemplate, checkout_release, make_in
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


@dataclass
class InitStory:
    """A checkout through ``init`` without ``--yes`` (refused), with it, and once more; what each
    run printed and the tree after each (module-scoped: one test per behaviour reads it)."""

    checkout: Path
    makefile_before: str
    before: dict[str, str]
    refused: subprocess.CompletedProcess[str]
    after_refused: dict[str, str]
    done: subprocess.CompletedProcess[str]
    after_first: dict[str, str]
    again: subprocess.CompletedProcess[str]
    after_again: dict[str, str]


#: the init story's tests share one checkout: keep them on one worker
init_story_group = pytest.mark.xdist_group("init-story")


@pytest.fixture(scope="module")
def init_story(tmp_path_factory: pytest.TempPathFactory) -> InitStory:
    checkout = prepare_checkout(tmp_path_factory.mktemp("init-story") / "primeflow", database_url=None)
    makefile_before = (checkout / "Makefile").read_text()
    before = snapshot(checkout)
    refused = run_inv("init", "--root", str(checkout))
    after_refused = snapshot(checkout)
    done = run_inv("init", "--root", str(checkout), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    after_first = snapshot(checkout)
    again = run_inv("init", "--root", str(checkout))
    return InitStory(
        checkout, makefile_before, before, refused, after_refused, done, after_first, again, snapshot(checkout)
    )


@init_story_group
def test_init_without_yes_names_the_targets_it_would_replace_and_writes_nothing(init_story: InitStory) -> None:
    refused = init_story.refused
    assert refused.returncode == 5, refused.stdout + refused.stderr
    for name in ("apply-patch", "create-patch", "rollback-patch", "patch-status", "up", "down", "logs", "ps"):
        assert name in refused.stdout + refused.stderr
    assert "--yes" in refused.stderr
    assert init_story.after_refused == init_story.before, "nothing is written without consent"


@init_story_group
def test_init_backs_up_the_makefile_and_keeps_the_checkouts_own_targets(init_story: InitStory) -> None:
    checkout = init_story.checkout
    assert "replaces the targets" in init_story.done.stdout
    backups = list((checkout / ".patchflow").glob("init-backup-*/Makefile"))
    assert len(backups) == 1 and backups[0].read_text() == init_story.makefile_before, "the old Makefile is backed up"
    makefile = (checkout / "Makefile").read_text()
    assert makefile.count("\napply-patch:") == 1, "one apply-patch target, patchflow's"
    assert "bash scripts/db/migrate.sh" in make_in(checkout, "-n", "db-migrate").stdout, "own targets kept"
    assert "scripts/patch/apply-patch.sh" not in makefile, "the old apply-patch rule is gone"
    shown = make_in(checkout, "help")
    assert shown.returncode == 0 and "db-migrate" in shown.stdout and "apply-patch" in shown.stdout


@init_story_group
def test_the_makefile_calls_patchflow_with_no_path_of_the_machine_that_ran_init(init_story: InitStory) -> None:
    checkout = init_story.checkout
    dry = make_in(checkout, "-n", "apply-patch", "VERSION=3.1.0", "YES=1", "DRY_RUN=1")
    assert dry.returncode == 0, dry.stderr
    called = f"'{Path(INV).parent / 'patchflow'}' apply-patch --root '{checkout}' --version '3.1.0' --yes --dry-run"
    assert called in dry.stdout
    makefile = (checkout / "Makefile").read_text()
    assert "apply-patch.sh" not in dry.stdout and "/bin/inv" not in makefile, "no path of the machine that ran init"


@init_story_group
def test_init_writes_release_settings_to_pyproject_and_this_hosts_to_host_toml(init_story: InitStory) -> None:
    import tomllib

    checkout = init_story.checkout
    release = tomllib.loads((checkout / "pyproject.toml").read_text())["tool"]["patchflow"]
    assert release == {
        "compose_files": ["docker/docker-compose.yml"],
        "app_services": ["api", "worker", "frontend"],
        "data_services": ["postgres", "redis"],
    }, "only the release's settings travel in pyproject.toml"
    host = tomllib.loads((checkout / ".patchflow" / "host.toml").read_text())
    assert host["health_url"] == ["http://localhost:4000/health"]
    assert host["database_service"] == "postgres" and host["database_mode"] == "compose"


@init_story_group
def test_init_writes_tasks_and_noxfile_and_ignores_its_state_folder(init_story: InitStory) -> None:
    checkout = init_story.checkout
    assert "from patchflow.cli import ns" in (checkout / "tasks.py").read_text()
    assert "patchflow.nox_sessions" in (checkout / "noxfile.py").read_text()
    ignored = (checkout / ".gitignore").read_text().splitlines()
    assert any(line.strip("/") == ".patchflow" for line in ignored)


@init_story_group
def test_a_second_init_changes_nothing(init_story: InitStory) -> None:
    again = init_story.again
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing to change" in again.stdout
    assert init_story.after_again == init_story.after_first, "a second init changes nothing"
    assert len(list((init_story.checkout / ".patchflow").glob("init-backup-*"))) == 1


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


@pytest.fixture(scope="session")
def checkout_template(pg_cluster: object, tmp_path_factory: pytest.TempPathFactory) -> CheckoutTemplate:
    """The installed checkout made once per session (see support.checkouts.CheckoutTemplate)."""
    return CheckoutTemplate.build(tmp_path_factory.mktemp("checkout-template"), pg_cluster)


@pytest.fixture
def running_checkout(tmp_path: Path, checkout_template: CheckoutTemplate) -> Iterator[tuple[Path, str]]:
    """The checkout at 3.0.0 installed by patchflow (command manager, flat migrations, the real
    ``?schema=public`` URL) with its services running; yields ``(checkout, health_url)``."""
    with checkout_template.running(tmp_path) as running:
        yield running


def _release(root: Path, workdir: Path, version: str, **changes: object) -> None:
    checkout_release(root, workdir, version, **changes)


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
    # a second rollback of 3.1.0 (another operator's, started after the first ended): nothing to
    # do, the run that ended first named, and no --force offered (never a second restore)
    again = inv_in(root, "rollback-patch", "--version", "3.1.0", "--yes")
    text = " ".join(again.stderr.split())
    assert again.returncode == 1, again.stdout + again.stderr
    assert "the last run on 3.1.0 (rollback 3.1.0 -> 3.0.0 by" in text and "Nothing to do" in text, text
    assert "--force" not in text and (root / "VERSION").read_text() == "3.0.0\n"


def test_make_create_patch_with_a_newer_version_than_the_version_file(
    running_checkout: tuple[Path, str], tmp_path: Path
) -> None:
    """PATCH_SYSTEM.md's `make create-patch VERSION=3.1.0` on a tree whose VERSION still says 3.0.0,
    then verify, apply and roll back through the checkout's Makefile."""
    import shutil

    root, health_url = running_checkout
    source = make_checkout_release(root, tmp_path / "release-3.1.0", "3.1.0")
    (source / "VERSION").write_text("3.0.0\n")
    made = make_in(source, "create-patch", "VERSION=3.1.0")
    assert made.returncode == 0, made.stdout + made.stderr
    assert (
        "VERSION: the tree's VERSION says 3.0.0; the patch carries VERSION 3.1.0 (the tree's file is left unchanged)"
        in made.stdout
    )
    assert (source / "VERSION").read_text() == "3.0.0\n"
    shutil.copytree(source / "patches" / "v3.1.0", root / "patches" / "v3.1.0")
    verified = make_in(root, "verify-patch", "VERSION=3.1.0")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    applied = make_in(root, "apply-patch", "VERSION=3.1.0", "YES=1")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert (root / "VERSION").read_text() == "3.1.0\n" and get(health_url)[0] == 200
    installed = make_in(root, "verify-patch")  # the checkout's Makefile sets VERSION from the file
    assert installed.returncode == 0 and "ok patch v3.1.0" in installed.stdout, installed.stdout + installed.stderr
    bare = inv_in(root, "verify-patch")  # no --version: the VERSION file's, now 3.1.0
    assert bare.returncode == 0 and "verifying v3.1.0" in bare.stdout, bare.stdout + bare.stderr
    back = make_in(root, "rollback-patch", "VERSION=3.1.0", "YES=1")
    assert back.returncode == 0, back.stdout + back.stderr
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
