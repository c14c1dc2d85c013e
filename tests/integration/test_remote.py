"""Remote deploy against real servers (issue 11): three sshd processes on 127.0.0.1, each with its
own port, host key and PrimeFlow checkout running the sample app at 2.2.0 on its own database
(support.hosts.HostFleet). Every command runs as ``inv`` from an operator checkout, no terminal.

The fleet is shared by the tests of an xdist group (``fleet-a``, ``fleet-b``: each on one worker,
which builds its own fleet) and reset between tests: a host a test changed is tidied or recreated
from the session's template.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from support.hosts import BASE, RELEASE, Host, HostFleet, group_states
from support.installs import REPO, InstallTemplate, run_inv, wait_until
from support.missing import missing_service
from support.services import SshServer

from patchflow.remote.rolling import DEPLOY_STEPS

pytestmark = [pytest.mark.integration, pytest.mark.ssh]
# two groups, each on one worker with its own fleet (the module-scoped fixture is per worker):
# about half of the tests each, the longest apart, so neither worker runs them all in a row
fleet_a = pytest.mark.xdist_group("fleet-a")
fleet_b = pytest.mark.xdist_group("fleet-b")


@pytest.fixture(scope="module")
def fleet_base(
    tmp_path_factory: pytest.TempPathFactory, pg_cluster: object, install_template: InstallTemplate
) -> Iterator[HostFleet]:
    roles = {"web1": "staging", "web2": "production", "web3": "production"}
    try:
        fleet = HostFleet.start(tmp_path_factory.mktemp("fleet"), install_template, roles)
    except (RuntimeError, OSError) as exc:
        missing_service(f"cannot start the sshd fleet: {exc}")
    try:
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture
def fleet(fleet_base: HostFleet) -> HostFleet:
    fleet_base.reset()
    return fleet_base


def output(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout + done.stderr


def applies(host: Host) -> list[dict[str, object]]:
    return [h for h in host.history() if h.get("action") == "apply" and h.get("to_version") == RELEASE]


def break_health_of_new_version(host: Host, tmp_path: Path) -> None:
    """Make the host's API report 2.2.0 whatever is installed (field failure C16: the health check
    sees the old version), with a short health deadline: the apply of 2.3.0 fails its health check
    and rolls back by itself; 2.2.0 passes its own."""
    old = tmp_path / f"{host.name}-old-version"
    old.mkdir()
    (old / "VERSION").write_text(f"{BASE}\n")
    host.set_env(PRIMEFLOW_ROOT=str(old), PATCHFLOW_HEALTH_TIMEOUT="3")


def unchanged(fleet: HostFleet) -> list[str]:
    """Names of the hosts whose state differs from pristine (nothing may have changed)."""
    return [h.name for h in fleet.hosts if h.fingerprint() != h.pristine]


@fleet_a
def test_rolling_deploy_with_a_canary_updates_all_three_then_status_and_rollback_work(fleet: HostFleet) -> None:
    c_locale = {"LC_ALL": "C", "LANG": ""}  # here and on the hosts (sshd passes no locale): field failure C07
    done = fleet.inv(
        "deploy", "--hosts", "web1,web2,web3", "--canary", "web1", "--version", RELEASE, "--parallel", "3", "--yes",
        env=c_locale,
    )  # fmt: skip
    text = output(done)
    assert done.returncode == 0, text
    for host in fleet.hosts:
        assert host.version() == RELEASE, host.name
        assert host.health_version() == RELEASE, host.name
        assert (host.root / "docs" / "説明.md").is_file(), "non-ASCII names through the remote apply (C07)"
        assert [a["result"] for a in applies(host)] == ["success"], host.name
        assert not (host.root / ".patchflow" / "journal.json").exists()
    assert f"[web1] canary healthy on {RELEASE}" in text
    assert "staging: web1 first in this rolling deploy" in text
    assert f"[web1] applied {BASE} -> {RELEASE}" in text, "the remote apply's own output, prefixed with the host"
    # deploy's own steps as apply's: one '-> step' and one 'step done in N s' line each, in order
    assert re.findall(r"^-> (\w+)$", text, re.M) == [s.name for s in DEPLOY_STEPS], text
    assert re.findall(r"^   (\w+) done in \d+\.\d s$", text, re.M) == [s.name for s in DEPLOY_STEPS]
    # one host at a time: each apply ended before the next one started
    spans = []
    for name in ("web1", "web2", "web3"):
        record = applies(fleet.host(name))[0]
        start = datetime.fromisoformat(str(record["started_at"]).replace("Z", "+00:00")).timestamp()
        spans.append((start, start + float(str(record["duration_seconds"]))))
    assert spans[0][1] <= spans[1][0] and spans[1][1] <= spans[2][0], spans
    assert text.count("updated") >= 3

    status = fleet.inv("patch-status", "--role", "production")
    assert status.returncode == 0, output(status)
    assert "web2" in status.stdout and "web3" in status.stdout and "web1" not in status.stdout
    assert status.stdout.count(RELEASE) >= 2 and "healthy" in status.stdout
    one = fleet.inv("patch-status", "--host", "web1", "--json")
    assert one.returncode == 0, output(one)
    [web1] = json.loads(one.stdout)
    assert web1["status"]["installed_version"] == RELEASE and web1["health"]["healthy"] is True
    assert web1["status"]["last_apply"]["to_version"] == RELEASE

    back = fleet.inv("rollback-patch", "--host", "web1", "--version", RELEASE, "--yes")
    assert back.returncode == 0, output(back)
    web1_host = fleet.host("web1")
    assert web1_host.version() == BASE and web1_host.health_version() == BASE
    assert web1_host.history()[-1]["action"] == "rollback" and web1_host.history()[-1]["result"] == "success"
    assert "rolled back" in back.stdout

    again = fleet.inv("deploy", "--host", "web2", "--version", RELEASE, "--yes")
    assert again.returncode == 0, output(again)
    assert "already installed" in again.stdout and len(applies(fleet.host("web2"))) == 1


@fleet_b
def test_health_failure_on_the_second_host_stops_the_rollout_and_rolls_back_the_first(
    fleet: HostFleet, tmp_path: Path
) -> None:
    web1, web2, web3 = fleet.hosts
    break_health_of_new_version(web2, tmp_path)
    web3_history = web3.history()

    done = fleet.inv("deploy", "--hosts", "web1,web2,web3", "--version", RELEASE, "--rollback-on-failure", "--yes")
    text = output(done)
    assert done.returncode == 2, text  # the remote apply's exit code: failed and rolled back
    assert "stopping the rollout" in text
    assert f"expected version='{RELEASE}' but got '{BASE}'" in text, "the remote health failure is shown"
    assert [a["result"] for a in applies(web2)] == ["rolled_back"]
    assert web2.version() == BASE and web2.health_version() == BASE
    assert [a["result"] for a in applies(web1)] == ["success"], "web1 was updated first"
    assert web1.history()[-1]["action"] == "rollback" and web1.history()[-1]["result"] == "success"
    assert web1.version() == BASE and web1.health_version() == BASE, "--rollback-on-failure put web1 back"
    assert web3.history() == web3_history and web3.version() == BASE, "web3 was never applied"
    summary = text[text.rindex("deploy 2.3.0") :]
    for name, result in (("web1", "rolled back"), ("web2", "failed, rolled back"), ("web3", "skipped")):
        assert any(name in line and result in line for line in summary.splitlines()), (name, result, summary)


@fleet_b
def test_a_failing_canary_leaves_every_other_host_untouched(fleet: HostFleet, tmp_path: Path) -> None:
    web1, web2, web3 = fleet.hosts
    break_health_of_new_version(web3, tmp_path)
    before = {h.name: h.history() for h in (web1, web2)}

    done = fleet.inv(
        "deploy", "--hosts", "web1,web2,web3", "--canary", "web3", "--version", RELEASE, "--skip-staging", "--yes"
    )
    text = output(done)
    assert done.returncode == 2, text
    assert "[web3] apply started" in text and "[web1] apply started" not in text and "[web2] apply" not in text
    assert [a["result"] for a in applies(web3)] == ["rolled_back"] and web3.version() == BASE
    for host in (web1, web2):
        assert host.history() == before[host.name] and host.version() == BASE and host.health_version() == BASE


@fleet_b
def test_a_dropped_connection_mid_apply_then_attach_reports_the_true_outcome(fleet: HostFleet) -> None:
    web1 = fleet.host("web1")
    web1.set_env(PATCHFLOW_INSTALL_COMMAND="sleep 4")  # the apply stays in its stage step a while
    first = fleet.popen("deploy", "--host", "web1", "--version", RELEASE, "--yes")
    try:
        journal = web1.root / ".patchflow" / "journal.json"
        wait_until(lambda: journal.exists() or first.poll() is not None, 60, "the remote apply to take its lock")
        assert first.poll() is None, first.communicate()[0]

        # a second deploy from another operator is refused by the host's lock, which names the holder (C19 d)
        other = fleet.inv(
            "deploy", "--host", "web1", "--version", RELEASE, "--yes", env={"LOGNAME": "alice", "USER": "alice"}
        )
        assert other.returncode == 3, output(other)
        assert f"apply of {RELEASE} by " in output(other) and "pid" in output(other)
        assert "started by deploy from root@" in output(other)

        web1.server.drop()  # the server's sshd and every session die: the connection breaks
        text, _ = first.communicate(timeout=90)
        assert first.returncode == 6, text
        assert "unknown" in text and "--attach" in text
    finally:
        if first.poll() is None:
            first.kill()
    [record] = [json.loads(p.read_text()) for p in (web1.root / ".patchflow" / "deploys").glob("*.json")]
    pid_file, exit_file = Path(record["pid_file"]), Path(record["exit_file"])
    assert exit_file.exists() or Path(f"/proc/{pid_file.read_text().strip()}").exists(), "the apply went on"

    web1.server.restart()
    again = fleet.inv("deploy", "--host", "web1", "--version", RELEASE, "--yes")
    assert again.returncode == 0, output(again)
    assert "attached to" in again.stdout or "already installed" in again.stdout
    attached = fleet.inv("deploy", "--attach", "--host", "web1")
    text = output(attached)
    assert attached.returncode == 0, text
    assert f"[web1] applied {BASE} -> {RELEASE}" in text and "updated" in text
    assert exit_file.read_text().strip() == "0"
    assert web1.version() == RELEASE and web1.health_version() == RELEASE
    assert [a["result"] for a in applies(web1)] == ["success"]
    assert not (web1.root / ".patchflow" / "journal.json").exists()


@fleet_a
def test_a_host_that_stops_answering_is_reported_unknown_never_done(fleet: HostFleet) -> None:
    web2 = fleet.host("web2")
    web2.set_env(PATCHFLOW_INSTALL_COMMAND="sleep 3")
    quick = {"PATCHFLOW_SSH_COMMAND_TIMEOUT": "5", "PATCHFLOW_SSH_RECONNECT_TIMEOUT": "2"}
    first = fleet.popen("deploy", "--host", "web2", "--version", RELEASE, "--skip-staging", "--yes", env=quick)
    try:
        journal = web2.root / ".patchflow" / "journal.json"
        wait_until(lambda: journal.exists() or first.poll() is not None, 60, "the remote apply to take its lock")
        web2.server.freeze()  # web2 stops answering; its TCP connections stay open (C20 b)
        frozen_at = time.monotonic()
        status = fleet.inv("patch-status", "--hosts", "web1,web2", env=quick)
        assert status.returncode == 6, output(status)
        [web1_row] = [line for line in status.stdout.splitlines() if "web1" in line]
        assert BASE in web1_row and "healthy" in web1_row
        assert any("web2" in line and "unknown" in line for line in status.stdout.splitlines()), status.stdout
        text, _ = first.communicate(timeout=90)
        assert first.returncode == 6, text
        assert "unknown" in text and "updated" not in text
        assert time.monotonic() - frozen_at < 60, "bounded by the command, connect and reconnect timeouts"
    finally:
        web2.server.thaw()
        if first.poll() is None:
            first.kill()
    attached = fleet.inv("deploy", "--attach", "--host", "web2")
    assert attached.returncode == 0, output(attached)
    assert web2.version() == RELEASE and web2.health_version() == RELEASE


@fleet_a
def test_an_interrupted_upload_resumes_and_a_partial_upload_is_never_applied(fleet: HostFleet) -> None:
    web1 = fleet.host("web1")
    history = web1.history()
    patch = fleet.operator / "patches" / f"v{RELEASE}"
    files = sorted((p for p in patch.iterdir() if p.name != "SHA256SUMS"), key=lambda p: p.name)
    archive = patch / f"patch-v{RELEASE}.tar.gz"
    before_archive = sum(p.stat().st_size for p in files if p.name < archive.name)
    cut = before_archive + archive.stat().st_size // 2

    done = fleet.inv(
        "deploy", "--host", "web1", "--version", RELEASE, "--yes", env={"PATCHFLOW_TEST_UPLOAD_CUT": str(cut)}
    )
    assert done.returncode == 6, output(done)
    assert "upload was interrupted" in output(done) and "continues where it stopped" in output(done)
    assert not (web1.root / "patches" / f"v{RELEASE}").exists(), "a partial upload is never put in place"
    [partial] = (web1.root / "patches").glob(f".upload-v{RELEASE}-*")
    assert (partial / archive.name).stat().st_size < archive.stat().st_size
    assert web1.version() == BASE and web1.history() == history

    # whatever runs on the host ignores the partial folder: it is not a patch
    refused = web1.install.inv("apply-patch", "--version", RELEASE, "--yes")
    assert refused.returncode != 0 and web1.version() == BASE
    status = web1.install.inv("patch-status", "--json")
    assert RELEASE not in [p["version"] for p in json.loads(status.stdout)["patches"]]

    resumed = fleet.inv("deploy", "--host", "web1", "--version", RELEASE, "--yes")
    text = output(resumed)
    assert resumed.returncode == 0, text
    assert "continued a partial upload at" in text, text
    assert web1.version() == RELEASE and web1.health_version() == RELEASE
    assert not list((web1.root / "patches").glob(".upload-*"))


@fleet_a
def test_an_unknown_or_changed_host_key_is_refused_with_nothing_changed(fleet: HostFleet, tmp_path: Path) -> None:
    _, web2, web3 = fleet.hosts
    lines = fleet.known_hosts.read_text().splitlines()
    unknown = tmp_path / "known_hosts_without_web3"
    unknown.write_text("".join(f"{line}\n" for line in lines if f"]:{web3.server.port} " not in line))
    deploy = ("deploy", "--hosts", "web1,web2,web3", "--version", RELEASE, "--yes")

    done = fleet.inv(*deploy, env={"PATCHFLOW_SSH_KNOWN_HOSTS": str(unknown)})
    assert done.returncode == 6, output(done)
    assert (
        "web3: the host key of" in done.stderr and "SHA256:" in done.stderr and "--accept-new-host-key" in done.stderr
    )
    assert unchanged(fleet) == [], "refused before anything was sent to any host"

    changed = tmp_path / "known_hosts_changed"
    web1_key = lines[0].split(" ", 1)[1]
    changed.write_text(
        "".join(f"{line}\n" for line in lines if f"]:{web2.server.port} " not in line)
        + f"[{web2.server.host}]:{web2.server.port} {web1_key}\n"
    )
    done = fleet.inv(*deploy, "--accept-new-host-key", env={"PATCHFLOW_SSH_KNOWN_HOSTS": str(changed)})
    assert done.returncode == 6, output(done)
    assert "web2: the host key of" in done.stderr and "CHANGED" in done.stderr
    assert unchanged(fleet) == [], "a changed key is refused even with --accept-new-host-key"

    accepted = fleet.inv(
        "deploy", "--host", "web3", "--version", RELEASE, "--upload-only", "--accept-new-host-key", "--yes",
        env={"PATCHFLOW_SSH_KNOWN_HOSTS": str(unknown)},
    )  # fmt: skip
    assert accepted.returncode == 0, output(accepted)
    assert f"[{web3.server.host}]:{web3.server.port} ssh-ed25519" in unknown.read_text()
    assert (web3.root / "patches" / f"v{RELEASE}").is_dir() and web3.version() == BASE
    assert "-> upload" in accepted.stdout and "-> apply" not in accepted.stdout, "upload only: no apply step"


@fleet_a
def test_a_tool_missing_in_the_hosts_non_interactive_environment_stops_the_deploy_first(
    fleet: HostFleet, tmp_path: Path
) -> None:
    """C22: a tool found by the operator's shell (like nvm's pnpm from ~/.bashrc) but not by the SSH
    session. Its name is one no machine has (this one has a real pnpm in /usr/bin: the tests need it)."""
    shell_only = tmp_path / "nvm-bin"
    shell_only.mkdir()
    (shell_only / "nvm-pnpm").write_text("#!/bin/sh\nexit 0\n")
    (shell_only / "nvm-pnpm").chmod(0o755)
    web1 = fleet.host("web1")
    history = web1.history()
    web1.set_env(PATCHFLOW_INSTALL_COMMAND="nvm-pnpm install --frozen-lockfile")
    path = f"{shell_only}:{os.environ['PATH']}"
    done = fleet.inv("deploy", "--host", "web1", "--version", RELEASE, "--yes", env={"PATH": path})
    assert done.returncode == 6, output(done)
    assert "nvm-pnpm (needed by install_command (nvm-pnpm install --frozen-lockfile))" in done.stderr
    assert "non-interactive SSH environment" in done.stderr
    assert not (web1.root / "patches" / f"v{RELEASE}").exists(), "refused before the upload"
    assert web1.version() == BASE and web1.history() == history and web1.health_version() == BASE


@fleet_b
def test_production_refuses_a_version_staging_never_passed(fleet: HostFleet) -> None:
    done = fleet.inv("deploy", "--role", "production", "--version", RELEASE, "--yes")
    assert done.returncode == 1, output(done)
    assert "no staging host (web1) has applied it" in done.stderr and "--skip-staging" in done.stderr
    assert unchanged(fleet) == []

    staged = fleet.inv("deploy", "--role", "staging", "--version", RELEASE, "--yes")
    assert staged.returncode == 0, output(staged)
    # now the gate lets production through (to the confirmation, refused here without a terminal)
    allowed = fleet.inv("deploy", "--role", "production", "--version", RELEASE)
    assert f"staging: {RELEASE} was applied and passed its health check on web1" in allowed.stdout
    assert allowed.returncode == 5 and "--yes" in allowed.stderr, output(allowed)
    assert fleet.host("web2").version() == BASE and fleet.host("web3").version() == BASE


@fleet_a
def test_a_staging_host_that_cannot_be_read_leaves_the_production_gate_unknown_not_refused(fleet: HostFleet) -> None:
    """A staging host that does not answer is not a staging host that never passed the version: the
    gate's answer is unknown (exit 6, the connection named), not "refused" (1)."""
    fleet.host("web1").server.drop()
    done = fleet.inv("deploy", "--role", "production", "--version", RELEASE, "--yes")
    assert done.returncode == 6, output(done)
    assert "whether a staging host passed it is unknown" in done.stderr and "web1 (web1: cannot reach" in done.stderr
    assert "has applied it" not in done.stderr and "--skip-staging" in done.stderr, done.stderr
    assert unchanged(fleet) == []


