"""Making a server ready for deploy (``setup-host``): probe it, install patchflow in a venv there, run init.

The probe and install scripts are built in :mod:`patchflow.commands.remote`; the wheel comes from
this source tree (``pip wheel``), or ``--wheel`` / ``--wheelhouse`` for hosts without a package index.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from patchflow.commands.remote import init_command, probe_script, venv_install_script, version_command
from patchflow.config import Settings
from patchflow.errors import RemoteError
from patchflow.remote.facts import fetch_facts
from patchflow.remote.hosts import Log, Target
from patchflow.remote.session import HostSession


@dataclass
class SetupOptions:
    """Flags of setup-host: ``yes`` lets the remote ``init`` replace Makefile targets of the same
    name (backed up there); ``wheel`` installs that wheel file, ``wheelhouse`` a folder of wheels
    (patchflow and its dependencies, installed with ``--no-index``: for hosts without a package
    index); ``upgrade`` reinstalls into the checkout's venv even when patchflow already works."""

    yes: bool = False
    accept_new_key: bool = False
    wheel: str | None = None
    wheelhouse: str | None = None
    upgrade: bool = False


@dataclass
class SetupReport:
    """What setup-host found and did on one host: ``checks`` are (what, ok, detail) rows."""

    target: Target
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return all(ok for _, ok, _ in self.checks)

    def check(self, what: str, ok: bool, detail: str) -> None:
        self.checks.append((what, ok, detail))


MIN_PYTHON = (3, 11)
VENV = ".patchflow/venv"


def _build_wheel(log: Log) -> Path:
    """Build patchflow's wheel from its own source tree (``pip wheel --no-deps``) into a temp folder.

    Raises:
        RemoteError: patchflow does not run from a source tree here, or the build failed.
    """
    from patchflow.project import is_tool_home

    home = Path(__file__).resolve().parent.parent.parent
    if not is_tool_home(home):
        raise RemoteError(
            "patchflow is not running from its source tree here, so no wheel can be built.",
            "Pass --wheel path/to/patchflow-X-py3-none-any.whl (or --wheelhouse DIR).",
            exit_code=1,
        )
    out = Path(tempfile.mkdtemp(prefix="patchflow-wheel-"))
    source = out / "source"  # a copy: the build writes build/ and *.egg-info beside its sources
    shutil.copytree(home / "patchflow", source / "patchflow", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "VERSION", "README.md"):
        shutil.copy2(home / name, source / name)
    log(f"building patchflow's wheel from {home}")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    wheels = sorted(out.glob("patchflow-*.whl"))
    if done.returncode != 0 or not wheels:
        raise RemoteError(
            f"Building patchflow's wheel failed: {done.stderr.strip()[-500:]}",
            "Pass --wheel with a wheel built elsewhere (pip wheel --no-deps <patchflow source>).",
            exit_code=1,
        )
    return wheels[-1]


def _install_patchflow(session: HostSession, options: SetupOptions, python3: str, log: Log) -> str:
    """Upload a wheel (or a wheelhouse) into ``<path>/.patchflow/wheels`` and install it into a new
    venv ``<path>/.patchflow/venv``; return that venv's python.

    Raises:
        RemoteError: the upload, the venv or pip failed (pip's last lines are in the message).
    """
    target = session.target
    base = target.path.rstrip("/")
    wheels_dir = f"{base}/.patchflow/wheels"
    if options.wheelhouse:
        files = sorted(Path(options.wheelhouse).glob("*.whl"))
        if not any(f.name.startswith("patchflow-") for f in files):
            raise RemoteError(f"No patchflow wheel in {options.wheelhouse}.", "Add it with pip wheel.", exit_code=1)
    else:
        files = [Path(options.wheel) if options.wheel else _build_wheel(log)]
    try:
        with session.sftp_call("uploading wheels") as sftp:
            for folder in (f"{base}/.patchflow", wheels_dir):
                try:
                    sftp.stat(folder)
                except FileNotFoundError:
                    sftp.mkdir(folder, 0o755)
            for item in files:
                sftp.put(str(item), f"{wheels_dir}/{item.name}")
    finally:
        if not options.wheel and not options.wheelhouse:
            shutil.rmtree(files[0].parent, ignore_errors=True)  # the wheel built for this
    log(f"[{target.name}] uploaded {', '.join(f.name for f in files)} to {wheels_dir}")
    wheel = next(f for f in files if f.name.startswith("patchflow-"))
    venv_python = f"{base}/{VENV}/bin/python"
    script = venv_install_script(
        python3,
        f"{base}/{VENV}",
        f"{wheels_dir}/{wheel.name}",
        find_links=wheels_dir if options.wheelhouse else None,
    )
    log(f"[{target.name}] installing it into {base}/{VENV} (python3 -m venv, pip install)")
    done = session.run(script, what="pip install", timeout=session.settings.deploy_timeout)
    if done.exited != 0:
        raise RemoteError(
            f"{target.name}: installing patchflow failed: {(done.stderr or done.stdout).strip()[-600:]}",
            "Without a package index there, pass --wheelhouse DIR holding patchflow's wheel and its dependencies "
            "(pip download/wheel for the host's Python and platform).",
        )
    return venv_python


