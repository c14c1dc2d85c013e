"""The tasks that change an install: apply-patch and rollback-patch.

apply-patch plans, confirms and runs the apply's steps; rollback-patch runs here, or on hosts over
SSH through :mod:`patchflow.tasks.deploy`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from invoke.context import Context
from rich.markup import escape

from patchflow.console import console
from patchflow.tasks.edge import REMOTE_HELP, ROOT_HELP, UNSET, YES_HELP, command, context_for, required_version
from patchflow.tasks.plan_view import ask_again, print_plan
from patchflow.version import parse_version

if TYPE_CHECKING:
    from patchflow.context import Context as CoreContext
    from patchflow.lifecycle.planning import Plan
    from patchflow.version import PatchVersion


@command(
    help={
        "root": ROOT_HELP,
        "version": "patch version to apply (e.g. 2.3.0)",
        "yes": YES_HELP,
        "dry_run": "print the plan (files, migrations, disk, services, health proof) and change nothing",
        "force": "apply even if this version is already installed, or while the installed version does not answer "
        "healthy at the health URL(s) (its services down on purpose)",
        "allow_downgrade": "allow applying a version older than the installed one",
        "break_lock": "take over a stale lock left by a dead apply/rollback (it is recovered first)",
        "health_url": "override the health check URL(s), comma separated",
        "health_timeout": "FLOAT: override the health check deadline in seconds",
        "remove_unowned": "also delete paths missing from the patch that no patch owned (files the host added)",
        "list_files": "list every path (and every migration lint finding) in the plan instead of a summary by folder",
        "rehearse": "first run the pending migrations on a copy of the database (as inv rehearse; services keep "
        "running): the plan shows their time as the migrate step, and a migration that fails there refuses the apply",
        "others_stopped": "every other app server and client of the database is stopped (deploy's group window "
        "passes it): migrate even if sessions from elsewhere remain (they are ended)",
        "watch": "FLOAT: after the commit, watch the new version this many seconds (health, restarts, error "
        "patterns in its logs) and roll it back if it fails (default: the watch_seconds setting)",
        "allow_unsigned": "this once, apply a patch no signature vouches for on a host without verify_key (the "
        "plan says so); the setting allow_unsigned does it for every apply",
        "database_backup_on": "TEXT: deploy's group window: the database was backed up once, by the apply named "
        "here; this apply takes none and refuses if a migration is pending",
    }
)
def apply_patch(
    c: Context,
    version: str | None = None,
    root: str | None = None,
    yes: bool = False,
    dry_run: bool = False,
    force: bool = False,
    allow_downgrade: bool = False,
    break_lock: bool = False,
    health_url: str | None = None,
    health_timeout: float = float(UNSET),
    remove_unowned: bool = False,
    list_files: bool = False,
    rehearse: bool = False,
    others_stopped: bool = False,
    database_backup_on: str = "",
    allow_unsigned: bool = False,
    watch: float = float(UNSET),
) -> None:
    """Apply a patch: verify, back up, switch, migrate, restart, health-check; roll back on failure."""
    from patchflow.console import confirm
    from patchflow.lifecycle.apply import ApplyOptions
    from patchflow.lifecycle.journal import Journal
    from patchflow.live import pausing, step_lines
    from patchflow.operations import apply_patch as run_apply

    parsed = required_version(version, "apply-patch")
    timeout = None if health_timeout == UNSET else health_timeout
    ctx = context_for(
        c,
        root,
        record=not dry_run,
        health_url=health_url,
        health_timeout=timeout,
        allow_unsigned=True if allow_unsigned else None,
        watch_seconds=None if watch == UNSET else watch,
    )
    options = ApplyOptions(
        force=force,
        allow_downgrade=allow_downgrade,
        dry_run=dry_run,
        break_lock=break_lock,
        remove_unowned=remove_unowned,
        others_stopped=others_stopped,
        database_backup_on=database_backup_on,
    )

    def ask(plan: Plan) -> None:
        print_plan(plan, ctx, list_files=list_files)
        confirm(f"Apply {plan.version} now (services {', '.join(plan.services) or 'none'} will be stopped)?", yes=yes)

    if not dry_run:
        pending = Journal.load(ctx.paths.journal)
        if pending is not None:
            # recovery changes the install, so it is confirmed before it runs, not with the plan
            confirm(
                f"An interrupted {pending.action} of {pending.version} (last step {pending.current_step}) "
                "will be finished or undone first. Continue?",
                yes=yes,
            )
    if rehearse and Journal.load(ctx.paths.journal) is not None:
        ctx.log("not rehearsed: the interrupted run is finished or undone first (inv rehearse afterwards)")
    elif rehearse:
        rehearse_first(ctx, parsed)
    with step_lines(console) as ctx.progress:  # live lines while a step runs (on a terminal)
        again = pausing(ctx.progress, ask_again(yes, ctx, list_files))  # asked in the lock step
        result = run_apply(ctx, parsed, options, confirm=ask, reconfirm=again)
    if result.recovery is not None:
        console.print(f"[bold yellow]recovered[/]: {result.recovery.describe()}")
    if result.cleaned:
        console.print(f"cleaned up after a killed run: removed {', '.join(result.cleaned)}")
    if result.dry_run and result.plan is not None:
        print_plan(result.plan, ctx, list_files=list_files)
        console.print("[bold]dry run[/]: nothing was changed")
        return
    if result.noop:
        console.print(f"[green]nothing to do[/]: {parsed} is already installed (use --force to apply again)")
        return
    console.print(
        f"[bold green]applied[/] {result.from_version or '?'} -> {result.version} in "
        f"{result.duration_seconds:.1f} s; services were down for {result.stopped_seconds:.1f} s"
    )
    if result.backup:
        console.print(f"  backup {result.backup}")
    if result.migrations_applied:
        console.print(f"  migrations applied: {', '.join(result.migrations_applied)}")
    if result.database_note:
        warn = result.database_note.startswith("the dump of the snapshot failed")
        console.print(f"  {'[yellow]warning:[/] ' if warn else ''}{escape(result.database_note)}")
    result.cleanup()


def rehearse_first(ctx: CoreContext, version: PatchVersion) -> None:
    """``apply-patch --rehearse``: rehearse the pending migrations of ``version`` on a copy of the
    database (:mod:`patchflow.rehearse`) and record it, so the plan shows their time.

    Raises:
        MigrationError: a migration failed on the copy (nothing was stopped or changed).
    """
    from patchflow.errors import MigrationError
    from patchflow.rehearse import record_rehearsal
    from patchflow.rehearse import rehearse as run

    if ctx.database is None:
        ctx.log("not rehearsed: no database is configured (database_mode = none)")
        return
    ctx.log(f"rehearsing the pending migrations of {version} on a copy of the database")
    done = run(ctx, version, ctx.log)
    if done.error:
        raise MigrationError(
            f"The rehearsal on a copy of the database failed: {done.error}",
            "Nothing was stopped or changed (the copy was dropped). Fix the migration in a new patch.",
        )
    record_rehearsal(ctx.paths.state, done)


@command(
    help={
        "root": ROOT_HELP,
        "version": "the patch version to roll back (default: the installed version)",
        "yes": YES_HELP,
        "force": "restore the backup even if another version is installed",
        "backup": "name of the backup folder to restore (default: the one the apply of VERSION took)",
        "break_lock": "take over a stale lock left by a dead apply/rollback",
        "restore_database": "restore the database even if the apply ran no migration",
        "others_stopped": "every other app server and client of the database is stopped: restore it even if "
        "sessions from elsewhere remain (they are ended)",
        **REMOTE_HELP,
    }
)
def rollback_patch(
    c: Context,
    version: str | None = None,
    root: str | None = None,
    yes: bool = False,
    force: bool = False,
    backup: str | None = None,
    break_lock: bool = False,
    restore_database: bool = False,
    others_stopped: bool = False,
    host: str | None = None,
    hosts: str | None = None,
    role: str | None = None,
) -> None:
    """Roll back a patch: restore code, database and VERSION from the backup taken before it."""
    from patchflow.console import confirm
    from patchflow.installed import installed_version_or_error
    from patchflow.operations import rollback_patch as run_rollback

    if host or hosts or role:
        from patchflow.tasks.deploy import remote_rollback

        remote_rollback(
            c,
            root,
            host,
            hosts,
            role,
            version=version,
            yes=yes,
            force=force,
            backup=backup,
            break_lock=break_lock,
            restore_database=restore_database,
        )
        return
    ctx = context_for(c, root, record=True)
    if version:
        parsed = parse_version(version, source="--version")
    else:
        installed, why = installed_version_or_error(ctx.paths)
        if installed is None:
            from patchflow.errors import VersionError

            raise VersionError(
                f"No --version given and the installed version cannot be read: {why}",
                "Pass --version X.Y.Z (the version to roll back).",
            )
        parsed = installed
        console.print(f"rolling back the installed version {parsed}")
    from patchflow.live import pausing, step_lines

    with step_lines(console) as ctx.progress:  # live lines while a step runs (on a terminal)
        result = run_rollback(
            ctx,
            parsed,
            force=force,
            break_lock=break_lock,
            backup_id=backup,
            restore_database=True if restore_database else None,
            others_stopped=others_stopped,
            confirm=lambda text: confirm(text, yes=yes),
            reconfirm=pausing(ctx.progress, ask_again(yes, ctx)),  # asked in the lock step
        )
    source = f"backup {result.backup}" if result.backup else "no backup (the interrupted apply had changed nothing)"
    console.print(
        f"[bold green]rolled back[/] {result.from_version or '?'} -> {result.to_version} from "
        f"{source} in {result.duration_seconds:.1f} s (services down {result.stopped_seconds:.1f} s)"
    )
    if result.displaced_database:
        from patchflow.restore_in_place import kept_as

        console.print(f"  database restored; the one it replaced is kept as {kept_as(result.displaced_database)}")
