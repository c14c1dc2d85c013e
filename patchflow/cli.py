"""patchflow's invoke tasks, as a collection a PrimeFlow checkout imports in its ``tasks.py``::

    from patchflow.cli import ns

Each task parses flags, calls patchflow's core, prints, and turns a PatchflowError into one red
line with a hint and a non-zero exit code (see the exit codes in the README). The project root is
the checkout whose ``tasks.py`` invoke loaded (wherever the command starts inside it), else the
nearest folder above holding ``VERSION`` or ``tasks.py``; ``--root`` overrides. Flags have no short
forms, so ``-h`` is help on every task. Run ``inv --list`` for the commands.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

if not sys.flags.utf8_mode and sys.getfilesystemencoding().lower() not in ("utf-8", "utf8"):
    # File names are UTF-8 in patches whatever the locale (field failure C07): under a non-UTF-8
    # locale with Python's automatic UTF-8 mode off, run again in UTF-8 mode.
    os.execv(sys.executable, [sys.executable, "-X", "utf8", *sys.argv])  # noqa: S606

from patchflow.config import Settings, load_settings
from patchflow.console import byte_progress, console, error_console, human_bytes
from patchflow.errors import PatchflowError
from patchflow.version import parse_version

F = TypeVar("F", bound=Callable[..., Any])
ROOT_HELP = "the PrimeFlow checkout to act on (default: the checkout holding tasks.py, found from here upwards)"
YES_HELP = "do not ask for confirmation (required without a terminal)"
REMOTE_HELP = {
    "host": "run it on this host over SSH (inventory name, ssh alias or user@host[:port]; see deploy)",
    "hosts": "run it on these hosts over SSH, comma separated",
    "role": "run it on every inventory host with this role",
}
UNSET = -1


def reports_errors(func: F) -> F:
    """Turn PatchflowError into invoke.Exit: one red line, the hint, the error's exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except PatchflowError as exc:
            error_console.print(f"[bold red]error:[/] {exc.message}")
            if exc.hint:
                error_console.print(f"[yellow]hint:[/] {exc.hint}")
            raise Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            error_console.print("[bold red]interrupted[/]")
            raise Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


def command(**kwargs: Any) -> Callable[[F], Any]:
    """``@task`` without automatic short flags (``-h`` stays help; flags mean the same everywhere),
    errors reported as one line with a hint."""

    def decorate(func: F) -> Any:
        return task(auto_shortflags=False, **kwargs)(reports_errors(func))

    return decorate


def project_root(c: Context, root: str | None) -> Path:
    """The checkout a task acts on (see the module docstring).

    Raises:
        ConfigError: no checkout found, or only patchflow's own repository.
    """
    from patchflow.project import find_root

    if root:
        return Path(root)
    prefix = getattr(c.config, "_project_prefix", None)
    return find_root(Path.cwd(), Path(prefix) if prefix else None)


def settings_for(c: Context, root: str | None, **flags: Any) -> Settings:
    """The settings of the task's checkout, with ``flags`` (None: not given) on top."""
    return load_settings(project_root(c, root), overrides=flags)


def context_for(c: Context, root: str | None, *, record: bool = False, **flags: Any) -> Any:
    """The core's Context for the task's checkout (progress lines printed, optionally recorded)."""
    from patchflow.context import Context as CoreContext

    settings = settings_for(c, root, **{k: v for k, v in flags.items() if v is not None})
    return CoreContext.create(
        settings, log=lambda line: console.print(f"  {line}", markup=False, highlight=False), record=record
    )


# -- patches ---------------------------------------------------------------------------------------


@command(
    help={
        "root": ROOT_HELP,
        "version": "patch version (default: the VERSION file, never modified)",
        "force": "replace an existing patches/vX.Y.Z/ folder",
        "base": "build a delta patch against this version (patches/vBASE/ must exist and verify): "
        "only files added or changed since it are packed",
    }
)
def create_patch(
    c: Context, version: str | None = None, root: str | None = None, force: bool = False, base: str | None = None
) -> None:
    """Build patches/vX.Y.Z/ (archive, checksums, manifest, README, CHANGELOG, schema.sql)."""
    from patchflow.create import create_patch as build

    settings = settings_for(c, root)
    parsed = parse_version(version, source="--version") if version else None
    parsed_base = parse_version(base, source="--base") if base else None
    with byte_progress() as progress:
        created = build(settings, parsed, force=force, progress=progress, base=parsed_base)
    for warning in created.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    delta = f" (delta from {created.base_version}: {created.members} entries packed)" if created.base_version else ""
    console.print(
        f"[green]created[/] patch {created.version.tag}: {created.file_count} files, "
        f"{human_bytes(created.total_bytes)} packed into {human_bytes(created.archive_size)}, "
        f"{len(created.migrations)} migrations{delta}"
    )
    console.print(f"  folder  {created.folder}")
    console.print(f"  sha256  {created.archive_sha256}")


