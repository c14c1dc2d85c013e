"""What belongs to the host stays the host's (issue 18): a patch never carries or replaces the host's
settings file or the paths the host keeps as its own, and the plan says which of patchflow's
settings the new release changes, with the source that decides each one on this host."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.crafted import bare_install, craft_patch
from support.installs import run_inv, tree_state

pytestmark = pytest.mark.integration

RELEASE_1 = b'[project]\nname = "primeflow"\n\n[tool.patchflow]\napp_services = []\nmigration_lint = "warn"\n'
HOST = "health_timeout = 12.0\nretention_keep = 9\n"


def _install(tmp_path: Path) -> Path:
    root = bare_install(
        tmp_path / "install",
        files={"src/a.js": b"1", "pyproject.toml": RELEASE_1, "storage/sessions/s1.json": b"{}"},
    )
    (root / ".patchflow").mkdir()
    (root / ".patchflow" / "host.toml").write_text(HOST, encoding="utf-8")
    craft_patch(root / "patches", "1.0.0", {"src/a.js": b"1", "pyproject.toml": RELEASE_1})
    done = run_inv("apply-patch", "--root", str(root), "--version", "1.0.0", "--yes", "--force")
    assert done.returncode == 0, done.stdout + done.stderr
    return root


def _dry_run(root: Path, version: str) -> str:
    done = run_inv("apply-patch", "--root", str(root), "--version", version, "--dry-run")
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_plan_lists_the_settings_a_release_changes_and_those_the_host_keeps(tmp_path: Path) -> None:
    root = _install(tmp_path)
    release_2 = (
        b'[project]\nname = "primeflow"\n\n[tool.patchflow]\napp_services = []\nmigration_lint = "off"\n'
        b'health_timeout = 90\nhealth_url = "http://localhost:4000/health"\n'
    )
    craft_patch(root / "patches", "1.1.0", {"src/a.js": b"2", "pyproject.toml": release_2})
    plan = _dry_run(root, "1.1.0")
    assert "C pyproject.toml  (holds patchflow's release settings: 3 changed, listed below)" in plan
    assert "migration_lint: warn -> off (release pyproject.toml)" in plan
    assert "health_timeout: the release now says 90.0; this host keeps 12.0 (.patchflow/host.toml)" in plan
    # a host setting the host file does not pin takes the release's value, and the plan says so
    assert "health_url: http://localhost:3001/health -> http://localhost:4000/health (release pyproject.toml)" in plan
    assert "pin this host's value in .patchflow/host.toml" in plan


def test_a_release_that_changes_no_setting_says_so(tmp_path: Path) -> None:
    root = _install(tmp_path)
    same = RELEASE_1.replace(b'name = "primeflow"', b'name = "primeflow"\ndescription = "x"')
    craft_patch(root / "patches", "1.1.0", {"src/a.js": b"2", "pyproject.toml": same})
    plan = _dry_run(root, "1.1.0")
    assert "C pyproject.toml  (patchflow's release settings unchanged)" in plan
    assert "settings       " not in plan


@pytest.mark.parametrize(
    ("pyproject", "expected"),
    [
        (b"[tool.patchflow]\nservice_manager = 'systemd'\n", "expected one of"),
        (b"[tool.patchflow]\nhealth_ur = 'http://x'\n", "Did you mean 'health_url'"),
        (b"[tool.patchflow]\napp_services = []\n[tool.patchflow]\n", "not valid TOML"),
    ],
)
def test_a_release_with_settings_no_command_could_read_is_refused_before_anything(
    tmp_path: Path, pyproject: bytes, expected: str
) -> None:
    root = _install(tmp_path)
    before = tree_state(root, skip=("patches",))
    craft_patch(root / "patches", "1.1.0", {"src/a.js": b"2", "pyproject.toml": pyproject})
    done = run_inv("apply-patch", "--root", str(root), "--version", "1.1.0", "--yes")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "The patch's settings cannot be used" in done.stderr and expected in done.stderr
    assert "[tool.patchflow]" in done.stderr
    assert "rollback too" in done.stderr and "Nothing was changed" in done.stderr
    assert tree_state(root, skip=("patches",)) == before


@pytest.mark.parametrize(
    "carried",
    [".patchflow/host.toml", "storage/sessions/s1.json", "uploads/photo.jpg", "docker/docker-compose.override.yml"],
)
def test_a_patch_never_writes_what_the_host_owns(tmp_path: Path, carried: str) -> None:
    root = _install(tmp_path)
    before = tree_state(root, skip=("patches",))
    craft_patch(root / "patches", "1.1.0", {"src/a.js": b"2", "pyproject.toml": RELEASE_1, carried: b"from the dev"})
    done = run_inv("apply-patch", "--root", str(root), "--version", "1.1.0", "--yes")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "holds paths it may not write" in done.stderr and carried.split("/")[0] in done.stderr
    assert tree_state(root, skip=("patches",)) == before


def test_the_host_settings_file_and_host_paths_survive_apply_and_rollback(tmp_path: Path) -> None:
    root = _install(tmp_path)
    release_2 = RELEASE_1.replace(b'"warn"', b'"refuse"')
    craft_patch(root / "patches", "1.1.0", {"src/a.js": b"2", "pyproject.toml": release_2})
    host_before = (root / ".patchflow" / "host.toml").read_bytes()
    done = run_inv("apply-patch", "--root", str(root), "--version", "1.1.0", "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (root / ".patchflow" / "host.toml").read_bytes() == host_before
    assert (root / "storage/sessions/s1.json").read_bytes() == b"{}", "host data is never owned by a patch"
    assert (root / "pyproject.toml").read_bytes() == release_2
    rolled = run_inv("rollback-patch", "--root", str(root), "--version", "1.1.0", "--yes")
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert (root / ".patchflow" / "host.toml").read_bytes() == host_before
    assert (root / "pyproject.toml").read_bytes() == RELEASE_1
    assert (root / "storage/sessions/s1.json").read_bytes() == b"{}"


def test_create_patch_never_packs_host_paths_or_the_host_settings(tmp_path: Path) -> None:
    root = bare_install(
        tmp_path / "dev",
        files={
            "src/a.js": b"1",
            "pyproject.toml": RELEASE_1,
            "storage/cache.bin": b"x",
            "uploads/photo.jpg": b"jpg",
            "docker/docker-compose.override.yml": b"services: {}\n",
            "docker/docker-compose.yml": b"services: {}\n",
        },
    )
    (root / ".patchflow").mkdir()
    (root / ".patchflow" / "host.toml").write_text('service_manager = "compose"\n', encoding="utf-8")
    done = run_inv("create-patch", "--root", str(root), "--version", "1.0.0")
    assert done.returncode == 0, done.stdout + done.stderr
    import json

    manifest = json.loads((root / "patches/v1.0.0/manifest.json").read_text())
    packed = {f["path"] for f in manifest["files"]}
    assert {"src/a.js", "pyproject.toml", "docker/docker-compose.yml"} <= packed
    assert not packed & {"storage", "uploads", "docker/docker-compose.override.yml", ".patchflow/host.toml"}
    assert not any(p.startswith((".patchflow", "storage/", "uploads/")) for p in packed)


def test_a_host_path_that_is_a_link_to_shared_storage_is_kept_and_never_packed(tmp_path: Path) -> None:
    """Capistrano's linked dirs: a server keeps ``storage`` as a link to shared storage outside the
    checkout; create-patch does not refuse it (it is the host's) and an apply never touches it."""
    shared = tmp_path / "shared" / "storage"
    shared.mkdir(parents=True)
    (shared / "big.bin").write_bytes(b"host data")
    root = _install(tmp_path)
    import os
    import shutil

    shutil.rmtree(root / "storage")
    os.symlink(shared, root / "storage")
    created = run_inv("create-patch", "--root", str(root), "--version", "1.0.1")
    assert created.returncode == 0, created.stdout + created.stderr
    craft_patch(root / "patches", "1.1.0", {"src/a.js": b"2", "pyproject.toml": RELEASE_1})
    for args in (("apply-patch", "--version", "1.1.0"), ("rollback-patch", "--version", "1.1.0")):
        done = run_inv(*args, "--root", str(root), "--yes")
        assert done.returncode == 0, done.stdout + done.stderr
        assert os.readlink(root / "storage") == str(shared) and (shared / "big.bin").read_bytes() == b"host data"