@fleet_a
def test_a_delta_deploys_to_a_host_on_its_base_and_is_refused_before_any_upload_elsewhere(
    fleet: HostFleet, tmp_path: Path
) -> None:
    """Issue 12 over SSH: a delta of the release on the hosts' 2.2.0 deploys like a full patch;
    a delta on 2.3.0 (a delta on that delta) is refused for hosts at 2.2.0 before anything is sent."""
    release = fleet.template.release_patch(RELEASE)
    source = tmp_path / "source"
    shutil.copytree(release.parent.parent, source, symlinks=True, ignore=shutil.ignore_patterns("patches"))
    shutil.copytree(fleet.template.root / "patches" / f"v{BASE}", source / "patches" / f"v{BASE}")
    made = run_inv("create-patch", "--root", str(source), "--base", BASE)
    assert made.returncode == 0, output(made)
    (source / "VERSION").write_text("2.3.1\n")
    (source / "apps/api/notes.txt").write_text("2.3.1\n")
    made = run_inv("create-patch", "--root", str(source), "--base", RELEASE)
    assert made.returncode == 0, output(made)
    operator = tmp_path / "operator"
    shutil.copytree(fleet.operator, operator, ignore=shutil.ignore_patterns("patches"))
    for version in (RELEASE, "2.3.1"):
        shutil.copytree(source / "patches" / f"v{version}", operator / "patches" / f"v{version}")

    refused = run_inv("deploy", "--root", str(operator), "--role", "staging", "--version", "2.3.1", "--yes")
    assert refused.returncode == 6, output(refused)  # a host refused before anything changed
    assert "delta built on 2.3.0" in refused.stderr and "web1 (2.2.0)" in refused.stderr
    assert not (fleet.host("web1").root / "patches" / "v2.3.1").exists(), "nothing was sent"
    assert unchanged(fleet) == []

    done = run_inv("deploy", "--root", str(operator), "--role", "staging", "--version", RELEASE, "--yes")
    assert done.returncode == 0, output(done)
    web1 = fleet.host("web1")
    assert web1.version() == RELEASE and web1.health_version() == RELEASE
    assert json.loads((web1.root / "patches" / f"v{RELEASE}" / "manifest.json").read_text())["format"] == 2


