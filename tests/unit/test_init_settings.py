"""Where init writes settings (issue 18, the lead's host-settings decision): detected host settings
into .patchflow/host.toml (created 0600 in a 0700 folder, existing keys kept), release settings into
pyproject.toml, ``init --set KEY=VALUE`` validated by the settings' own converters (a bad one: one
paragraph, nothing written); init keeps the owner, group and mode of every file it edits."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from support.services import shared_tempdir

from patchflow.config import load_settings
from patchflow.errors import ConfigError
from patchflow.init import apply_init, plan_init
from patchflow.settings_files import HOST_SETTINGS_FILE

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "examples" / "primeflow-checkout" / "docker" / "docker-compose.yml"
SET_COMMAND = ("--set", "service_manager=command")


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    (root / "docker").mkdir(parents=True)
    shutil.copy2(COMPOSE, root / "docker" / "docker-compose.yml")
    (root / "VERSION").write_text("3.0.0\n")
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_detected_settings_go_where_their_scope_says(checkout: Path) -> None:
    apply_init(plan_init(checkout), checkout / ".patchflow")
    host_file = checkout / HOST_SETTINGS_FILE
    assert stat.S_IMODE(host_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(host_file.parent.stat().st_mode) == 0o700
    text = host_file.read_text()
    assert text.startswith("# This host's own patchflow settings")
    host = tomllib.loads(text)
    assert host == {
        "service_manager": "compose",
        "database_mode": "compose",
        "database_service": "postgres",
        "database_name": "primeflow",
        "database_user": "primeflow",
        "health_url": ["http://localhost:4000/health"],
    }
    release = tomllib.loads((checkout / "pyproject.toml").read_text())["tool"]["patchflow"]
    assert release == {
        "compose_files": ["docker/docker-compose.yml"],
        "app_services": ["api", "worker", "frontend"],
        "data_services": ["postgres", "redis"],
    }
    settings = load_settings(checkout, environ={})
    assert settings.source("health_url") == HOST_SETTINGS_FILE and settings.source("app_services") == "pyproject.toml"


def test_set_writes_validated_host_settings_and_keeps_the_rest(checkout: Path) -> None:
    host_file = checkout / HOST_SETTINGS_FILE
    host_file.parent.mkdir(mode=0o700)
    host_file.write_text('# mine\nservice_manager = "compose"\nretention_days = 30\n')
    sets = [
        "service_manager=command",
        "commands=api=node apps/api/server.js;worker=node apps/worker/index.js",
        "health-url=http://127.0.0.1:4100/health,http://127.0.0.1:4100/ready",
        'hosts={"web1": {"host": "deploy@10.0.0.5", "role": "production", "settings": {"health_timeout": 9}}}',
        "database_url=postgresql://app:s3cret@db/app",
    ]
    plan = plan_init(checkout, sets=sets)
    notes = " ".join(n for c in plan.changes if c.path == host_file for n in c.notes)
    assert "s3cret" not in notes and "postgresql://app:***@db/app" in notes, "passwords are masked in the plan"
    apply_init(plan, checkout / ".patchflow")
    text = host_file.read_text()
    assert text.startswith("# mine\n") and "retention_days = 30" in text
    settings = load_settings(checkout, environ={})
    assert settings.service_manager == "command"
    assert settings.commands == (("api", "node apps/api/server.js"), ("worker", "node apps/worker/index.js"))
    assert settings.health_url == ("http://127.0.0.1:4100/health", "http://127.0.0.1:4100/ready")
    assert settings.hosts[0].host == "deploy@10.0.0.5" and settings.hosts[0].role == "production"
    assert settings.hosts[0].settings == (("health_timeout", "9.0"),)
    assert settings.retention_days == 30 and settings.database_url == "postgresql://app:s3cret@db/app"
    assert tomllib.loads(text)["service_manager"] == "command", "--set replaces the key it names"
    assert plan_init(checkout, sets=sets).changed == [], "the same --set again changes nothing"


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ("service_manager", "is not KEY=VALUE"),
        ("=compose", "is not KEY=VALUE"),
        ("health_ulr=http://x", "Did you mean 'health_url'"),
        ("test_kill_at=apply", "there is no setting"),
        ("service_manager=podman", "expected one of: command, compose, none"),
        ("retention_days=-3", "expected a number >= 0"),
        ('hosts={"web 1": {}}', "host name"),
    ],
)
def test_a_bad_set_is_one_paragraph_and_nothing_is_written(checkout: Path, item: str, match: str) -> None:
    before = snapshot(checkout)
    with pytest.raises(ConfigError, match=match) as caught:
        plan_init(checkout, sets=["health_url=http://localhost:4000/health", item])
    assert caught.value.hint and "\n" not in str(caught.value)
    assert snapshot(checkout) == before


@pytest.mark.parametrize(
    ("pyproject", "match"),
    [
        ("[tool.patchflow\n", "is not valid TOML"),
        ("tool = 3\n", "`tool` in .* is not a table"),
        ("[tool]\npatchflow = 1\n", r"tool\.patchflow\]? in .* must be a table"),
        ("[[tool.patchflow]]\nx = 1\n", r"tool\.patchflow\]? in .* must be a table"),
    ],
)
def test_a_pyproject_init_cannot_edit_is_refused_with_nothing_written(
    checkout: Path, pyproject: str, match: str
) -> None:
    (checkout / "pyproject.toml").write_text(pyproject)
    before = snapshot(checkout)
    with pytest.raises(ConfigError, match=match):
        plan_init(checkout)
    assert snapshot(checkout) == before


def test_an_invalid_host_file_is_refused(checkout: Path) -> None:
    (checkout / ".patchflow").mkdir()
    (checkout / HOST_SETTINGS_FILE).write_text("health_url = [\n")
    with pytest.raises(ConfigError, match=r"host\.toml is not valid TOML"):
        plan_init(checkout)


def test_dry_run_shows_every_file_and_setting_and_writes_nothing(checkout: Path) -> None:
    (checkout / "pyproject.toml").write_bytes((REPO / "tests/data/init_corpus/pyproject/older-init.toml").read_bytes())
    before = snapshot(checkout)
    done = subprocess.run(
        [sys.executable, "-m", "patchflow", "init", "--root", str(checkout), "--dry-run", *SET_COMMAND],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "create    .patchflow/host.toml" in out and 'sets (--set): service_manager = "command"' in out
    assert "copies from pyproject.toml [tool.patchflow] (written there by an older init): database_mode" in out
    assert "create    Makefile" in out and "dry run: nothing was written" in out
    assert snapshot(checkout) == before


@pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root (CI and this machine run as root)")
def test_init_keeps_owner_group_and_mode_and_gives_new_files_the_checkouts_owner(checkout: Path) -> None:
    (checkout / "Makefile").write_text("up:\n\tdocker compose up -d\n")
    (checkout / ".gitignore").write_bytes(b"node_modules/\r\n")
    for path in (checkout, checkout / "Makefile", checkout / ".gitignore"):
        os.chown(path, 1234, 2345)
    os.chmod(checkout / "Makefile", 0o664)
    os.chmod(checkout / ".gitignore", 0o640)
    apply_init(plan_init(checkout), checkout / ".patchflow")
    for name, mode in (("Makefile", 0o664), (".gitignore", 0o640)):
        st = (checkout / name).stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 2345, mode), name
    gitignore = b"node_modules/\r\n\r\n# patchflow\r\n/patches/\r\n/backups/\r\n/.patchflow/\r\n"
    assert (checkout / ".gitignore").read_bytes() == gitignore, "CRLF kept in .gitignore too"
    for name in ("tasks.py", "noxfile.py", "pyproject.toml", ".patchflow", HOST_SETTINGS_FILE):
        st = (checkout / name).stat()
        assert (st.st_uid, st.st_gid) == (1234, 2345), f"{name} belongs to the checkout's owner, not root"
    backups = list((checkout / ".patchflow").glob("init-backup-*/Makefile"))
    assert backups and backups[0].stat().st_uid == 1234


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to an unprivileged user needs root")
def test_a_user_editing_another_users_writable_makefile_does_not_take_it_over() -> None:
    """Not root, not the owner: the file is rewritten in place (backed up first), so its owner stays."""
    import pwd

    nobody = pwd.getpwnam("nobody")
    base = shared_tempdir("patchflow-init-owner-")
    try:
        root = base / "checkout"
        root.mkdir(mode=0o777)
        os.chmod(root, 0o777)
        (root / "Makefile").write_text("up:\n\tdocker compose up -d\nbuild:\n\tnpm run build\n")
        os.chown(root / "Makefile", 1234, 1234)
        os.chmod(root / "Makefile", 0o666)
        plan = plan_init(root)
        os.setegid(nobody.pw_gid)
        os.seteuid(nobody.pw_uid)
        try:
            apply_init(plan, root / ".patchflow")
        finally:
            os.seteuid(0)
            os.setegid(0)
        st = (root / "Makefile").stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 1234, 0o666)
        assert "PF_RUN" in (root / "Makefile").read_text()
        assert (root / "tasks.py").stat().st_uid == nobody.pw_uid
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_without_a_compose_file_no_pyproject_is_created(tmp_path: Path) -> None:
    root = tmp_path / "checkout"
    root.mkdir()
    plan = plan_init(root)
    assert "pyproject.toml" not in [c.path.name for c in plan.changes], "nothing of the release's to write"
    apply_init(plan, root / ".patchflow")
    assert not (root / "pyproject.toml").exists()
    assert tomllib.loads((root / HOST_SETTINGS_FILE).read_text()) == {"service_manager": "none"}
