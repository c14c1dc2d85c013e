"""The command line as an operator uses it: `inv` and `make` as subprocesses, no terminal."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from support.installs import REPO, run_inv

pytestmark = pytest.mark.e2e

TASKS = [
    "init",
    "create-patch",
    "verify-patch",
    "patch-status",
    "preflight",
    "apply-patch",
    "rollback-patch",
    "prune-backups",
    "up",
    "down",
    "ps",
    "restart",
    "logs",
    "demo",
    "test",
]


def test_inv_lists_every_task_with_a_description() -> None:
    listed = run_inv("--list")
    assert listed.returncode == 0, listed.stderr
    for name in TASKS:
        line = next((row for row in listed.stdout.splitlines() if row.strip().startswith(name + " ")), "")
        assert line.strip() != name, f"{name} has no one-line description"


@pytest.mark.parametrize("name", TASKS)
def test_every_task_has_help_for_every_flag(name: str) -> None:
    shown = run_inv(name, "--help")
    assert shown.returncode == 0, shown.stderr
    flags = re.findall(r"^\s+(?:-\w(?: \w+)?, )?--([\w-]+)(?:=\w+)?\s*(.*)$", shown.stdout, re.MULTILINE)
    assert flags, shown.stdout
    for flag, text in flags:
        assert text.strip(), f"inv {name} --{flag} has no help text"


def test_every_make_target_is_one_inv_call() -> None:
    makefile = (REPO / "Makefile").read_text()
    recipes: dict[str, list[str]] = {}
    current = None
    for line in makefile.splitlines():
        match = re.match(r"^([a-z][\w-]*):", line)
        if match:
            current = match.group(1)
            recipes[current] = []
        elif line.startswith("\t") and current:
            recipes[current].append(line.strip())
    for target in (
        "patch-status",
        "create-patch",
        "verify-patch",
        "apply-patch",
        "rollback-patch",
        "preflight",
        "demo",
        "test",
        "logs",
        "ps",
        "up",
        "down",
        "restart",
    ):
        assert len(recipes[target]) == 1 and "$(INV)" in recipes[target][0], (target, recipes[target])
    assert "$(INV) --list" in recipes["help"][0], recipes["help"]
    assert all(line.startswith("@echo") for line in recipes["help"][1:]), "then it prints the variables"


def test_make_help_lists_the_commands() -> None:
    shown = subprocess.run(
        ["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
    )
    assert shown.returncode == 0, shown.stderr
    assert "apply-patch" in shown.stdout and "rollback-patch" in shown.stdout


def test_repository_make_targets_pass_values_single_quoted(tmp_path: Path) -> None:
    """patchflow's own Makefile too: a value with ``;`` is one argument and ``DRY_RUN=1`` next to it counts."""
    shown = subprocess.run(
        ["make", "-s", "-n", "apply-patch", f"ROOT={tmp_path}", "VERSION=3.1.0; touch pwned", "DRY_RUN=1", "YES=1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert shown.returncode == 0, shown.stderr
    assert f"apply-patch --root '{tmp_path}' --version '3.1.0; touch pwned' --yes --dry-run" in shown.stdout
    quoted = subprocess.run(
        ["make", "-s", "-n", "patch-status", "HOST=a'b", "JSON=1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert "--host 'a'\\''b' --json" in quoted.stdout


def _primeflow_checkout(root: Path) -> Path:
    """A PrimeFlow-like checkout with the flat migration layout some branches use."""
    shutil.copytree(REPO / "examples" / "primeflow-sample", root, symlinks=True)
    flat = root / "prisma" / "migrations"
    for folder in sorted(p for p in flat.iterdir() if p.is_dir()):
        (flat / f"{folder.name}.sql").write_text((folder / "migration.sql").read_text())
        shutil.rmtree(folder)
    (root / "node_modules" / "x").mkdir(parents=True)
    (root / "node_modules" / "x" / "index.js").write_text("1")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "backups" / "pre-patch-v1").mkdir(parents=True)
    (root / "backups" / "pre-patch-v1" / "db.dump").write_bytes(b"old dump")
    return root


def test_create_patch_on_a_primeflow_checkout_with_flat_migrations(tmp_path: Path) -> None:
    root = _primeflow_checkout(tmp_path / "primeflow")
    (root / "VERSION").write_text("3.0.1\n")
    version_before = (root / "VERSION").read_bytes()
    made = run_inv("create-patch", "--root", str(root), "--version", "3.0.1")
    assert made.returncode == 0, made.stderr + made.stdout
    folder = root / "patches" / "v3.0.1"
    for sums in (["md5sum", "-c", "checksum.md5"], ["sha256sum", "-c", "SHA256SUMS"]):
        assert subprocess.run(sums, cwd=folder, capture_output=True, check=False).returncode == 0
    names = subprocess.run(
        ["tar", "-tzf", "patch-v3.0.1.tar.gz"], cwd=folder, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    for banned in ("node_modules", ".git", ".env", "backups", "patches"):
        assert not [n for n in names if n == banned or n.startswith(banned + "/")], banned
    assert ".env.example" in names
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [m["name"] for m in manifest["migrations"]] == [
        "20250101120000_init",
        "20250115093000_add_projects",
        "20250201101500_seed_defaults",
    ]
    schema = (folder / "schema.sql").read_text()
    assert schema.index("20250101120000_init") < schema.index("20250201101500_seed_defaults")
    assert (root / "VERSION").read_bytes() == version_before
    verified = run_inv("verify-patch", "--root", str(root), "--version", "3.0.1")
    assert verified.returncode == 0, verified.stderr
    status = run_inv("patch-status", "--root", str(root), "--json")
    data = json.loads(status.stdout)
    assert data["patches"][0]["version"] == "3.0.1" and data["patches"][0]["state"] == "ok"

    again = run_inv("create-patch", "--root", str(root), "--version", "3.0.1", "--force")
    assert again.returncode == 0
    first = manifest["archive"]["sha256"]
    assert json.loads((folder / "manifest.json").read_text())["archive"]["sha256"] == first


@pytest.mark.parametrize("bad", ["2.3.0;rm -rf /", "$(touch {marker})", "2.3", "latest"])
def test_unsafe_or_invalid_versions_are_refused_before_anything_runs(tmp_path: Path, bad: str) -> None:
    marker = tmp_path / "pf-pwned"  # this test's own file: a /tmp/pf-pwned of someone else cannot fail it
    bad = bad.format(marker=marker)
    root = _primeflow_checkout(tmp_path / "primeflow")
    for task in ("create-patch", "verify-patch", "apply-patch", "rollback-patch"):
        extra = ["--yes"] if task in ("apply-patch", "rollback-patch") else []
        done = run_inv(task, "--root", str(root), "--version", bad, *extra)
        assert done.returncode != 0
        assert "semantic version" in done.stderr
    assert not (root / "patches").exists()
    assert not marker.exists()


@pytest.mark.parametrize("parallel", ["0", "-2"])
def test_deploy_refuses_a_parallel_below_one_before_any_connection(tmp_path: Path, parallel: str) -> None:
    root = _primeflow_checkout(tmp_path / "primeflow")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    done = run_inv("deploy", "--root", str(root), "--host", "web1", "--version", "3.0.0", "--parallel", parallel)
    assert done.returncode != 0
    assert f"--parallel {parallel} is not a number of hosts" in done.stderr, done.stderr
    assert "Pass --parallel N" in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_verify_patch_without_version_verifies_the_version_files_patch(tmp_path: Path) -> None:
    root = _primeflow_checkout(tmp_path / "primeflow")
    assert run_inv("create-patch", "--root", str(root)).returncode == 0
    done = run_inv("verify-patch", "--root", str(root))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"verifying v2.2.0, the version in {root / 'VERSION'} (--version for another)" in " ".join(
        done.stdout.split()
    )
    assert "ok patch v2.2.0" in done.stdout

    (root / "VERSION").write_text("2.3.0\n")  # a version without a patch: verify-patch names the folder
    absent = run_inv("verify-patch", "--root", str(root))
    assert absent.returncode == 1 and "Patch v2.3.0 not found" in absent.stderr, absent.stderr
    for content, problem in ((None, "does not exist"), ("next\n", "Invalid version in")):
        if content is None:
            (root / "VERSION").unlink()
        else:
            (root / "VERSION").write_text(content)
        refused = run_inv("verify-patch", "--root", str(root))
        flat = " ".join(refused.stderr.split())
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "No --version given, so the version in the VERSION file is used, but:" in flat and problem in flat
        assert f"Pass --version X.Y.Z (patches in {root / 'patches'}: v2.2.0), or fix VERSION" in flat
        assert "Traceback" not in refused.stderr


def test_verify_patch_names_a_corrupt_archive(tmp_path: Path) -> None:
    root = _primeflow_checkout(tmp_path / "primeflow")
    assert run_inv("create-patch", "--root", str(root)).returncode == 0
    archive = root / "patches" / "v2.2.0" / "patch-v2.2.0.tar.gz"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    checked = run_inv("verify-patch", "--root", str(root), "--version", "2.2.0")
    assert checked.returncode == 1
    assert "patch-v2.2.0.tar.gz" in checked.stderr and "checksum mismatch" in checked.stderr
    status = json.loads(run_inv("patch-status", "--root", str(root), "--json").stdout)
    assert status["patches"][0]["state"] == "corrupt"
