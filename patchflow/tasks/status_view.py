"""How the task layer shows patch-status: the install's state as lines, then its tables.

The state: a running or interrupted run, the lock, leftovers, the command that recovers it, the
apply that installed the version; the tables: patches, backups, displaced databases and history.
Times are UTC with an explicit ``Z``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from patchflow.units import human_age, human_bytes


def _seconds(value: Any) -> str:
    """``1.234`` -> ``1.2 s``; anything that is not a number -> ``?``."""
    return f"{value:.1f} s" if isinstance(value, (int, float)) and not isinstance(value, bool) else "?"


def _utc(stamp: Any) -> str:
    """``2025-01-01T14:30:22.123456Z`` -> ``2025-01-01 14:30:22Z`` (UTC, seconds)."""
    text = str(stamp or "")
    if len(text) >= 19 and text[10] == "T":
        return f"{text[:10]} {text[11:19]}Z"
    return text


def _run_line(running: Mapping[str, Any]) -> str:
    """``RUNNING: apply of 2.3.0 (from 2.2.0) at step switch (started, since ...); ...``"""
    where = (
        f"at step [bold]{running['step']}[/] ({running.get('step_state')} {_utc(running.get('step_started_at'))})"
        if running.get("step")
        else "before its first journaled step (verifying, planning, asking or taking the lock)"
    )
    elapsed = running.get("elapsed_seconds")
    ago = f" ({human_age(elapsed)} ago)" if isinstance(elapsed, (int, float)) else ""
    origin = f" (from {running['from_version']})" if running.get("from_version") else ""
    return (
        f"[bold cyan]RUNNING[/]: {running['action']} of {running['version']}{origin} {where}; started "
        f"{_utc(running['started_at'])}{ago} by {running['user']}@{running['host']} pid {running['pid']}."
    )


def _apply_fate(apply: Mapping[str, Any], installed: str | None) -> str:
    """What became of an apply record: installed, rolled back (by what, when), failed..."""
    undone = apply.get("rolled_back")
    result = apply.get("result")
    if isinstance(undone, Mapping):
        when = f" at {_utc(undone.get('at'))}" if undone.get("at") else ""
        error = f" after {apply.get('error')}" if apply.get("error") else ""
        return f"[yellow]rolled back[/] by {undone.get('by')}{when}{error}"
    if result == "success":
        return (
            "installed" if apply.get("to_version") == installed else f"succeeded; {installed or '?'} is installed now"
        )
    if result == "rollback_failed":
        return f"[red]failed, and its automatic rollback did not complete[/] ({apply.get('error')})"
    if result == "interrupted":
        return "interrupted before anything stopped (closed by a recovery)"
    return f"[red]{result}[/]" + (f" ({apply.get('error')})" if apply.get("error") else "")


def _same_run(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    if a.get("run_id") and b.get("run_id"):
        return bool(a["run_id"] == b["run_id"])
    return (a.get("started_at"), a.get("to_version")) == (b.get("started_at"), b.get("to_version"))


def render_status(status: Mapping[str, Any], console: Console) -> None:
    """Print ``status`` (from :func:`collect_status`, or a host's over SSH) as text and tables."""

    console.print(f"[bold]PrimeFlow install[/] {status['root']}")
    if status["installed_version"]:
        console.print(f"installed version: [bold green]{status['installed_version']}[/]")
    else:
        console.print(f"installed version: [red]unknown[/] ({status['version_error']})")
    running = status.get("running")
    if running:
        console.print(_run_line(running))
        if running.get("recovering"):
            console.print(f"  it first finishes or undoes {running['recovering']}, left by a killed run")
        if running.get("paused"):
            console.print(
                f"  [yellow]its process is stopped[/] (SIGSTOP or Ctrl+Z): the install waits on it; "
                f"`kill -CONT {running['pid']}` resumes it"
            )
        lock = status.get("lock") or {}
        if lock.get("state") == "held-too-long":
            console.print(
                "  [yellow]it has held the lock longer than lock_stale_seconds[/]: check that it is not stuck"
            )
    interrupted = status["interrupted"]
    if interrupted:
        console.print(
            f"[bold red]{interrupted['state'].upper()}[/]: {interrupted['action']} of {interrupted['version']} "
            f"(from {interrupted['from_version'] or '?'}) stopped "
            + (
                f"at step [bold]{interrupted['step']}[/] ({interrupted.get('step_state')})"
                if interrupted["step"]
                else "before its first step"
            )
            + (
                f", failed step {interrupted['failed_step']}: {interrupted['error']}"
                if interrupted["failed_step"]
                else ""
            )
            + f"; started {_utc(interrupted['started_at'])} by pid {interrupted['pid']} on {interrupted['host']}"
            + (", a process that is gone." if interrupted["pid"] else ".")
        )
    lock = status["lock"]
    if lock and not running:
        console.print(
            f"[yellow]lock {lock['state']}[/]: {lock['action']} of {lock['version']} by "
            f"{lock['user']}@{lock['host']} pid {lock['pid']} since {_utc(lock['started_at'])}"
        )
    if status["leftovers"]:
        console.print(f"[yellow]left by a killed run[/]: {', '.join(status['leftovers'])}")
    notice = status.get("maintenance")
    if notice:
        console.print(
            f"[bold yellow]MAINTENANCE[/]: the 503 notice answers on {escape(str(notice.get('ports')))} since "
            f"{notice.get('since')} (pid {notice.get('pid')}); `inv maintenance --off` ends it"
        )
    watching = status.get("watch")
    if watching:
        console.print(
            f"[bold]watching[/] {escape(str(watching.get('version')))} until {watching.get('until')} "
            f"(pid {watching.get('pid')}; `inv accept` ends it early)"
        )
    freeze = status.get("freeze")
    if freeze:
        console.print(
            f"[bold yellow]FROZEN[/]: {escape(freeze['message'])} (set by {escape(freeze['user'])}@"
            f"{escape(freeze['host'])} at {freeze['set_at']}); applies, rollbacks and deploys refuse until `inv unlock`"
        )
    for problem in status.get("damaged_state", []):
        console.print(f"[bold red]not trusted[/]: {escape(problem)}")
    recovery = status["recovery"]
    if recovery and not running:
        if recovery["command"]:
            console.print(f"[bold]recover with[/]: {recovery['command']}  [dim]({recovery['does']})[/]")
        else:
            console.print(f"[bold]to recover[/]: {recovery['does']}")
    last = status["last_apply"]
    if last:
        console.print(
            f"installed by: apply {last.get('from_version') or '?'} -> {last.get('to_version')} at "
            f"{_utc(last.get('started_at'))}, stopped window {_seconds(last.get('stopped_seconds'))}"
        )
    latest = status.get("latest_apply")
    if latest and not (last and _same_run(latest, last)):
        console.print(
            f"latest apply: {latest.get('from_version') or '?'} -> {latest.get('to_version')} at "
            f"{_utc(latest.get('started_at'))}: {_apply_fate(latest, status['installed_version'])}"
        )

    table = Table(title="Patches", show_lines=False)
    for column in ("version", "state", "files", "created (UTC)", "problems"):
        table.add_column(column, overflow="fold")
    for patch in status["patches"]:
        colour = {"ok": "green", "corrupt": "red", "incomplete": "yellow"}[patch["state"]]
        marker = " (installed)" if patch["installed"] else ""
        if patch.get("delta_base"):
            marker += f" (delta from {patch['delta_base']})"
        table.add_row(
            patch["version"] + marker,
            f"[{colour}]{patch['state']}[/]",
            str(patch["files"] or ""),
            _utc(patch["created_at"]),
            "; ".join(patch["problems"][:3]),
        )
    console.print(table if status["patches"] else "patches: none")

    table = Table(title="Backups (newest first)")
    for column in ("name", "before", "restores", "created (UTC)", "age", "size", "database", "state"):
        table.add_column(column, overflow="fold")
    for backup in status["backups"]:
        problems = backup.get("problems") or []
        table.add_row(
            backup["name"],
            backup["version"],
            backup["restores_version"],
            _utc(backup["created_at"]),
            human_age(backup["age_seconds"]),
            human_bytes(backup["size_bytes"]),
            "yes" if backup["database"] else "no",
            f"[red]DAMAGED: {'; '.join(problems[:3])}[/]" if problems else "[green]ok[/]",
        )
    console.print(table if status["backups"] else "backups: none")

    displaced = status.get("displaced_databases") or []
    table = Table(title="Displaced databases (kept by restores, with the rows written since their backup)")
    table.add_column("name", no_wrap=True)
    for column in ("kept since (UTC)", "age", "size", "rows since (UTC)"):
        table.add_column(column, overflow="fold")
    for item in displaced:
        size = (
            "dropped"
            if item.get("exists") is False
            else (human_bytes(item["size_bytes"]) if isinstance(item.get("size_bytes"), int) else "?")
        )
        age = item.get("age_seconds")
        table.add_row(
            item["name"],
            _utc(item.get("created_at")),
            human_age(age) if isinstance(age, (int, float)) else "?",
            size,
            _utc(item.get("rows_since")),
        )
    console.print(table if displaced else "displaced databases: none")
    if displaced and status.get("displaced_databases_note"):
        console.print(f"  {status['displaced_databases_note']}", markup=False)

    snapshots = status.get("snapshots") or []
    if snapshots:
        table = Table(title="Snapshots of the database (taken by applies on the database server)")
        table.add_column("name", no_wrap=True)
        for column in ("backup", "age", "size", "dump", "kept until (UTC)"):
            table.add_column(column, overflow="fold")
        for item in snapshots:
            exists = item.get("exists")
            size = "dropped" if exists is False else (human_bytes(item["size_bytes"]) if item["size_bytes"] else "?")
            age = item.get("age_seconds")
            dump = item["dump"] if not item.get("dump_error") else f"[red]failed[/]: {escape(str(item['dump_error']))}"
            if item.get("created_at") is None:
                dump = "[yellow]being made, or left by a killed run[/]"
            until = item.get("expires_at")
            kept = "its backup's only copy of the database: kept with it" if item["dump"] != "proven" else "?"
            table.add_row(
                item["name"],
                item["backup"],
                human_age(age) if isinstance(age, (int, float)) else "?",
                size,
                dump,
                _utc(until) if until else kept,
            )
        console.print(table)
        if status.get("snapshots_note"):
            console.print(f"  {status['snapshots_note']}", markup=False)

    if status["history"]:
        table = Table(title="History (latest last)")
        for column in ("action", "from", "to", "started (UTC)", "duration", "stopped", "result", "checklist"):
            table.add_column(column, overflow="fold")
        for item in status["history"]:
            result = str(item.get("result"))
            colour = "green" if result in ("success", "passed", "accepted") else "red"
            undone = item.get("rolled_back")
            if isinstance(undone, Mapping):
                result = "success, rolled back later" if result == "success" else f"{result} ({undone.get('by')})"
                colour = "yellow"
            table.add_row(
                str(item.get("action")),
                str(item.get("from_version") or ""),
                str(item.get("to_version") or ""),
                _utc(item.get("started_at")),
                _seconds(item.get("duration_seconds")),
                _seconds(item.get("stopped_seconds"))
                if item.get("action") != "watch"
                else _seconds(item.get("watch_seconds")),
                f"[{colour}]{escape(result)}[/]",
                _checklist(item.get("checklist")),
            )
        console.print(table)


def _checklist(record: object) -> str:
    """A deploy record's evidence in a few words: ``release 3/4, signed, smoke 2``."""
    if not isinstance(record, Mapping):
        return ""
    parts = []
    release = record.get("release")
    if isinstance(release, Mapping) and release:
        passed = sum(1 for ok in release.values() if ok is True)
        parts.append(f"release {passed}/{len(release)}")
    parts.append("signed" if record.get("signed_by") else "unsigned")
    if record.get("smoke_checks"):
        parts.append(f"smoke {record.get('smoke_checks')}")
    return escape(", ".join(parts))
