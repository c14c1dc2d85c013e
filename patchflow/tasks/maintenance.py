"""The maintenance tasks: prune-backups, baseline-migrations, lock and unlock.

prune-backups applies the retention settings; baseline-migrations records an installed tree's
migrations as applied; lock and unlock set and lift a deploy freeze (:mod:`patchflow.freeze`)."""

from __future__ import annotations

from invoke.context import Context

from patchflow.console import console
from patchflow.paths import ProjectPaths
from patchflow.tasks.edge import ROOT_HELP, UNSET, YES_HELP, command, context_for, settings_for


@command(
    help={
        "root": ROOT_HELP,
        "keep_days": "INT: keep every backup younger than this many days (default: the setting)",
        "keep_last": "INT: keep at least this many newest backups (default: the setting)",
        "dry_run": "only list what would be removed",
    }
)
def prune_backups(
    c: Context, root: str | None = None, keep_days: int = UNSET, keep_last: int = UNSET, dry_run: bool = False
) -> None:
    """Delete old backups (retention), never the one that rolls back the installed version; drop expired snapshots."""
    from patchflow.backup import prune_backups as prune
    from patchflow.installed import read_installed_record
    from patchflow.lifecycle.journal import Journal

    settings = settings_for(
        c,
        root,
        retention_days=None if keep_days == UNSET else keep_days,
        retention_keep=None if keep_last == UNSET else keep_last,
    )
    paths = ProjectPaths.from_settings(settings)
    keep = set()
    record = read_installed_record(paths)
    if record is not None and record.backup:
        keep.add(record.backup)
    pending = Journal.load(paths.journal)
    if pending is not None and pending.backup:
        keep.add(pending.backup)
    removed = prune(
        paths, keep_days=settings.retention_days, keep_last=settings.retention_keep, keep=keep, dry_run=dry_run
    )
    verb = "would remove" if dry_run else "removed"
    for backup in removed:
        console.print(f"{verb} {backup.name}")
    console.print(f"{verb} {len(removed)} backup(s)")
    _prune_snapshots(c, root, pending.notes.get("snapshot") if pending is not None else None, dry_run=dry_run)
    if not dry_run:
        _prune_kept_images(c, root, paths)


def _prune_snapshots(c: Context, root: str | None, running: str | None, *, dry_run: bool) -> None:
    """Drop the snapshots past ``snapshot_keep_hours`` (dump proven) and those whose backup is gone,
    under the install's lock (:func:`patchflow.snapshot.drop_expired`); the one an interrupted run
    names is left to its recovery.

    Raises:
        LockError: an apply or rollback holds the lock.
        DatabaseError: a snapshot could not be dropped.
    """
    from patchflow.lock import install_lock
    from patchflow.snapshot import drop_expired, read_snapshots

    ctx = context_for(c, root)
    if ctx.database is None or not read_snapshots(ctx.paths):
        return
    keep = frozenset([running] if running else [])
    verb = "would drop" if dry_run else "dropped"
    with install_lock(ctx.paths.lock, ctx.paths.lock_info, action="prune", version="-"):
        dropped = drop_expired(ctx.database, ctx.paths, ctx.settings.snapshot_keep_hours, dry_run=dry_run, keep=keep)
    for name in dropped:
        console.print(f"{verb} snapshot {name}")
    console.print(f"{verb} {len(dropped)} snapshot(s)")


def _prune_kept_images(c: Context, root: str | None, paths: ProjectPaths) -> None:
    """Remove the compose images kept for versions that no remaining backup restores and that are
    not installed (:mod:`patchflow.services.compose_images`); a failure is a warning (the backups
    are pruned already)."""
    from patchflow.backup import list_backups
    from patchflow.errors import PatchflowError
    from patchflow.installed import installed_version

    ctx = context_for(c, root)
    if ctx.services.kind != "compose" or not ctx.services.app_services():
        return
    keep = {b.restores_version for b in list_backups(paths) if b.restores_version}
    current = installed_version(paths)
    if current:
        keep.add(current)
    try:
        pruned = ctx.services.prune_images(keep)
    except PatchflowError as exc:
        console.print(f"[yellow]warning:[/] kept images were not pruned: {exc.message}")
        return
    for reference in pruned:
        console.print(f"removed kept image {reference}")