def test_setup_host_installs_patchflow_where_deploy_found_none(ssh_server: SshServer, tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    from sample_workspace import prepare_workspace

    box = prepare_workspace(tmp_path / "box", database_url=None)
    operator = tmp_path / "operator"
    operator.mkdir()
    (operator / "VERSION").write_text(f"{BASE}\n")
    (operator / "ssh_config").write_text(
        f"Host box\n  HostName {ssh_server.host}\n  Port {ssh_server.port}\n  User {ssh_server.user}\n"
        f"  IdentityFile {ssh_server.client_key}\n  IdentitiesOnly yes\n"
    )
    (operator / "pyproject.toml").write_text(
        "[tool.patchflow]\n"
        f'ssh_config = "{operator / "ssh_config"}"\n'
        f'ssh_known_hosts = "{ssh_server.known_hosts}"\n'
        f'[tool.patchflow.hosts.box]\npath = "{box}"\nrole = "staging"\n'
    )
    shutil.copytree(box, tmp_path / "source", symlinks=True)
    (tmp_path / "source" / "VERSION").write_text(f"{RELEASE}\n")
    created = run_inv("create-patch", "--root", str(tmp_path / "source"))
    assert created.returncode == 0, output(created)
    shutil.copytree(tmp_path / "source" / "patches", operator / "patches")

    # the server's python3 has no patchflow: deploy stops before uploading and names setup-host
    refused = run_inv("deploy", "--root", str(operator), "--host", "box", "--version", RELEASE, "--yes")
    assert refused.returncode == 6, output(refused)
    assert "patchflow is not installed there" in refused.stderr and "inv setup-host --host box" in refused.stderr
    assert not (box / "patches").exists()

    setup = run_inv("setup-host", "--root", str(operator), "--host", "box", timeout=600)
    text = output(setup)
    assert setup.returncode == 0, text
    assert "installed patchflow into" in text and "ready" in text
    assert (box / ".patchflow" / "venv" / "bin" / "python").exists()
    assert "deploy" in (box / "Makefile").read_text() and (box / "tasks.py").is_file(), "init ran there"

    status = run_inv("patch-status", "--root", str(operator), "--host", "box")
    assert status.returncode == 0, output(status)
    assert f"installed version: {BASE}" in status.stdout


def recovery_named(text: str) -> list[str]:
    """The arguments of the one recovery command deploy printed (``recover with: inv <task> ...``)."""
    lines = [line for line in text.splitlines() if "recover with: inv " in line and "recover with: inv " in line[:40]]
    assert lines, f"no recovery named in:\n{text}"
    commands = {line.split("recover with: inv ", 1)[1].split("  (", 1)[0].strip() for line in lines}
    assert len(commands) == 1, commands
    return shlex.split(commands.pop())


@fleet_b
def test_a_remote_apply_killed_mid_way_reports_its_true_state_and_the_recovery_that_works(fleet: HostFleet) -> None:
    """Fault 7 of issue 19: the remote apply's process group is SIGKILLed (as a reboot or an OOM kill
    would end it) while deploy follows it, with the services stopped and the code switched."""
    web1 = fleet.host("web1")
    web1.set_env(PATCHFLOW_TEST_KILL_AT="migrate=SIGSTOP")  # holds the remote apply before its migrations
    first = fleet.popen("deploy", "--host", "web1", "--version", RELEASE, "--yes")
    try:
        record, group = web1.stopped_run("apply")
        os.killpg(group, signal.SIGKILL)
        text, _ = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 4, text
    assert "patchflow: exit 4" in text and "ended without an exit code" in text, text
    assert "its journal there stops at step switch (done)" in text and "the services are stopped" in text, text
    assert "its lock is left" in text and "the install is left mid-way" in text, text
    recovery = recovery_named(text)
    assert recovery == ["rollback-patch", "--host", "web1", "--version", RELEASE, "--break-lock", "--yes"], text
    assert (web1.root / ".patchflow" / "journal.json").is_file()

    attached = fleet.inv("deploy", "--attach", "--host", "web1")
    assert attached.returncode == 4, output(attached)
    assert recovery_named(output(attached)) == recovery, "--attach gives the same answer"
    assert record["id"] in output(attached)
    again = fleet.inv("deploy", "--host", "web1", "--version", RELEASE, "--yes")
    assert again.returncode == 3, output(again)  # the stale lock refuses a deploy, naming the same recovery
    assert f"Recover it with `{shlex.join(['inv', *recovery])}`" in again.stderr, again.stderr

    web1.set_env(PATCHFLOW_TEST_KILL_AT="")
    recovered = fleet.inv(*recovery)
    assert recovered.returncode == 0, output(recovered)
    assert web1.version() == BASE and web1.health_version() == BASE, "exactly the old version"
    assert not (web1.root / ".patchflow" / "journal.json").exists()
    assert [a["result"] for a in applies(web1)] == ["rolled_back"]
    status = web1.install.inv("patch-status", "--json")
    assert json.loads(status.stdout)["recovery"] is None, status.stdout


@fleet_a
def test_a_remote_apply_killed_after_its_commit_and_a_killed_remote_rollback_are_recovered_as_named(
    fleet: HostFleet,
) -> None:
    """Fault 7 of issue 19, its neighbours: only the task is SIGKILLed (as the out-of-memory killer
    does: its wrapper records exit 137) after the commit; then a remote rollback is killed with its
    process group mid-way. Each is reported as it left the host, with the command that recovers it."""
    web1 = fleet.host("web1")
    web1.set_env(PATCHFLOW_TEST_KILL_AT="cleanup=SIGSTOP")  # committed, clean-up not done
    first = fleet.popen("deploy", "--host", "web1", "--version", RELEASE, "--yes")
    try:
        _, group = web1.stopped_run("apply")
        [task] = [pid for pid, state in group_states(group).items() if state == "T"]
        os.kill(task, signal.SIGKILL)
        text, _ = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, text
    assert "was killed by SIGKILL" in text and "after its commit" in text and "updated" in text, text
    [record] = web1.runs()
    assert Path(record["exit_file"]).read_text().strip() == "137", "the wrapper saw the kill"
    recovery = recovery_named(text)
    assert recovery == ["deploy", "--host", "web1", "--version", RELEASE, "--break-lock", "--yes"], text
    attached = fleet.inv("deploy", "--attach", "--host", "web1")
    assert attached.returncode == 0 and recovery_named(output(attached)) == recovery, output(attached)

    web1.set_env(PATCHFLOW_TEST_KILL_AT="")
    recovered = fleet.inv(*recovery)
    assert recovered.returncode == 0, output(recovered)
    assert web1.version() == RELEASE and web1.health_version() == RELEASE, "exactly the new version"
    assert not (web1.root / ".patchflow" / "journal.json").exists()
    assert [a["result"] for a in applies(web1)] == ["success"]
    status = json.loads(web1.install.inv("patch-status", "--json").stdout)
    assert status["recovery"] is None and status["lock"] is None, status

    web1.set_env(PATCHFLOW_TEST_KILL_AT="restore-code=SIGSTOP")
    back = fleet.popen("rollback-patch", "--host", "web1", "--version", RELEASE, "--yes")
    try:
        _, group = web1.stopped_run("rollback")
        os.killpg(group, signal.SIGKILL)
        text, _ = back.communicate(timeout=120)
    finally:
        if back.poll() is None:
            back.kill()
    assert back.returncode == 4, text
    assert "the rollback of 2.3.0 there ended without an exit code" in text, text
    assert "the services are stopped" in text and "the install is left mid-way" in text, text
    recovery = recovery_named(text)
    assert recovery == ["rollback-patch", "--host", "web1", "--version", RELEASE, "--break-lock", "--yes"], text
    attached = fleet.inv("deploy", "--attach", "--host", "web1")
    assert attached.returncode == 4 and recovery_named(output(attached)) == recovery, output(attached)

    web1.set_env(PATCHFLOW_TEST_KILL_AT="")
    recovered = fleet.inv(*recovery)
    assert recovered.returncode == 0, output(recovered)
    assert web1.version() == BASE and web1.health_version() == BASE, "exactly the old version"
    assert not (web1.root / ".patchflow" / "journal.json").exists()
    assert web1.history()[-1]["action"] == "rollback" and web1.history()[-1]["result"] == "success"


@fleet_b
def test_a_connection_lost_while_the_server_checks_an_upload_is_unknown_and_only_a_real_refusal_does_not_verify(
    fleet: HostFleet, tmp_path: Path
) -> None:
    """Fault 7 of issue 19: the SSH session is cut (its sshd processes killed) while receive-patch
    checks the upload on the server. That is a lost connection with the outcome unknown (exit 6),
    never "does not verify"; the same deploy again resumes. A patch the server really refuses (it
    requires a signature this one lacks) is still reported as not verifying (exit 1)."""
    web1, web2, _ = fleet.hosts
    history = web1.history()
    web1.set_env(PATCHFLOW_TEST_KILL_AT="receive-check=SIGSTOP")  # holds the check before it verifies
    first = fleet.popen("deploy", "--host", "web1", "--version", RELEASE, "--yes")
    check = 0
    try:
        check = web1.stopped_task("receive-patch")
        web1.cut_session_of(check)
        text, _ = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
        if check:  # the host's check never finishes (as if it died with the session): nothing is put in place
            os.kill(check, signal.SIGKILL)
    assert first.returncode == 6, text
    assert "does not verify" not in text, text
    assert "the connection was lost while the server checked the upload" in text and "is unknown" in text, text
    assert "Run the same deploy again: it resumes the upload" in text, text
    assert not (web1.root / "patches" / f"v{RELEASE}").exists() and web1.version() == BASE
    assert web1.history() == history

    web1.set_env(PATCHFLOW_TEST_KILL_AT="")
    again = fleet.inv("deploy", "--host", "web1", "--version", RELEASE, "--yes")
    assert again.returncode == 0, output(again)
    assert "bytes already there" in again.stdout and "0 bytes sent" in again.stdout, again.stdout
    assert web1.version() == RELEASE and web1.health_version() == RELEASE

    sys.path.insert(0, str(REPO))
    from patchflow.signing import generate_key

    web2.set_env(PATCHFLOW_VERIFY_KEY=generate_key(tmp_path / "signing.key"))
    refused = fleet.inv("deploy", "--host", "web2", "--version", RELEASE, "--yes")
    assert refused.returncode == 1, output(refused)
    assert "the uploaded patch does not verify there" in refused.stderr, refused.stderr
    assert "SHA256SUMS.sig is missing, but a verify key is configured" in refused.stderr, refused.stderr
    assert "connection" not in refused.stderr and "unknown" not in refused.stderr, refused.stderr
    assert not (web2.root / "patches" / f"v{RELEASE}").exists() and web2.version() == BASE
