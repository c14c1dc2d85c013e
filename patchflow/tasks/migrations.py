"""The migration tasks: resolve-migration (Prisma's ``migrate resolve``) and rehearse.

resolve-migration marks a failed migration rolled back or applied as ``prisma migrate resolve``
does (:mod:`patchflow.migration_state`); rehearse runs a patch's pending migrations on a copy of the
database, with the rollback's restore-and-swap, and reports times, locks and rows
(:mod:`patchflow.rehearse`)."""

from __future__ import annotations

import json

from invoke.context import Context

from patchflow.console import console
from patchflow.tasks.edge import ROOT_HELP, command, context_for, required_version


@command(
    help={
        "root": ROOT_HELP,
        "name": "the migration's whole name (its folder under prisma/migrations/, e.g. 20250101120000_init)",
        "applied": "record it as applied (its changes are in the database: completed by hand)",
        "rolled_back": "mark its failed row rolled back (its changes are not in the database: it runs again)",
    }
)
def resolve_migration(
    c: Context, name: str = "", root: str | None = None, applied: bool = False, rolled_back: bool = False
) -> None:
    """Resolve a failed migration as `prisma migrate resolve --applied|--rolled-back` does."""
    from patchflow.dbwait import check_answers_now
    from patchflow.errors import ConfigError
    from patchflow.lock import install_lock
    from patchflow.migration_state import check_resolve_flags, resolve_applied, resolve_rolled_back

    how = check_resolve_flags(applied, rolled_back)
    if not name.strip():
        raise ConfigError("resolve-migration needs --name (the migration's folder name).", "Nothing was changed.")
    ctx = context_for(c, root)
    if ctx.database is None:
        raise ConfigError("No database is configured (database_mode = none).", "Nothing to resolve.")
    check_answers_now(ctx.database, ctx.settings.db_wait_timeout, ctx.log)
    with install_lock(ctx.paths.lock, ctx.paths.lock_info, action="resolve", version="-"):
        if how == "applied":
            from patchflow.baseline import check_provider
            from patchflow.migrations import find_migrations

            check_provider(ctx.paths.root)
            migration = resolve_applied(ctx.database, ctx.paths.root, name, find_migrations(ctx.paths.root))
            console.print(f"[green]recorded[/] {migration.name} as applied ({migration.path})", highlight=False)
        else:
            marked = resolve_rolled_back(ctx.database, name)
            console.print(f"[green]marked[/] {marked} failed row(s) of {name} rolled back", highlight=False)


@command(help={"root": ROOT_HELP, "version": "the patch whose pending migrations are rehearsed", "json": "print JSON"})
def rehearse(c: Context, version: str | None = None, root: str | None = None, json_: bool = False) -> None:
    """Run a patch's pending migrations on a copy of the database (services keep running) and time them."""
    from patchflow.errors import MigrationError
    from patchflow.migration_locks import words
    from patchflow.rehearse import record_rehearsal, rehearsal_json
    from patchflow.rehearse import rehearse as run

    parsed = required_version(version, "rehearse")
    ctx = context_for(c, root)
    if json_:  # stdout is the JSON alone; the progress lines go to stderr
        from patchflow.console import error_console

        ctx.log = lambda line: error_console.print(f"  {line}", markup=False, highlight=False)
    done = run(ctx, parsed, ctx.log)
    record_rehearsal(ctx.paths.state, done)
    if json_:
        print(json.dumps(rehearsal_json(done), indent=2))
    elif not done.migrations:
        console.print(f"[green]nothing to rehearse[/]: patch {parsed.tag} has no pending migration")
    else:
        console.print(f"copy {done.copy} made by {done.how} in {done.copy_seconds:.1f} s", markup=False)
        if done.dump_seconds:
            console.print(f"  {done.dump_seconds:8.2f} s  the backup dump", markup=False)
        for step in done.migrations:
            console.print(f"  {step.seconds:8.2f} s  {step.name}", markup=False, highlight=False)
            taken = ", ".join(f"{table} {words(mode)}" for table, mode in sorted(step.locks.items()))
            how = "took" if step.observed else "takes (documented; it runs outside a transaction)"
            console.print(f"              {how}: {taken or 'no table lock'}", markup=False, highlight=False)
            rows = ", ".join(f"{table} {count}" for table, count in sorted(step.rows.items()))
            console.print(f"              rows before: {rows or '-'}", markup=False, highlight=False)
        console.print(f"  {done.total:8.2f} s  in all (the migrate step of the stopped window)", markup=False)
        if done.restore_seconds:
            console.print(f"  {done.restore_seconds:8.2f} s  the rollback's restore-and-swap", markup=False)
        console.print("  the copy and the databases the restore made are dropped", markup=False)
        if done.runner != "builtin":
            console.print(f"  note: the apply runs `{done.runner}`; the rehearsal ran patchflow's builtin runner")
    if done.error:
        raise MigrationError(
            f"The rehearsal failed: {done.error}", "The copy was dropped; the live database was only read."
        )
