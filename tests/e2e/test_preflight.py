"""preflight in a pnpm workspace (issue 18, fault 6), with a real pnpm (scripts/ensure-system.sh
--for test installs it) on checkouts shaped like the real PrimeFlow monorepo: each check runs in
the packages that define it, a failure names its package, skips and what cannot run are said, the
packages are the ones pnpm itself lists, and the migration lint leaves out what patches shipped.
``inv`` runs as a subprocess without a terminal; ``--skip-tool`` leaves patchflow's own nox
session out (it lints patchflow, not the checkout)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from support.installs import REPO, run_inv
from support.missing import missing_service

from patchflow.workspace import workspace_packages

sys.path.insert(0, str(REPO / "scripts"))
from primeflow_checkout import MIGRATIONS, prepare_checkout

pytestmark = pytest.mark.e2e

HEAVY = 'ALTER TABLE "User" ALTER COLUMN "name" TYPE varchar(80);\n'


def _pnpm() -> str:
    found = shutil.which("pnpm")
    if found is None:
        missing_service(
            "pnpm is not installed: scripts/ensure-system.sh --for test installs it (npm install -g pnpm@9)"
        )
    return found


def _flat(text: str) -> str:
    return " ".join(text.split())


def _set_script(package_json: Path, name: str, command: str | None) -> None:
    data = json.loads(package_json.read_text())
    scripts = data.setdefault("scripts", {})
    if command is None:
        scripts.pop(name, None)
    else:
        scripts[name] = command
    package_json.write_text(json.dumps(data, indent=2) + "\n")


def preflight(root: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_inv("preflight", "--root", str(root), "--skip-tool", env=env)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """The PrimeFlow-shaped checkout (root lint/typecheck scripts, apps/* and packages/* without
    any), with no Prisma schema so that only the package scripts decide the outcome."""
    _pnpm()
    root = prepare_checkout(tmp_path / "primeflow", database_url=None, git=False)
    (root / "prisma" / "schema.prisma").unlink()
    return root


def test_typecheck_runs_in_the_package_that_defines_it_and_a_failure_names_it(checkout: Path) -> None:
    (checkout / "apps/api/types.mjs").write_text("export const port: number = 4000;\n")  # node --check: a type error
    _set_script(checkout / "apps/api/package.json", "typecheck", "node --check types.mjs")
    _set_script(checkout / "packages/shared/package.json", "typecheck", "node --check index.js")

    failed = preflight(checkout)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    out = failed.stdout
    for ran in ("pnpm lint", "pnpm typecheck", "pnpm typecheck in apps/api", "pnpm typecheck in packages/shared"):
        assert f"run  {ran}\n" in out, (ran, out)
    assert "fail pnpm typecheck in apps/api (exit 1)" in out
    assert "ok   pnpm typecheck in packages/shared" in out and "ok   pnpm typecheck\n" in out
    assert "in apps/worker" not in out, "a package without the script is not run"
    assert "preflight: 4 ran (1 failed), 0 skipped, 0 could not run" in out
    assert "Preflight failed: pnpm typecheck in apps/api (exit 1)." in _flat(failed.stderr)
    assert "SyntaxError" in failed.stderr, "the package's own output reaches the terminal"

    (checkout / "apps/api/types.mjs").write_text("export const port = 4000;\n")
    _set_script(checkout / "apps/api/package.json", "typecheck", "node --check types.mjs")
    passed = preflight(checkout)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "ok   pnpm typecheck in apps/api" in passed.stdout


def test_a_root_script_that_runs_the_packages_is_skipped_for_theirs(tmp_path: Path) -> None:
    _pnpm()
    root = tmp_path / "sample"
    shutil.copytree(REPO / "examples" / "primeflow-sample", root, symlinks=True)
    (root / "prisma" / "schema.prisma").unlink()
    _set_script(root / "apps/worker/package.json", "lint", "node -e 'process.exit(3)'")
    done = preflight(root)
    assert done.returncode == 1, done.stdout + done.stderr
    out = _flat(done.stdout)
    assert "skip pnpm lint: the root's script (pnpm -r run lint) runs the packages' lint scripts" in out
    assert "skip pnpm typecheck: the root's script (pnpm -r run typecheck)" in out
    for package in ("apps/api", "apps/worker", "packages/shared"):
        assert f"run pnpm lint in {package}" in out and f"run pnpm typecheck in {package}" in out
    assert "preflight: 6 ran (1 failed), 2 skipped, 0 could not run" in out
    assert "Preflight failed: pnpm lint in apps/worker (exit 3)." in _flat(done.stderr)


def test_no_script_anywhere_is_a_skip_that_says_so(checkout: Path) -> None:
    _set_script(checkout / "package.json", "typecheck", None)
    done = preflight(checkout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (
        "skip pnpm typecheck: no package of the workspace (., apps/api, apps/worker, packages/shared) "
        "has a typecheck script" in _flat(done.stdout)
    )
    assert "preflight: 1 ran (0 failed), 1 skipped, 0 could not run" in done.stdout


@pytest.mark.parametrize(
    ("package_json", "reason"),
    [
        (None, "the project has no package.json"),
        ('{"scripts": {"build": "node b.js"}}', "package.json has no lint script"),
    ],
)
def test_a_project_without_checks_says_why_and_passes(tmp_path: Path, package_json: str | None, reason: str) -> None:
    root = tmp_path / "plain"
    root.mkdir()
    (root / "VERSION").write_text("1.0.0\n")
    if package_json is not None:
        (root / "package.json").write_text(package_json)
    done = preflight(root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"skip pnpm lint: {reason}" in done.stdout
    assert "no checks apply" in done.stdout and "preflight: 0 ran (0 failed), 2 skipped" in done.stdout


def test_without_pnpm_every_check_that_needs_it_cannot_run(checkout: Path, tmp_path: Path) -> None:
    _set_script(checkout / "apps/api/package.json", "typecheck", "node --check server.js")
    only_node = tmp_path / "bin"
    only_node.mkdir()
    os.symlink(shutil.which("node") or "/usr/bin/node", only_node / "node")
    done = preflight(checkout, env={"PATH": str(only_node)})
    assert done.returncode == 1, done.stdout + done.stderr
    out = _flat(done.stdout)
    for label in ("pnpm lint", "pnpm typecheck", "pnpm typecheck in apps/api"):
        assert f"cannot run {label}: pnpm is not installed: install pnpm (npm install -g pnpm" in out, (label, out)
    assert "preflight: 0 ran (0 failed), 0 skipped, 3 could not run" in out
    assert "pnpm typecheck in apps/api (pnpm is not installed" in _flat(done.stderr)


def test_prisma_validate_runs_in_the_package_holding_the_schema(checkout: Path) -> None:
    schema = checkout / "apps/api/prisma/schema.prisma"
    schema.parent.mkdir(parents=True)
    schema.write_text("// the api's own schema\n")
    done = preflight(checkout)
    assert done.returncode == 1
    assert "cannot run prisma validate in apps/api: the Prisma CLI is not in node_modules" in _flat(done.stdout)
    prisma = checkout / "node_modules/.bin/prisma"  # the root's (hoisted) CLI serves the package
    # a stand-in for the Prisma CLI, which cannot be installed here (its engines come from
    # binaries.prisma.sh, unreachable here): it records where and how it ran
    prisma.parent.mkdir(parents=True, exist_ok=True)
    prisma.write_text('#!/bin/sh\necho "prisma $* in $(pwd)"\n')
    prisma.chmod(0o755)
    ran = preflight(checkout)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert f"prisma validate in {checkout / 'apps/api'}" in ran.stdout
    assert "ok   prisma validate in apps/api" in ran.stdout


@pytest.mark.parametrize(
    ("workspace", "problem"),
    [
        ("packages: [apps/*\n", "pnpm-workspace.yaml cannot be read as YAML"),
        ("packages: apps/*\n", '"packages" is not a list of folder globs'),
    ],
)
def test_an_unreadable_workspace_file_is_named(checkout: Path, workspace: str, problem: str) -> None:
    (checkout / "pnpm-workspace.yaml").write_text(workspace)
    done = preflight(checkout)
    assert done.returncode == 1 and problem in _flat(done.stderr), done.stderr
    assert "run " not in done.stdout, "nothing ran"


def test_a_broken_package_json_of_a_workspace_package_is_named(checkout: Path) -> None:
    (checkout / "apps/worker/package.json").write_text("{ not json\n")
    done = preflight(checkout)
    assert done.returncode == 1
    assert f"{checkout / 'apps/worker/package.json'} is not valid JSON" in _flat(done.stderr)


def _pnpm_packages(root: Path) -> list[str]:
    listed = subprocess.run(
        [_pnpm(), "ls", "-r", "--depth", "-1", "--json"], cwd=root, capture_output=True, text=True, check=True
    )
    return sorted(Path(p["path"]).relative_to(root).as_posix() or "." for p in json.loads(listed.stdout))


def test_the_packages_are_the_ones_pnpm_lists(checkout: Path, tmp_path: Path) -> None:
    sample = tmp_path / "sample"
    shutil.copytree(REPO / "examples" / "primeflow-sample", sample, symlinks=True)
    odd = tmp_path / "odd"
    for rel in (
        ".",
        "apps/web",
        "apps/web/node_modules/dep",  # never a package of the workspace
        "packages/ui",
        "packages/tools/lint-rules",  # reached by packages/**
        "packages/internal/secret",  # removed by a ! glob
        "services/one",
    ):
        (odd / rel).mkdir(parents=True, exist_ok=True)
        (odd / rel / "package.json").write_text(json.dumps({"name": rel.replace("/", "-")}) + "\n")
    (odd / "apps/empty").mkdir()  # no package.json: not a package
    (odd / "pnpm-workspace.yaml").write_text(
        "packages:\n  - 'apps/*'\n  - 'packages/**'\n  - '!packages/internal/**'\n  - './services/one/'\n"
    )
    for root in (checkout, sample, odd):
        ours = sorted(p.rel for p in workspace_packages(root))
        assert ours == _pnpm_packages(root), root


def test_the_migration_lint_leaves_out_what_patches_shipped(checkout: Path) -> None:
    env = {"PATCHFLOW_MIGRATION_LINT": "warn"}
    first = preflight(checkout, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"migration lint: {len(MIGRATIONS)} new migrations linted" in first.stdout

    made = run_inv("create-patch", "--root", str(checkout))
    assert made.returncode == 0, made.stdout + made.stderr
    (checkout / "prisma/migrations/004_name_length.sql").write_text(HEAVY)
    second = preflight(checkout, env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"migration lint: 1 new migrations linted; {len(MIGRATIONS)} already shipped (v3.0.0) not linted" in (
        second.stdout
    )
    warned = [line for line in second.stdout.splitlines() if line.startswith("lock/rewrite")]
    assert warned and all("004_name_length.sql" in line for line in warned), second.stdout

    shutil.move(checkout / "patches/v3.0.0/manifest.json", checkout / ".patchflow-installed.json")
    (checkout / ".patchflow").mkdir(exist_ok=True)
    shutil.move(checkout / ".patchflow-installed.json", checkout / ".patchflow/installed-manifest.json")
    third = preflight(checkout, env=env)
    assert f"{len(MIGRATIONS)} already shipped (the installed record) not linted" in third.stdout


def test_ensure_system_names_the_pnpm_install_command_when_it_cannot_install(request: pytest.FixtureRequest) -> None:
    """scripts/ensure-system.sh --for test as a user who may not install (``nobody`` when the tests
    run as root) on a PATH with every other tool but no pnpm: it stops, naming the command (as root
    it runs it: that is how this machine got its pnpm)."""
    home = Path(tempfile.mkdtemp(prefix="pf-ensure-"))  # tmp_path's parents are private to root
    request.addfinalizer(lambda: shutil.rmtree(home, ignore_errors=True))
    tools = home / "bin"
    tools.mkdir()
    for name in ("bash", "id", "dirname", "grep", "sed", "node", "docker", "dockerd", "dpkg-query", "ssh-keygen"):
        found = shutil.which(name)
        if found is None:
            missing_service(f"{name} is not installed (scripts/ensure-system.sh --for test installs it)")
        os.symlink(found, tools / name)
    for name in ("curl", "faketime", "strace", "cc"):
        os.symlink(shutil.which(name) or f"/usr/bin/{name}", tools / name)
    home.chmod(0o755)
    tools.chmod(0o755)
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"  # as root: become a user who may not install
    as_nobody = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups"] if os.geteuid() == 0 else []
    done = subprocess.run(
        [*as_nobody, "bash", str(REPO / "scripts/ensure-system.sh"), "--for", "test"],
        env={"PATH": str(tools), "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "ensure-system: system packages present (test)" in done.stdout, done.stdout + done.stderr
    assert (
        "pnpm is missing and cannot be installed here (not root): run 'sudo npm install -g pnpm@9' "
        "(or 'corepack enable pnpm') and re-run" in done.stderr
    )
