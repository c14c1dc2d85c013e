"""The upload row of the bench: one patch to three hosts with ``--parallel 3`` against one host.

Three private sshd processes on 127.0.0.1 (tests/support/services.SshServer), each in front of an
empty PrimeFlow checkout; an operator checkout with the inventory and the patch. Each sample is a
whole ``inv deploy --upload-only`` in a fresh process (connect, host key check, host-facts on every
host, SFTP upload, receive-patch's check on the host and the rename into place); the hosts' copies
are removed between samples. On this machine the "hosts" share the CPU with the client, so the
ratio is an upper bound of what separate servers would show.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from support.services import SshServer  # noqa: E402

HOSTS = ("bench1", "bench2", "bench3")


def _operator(work: Path, servers: list[SshServer], patch: Path) -> Path:
    operator = work / "operator"
    (operator / "patches").mkdir(parents=True)
    shutil.copytree(patch, operator / "patches" / patch.name)
    (operator / "VERSION").write_text(patch.name.removeprefix("v") + "\n")
    config = "".join(
        f"Host {name}\n  HostName {s.host}\n  Port {s.port}\n  User {s.user}\n  IdentityFile {s.client_key}\n"
        "  IdentitiesOnly yes\n"
        for name, s in zip(HOSTS, servers, strict=True)
    )
    (operator / "ssh_config").write_text(config)
    (operator / "known_hosts").write_text("".join(s.known_hosts.read_text() for s in servers))
    lines = [
        "[tool.patchflow]",
        f'ssh_config = "{operator / "ssh_config"}"',
        f'ssh_known_hosts = "{operator / "known_hosts"}"',
    ]
    for name in HOSTS:
        lines += [f"[tool.patchflow.hosts.{name}]", f'path = "{work / name}"', f'python = "{sys.executable}"']
    (operator / "pyproject.toml").write_text("\n".join(lines) + "\n")
    for name in HOSTS:
        checkout = work / name
        checkout.mkdir()
        (checkout / "VERSION").write_text("0.9.0\n")
        (checkout / ".env").write_text("PATCHFLOW_SERVICE_MANAGER=none\nPATCHFLOW_DATABASE_MODE=none\n")
    return operator


def own_cpu_seconds(sshd_pids: list[int]) -> float:
    """CPU seconds spent so far by the bench's own processes only, not by other jobs on the machine:
    this process's waited-for children (the client ``inv deploy`` and everything it ran, through
    ``getrusage(RUSAGE_CHILDREN)``) and the sshd listeners with every session, command and Python run
    on the "hosts" they reaped (``/proc/<pid>/stat`` utime, stime, cutime, cstime)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = usage.ru_utime + usage.ru_stime
    for pid in sshd_pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime
    return total


def measure_upload(
    patch: Path, work: Path, repeat: int, inv: list[str], run: Callable[[list[str]], tuple[float, int]]
) -> tuple[list[float], list[float], list[float]]:
    """Seconds of ``inv deploy --upload-only`` to three hosts (``--parallel 3``) and to one host,
    ``repeat`` samples each, interleaved, and the CPU seconds the bench's own processes (client,
    sshd and the hosts' commands; not other jobs) spent on each one-host sample
    (:func:`own_cpu_seconds`); ``run`` runs a command in a fresh process and
    returns (seconds, peak RSS)."""
    servers: list[SshServer] = []
    try:
        for _ in HOSTS:
            servers.append(SshServer.start(work / "sshd"))
        operator = _operator(work, servers, patch)
        version = patch.name.removeprefix("v")

        def clean() -> None:
            for name in HOSTS:
                shutil.rmtree(work / name / "patches", ignore_errors=True)

        def deploy(*hosts: str) -> tuple[float, int]:
            clean()
            flags = ["--hosts", ",".join(hosts), "--parallel", str(len(hosts))]
            return run(
                [*inv, "deploy", "--root", str(operator), *flags, "--version", version, "--upload-only", "--yes"]
            )

        deploy(*HOSTS)  # warm-up: host keys, caches, the first host-facts
        three: list[float] = []
        one: list[float] = []
        cpu_one: list[float] = []
        for index in range(repeat):
            order = [(three, HOSTS), (one, HOSTS[:1])]
            for samples, hosts in order if index % 2 == 0 else reversed(order):
                listeners = [server.pid for server in servers]
                before = own_cpu_seconds(listeners)
                samples.append(deploy(*hosts)[0])
                if len(hosts) == 1:
                    cpu_one.append(own_cpu_seconds(listeners) - before)
        return three, one, cpu_one
    finally:
        for server in servers:
            server.stop()
