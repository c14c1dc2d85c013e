"""The remote tasks run from an operator's checkout: deploy, setup-host, remote status and rollback.

deploy uploads and applies over SSH, rolling; setup-host readies a server; the
``--host/--hosts/--role`` forms of patch-status and rollback-patch land here. The core is
:mod:`patchflow.remote`; these print one line per event (remote log lines prefixed with
``[host]``), a summary table (:mod:`patchflow.tasks.fleet_view`), and exit with the first failing
host's code."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from invoke.context import Context

from patchflow.console import console
from patchflow.redact import shown
from patchflow.tasks.edge import ROOT_HELP, YES_HELP, command, optional_version, required_version, settings_for
from patchflow.tasks.fleet_view import exit_with, show_fleet_status, show_setup

if TYPE_CHECKING:
    from patchflow.config import Settings
    from patchflow.remote.hosts import Target

HOST_HELP = "one host: an inventory name ([tool.patchflow.hosts.<name>]), an ssh alias or user@host[:port]"
HOSTS_HELP = "several hosts, comma separated (rolling, in this order)"
ROLE_HELP = "every inventory host with this role (e.g. staging, production), in inventory order"
ACCEPT_HELP = (
    "accept a host key that is not in known_hosts yet and add it there (a CHANGED key is never accepted); "
    "check its fingerprint first"
)
_print_lock = threading.Lock()


def _log(line: str) -> None:
    """Print one line of remote progress (lines of parallel hosts never interleave)."""
    with _print_lock:  # the lines carry what hosts said: no control character reaches the terminal
        console.print(shown(line), markup=False, highlight=False)


def _targets(
    c: Context, root: str | None, host: str | None, hosts: str | None, role: str | None
) -> tuple[Settings, list[Target]]:
    from patchflow.remote.hosts import resolve_targets

    settings = settings_for(c, root)
    return settings, resolve_targets(settings, host=host, hosts=hosts, role=role)


@command(
    help={
        "root": ROOT_HELP,
        "version": "patch version to deploy (patches/vX.Y.Z of this checkout)",
        "host": HOST_HELP,
        "hosts": HOSTS_HELP,
        "role": ROLE_HELP,
        "yes": YES_HELP,
        "canary": "deploy this host first and continue only when its apply and health check passed",
        "parallel": "INT: hosts uploaded to at the same time (applies stay one at a time)",
        "rollback_on_failure": "when a host fails, roll back the hosts this deploy already updated",
        "skip_staging": "deploy to production hosts even if no staging host passed this version",
        "attach": "follow the newest deploy run on the host(s) again and report its true outcome",
        "accept_new_host_key": ACCEPT_HELP,
        "upload_only": "upload and check the patch on the hosts, apply nothing",
        "force": "apply even where this version is installed",
        "allow_downgrade": "allow applying a version older than the installed one",
        "break_lock": "take over a stale lock left by a dead apply on a host (it is recovered first)",
        "watch": "FLOAT: each host watches the new version this many seconds after its commit (its apply's watch "
        "window: rolled back there on a failure); the rollout waits for each window before the next host",
        "others_stopped": "the database's other clients (a pooler, a report job) are known and may be ended: each "
        "apply migrates even if sessions from elsewhere remain after its stop (apply-patch --others-stopped)",
    }
)
def deploy(
    c: Context,
    version: str | None = None,
    host: str | None = None,
    hosts: str | None = None,
    role: str | None = None,
    root: str | None = None,
    yes: bool = False,
    canary: str | None = None,
    parallel: int = 1,
    rollback_on_failure: bool = False,
    skip_staging: bool = False,
    attach: bool = False,
    accept_new_host_key: bool = False,
    upload_only: bool = False,
    force: bool = False,
    allow_downgrade: bool = False,
    break_lock: bool = False,
    others_stopped: bool = False,
    watch: float = 0.0,
) -> None:
    """Upload a patch over SSH and apply it on hosts with the same apply-patch task, rolling."""
    from patchflow.console import confirm
    from patchflow.errors import ConfigError
    from patchflow.remote.rolling import DeployOptions
    from patchflow.remote.rolling import attach as attach_runs
    from patchflow.remote.rolling import deploy as run_deploy

    settings, targets = _targets(c, root, host, hosts, role)
    if attach:
        parsed = optional_version(version)
        report = attach_runs(settings, targets, parsed, accept_new_key=accept_new_host_key, log=_log)
        exit_with(report)
        return
    parsed_version = required_version(version, "deploy")
    if parallel < 1:
        raise ConfigError(
            f"--parallel {parallel} is not a number of hosts: it must be 1 or more.",
            "Pass --parallel N, N hosts uploaded to at the same time (default 1); nothing was changed.",
        )
    options = DeployOptions(
        parsed_version,
        canary=canary,
        parallel=parallel,
        rollback_on_failure=rollback_on_failure,
        skip_staging=skip_staging,
        accept_new_key=accept_new_host_key,
        upload_only=upload_only,
        force=force,
        allow_downgrade=allow_downgrade,
        break_lock=break_lock,
        others_stopped=others_stopped,
        watch=watch,
    )
    report = run_deploy(settings, targets, options, log=_log, confirm=lambda text: confirm(text, yes=yes))
    exit_with(report)


@command(
    help={
        "root": ROOT_HELP,
        "host": HOST_HELP,
        "yes": "let init there replace Makefile targets of the same name (backed up there)",
        "accept_new_host_key": ACCEPT_HELP,
        "wheel": "install this patchflow wheel there instead of one built from this source tree",
        "wheelhouse": "folder of wheels (patchflow and its dependencies) installed there without a package index",
        "upgrade": "install patchflow into the checkout's .patchflow/venv even if patchflow already works there",
    }
)
def setup_host(
    c: Context,
    host: str | None = None,
    root: str | None = None,
    yes: bool = False,
    accept_new_host_key: bool = False,
    wheel: str | None = None,
    wheelhouse: str | None = None,
    upgrade: bool = False,
) -> None:
    """Make a server ready for deploy: check it, install patchflow there, run init, list what is missing."""
    from patchflow.remote.provision import SetupOptions
    from patchflow.remote.provision import setup_host as run_setup

    settings, targets = _targets(c, root, host, None, None)
    options = SetupOptions(
        yes=yes, accept_new_key=accept_new_host_key, wheel=wheel, wheelhouse=wheelhouse, upgrade=upgrade
    )
    for target in targets:
        show_setup(target, run_setup(settings, target, options, log=_log))


def remote_status(
    c: Context,
    root: str | None,
    host: str | None,
    hosts: str | None,
    role: str | None,
    *,
    json_: bool,
    history: int,
    accept_new_host_key: bool = False,
) -> None:
    """``patch-status --host/--hosts/--role``: one host in full (the same tables as locally), several
    as one table (installed version, last apply, health, lock, interrupted work).

    Raises:
        Exit: code 6 when a host could not be read.
    """
    from patchflow.remote.fleet import fleet_status

    settings, targets = _targets(c, root, host, hosts, role)
    rows = fleet_status(settings, targets, history=history, accept_new_key=accept_new_host_key)
    show_fleet_status(rows, json_=json_, one_host=bool(host))


def remote_rollback(
    c: Context,
    root: str | None,
    host: str | None,
    hosts: str | None,
    role: str | None,
    *,
    version: str | None,
    yes: bool,
    force: bool,
    backup: str | None,
    break_lock: bool,
    restore_database: bool,
) -> None:
    """``rollback-patch --host/--hosts/--role``: the same rollback-patch task on each host, one at a
    time, stopping at the first failure; a summary table; the first failing host's exit code."""
    from patchflow.console import confirm
    from patchflow.remote.rolling import RollbackOptions, rollback

    settings, targets = _targets(c, root, host, hosts, role)
    options = RollbackOptions(
        version=optional_version(version),
        force=force,
        backup=backup,
        break_lock=break_lock,
        restore_database=restore_database,
    )
    report = rollback(settings, targets, options, log=_log, confirm=lambda text: confirm(text, yes=yes))
    exit_with(report)