def setup_host(settings: Settings, target: Target, options: SetupOptions, *, log: Log) -> SetupReport:
    """Make a server ready for deploy and report what is missing.

    Checks the checkout (and whether it is a git checkout), Python >= 3.11, patchflow (``python3 -m
    patchflow`` or the checkout's ``.patchflow/venv``), and installs patchflow when missing: the wheel
    built from this source tree (or ``--wheel`` / ``--wheelhouse``) goes to ``<path>/.patchflow/wheels``
    and is installed with pip into the venv ``<path>/.patchflow/venv`` (deploy finds it there). Then
    it runs ``init`` in the checkout and ``host-facts`` to list the tools the apply needs there
    (docker compose, node, pg_dump...), looked up in the same non-interactive SSH environment.

    Raises:
        RemoteError: the host cannot be reached or its key is refused (nothing done), or the
            install failed.
    """
    report = SetupReport(target)
    with HostSession(target, settings, accept_new_key=options.accept_new_key, log=log) as session:
        session.open()
        report.check("ssh", True, f"{session.address} (host key known, key authentication)")
        probe = session.run(probe_script(target.path, target.python_candidates()), what="probing the host")
        facts_of = dict(line.split("=", 1) for line in probe.stdout.splitlines() if "=" in line)
        if facts_of.get("checkout") != "yes":
            report.check("checkout", False, f"no folder {target.path} there (clone PrimeFlow there, or set path)")
            return report
        git = facts_of.get("git", "no")
        report.check(
            "checkout",
            True,
            f"{target.path}, VERSION {facts_of.get('version_file', '(none)').strip() or '(empty)'}, "
            + (f"git checkout at {git}" if git != "no" else "not a git checkout (fine: patches carry the files)"),
        )
        python3, _, py_version = facts_of.get("python3", "").partition(" ")
        numbers = tuple(int(p) for p in py_version.split(".")[:2] if p.isdigit())
        found = facts_of.get("patchflow", "")
        python = found.split(" ", 1)[0] if found else ""
        if found and not options.upgrade:
            report.check("patchflow", True, f"{found.split(' ', 1)[1]} ({python})")
        else:
            if not python3 or numbers < MIN_PYTHON:
                report.check(
                    "python3",
                    False,
                    f"Python >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]} with venv needed, found {py_version or 'none'} "
                    "(Debian: apt-get install python3 python3-venv)",
                )
                return report
            report.check("python3", True, f"{python3} {py_version}")
            python = _install_patchflow(session, options, python3, log)
            report.actions.append(f"installed patchflow into {target.path.rstrip('/')}/{VENV}")
            check = session.run(version_command(python), what="patchflow --version")
            report.check("patchflow", check.exited == 0, check.stdout.strip() or check.last_error())
            if check.exited != 0:
                return report
        # the inventory entry's own settings go into the host's .patchflow/host.toml
        init = session.run(
            init_command(target.path, python, yes=options.yes, settings=target.settings),
            what="init",
        )
        for line in (init.stdout + init.stderr).splitlines():
            if line.strip():
                log(f"[{target.name}] {line}")
        if init.exited == 5:
            report.check("init", False, "init would replace existing Makefile targets or files: run again with --yes")
        else:
            report.check(
                "init",
                init.exited == 0,
                "tasks.py, Makefile targets, settings" if init.exited == 0 else init.last_error(),
            )
        pinned = Target(target.name, target.host, target.path, target.role, python, target.settings)
        session.target = pinned
        facts = fetch_facts(session)
        session.target = target
        report.check(
            "compose",
            bool(facts_of.get("compose")) or facts.service_manager != "compose",
            facts_of.get("compose", "docker compose not found") + f" (service manager: {facts.service_manager})",
        )
        if facts_of.get("node"):
            report.check("node", True, facts_of["node"])
        for tool in facts.tools:
            if not tool.get("found"):
                report.check(
                    str(tool["name"]), False, f"needed by {tool['purpose']}; not on PATH={facts_of.get('path', '?')}"
                )
    return report