@command(
    help={
        "root": ROOT_HELP,
        "version": "patch version to verify (e.g. 2.3.0)",
        "deep": "also decompress the archive and compare every member with the manifest "
        "(apply does this check while it extracts)",
    }
)
def verify_patch(c: Context, version: str | None = None, root: str | None = None, deep: bool = False) -> None:
    """Check a patch folder: md5, SHA256SUMS, signature and manifest (--deep: archive members too)."""
    from patchflow.paths import ProjectPaths
    from patchflow.verify import verify_patch as check

    settings = settings_for(c, root)
    parsed = parse_version(version, source="--version")
    report = check(
        ProjectPaths.from_settings(settings).patch_dir(parsed), parsed, verify_key=settings.verify_key, deep=deep
    )
    signed = " and signature" if settings.verify_key else ""
    listed = len(report.manifest.get("files", []))
    base = f", a delta on {report.delta['base_version']}" if report.delta else ""  # a delta lists only its members
    what = f"{listed} entries{base}"
    if deep:
        console.print(
            f"[green]ok[/] patch {parsed.tag}: checksums{signed} match; "
            f"{listed} archive members match the manifest ({what})"
        )
    else:
        console.print(
            f"[green]ok[/] patch {parsed.tag}: checksums{signed} and manifest match ({what}; "
            "archive members are checked when it is applied, or with --deep)"
        )


@command(help={"out": "file to write the new signing key to (mode 0600; never overwritten)"})
def create_signing_key(c: Context, out: str | None = None) -> None:
    """Create an Ed25519 signing key for patches and print its verify key."""
    from patchflow.errors import ConfigError
    from patchflow.signing import generate_key

    if not out:
        raise ConfigError("No output file given.", "Pass --out path/to/patch-signing.key.")
    public = generate_key(Path(out))
    console.print(f"signing key written to {out} (keep it secret; set PATCHFLOW_SIGNING_KEY={out} for create-patch)")
    console.print(f"verify key: {public}")
    console.print("set PATCHFLOW_VERIFY_KEY to it on every host that applies patches")


@command(
    help={
        "root": ROOT_HELP,
        "json": "print machine-readable JSON instead of tables",
        "history": "INT: number of history entries to show",
        "verify": "verify every patch fully now (archive members too) instead of using cached checksum results",
        **REMOTE_HELP,
    }
)
def patch_status(
    c: Context,
    root: str | None = None,
    json_: bool = False,
    history: int = 10,
    verify: bool = False,
    host: str | None = None,
    hosts: str | None = None,
    role: str | None = None,
) -> None:
    """Show the installed version, patches, backups, apply history and any interrupted apply."""
    from patchflow.status import collect_status, render_status

    if host or hosts or role:
        from patchflow.cli_remote import remote_status

        remote_status(c, root, host, hosts, role, json_=json_, history=history)
        return
    settings = settings_for(c, root)
    status = collect_status(settings, history_limit=history, verify_archives=verify)
    if json_:
        print(json.dumps(status, indent=2, ensure_ascii=False))
    else:
        render_status(status, console)


# -- checks and set-up ----------------------------------------------------------------------------


