"""patchflow tasks (invoke). Each task parses flags, calls patchflow's core, prints, and turns a
PatchflowError into one red line with a hint and a non-zero exit code.

Run ``inv --list`` for the commands and ``inv <task> --help`` for their flags.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from invoke import Collection, Context, Exit, task

sys.path.insert(0, str(Path(__file__).resolve().parent))

if not sys.flags.utf8_mode and sys.getfilesystemencoding().lower() not in ("utf-8", "utf8"):
    # File names are UTF-8 in patches whatever the locale (field failure C07): under a non-UTF-8
    # locale with Python's automatic UTF-8 mode off, run again in UTF-8 mode.
    os.execv(sys.executable, [sys.executable, "-X", "utf8", *sys.argv])  # noqa: S606

from patchflow.config import Settings, load_settings
from patchflow.console import byte_progress, console, error_console, human_bytes
from patchflow.errors import PatchflowError
from patchflow.version import parse_version

TOOL_ROOT = Path(__file__).resolve().parent
F = TypeVar("F", bound=Callable[..., Any])

ROOT_HELP = "project root (a PrimeFlow checkout; default: the current directory)"


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


def settings_for(root: str | None, **flags: Any) -> Settings:
    return load_settings(root or os.getcwd(), overrides=flags)


@task(
    help={
        "root": ROOT_HELP,
        "version": "patch version (default: the VERSION file, never modified)",
        "force": "replace an existing patches/vX.Y.Z/ folder",
        "base": "build a delta patch against this version (patches/vBASE/ must exist and verify): "
        "only files added or changed since it are packed",
    }
)
@reports_errors
def create_patch(
    c: Context, version: str | None = None, root: str | None = None, force: bool = False, base: str | None = None
) -> None:
    """Build patches/vX.Y.Z/ (archive, checksums, manifest, README, CHANGELOG, schema.sql)."""
    from patchflow.create import create_patch as build

    settings = settings_for(root)
    parsed = parse_version(version) if version else None
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


@task(
    help={
        "root": ROOT_HELP,
        "version": "patch version to verify (e.g. 2.3.0)",
        "deep": "also decompress the archive and compare every member with the manifest "
        "(apply does this check while it extracts)",
    }
)
@reports_errors
def verify_patch(c: Context, version: str | None = None, root: str | None = None, deep: bool = False) -> None:
    """Check a patch folder: md5, SHA256SUMS, signature and manifest (--deep: archive members too)."""
    from patchflow.paths import ProjectPaths
    from patchflow.verify import verify_patch as check

    settings = settings_for(root)
    parsed = parse_version(version, source="--version")
    report = check(
        ProjectPaths.from_settings(settings).patch_dir(parsed), parsed, verify_key=settings.verify_key, deep=deep
    )
    signed = " and signature" if settings.verify_key else ""
    count = len(report.manifest.get("files", []))
    if deep:
        members = len(report.delta["members"]) if report.delta else count
        console.print(
            f"[green]ok[/] patch {parsed.tag}: checksums{signed} match; "
            f"{members} archive members match the manifest ({count} entries)"
        )
    else:
        console.print(
            f"[green]ok[/] patch {parsed.tag}: checksums{signed} and manifest match ({count} entries; "
            "archive members are checked when it is applied, or with --deep)"
        )


@task(help={"out": "file to write the new signing key to (mode 0600; never overwritten)"})
@reports_errors
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


@task(
    help={
        "root": ROOT_HELP,
        "json": "print machine-readable JSON instead of tables",
        "history": "number of history entries to show",
        "verify": "verify every patch fully now (archive members too) instead of using cached checksum results",
    }
)
@reports_errors
def patch_status(
    c: Context, root: str | None = None, json_: bool = False, history: int = 10, verify: bool = False
) -> None:
    """Show the installed version, patches, backups, apply history and any interrupted apply."""
    from patchflow.status import collect_status, render_status

    settings = settings_for(root)
    status = collect_status(settings, history_limit=history, verify_archives=verify)
    if json_:
        print(json.dumps(status, indent=2, ensure_ascii=False))
    else:
        render_status(status, console)


@task(help={"root": ROOT_HELP, "skip_tool": "do not run patchflow's own lint and typecheck"})
@reports_errors
def preflight(c: Context, root: str | None = None, skip_tool: bool = False) -> None:
    """Run the project's lint/typecheck/prisma validate where present, and patchflow's own checks."""
    from patchflow.preflight import project_checks, run_checks

    settings = settings_for(root)
    checks = project_checks(settings.root)
    if not skip_tool:
        checks.append(
            ("patchflow lint + typecheck", [sys.executable, "-m", "nox", "-s", "lint", "typecheck"], TOOL_ROOT)
        )
    run_checks(checks, console)


def _context(root: str | None, **flags: Any) -> Any:
    from patchflow.context import Context

    settings = settings_for(root, **{k: v for k, v in flags.items() if v is not None})
    return Context.create(settings, log=lambda line: console.print(f"  {line}", markup=False, highlight=False))


def _print_plan(plan: Any) -> None:
    from patchflow.console import human_bytes as hb

    d = plan.diff
    console.print(f"[bold]Plan[/] {plan.from_version or '(unknown)'} -> {plan.version}")
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
            "(kept in the backup): " + ", ".join(plan.drift[:10])
        )
    pending = plan.pending_migrations
    console.print(
        f"  migrations     {len(plan.migrations)} in patch, "
        f"{'unknown' if pending is None else len(pending)} pending" + (f": {', '.join(pending)}" if pending else "")
    )
    console.print(f"  database       {plan.database}")
    console.print(f"  services       {', '.join(plan.services) or '(none)'} (stopped, replaced, started)")
    console.print(f"  disk needed    {hb(plan.disk_needed)} of {hb(plan.disk_free)} free")
    for warning in plan.warnings:
        console.print(f"  [yellow]warning:[/] {warning}")


@task(
    help={
        "root": ROOT_HELP,
        "version": "patch version to apply (e.g. 2.3.0)",
        "yes": "do not ask for confirmation (required without a terminal)",
        "dry_run": "print the plan (files, migrations, disk, services) and change nothing",
        "force": "apply even if this version is already installed",
        "allow_downgrade": "allow applying a version older than the installed one",
        "break_lock": "take over a stale lock left by a dead apply/rollback (it is recovered first)",
        "health_url": "override the health check URL(s), comma separated",
        "health_timeout": "override the health check deadline in seconds",
    }
)
@reports_errors
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
    health_timeout: float | None = None,
) -> None:
    """Apply a patch: verify, back up, switch, migrate, restart, health-check; roll back on failure."""
    from patchflow.apply import ApplyOptions
    from patchflow.apply import apply_patch as run_apply
    from patchflow.console import confirm

    parsed = parse_version(version, source="--version")
    ctx = _context(root, health_url=health_url, health_timeout=health_timeout)
    options = ApplyOptions(force=force, allow_downgrade=allow_downgrade, dry_run=dry_run, break_lock=break_lock)

    def ask(plan: Any) -> None:
        _print_plan(plan)
        confirm(f"Apply {plan.version} now (services {', '.join(plan.services) or 'none'} will be stopped)?", yes=yes)

    if not dry_run:
        from patchflow.journal import Journal

        pending = Journal.load(ctx.paths.journal)
        if pending is not None:
            # recovery changes the install, so it is confirmed before it runs, not with the plan
            confirm(
                f"An interrupted {pending.action} of {pending.version} (last step {pending.current_step}) "
                "will be finished or undone first. Continue?",
                yes=yes,
            )
    result = run_apply(ctx, parsed, options, confirm=ask)
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


@task(
    help={
        "root": ROOT_HELP,
        "version": "the patch version to roll back (the installed one)",
        "yes": "do not ask for confirmation (required without a terminal)",
        "force": "restore the backup even if another version is installed",
        "backup": "name of the backup folder to restore (default: the newest taken before VERSION)",
        "break_lock": "take over a stale lock left by a dead apply/rollback",
    }
)
@reports_errors
def rollback_patch(
    c: Context,
    version: str | None = None,
    root: str | None = None,
    yes: bool = False,
    force: bool = False,
    backup: str | None = None,
    break_lock: bool = False,
) -> None:
    """Roll back a patch: restore code, database and VERSION from the backup taken before it."""
    from patchflow.console import confirm
    from patchflow.rollback import rollback_patch as run_rollback

    parsed = parse_version(version, source="--version")
    ctx = _context(root)
    result = run_rollback(
        ctx, parsed, force=force, break_lock=break_lock, backup_id=backup, confirm=lambda text: confirm(text, yes=yes)
    )
    source = f"backup {result.backup}" if result.backup else "no backup (the interrupted apply had changed nothing)"
    console.print(
        f"[bold green]rolled back[/] {result.from_version or '?'} -> {result.to_version} from "
        f"{source} in {result.duration_seconds:.1f} s (services down {result.stopped_seconds:.1f} s)"
    )


@task(
    help={
        "root": ROOT_HELP,
        "keep_days": "keep every backup younger than this many days",
        "keep_last": "keep at least this many newest backups",
        "dry_run": "only list what would be removed",
    }
)
@reports_errors
def prune_backups(
    c: Context,
    root: str | None = None,
    keep_days: int | None = None,
    keep_last: int | None = None,
    dry_run: bool = False,
) -> None:
    """Delete old backups (retention), never the one that rolls back the installed version."""
    from patchflow.backup import prune_backups as prune
    from patchflow.paths import ProjectPaths
    from patchflow.rollback import installed_version

    settings = settings_for(root, retention_days=keep_days, retention_keep=keep_last)
    ctx = _context(root)
    removed = prune(
        ProjectPaths.from_settings(settings),
        keep_days=settings.retention_days,
        keep_last=settings.retention_keep,
        installed_version=installed_version(ctx),
        dry_run=dry_run,
    )
    verb = "would remove" if dry_run else "removed"
    for backup in removed:
        console.print(f"{verb} {backup.name}")
    console.print(f"{verb} {len(removed)} backup(s)")


def _services(root: str | None) -> Any:
    return _context(root).services


@task(help={"root": ROOT_HELP})
@reports_errors
def up(c: Context, root: str | None = None) -> None:
    """Start the stack (all compose services, or every configured command)."""
    services = _services(root)
    if hasattr(services, "up_all"):
        services.up_all()
    else:
        services.start()
    console.print("[green]up[/]")


@task(help={"root": ROOT_HELP})
@reports_errors
def down(c: Context, root: str | None = None) -> None:
    """Stop the stack (compose down without ever removing volumes)."""
    _services(root).down()
    console.print("[green]down[/]")


@task(help={"root": ROOT_HELP, "json": "print JSON"})
@reports_errors
def ps(c: Context, root: str | None = None, json_: bool = False) -> None:
    """List services and their state."""
    states = _services(root).status()
    if json_:
        print(json.dumps([s.__dict__ for s in states], indent=2))
        return
    for state in states:
        console.print(f"{state.name:<12} {state.state:<10} {state.detail}", markup=False)


@task(help={"root": ROOT_HELP, "service": "service name (default: all application services)"})
@reports_errors
def restart(c: Context, root: str | None = None, service: str | None = None) -> None:
    """Restart one service or all application services."""
    _services(root).restart([service] if service else None)
    console.print("[green]restarted[/]")


@task(
    help={
        "root": ROOT_HELP,
        "service": "service name (default: the application services)",
        "follow": "keep following",
        "tail": "number of lines from the end",
    }
)
@reports_errors
def logs(
    c: Context, root: str | None = None, service: str | None = None, follow: bool = False, tail: int | None = 100
) -> None:
    """Show service logs."""
    services = _services(root)
    services.logs([service] if service else services.app_services(), follow=follow, tail=tail)


ns = Collection(
    create_patch,
    create_signing_key,
    verify_patch,
    patch_status,
    preflight,
    apply_patch,
    rollback_patch,
    prune_backups,
    up,
    down,
    ps,
    restart,
    logs,
)
ns.configure({"run": {"echo": False}})


@task(help={"compose": "run the demo on the example's docker compose stack"})
def demo(c: Context, compose: bool = False) -> None:
    """Run the whole patch lifecycle on the bundled example (make demo)."""
    script = "demo_compose.py" if compose else "demo.py"
    c.run(
        f"{TOOL_ROOT}/scripts/ensure-system.sh --for {'test' if compose else 'demo'} --venv {TOOL_ROOT}/.venv",
        pty=False,
    )
    result = c.run(f"{sys.executable} {TOOL_ROOT}/scripts/{script}", warn=True, pty=False)
    if result is None or result.exited != 0:
        raise Exit("demo failed", code=1)


@task(help={"pytest_args": "extra arguments for pytest (e.g. '-k apply -x')"})
def test(c: Context, pytest_args: str = "") -> None:
    """Install and start what the tests need, then run the unit and integration tests (make test)."""
    c.run(f"{TOOL_ROOT}/scripts/ensure-system.sh --for test --venv {TOOL_ROOT}/.venv", pty=False)
    result = c.run(f"cd {TOOL_ROOT} && {sys.executable} -m pytest {pytest_args}", warn=True, pty=False)
    if result is None or result.exited != 0:
        raise Exit("tests failed", code=result.exited if result else 1)


ns.add_task(demo)
ns.add_task(test)
