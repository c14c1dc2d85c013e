"""Day one on a real server (issue 18): a developer's checkout and a server's are different machines.

The developer's checkout (the PrimeFlow-shaped example) runs `init` with what it detects: docker
compose, the API's health URL on port 4000, patchflow in the checkout's own `.venv`, the deploy
inventory in its host settings. The server is another checkout of the same release, reached over a
real sshd, where `setup-host` installs patchflow into `.patchflow/venv` and writes the server's own
settings from its inventory entry: the command service manager (no docker there), another health
URL and port, its own database URL. The developer makes the patch with the documented `make
create-patch VERSION=x.y.z` while VERSION still names the old release, ships it with `make deploy`,
and on the server every operator command works with the server's settings, its settings file and
its Makefile targets untouched by the patch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.installs import REPO, get
from support.services import PostgresCluster, SshServer

sys.path.insert(0, str(REPO / "scripts"))
from primeflow_checkout import make_checkout_release, prepare_checkout
from sample_workspace import free_port

# one story on one worker, in this order (the last test rolls the server back)
pytestmark = [pytest.mark.e2e, pytest.mark.ssh, pytest.mark.integration, pytest.mark.xdist_group("two-machines")]
PATCHFLOW = str(Path(sys.executable).parent / "patchflow")


def make(cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``make -s <args>`` in ``cwd`` as an operator types it (no terminal; PATH without the venv, so
    the Makefile must find patchflow by itself)."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PATCHFLOW")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    return subprocess.run(
        ["make", "-s", *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def out(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout + done.stderr


def wait_health(url: str, version_in_body: str | None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = get(url, timeout=3)
        if status == 200 and (version_in_body is None or version_in_body in body):
            return
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer healthy within {timeout} s")


def patchflow_targets(root: Path) -> dict[str, str]:
    """Each patchflow target's recipe as GNU make reads the Makefile at ``root`` (``make -pn``)."""
    done = subprocess.run(
        ["make", "-pnq", "-f", "Makefile", "--no-print-directory", ".DEFAULT"],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    wanted = ("patch-status", "apply-patch", "rollback-patch", "deploy", "ps", "logs", "create-patch", "patch-help")
    recipes: dict[str, str] = {}
    current: str | None = None
    for line in done.stdout.splitlines():
        if not line.startswith(("\t", "#", " ")) and ":" in line:
            name = line.split(":", 1)[0]
            current = name if name in wanted else None
            if current:
                recipes[current] = ""
        elif current and line.startswith("\t"):
            recipes[current] += line + "\n"
        elif not line.strip():
            current = None
    return recipes


@dataclass
class DayOne:
    """The two machines after the developer deployed 3.1.0 to the server (module-scoped: every
    test below reads this one story, each checks one behaviour of it)."""

    server: Path
    server_health: str
    dev: Path
    dev_host_text: str
    setup: subprocess.CompletedProcess[str]
    server_host: bytes
    makefile_before: bytes
    targets_before: dict[str, str]
    created: subprocess.CompletedProcess[str]
    deployed: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def day_one(
    tmp_path_factory: pytest.TempPathFactory, pg_cluster: PostgresCluster, ssh_server: SshServer
) -> Iterator[DayOne]:
    tmp_path = tmp_path_factory.mktemp("two-machines")
    database = f"pf_server_{uuid.uuid4().hex[:8]}"
    pg_cluster.create_database(database)
    # -- the server: PrimeFlow 3.0.0 checked out, its own .env (port, database); no patchflow yet
    port = free_port()
    server = prepare_checkout(tmp_path / "srv" / "primeflow", database_url=pg_cluster.url(database), port=port)
    server_health = f"http://127.0.0.1:{port}/health"

    # -- the developer: the same release checked out elsewhere, `init` with what it detects there
    dev0 = prepare_checkout(tmp_path / "dev0", database_url=None)
    init = subprocess.run(
        [PATCHFLOW, "init", "--root", str(dev0), "--yes"], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    assert init.returncode == 0, out(init)
    dev = make_checkout_release(dev0, tmp_path / "dev", "3.1.0")
    (dev / "VERSION").write_text("3.0.0\n", encoding="utf-8")  # the developer did not bump VERSION
    shutil.copytree(dev0 / ".patchflow", dev / ".patchflow", ignore=shutil.ignore_patterns("init-backup-*"))
    os.symlink(Path(sys.executable).parent.parent, dev / ".venv")  # patchflow in the checkout's own venv
    ssh = tmp_path / "ssh_config"
    ssh.write_text(
        f"Host prod-server\n  HostName {ssh_server.host}\n  Port {ssh_server.port}\n  User {ssh_server.user}\n"
        f"  IdentityFile {ssh_server.client_key}\n  IdentitiesOnly yes\n",
        encoding="utf-8",
    )
    dev_host = dev / ".patchflow" / "host.toml"
    dev_host_text = dev_host.read_text(encoding="utf-8")
    dev_host.write_text(
        dev_host_text
        + f'\nssh_config = "{ssh}"\nssh_known_hosts = "{tmp_path / "known_hosts"}"\n'
        + f'\n[hosts.prod-server]\npath = "{server}"\nrole = "staging"\n'
        + "\n[hosts.prod-server.settings]\n"
        + 'service_manager = "command"\n'
        + 'commands = "api=node apps/api/server.js;worker=node apps/worker/index.js"\n'
        + 'app_services = ["api", "worker"]\n'
        + 'database_mode = "url"\n'
        + f'health_url = "{server_health}"\n'
        + "health_timeout = 30\n"
        + "allow_unsigned = true\n",  # the test's releases are unsigned: this server accepts them on purpose
        encoding="utf-8",
    )

    # -- first contact: setup-host installs patchflow where deploy finds it and writes the host settings
    setup = subprocess.run(
        [PATCHFLOW, "setup-host", "--root", str(dev), "--host", "prod-server", "--accept-new-host-key", "--yes"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=900,
    )
    assert setup.returncode == 0, out(setup)
    server_host = (server / ".patchflow" / "host.toml").read_bytes()

    # the server runs 3.0.0 (installed by patchflow itself, through the server's own Makefile)
    assert make(server, "create-patch").returncode == 0
    installed = make(server, "apply-patch", "VERSION=3.0.0", "FORCE=1", "YES=1")
    assert installed.returncode == 0, out(installed)
    wait_health(server_health, None)
    makefile_before = (server / "Makefile").read_bytes()
    targets_before = patchflow_targets(server)

    # -- the developer makes the patch with the documented command and ships it
    created = make(dev, "create-patch", "VERSION=3.1.0")
    assert created.returncode == 0, out(created)
    deployed = make(dev, "deploy", "HOST=prod-server", "VERSION=3.1.0", "YES=1", timeout=900)
    assert deployed.returncode == 0, out(deployed)
    wait_health(server_health, None)
    try:
        yield DayOne(
            server, server_health, dev, dev_host_text, setup, server_host, makefile_before, targets_before, created,
            deployed,
        )  # fmt: skip
    finally:
        make(server, "down")
        pg_cluster.drop_database(database)


def test_init_detects_the_developers_compose_stack_and_health_url(day_one: DayOne) -> None:
    assert 'service_manager = "compose"' in day_one.dev_host_text and "localhost:4000/health" in day_one.dev_host_text


def test_setup_host_installs_patchflow_and_writes_the_servers_own_settings(day_one: DayOne) -> None:
    server = day_one.server
    assert (server / ".patchflow" / "venv" / "bin" / "patchflow").is_file()
    assert (
        b'service_manager = "command"' in day_one.server_host and day_one.server_health.encode() in day_one.server_host
    )
    assert str(REPO).encode() not in (server / "Makefile").read_bytes(), "no path of another machine"
    assert set(day_one.targets_before) >= {"apply-patch", "rollback-patch", "patch-status", "ps", "logs"}


def test_create_patch_with_a_newer_version_packs_nothing_of_the_developers_machine(day_one: DayOne) -> None:
    dev = day_one.dev
    assert "3.1.0" in out(day_one.created)
    assert (dev / "VERSION").read_text() == "3.0.0\n", "the tree's VERSION untouched"
    manifest = json.loads((dev / "patches" / "v3.1.0" / "manifest.json").read_text())
    packed = {f["path"] for f in manifest["files"]}
    assert not any(p.startswith((".patchflow", ".venv")) for p in packed), "nothing of the developer's machine"


def test_deploy_installs_the_release_and_keeps_the_servers_settings_and_makefile(day_one: DayOne) -> None:
    server = day_one.server
    assert (server / "VERSION").read_text().strip() == "3.1.0"
    assert (server / ".patchflow" / "host.toml").read_bytes() == day_one.server_host, "the host settings are the host's"
    assert (server / "Makefile").read_bytes() == day_one.makefile_before
    assert patchflow_targets(server) == day_one.targets_before


def test_status_ps_and_logs_work_on_the_server_with_its_own_settings(day_one: DayOne) -> None:
    server = day_one.server
    status = make(server, "patch-status")
    assert status.returncode == 0 and "3.1.0" in status.stdout, out(status)
    ps = make(server, "ps")
    assert ps.returncode == 0, out(ps)
    assert "api" in ps.stdout and "running" in ps.stdout and "worker" in ps.stdout, ps.stdout
    logs = make(server, "logs", "SERVICE=api", "TAIL=20")
    assert logs.returncode == 0 and logs.stdout.strip(), out(logs)


def test_rollback_on_the_server_keeps_the_settings_of_both_machines(day_one: DayOne) -> None:
    """Last: it takes the server back to 3.0.0."""
    server = day_one.server
    rolled = make(server, "rollback-patch", "VERSION=3.1.0", "YES=1")
    assert rolled.returncode == 0, out(rolled)
    assert (server / "VERSION").read_text().strip() == "3.0.0"
    wait_health(day_one.server_health, None)
    assert (server / ".patchflow" / "host.toml").read_bytes() == day_one.server_host
    assert patchflow_targets(server) == day_one.targets_before
    # the developer's machine kept its own settings too
    assert (day_one.dev / ".patchflow" / "host.toml").read_text(encoding="utf-8").startswith(day_one.dev_host_text)
    down = make(server, "down")
    assert down.returncode == 0, out(down)