@command(help={"root": ROOT_HELP, "skip_tool": "do not run patchflow's own lint and typecheck"})
def preflight(c: Context, root: str | None = None, skip_tool: bool = False) -> None:
    """Run the project's pnpm lint / typecheck / prisma validate, and patchflow's own checks."""
    from patchflow.paths import ProjectPaths
    from patchflow.preflight import lint_new_migrations, project_checks, run_checks, tool_checks
    from patchflow.runner import LocalRunner

    settings = settings_for(c, root)
    runner = LocalRunner(base_env=settings.environ)
    checks = project_checks(settings.root, settings.environ)
    if not skip_tool:
        checks += tool_checks()
    failures = []
    if settings.migration_lint != "off":
        findings = lint_new_migrations(
            settings.root, ProjectPaths.from_settings(settings).installed_manifest, runner, settings.environ
        )
        for line in findings:
            console.print(f"[yellow]lock/rewrite[/] {line}", markup=True)
        if findings and settings.migration_lint == "refuse":
            failures.append(f"migration lint ({len(findings)} findings; migration_lint = refuse)")
    run_checks(checks, console, runner, failures)


@command(
    help={
        "root": "the PrimeFlow checkout to set up (default: the current folder)",
        "yes": "replace existing Makefile targets / tasks.py of the same name without asking (they are backed up)",
        "dry_run": "show what would be written and change nothing",
    }
)
def init(c: Context, root: str | None = None, yes: bool = False, dry_run: bool = False) -> None:
    """Set up patchflow in a PrimeFlow checkout: tasks.py, noxfile.py, Makefile targets, settings."""
    from patchflow.console import confirm
    from patchflow.init import apply_init, plan_init

    checkout = Path(root or os.getcwd()).resolve()
    inv = str(Path(sys.executable).parent / "inv")
    plan = plan_init(checkout, inv=inv)
    console.print(f"[bold]patchflow init[/] {checkout}")
    for note in plan.detection_notes:
        console.print(f"  detected: {note}", markup=False)
    for change in plan.changes:
        extra = f" ({'; '.join(change.notes)})" if change.notes else ""
        console.print(f"  {change.action:<9} {change.path.name}{extra}", markup=False)
    if not plan.changed:
        console.print("[green]nothing to change[/]: the checkout is already set up")
        return
    if dry_run:
        console.print("[bold]dry run[/]: nothing was written")
        return
    if plan.needs_consent:
        what = f"the Makefile targets {', '.join(plan.replaced_targets)}" if plan.replaced_targets else "existing files"
        confirm(f"Replace {what} (the old files are backed up)?", yes=yes)
    backup = apply_init(plan, checkout / ".patchflow")
    if backup is not None:
        console.print(f"  previous files backed up in {backup}")
    console.print("[green]done[/]. Next:")
    console.print("  make patch-help                      # the commands and variables", markup=False)
    console.print("  check [tool.patchflow] in pyproject.toml (and .env) for this server", markup=False)
    console.print("  make create-patch                    # build patches/v$(cat VERSION)/", markup=False)
    console.print("  make apply-patch VERSION=x.y.z YES=1 # on a server holding that patch", markup=False)


# -- apply and roll back ---------------------------------------------------------------------------


def _print_plan(plan: Any) -> None:
    from patchflow.console import human_bytes as hb

    d = plan.diff
    console.print(f"[bold]Plan[/] {plan.from_version or '(unknown)'} -> {plan.version}")
    if plan.delta:
        console.print(f"  patch          {plan.delta}", markup=False)
    console.print(f"  files added    {len(d.added):>6}  {hb(plan.bytes_of(d.added, 'new'))}")
    console.print(f"  files changed  {len(d.changed):>6}  {hb(plan.bytes_of(d.changed, 'new'))}")
    console.print(f"  files deleted  {len(d.deleted):>6}  {hb(plan.bytes_of(d.deleted, 'old'))}")
    for label, items in (("added", d.added), ("changed", d.changed), ("deleted", d.deleted)):
        for path in items[:20]:
            console.print(f"    {label[0].upper()} {path}", markup=False)
        if len(items) > 20:
            console.print(f"    ... {len(items) - 20} more {label}")
    if plan.drift:
        console.print(
            f"  [yellow]drift[/]: {len(plan.drift)} files changed on this server since the last patch "
            "(replaced; kept in the backup): " + ", ".join(plan.drift[:10])
        )
    if plan.unowned:
        console.print(
            f"  [yellow]unowned[/]: {len(plan.unowned)} paths here belong to no patch and stay "
            "(--remove-unowned deletes them): " + ", ".join(plan.unowned[:10]),
            markup=True,
        )
    pending = plan.pending_migrations
    console.print(
        f"  migrations     {len(plan.migrations)} in patch, "
        f"{'unknown' if pending is None else len(pending)} pending"
        + (f": {', '.join(pending)} (run by {plan.migration_runner})" if pending else "")
    )
    console.print(f"  database       {plan.database}", markup=False)
    if pending:
        if plan.lint is None:
            console.print("  migration lint skipped (squawk is not installed, or migration_lint = off)")
        elif not plan.lint:
            console.print("  migration lint no heavy lock or table rewrite found (squawk)")
        for finding in plan.lint or []:
            console.print(f"  [yellow]lock/rewrite[/]: {finding.describe()}")
    console.print(f"  services       {', '.join(plan.services) or '(none)'} (stopped, replaced, started)")
    if plan.services_added or plan.services_removed:
        console.print(
            f"  compose        services added: {', '.join(plan.services_added) or 'none'}; removed (stopped and "
            f"removed, volumes kept; rollback brings them back): {', '.join(plan.services_removed) or 'none'}"
        )
    if plan.services:
        console.print(
            "  health proof   the reported version when /health has it; otherwise "
            + (plan.health_proof or "none available (only a healthy answer is required)")
        )
    for need in plan.needs:
        console.print(f"  space          {need.label}: {hb(need.bytes)} in {need.folder}", markup=False)
    for warning in plan.warnings:
        console.print(f"  [yellow]warning:[/] {warning}")


