"""The remote tasks: ``deploy``, ``setup-host``, and the ``--host/--hosts/--role`` forms of
``patch-status`` and ``rollback-patch`` (which :mod:`patchflow.cli` hands over to this module).

Two more tasks run *on* the server, started over SSH by deploy: ``host-facts`` and
``receive-patch`` (see :mod:`patchflow.serverside`). The core is :mod:`patchflow.remote`; this
module parses flags, prints (one line per event, remote log lines prefixed with ``[host]``, a
summary table) and turns errors and remote exit codes into this command's exit code.

Import :mod:`patchflow.cli` (which registers these tasks in its collection), not this module first.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from invoke.context import Context
from invoke.exceptions import Exit

from patchflow.cli import ROOT_HELP, YES_HELP, command, settings_for
from patchflow.console import console, error_console
from patchflow.version import parse_version

HOST_HELP = "one host: an inventory name ([tool.patchflow.hosts.<name>]), an ssh alias or user@host[:port]"
HOSTS_HELP = "several hosts, comma separated (rolling, in this order)"
ROLE_HELP = "every inventory host with this role (e.g. staging, production), in inventory order"
ACCEPT_HELP = (
    "accept a host key that is not in known_hosts yet and add it there (a CHANGED key is never accepted); "
    "check its fingerprint first"
)
_print_lock = threading.Lock()


def _log(line: str) -> None:
    with _print_lock:
        console.print(line, markup=False, highlight=False)


def _exit_with(report: Any) -> None:
    """Print the summary table of a fleet report; exit with its code when not 0."""
    from rich.table import Table

    table = Table(title=f"{report.action} {report.version}".strip())
    for column in ("host", "role", "before", "after", "result", "detail"):
        table.add_column(column, overflow="fold")
    for row in report.results:
        colour = "green" if row.ok and row.result != "skipped" else ("yellow" if row.result == "skipped" else "red")
        table.add_row(
            row.name,
            row.role,
            row.before or "?",
            row.after or ("?" if row.result not in ("skipped",) else row.before or "?"),
            f"[{colour}]{row.result}[/]",
            row.detail,
        )
    console.print(table)
    if report.exit_code:
        failed = next(r for r in report.results if not r.ok)
        error_console.print(
            f"[bold red]error:[/] {failed.name}: {failed.result}" + (f": {failed.detail}" if failed.detail else "")
        )
        raise Exit(code=report.exit_code)


def _targets(c: Context, root: str | None, host: str | None, hosts: str | None, role: str | None) -> tuple[Any, Any]:
    from patchflow.remote import resolve_targets

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
) -> None:
    """Upload a patch over SSH and apply it on hosts with the same apply-patch task, rolling."""
    from patchflow.console import confirm
    from patchflow.errors import ConfigError
    from patchflow.remote import DeployOptions
    from patchflow.remote import attach as attach_runs
    from patchflow.remote import deploy as run_deploy

    settings, targets = _targets(c, root, host, hosts, role)
    if attach:
        parsed = parse_version(version, source="--version") if version else None
        report = attach_runs(settings, targets, parsed, accept_new_key=accept_new_host_key, log=_log)
        _exit_with(report)
        return
    if not version:
        raise ConfigError("No --version given.", "Pass --version X.Y.Z (patches/vX.Y.Z of this checkout is deployed).")
    if parallel < 1:
        raise ConfigError(
            f"--parallel {parallel} is not a number of hosts: it must be 1 or more.",
            "Pass --parallel N, N hosts uploaded to at the same time (default 1); nothing was changed.",
        )
    options = DeployOptions(
        parse_version(version, source="--version"),
        canary=canary,
        parallel=parallel,
        rollback_on_failure=rollback_on_failure,
        skip_staging=skip_staging,
        accept_new_key=accept_new_host_key,
        upload_only=upload_only,
        force=force,
        allow_downgrade=allow_downgrade,
        break_lock=break_lock,
    )
    report = run_deploy(settings, targets, options, log=_log, confirm=lambda text: confirm(text, yes=yes))
    _exit_with(report)


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
    from rich.table import Table

    from patchflow.remote import SetupOptions
    from patchflow.remote import setup_host as run_setup

    settings, targets = _targets(c, root, host, None, None)
    options = SetupOptions(
        yes=yes, accept_new_key=accept_new_host_key, wheel=wheel, wheelhouse=wheelhouse, upgrade=upgrade
    )
    for target in targets:
        report = run_setup(settings, target, options, log=_log)
        table = Table(title=f"setup-host {target.name} ({target.host}:{target.path})")
        for column in ("check", "ok", "detail"):
            table.add_column(column, overflow="fold")
        for what, ok, detail in report.checks:
            table.add_row(what, "[green]yes[/]" if ok else "[red]NO[/]", detail)
        console.print(table)
        for action in report.actions:
            console.print(f"  done: {action}", markup=False)
        if not report.ready:
            missing = ", ".join(what for what, ok, _ in report.checks if not ok)
            error_console.print(f"[bold red]error:[/] {target.name} is not ready for deploy: {missing}")
            raise Exit(code=6)
        console.print(f"[green]ready[/]: inv deploy --host {target.name} --version X.Y.Z")


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
    as one table (installed version, last apply, health, lock, interrupted work)."""
    from rich.table import Table

    from patchflow.remote import fleet_status
    from patchflow.status import render_status

    settings, targets = _targets(c, root, host, hosts, role)
    rows = fleet_status(settings, targets, history=history, accept_new_key=accept_new_host_key)
    unreachable = [row for row in rows if row.facts is None]
    if json_:
        out = []
        for row in rows:
            item: dict[str, Any] = {"name": row.target.name, "host": row.target.host, "role": row.target.role}
            if row.facts is None:
                item.update(reachable=False, error=row.error.message if row.error else "")
            else:
                item.update(reachable=True, health=row.facts.health, status=row.facts.status)
            out.append(item)
        print(json.dumps(out, indent=2, ensure_ascii=False))
    elif host and rows[0].facts is not None:
        facts, target = rows[0].facts, rows[0].target
        console.print(f"[bold]host {target.name}[/] ({target.host}), patchflow {facts.data.get('patchflow_version')}")
        health = facts.health or {}
        colour = "green" if health.get("healthy") else "red"
        console.print(
            f"health: [{colour}]{'healthy' if health.get('healthy') else 'NOT healthy'}[/] ({health.get('detail')})"
        )
        render_status(facts.status, console)
    else:
        table = Table(title="hosts")
        for column in ("host", "role", "installed", "last apply (UTC)", "health", "lock", "interrupted"):
            table.add_column(column, overflow="fold")
        for row in rows:
            if row.facts is None:
                table.add_row(
                    row.target.name,
                    row.target.role,
                    "[red]unknown[/]",
                    "",
                    "",
                    "",
                    row.error.message if row.error else "",
                )
                continue
            status = row.facts.status
            last = status.get("last_apply") or {}
            health = row.facts.health or {}
            lock = status.get("lock") or {}
            interrupted = status.get("interrupted") or {}
            table.add_row(
                row.target.name,
                row.target.role,
                str(status.get("installed_version") or "?"),
                f"{last.get('from_version')} -> {last.get('to_version')} {str(last.get('started_at', ''))[:19]}"
                if last
                else "",
                "[green]healthy[/]" if health.get("healthy") else f"[red]{health.get('detail', 'no answer')}[/]",
                f"{lock.get('state')}: {lock.get('action')} {lock.get('version')} pid {lock.get('pid')}"
                if lock
                else "",
                f"{interrupted.get('action')} {interrupted.get('version')} at {interrupted.get('step')}"
                if interrupted
                else "",
            )
        console.print(table)
    if unreachable:
        for row in unreachable:
            error_console.print(f"[bold red]error:[/] {row.error.message if row.error else row.target.name}")
        raise Exit(code=6)


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
    from patchflow.remote import RollbackOptions, rollback

    settings, targets = _targets(c, root, host, hosts, role)
    options = RollbackOptions(
        version=parse_version(version, source="--version") if version else None,
        force=force,
        backup=backup,
        break_lock=break_lock,
        restore_database=restore_database,
    )
    report = rollback(settings, targets, options, log=_log, confirm=lambda text: confirm(text, yes=yes))
    _exit_with(report)