@command(help={"root": ROOT_HELP, "yes": YES_HELP})
def baseline_migrations(c: Context, root: str | None = None, yes: bool = False) -> None:
    """Record the installed tree's migrations as applied, as `prisma migrate resolve --applied` does."""
    from patchflow.baseline import baseline, plan_baseline
    from patchflow.console import confirm
    from patchflow.dbwait import check_answers_now
    from patchflow.errors import ConfigError
    from patchflow.lock import install_lock

    ctx = context_for(c, root)
    if ctx.database is None:
        raise ConfigError("No database is configured (database_mode = none).", "Nothing to baseline.")
    check_answers_now(ctx.database, ctx.settings.db_wait_timeout, ctx.log)
    plan = plan_baseline(ctx.database, ctx.paths.root)
    console.print(
        f"database {ctx.database.target.location()}: {plan.tables} tables in schema {ctx.database.target.schema}"
    )
    if plan.already:
        console.print(f"  already recorded: {', '.join(plan.already)}")
    if not plan.record:
        console.print("[green]nothing to record[/]: every migration of the tree is recorded as applied")
        return
    if not plan.table:
        console.print("  _prisma_migrations does not exist: it is created (Prisma's table)")
    for migration in plan.record:
        failed = "; its failed row is marked rolled back" if migration.name in plan.failed else ""
        console.print(
            f"  record as applied: {migration.name}  ({migration.path}, sha256 {migration.checksum[:12]}...{failed})"
        )
    confirm(
        f"Record these {len(plan.record)} migrations as applied without running them (only right when the "
        "database already has what they create)?",
        yes=yes,
    )
    with install_lock(ctx.paths.lock, ctx.paths.lock_info, action="baseline", version="-"):
        recorded = baseline(ctx.database, plan)
    console.print(f"[green]recorded[/] {len(recorded)} migrations as applied")


@command(help={"root": ROOT_HELP, "message": "what is going on, until when, and who to ask (required)"})
def lock(c: Context, root: str | None = None, message: str = "") -> None:
    """Freeze deploys on this install: every apply, rollback and deploy refuses, showing the message."""
    from patchflow.freeze import describe, set_freeze

    paths = ProjectPaths.from_settings(settings_for(c, root))
    record = set_freeze(paths.state, message)
    console.print(f"[yellow]frozen[/]: {describe(record)}", highlight=False)
    console.print("  every apply, rollback and deploy here refuses until `inv unlock`", markup=False)


@command(help={"root": ROOT_HELP})
def unlock(c: Context, root: str | None = None) -> None:
    """Lift the deploy freeze `inv lock` set."""
    from patchflow.freeze import clear_freeze, describe

    paths = ProjectPaths.from_settings(settings_for(c, root))
    previous = clear_freeze(paths.state)
    if previous is None:
        console.print("not frozen: nothing to lift")
    else:
        console.print(f"[green]unfrozen[/]: lifted {describe(previous)}", highlight=False)


@command(help={"root": ROOT_HELP})
def accept(c: Context, root: str | None = None) -> None:
    """End a running watch window early: the new version stays."""
    from patchflow.watch import accept as end_window

    record = end_window(context_for(c, root))
    if record is None:
        console.print("no watch window is running here")
    else:
        console.print(
            f"[green]accepted[/]: {record.get('version')} (the window was to run until {record.get('until')})"
        )


@command(
    help={
        "root": ROOT_HELP,
        "on": "answer HTTP 503 and the maintenance page on maintenance_ports until --off (stop the app first)",
        "off": "end the planned maintenance notice",
    }
)
def maintenance(c: Context, root: str | None = None, on: bool = False, off: bool = False) -> None:
    """Planned maintenance: the 503 notice on the app's ports while you work (applies refuse meanwhile)."""
    from patchflow.errors import ConfigError
    from patchflow.maintenance_page import start_planned, stop_planned

    if on == off:
        raise ConfigError("Say --on or --off.", "inv maintenance --on (after inv down), later --off (then inv up).")
    settings = settings_for(c, root)
    paths = ProjectPaths.from_settings(settings)
    if on:
        record = start_planned(paths.state, paths.root, settings.maintenance_ports, settings.maintenance_page)
        console.print(f"[yellow]maintenance notice on[/] {', '.join(settings.maintenance_ports)} (pid {record['pid']})")
    else:
        ended = stop_planned(paths.state)
        console.print("maintenance notice off" if ended else "no maintenance notice was running")