@command(
    help={
        "root": ROOT_HELP,
        "version": "patch version to apply (e.g. 2.3.0)",
        "yes": YES_HELP,
        "dry_run": "print the plan (files, migrations, disk, services, health proof) and change nothing",
        "force": "apply even if this version is already installed",
        "allow_downgrade": "allow applying a version older than the installed one",
        "break_lock": "take over a stale lock left by a dead apply/rollback (it is recovered first)",
        "health_url": "override the health check URL(s), comma separated",
        "health_timeout": "FLOAT: override the health check deadline in seconds",
        "remove_unowned": "also delete paths missing from the patch that no patch owned (files the host added)",
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
) -> None:
    """Apply a patch: verify, back up, switch, migrate, restart, health-check; roll back on failure."""
    from patchflow.apply import ApplyOptions
    from patchflow.console import confirm
    from patchflow.journal import Journal
    from patchflow.operations import apply_patch as run_apply

    parsed = parse_version(version, source="--version")
    timeout = None if health_timeout == UNSET else health_timeout
    ctx = context_for(c, root, record=not dry_run, health_url=health_url, health_timeout=timeout)
    options = ApplyOptions(
        force=force,
        allow_downgrade=allow_downgrade,
        dry_run=dry_run,
        break_lock=break_lock,
        remove_unowned=remove_unowned,
    )

    def ask(plan: Any) -> None:
        _print_plan(plan)
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
    result = run_apply(ctx, parsed, options, confirm=ask)
    if result.recovery is not None:
        console.print(f"[bold yellow]recovered[/]: {result.recovery.describe()}")
    if result.cleaned:
        console.print(f"cleaned up after a killed run: removed {', '.join(result.cleaned)}")
    if result.dry_run and result.plan is not None:
        _print_plan(result.plan)
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
    result.cleanup()


@command(
    help={
        "root": ROOT_HELP,
        "version": "the patch version to roll back (default: the installed version)",
        "yes": YES_HELP,
        "force": "restore the backup even if another version is installed",
        "backup": "name of the backup folder to restore (default: the one the apply of VERSION took)",
        "break_lock": "take over a stale lock left by a dead apply/rollback",
        "restore_database": "restore the database even if the apply ran no migration",
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
    host: str | None = None,
    hosts: str | None = None,
    role: str | None = None,
) -> None:
    """Roll back a patch: restore code, database and VERSION from the backup taken before it."""
    from patchflow.console import confirm
    from patchflow.installed import installed_version_or_error
    from patchflow.operations import rollback_patch as run_rollback

    if host or hosts or role:
        from patchflow.cli_remote import remote_rollback

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
    result = run_rollback(
        ctx,
        parsed,
        force=force,
        break_lock=break_lock,
        backup_id=backup,
        restore_database=True if restore_database else None,
        confirm=lambda text: confirm(text, yes=yes),
    )
    source = f"backup {result.backup}" if result.backup else "no backup (the interrupted apply had changed nothing)"
    console.print(
        f"[bold green]rolled back[/] {result.from_version or '?'} -> {result.to_version} from "
        f"{source} in {result.duration_seconds:.1f} s (services down {result.stopped_seconds:.1f} s)"
    )
    if result.displaced_database:
        console.print(f"  database restored; the one it replaced is kept as {result.displaced_database}")


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
    """Delete old backups (retention), never the one that rolls back the installed version."""
    from patchflow.backup import prune_backups as prune
    from patchflow.installed import read_installed_record
    from patchflow.journal import Journal
    from patchflow.paths import ProjectPaths

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


@command(help={"root": ROOT_HELP, "yes": YES_HELP})
def baseline_migrations(c: Context, root: str | None = None, yes: bool = False) -> None:
    """Record the installed tree's migrations as applied in a database that has no migration history."""
    from patchflow.baseline import baseline, plan_baseline
    from patchflow.console import confirm
    from patchflow.errors import ConfigError
    from patchflow.lock import install_lock

    ctx = context_for(c, root)
    if ctx.database is None:
        raise ConfigError("No database is configured (database_mode = none).", "Nothing to baseline.")
    ctx.database.wait_ready(ctx.settings.db_wait_timeout)
    plan = plan_baseline(ctx.database, ctx.paths.root)
    console.print(
        f"database {ctx.database.target.location()}: {plan.tables} tables in schema {ctx.database.target.schema}"
    )
    if plan.already:
        console.print(f"  already recorded: {', '.join(plan.already)}")
    if not plan.record:
        console.print("[green]nothing to record[/]: every migration of the tree is recorded as applied")
        return
    for migration in plan.record:
        console.print(f"  record as applied: {migration.name}  ({migration.path}, sha256 {migration.checksum[:12]}...)")
    confirm(
        f"Record these {len(plan.record)} migrations as applied without running them (only right when the "
        "database already has what they create)?",
        yes=yes,
    )
    with install_lock(ctx.paths.lock, ctx.paths.lock_info, action="baseline", version="-"):
        recorded = baseline(ctx.database, plan)
    console.print(f"[green]recorded[/] {len(recorded)} migrations as applied")


# -- the services -----------------------------------------------------------------------------------


@command(help={"root": ROOT_HELP})
def up(c: Context, root: str | None = None) -> None:
    """Start the stack (all compose services, or every configured command)."""
    context_for(c, root).services.up()
    console.print("[green]up[/]")


@command(help={"root": ROOT_HELP})
def down(c: Context, root: str | None = None) -> None:
    """Stop the stack (compose down without ever removing volumes)."""
    context_for(c, root).services.down()
    console.print("[green]down[/]")


@command(help={"root": ROOT_HELP, "json": "print JSON"})
def ps(c: Context, root: str | None = None, json_: bool = False) -> None:
    """List services and their state."""
    states = context_for(c, root).services.status()
    if json_:
        print(json.dumps([s.__dict__ for s in states], indent=2))
        return
    for state in states:
        console.print(f"{state.name:<12} {state.state:<10} {state.detail}", markup=False)


@command(help={"root": ROOT_HELP, "service": "service name (default: all application services)"})
def restart(c: Context, root: str | None = None, service: str | None = None) -> None:
    """Restart one service or all application services."""
    context_for(c, root).services.restart([service] if service else None)
    console.print("[green]restarted[/]")


@command(
    help={
        "root": ROOT_HELP,
        "service": "service name (default: the application services)",
        "follow": "keep following",
        "tail": "INT: number of lines from the end",
    }
)
def logs(
    c: Context, root: str | None = None, service: str | None = None, follow: bool = False, tail: int = 100
) -> None:
    """Show service logs."""
    services = context_for(c, root).services
    services.logs([service] if service else services.app_services(), follow=follow, tail=tail)


ns = Collection(
    create_patch,
    create_signing_key,
    verify_patch,
    patch_status,
    preflight,
    init,
    apply_patch,
    rollback_patch,
    prune_backups,
    baseline_migrations,
    up,
    down,
    ps,
    restart,
    logs,
)
ns.configure({"run": {"echo": False}})

# remote deploy (patchflow.cli_remote imports this module; it is complete by now)
from patchflow import cli_remote  # noqa: E402

for _remote_task in ("deploy", "setup_host", "host_facts", "receive_patch"):
    ns.add_task(getattr(cli_remote, _remote_task))
