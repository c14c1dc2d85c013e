"""How the task layer shows remote work: fleet summary tables, the hosts' status, setup-host's checks.

The summary table of a deploy, rollback or attach (and its exit code), the hosts table of
``patch-status --hosts/--role`` (or its JSON), and setup-host's checks."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

from invoke.exceptions import Exit
from rich.table import Table

from patchflow.console import cell, console, error_console
from patchflow.redact import shown
from patchflow.tasks.status_view import render_status

if TYPE_CHECKING:
    from collections.abc import Sequence

    from patchflow.remote.fleet import HostStatus
    from patchflow.remote.hosts import Target
    from patchflow.remote.outcome import FleetReport
    from patchflow.remote.provision import SetupReport
    from patchflow.remote.wire import DatabaseFactsJSON, HealthJSON
    from patchflow.status_schema import StatusReport

#: Exit code of a remote task when a host cannot be read or is not ready (the README's "unknown").
UNREACHABLE_EXIT = 6


class HostStatusJson(TypedDict):
    """One host of ``patch-status --hosts/--role --json``: ``error`` when it could not be read,
    else ``health`` (the probe's answer) and ``status`` (its ``patch-status --json``)."""

    name: str
    host: str
    role: str
    reachable: bool
    error: NotRequired[str]
    health: NotRequired[HealthJSON | None]
    status: NotRequired[StatusReport]
    database: NotRequired[DatabaseFactsJSON | None]  # which database it uses (hosts sharing one: same identity)
    group_window: NotRequired[dict[str, Any] | None]  # the record of a group window that stopped it


def exit_with(report: FleetReport) -> None:
    """Print the summary table of a fleet report and what a run that died left on each host.

    Raises:
        Exit: with the report's exit code, when a host failed.
    """
    table = Table(title=f"{report.action} {report.version}".strip())
    for column in ("host", "role", "before", "after", "result", "detail"):
        table.add_column(column, overflow="fold")
    for row in report.results:
        colour = "green" if row.ok and row.result != "skipped" else ("yellow" if row.result == "skipped" else "red")
        table.add_row(
            cell(row.name),
            cell(row.role),
            cell(row.before or "?"),
            cell(row.after or ("?" if row.result not in ("skipped",) else row.before or "?")),
            f"[{colour}]{cell(row.result)}[/]",
            cell(row.detail),
        )
    console.print(table)
    failed = next((r for r in report.results if not r.ok), None) if report.exit_code else None
    if failed is not None:
        error_console.print(
            f"[bold red]error:[/] {cell(failed.name)}: {cell(failed.result)}"
            + (f": {cell(failed.detail)}" if failed.detail else "")
        )
    # what a run that died left on a host, and the one command (run from here) that recovers it
    for row in report.results:
        out = error_console if row is failed else console
        if row.recovery:
            out.print(f"{row.name}: recover with: {row.recovery}  ({row.recovery_does})", markup=False)
        elif row.recovery_does:
            out.print(f"{row.name}: to recover: {row.recovery_does}", markup=False)
    if failed is not None:
        raise Exit(code=report.exit_code)


def host_status_json(rows: Sequence[HostStatus]) -> list[HostStatusJson]:
    """The ``--json`` items of ``rows``, in their order (keys in the order printed)."""
    out: list[HostStatusJson] = []
    for row in rows:
        name, host, role = row.target.name, row.target.host, row.target.role
        if row.facts is None:
            error = row.error.message if row.error else ""
            out.append({"name": name, "host": host, "role": role, "reachable": False, "error": error})
        else:
            health, status = row.facts.probe, row.facts.report
            out.append(
                {
                    "name": name,
                    "host": host,
                    "role": role,
                    "reachable": True,
                    "health": health,
                    "status": status,
                    "database": row.facts.database,
                    "group_window": row.facts.group_window,
                }
            )
    return out


def show_fleet_status(rows: Sequence[HostStatus], *, json_: bool, one_host: bool) -> None:
    """``patch-status --host/--hosts/--role``: the JSON of every host; one host (``one_host``, when
    it answered) in full, with the same tables as locally; several as one table (installed
    version, last apply, health, lock, interrupted work).

    Raises:
        Exit: code 6 after the output when a host could not be read (each named on stderr).
    """
    if json_:
        print(json.dumps(host_status_json(rows), indent=2, ensure_ascii=False))
    elif one_host and rows[0].facts is not None:
        facts, target = rows[0].facts, rows[0].target
        console.print(f"[bold]host {target.name}[/] ({target.host}), patchflow {facts.patchflow_version}")
        health = facts.probe
        healthy = bool(health and health.get("healthy"))
        console.print(
            f"health: [{'green' if healthy else 'red'}]{'healthy' if healthy else 'NOT healthy'}[/] "
            f"({health.get('detail') if health else None})"
        )
        render_status(facts.report, console)
    else:
        console.print(_hosts_table(rows))
    if not json_:
        from patchflow.remote.group_window import unfinished_windows

        for line in unfinished_windows([(row.target.name, row.facts) for row in rows]):
            console.print(f"[bold yellow]{line}[/]")
    unreachable = [row for row in rows if row.facts is None]
    if unreachable:
        for row in unreachable:
            error_console.print(f"[bold red]error:[/] {row.error.message if row.error else row.target.name}")
        raise Exit(code=UNREACHABLE_EXIT)


def _database_cells(rows: Sequence[HostStatus]) -> dict[str, str]:
    """``host -> its database's name`` (``, shared with a, b`` when other hosts listed use it too)."""
    users: dict[str, list[str]] = {}
    for row in rows:
        database = row.facts.database if row.facts is not None else None
        if database and database.get("identity"):
            users.setdefault(database["identity"], []).append(row.target.name)
    cells = {}
    for identity, names in users.items():
        for name in names:
            others = [n for n in names if n != name]
            cells[name] = identity.split("/", 1)[-1] + (f", shared with {', '.join(others)}" if others else "")
    return cells


def _hosts_table(rows: Sequence[HostStatus]) -> Table:
    table = Table(title="hosts")
    for column in ("host", "role", "installed", "last apply (UTC)", "health", "database", "lock", "interrupted"):
        table.add_column(column, overflow="fold")
    databases = _database_cells(rows)
    for row in rows:
        if row.facts is None:
            table.add_row(
                row.target.name,
                row.target.role,
                "[red]unknown[/]",
                "",
                "",
                "",
                "",
                cell(row.error.message) if row.error else "",
            )
            continue
        status = row.facts.report
        last, lock = status.get("last_apply"), status.get("lock")
        interrupted, running = status.get("interrupted"), status.get("running")
        probe = row.facts.probe
        table.add_row(
            cell(row.target.name),
            cell(row.target.role),
            cell(status.get("installed_version") or "?"),
            cell(f"{last.get('from_version')} -> {last.get('to_version')} {str(last.get('started_at', ''))[:19]}")
            if last
            else "",
            "[green]healthy[/]"
            if probe and probe.get("healthy")
            else f"[red]{cell(probe.get('detail', 'no answer') if probe else 'no answer')}[/]",
            cell(databases.get(row.target.name, "")),
            cell(f"{lock.get('state')}: {lock.get('action')} {lock.get('version')} pid {lock.get('pid')}")
            if lock
            else "",
            cell(f"{interrupted.get('action')} {interrupted.get('version')} at {interrupted.get('step')}")
            if interrupted
            else cell(f"running: {running.get('action')} {running.get('version')} at {running.get('step') or 'start'}")
            if running
            else "",
        )
    return table


def show_setup(target: Target, report: SetupReport) -> None:
    """setup-host's table of checks on ``target`` and what it did there.

    Raises:
        Exit: code 6 when a check failed (the host is not ready for deploy).
    """
    table = Table(title=f"setup-host {target.name} ({target.host}:{target.path})")
    for column in ("check", "ok", "detail"):
        table.add_column(column, overflow="fold")
    for what, ok, detail in report.checks:
        table.add_row(cell(what), "[green]yes[/]" if ok else "[red]NO[/]", cell(detail))
    console.print(table)
    for action in report.actions:
        console.print(f"  done: {shown(action)}", markup=False)
    if not report.ready:
        missing = ", ".join(what for what, ok, _ in report.checks if not ok)
        error_console.print(f"[bold red]error:[/] {target.name} is not ready for deploy: {missing}")
        raise Exit(code=UNREACHABLE_EXIT)
    console.print(f"[green]ready[/]: inv deploy --host {target.name} --version X.Y.Z")