# -- run on the server by deploy ----------------------------------------------------------------


@command(
    help={
        "root": ROOT_HELP,
        "version": "also report what uploads of this version left (final folder, partial uploads)",
        "health": "probe the health URLs once",
        "history": "INT: history records to include",
    }
)
def host_facts(
    c: Context, root: str | None = None, version: str | None = None, health: bool = False, history: int = 200
) -> None:
    """Print what deploy needs to know about this checkout as JSON (deploy runs it over SSH)."""
    from patchflow.serverside import host_facts as collect

    settings = settings_for(c, root)
    parsed = parse_version(version, source="--version") if version else None
    print(json.dumps(collect(settings, version=parsed, health=health, history=history), ensure_ascii=True))


@command(
    help={
        "root": ROOT_HELP,
        "version": "the version uploaded",
        "upload": "the upload folder's name under patches/ (.upload-vX.Y.Z-<id>)",
    }
)
def receive_patch(c: Context, root: str | None = None, version: str | None = None, upload: str | None = None) -> None:
    """Check an uploaded patch folder here and rename it to patches/vX.Y.Z (deploy runs it over SSH)."""
    from patchflow.errors import ConfigError
    from patchflow.serverside import receive_upload

    if not upload:
        raise ConfigError("No --upload given.", "deploy passes the upload folder's name.")
    settings = settings_for(c, root)
    print(receive_upload(settings, parse_version(version, source="--version"), upload))


__all__ = ["deploy", "host_facts", "receive_patch", "remote_rollback", "remote_status", "setup_host"]
