"""apply-patch: verify, plan, lock, stage, stop, back up, switch, migrate, start, health-check, commit.

Slow, safe work (verification, extraction, install, build, image builds) happens while the old
version still runs; the stopped window is only backup -> switch -> migrate -> start -> health.
Any failure after "stop" rolls back code, database and services automatically (see
:mod:`patchflow.rollback`) and says so. Every step is journaled, so a kill at any instant is
finished or undone by the next apply/rollback (:func:`recover_interrupted`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patchflow.archive import extract_archive
from patchflow.backup import (
    Backup,
    check_inside,
    load_backup,
    new_backup,
    place_entry,
    remove_path,
    save_files,
    swap_build_outputs,
)
from patchflow.commands import split_command
from patchflow.context import Context, run_step, start_with_retries
from patchflow.database import run_migrations
from patchflow.errors import (
    ApplyError,
    BackupError,
    CommandError,
    PatchflowError,
    RollbackError,
    VerifyError,
    VersionError,
)
from patchflow.health import wait_healthy
from patchflow.journal import Journal, append_history, utc_now, write_json_atomic
from patchflow.lock import install_lock
from patchflow.manifest import Entry, ExcludeRules, TreeDiff, diff_trees, scan_tree
from patchflow.rollback import installed_version, restore_from_backup
from patchflow.verify import VerifyReport, verify_patch
from patchflow.version import PatchVersion, parse_version

VERSION_PATH = "VERSION"


@dataclass
class ApplyOptions:
    """Flags of apply-patch."""

    force: bool = False
    allow_downgrade: bool = False
    dry_run: bool = False
    break_lock: bool = False


@dataclass
class Plan:
    """What an apply will do. Sizes are bytes."""

    version: str
    from_version: str | None
    diff: TreeDiff
    drift: list[str]
    migrations: list[str]
    pending_migrations: list[str] | None
    services: list[str]
    database: str
    staging_bytes: int
    backup_bytes: int
    database_bytes: int
    disk_needed: int
    disk_free: int
    new_entries: dict[str, Entry] = field(repr=False, default_factory=dict)
    old_entries: dict[str, Entry] = field(repr=False, default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def bytes_of(self, paths: list[str], side: str) -> int:
        source = self.new_entries if side == "new" else self.old_entries
        return sum(source[p].size for p in paths if p in source)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "from_version": self.from_version,
            "added": self.diff.added,
            "changed": self.diff.changed,
            "deleted": self.diff.deleted,
            "drift": self.drift,
            "migrations": self.migrations,
            "pending_migrations": self.pending_migrations,
            "services": self.services,
            "database": self.database,
            "disk": {
                "needed": self.disk_needed,
                "free": self.disk_free,
                "staging": self.staging_bytes,
                "code_backup": self.backup_bytes,
                "database": self.database_bytes,
            },
            "warnings": self.warnings,
        }


@dataclass
class ApplyResult:
    """Outcome of a successful apply (``noop`` when the version was already installed)."""

    version: str
    from_version: str | None
    plan: Plan | None
    backup: str | None = None
    duration_seconds: float = 0.0
    stopped_seconds: float = 0.0
    migrations_applied: list[str] = field(default_factory=list)
    noop: bool = False
    dry_run: bool = False


def install_rules(ctx: Context, manifest: dict[str, Any]) -> ExcludeRules:
    """The rules deciding which installed paths the patch owns: the patch's own exclude patterns
    plus this install's patches/, backups/ and .patchflow/ folders."""
    return ExcludeRules(manifest.get("exclude", []), ctx.paths.excluded_roots())


def _read_installed_manifest(ctx: Context) -> dict[str, Entry]:
    try:
        data = json.loads(ctx.paths.installed_manifest.read_text(encoding="utf-8"))
        return {e["path"]: Entry.from_json(e) for e in data.get("files", [])}
    except (OSError, ValueError, KeyError):
        return {}


def _wait_database(ctx: Context) -> None:
    """Wait (bounded by ``db_wait_timeout``) until the database answers ``SELECT 1`` over a real
    connection (TCP inside a compose service, C14); say so when that took a while."""
    if ctx.database is None:
        return
    waited = ctx.database.wait_ready(ctx.settings.db_wait_timeout)
    if waited >= 1.0:
        ctx.log(f"   database accepted connections after {waited:.1f} s")


def check_patch_paths(entries: dict[str, Entry], rules: ExcludeRules) -> None:
    """Refuse a patch that would write where it has no business: a secret (``.env``...), a path
    excluded by its own rules or under this install's patches/, backups/ or state folder, or an
    entry whose parent folder is not part of the patch.

    Raises:
        VerifyError: names the offending paths; nothing was changed.
    """
    bad = []
    for path, entry in sorted(entries.items()):
        parent = path.rpartition("/")[0]
        if rules.excluded(path, is_dir=entry.type == "dir") or rules.is_secret(path):
            bad.append(f"{path} (secret or outside what a patch may own)")
        elif parent and entries.get(parent, Entry(parent, "file")).type != "dir":
            bad.append(f"{path} (its folder {parent} is not a folder of the patch)")
    if bad:
        raise VerifyError(
            f"The patch holds paths it may not write: {'; '.join(bad[:10])}.",
            "Rebuild it with create-patch; a patch never carries secrets or patchflow's own folders. "
            "Nothing was changed.",
        )


def make_plan(ctx: Context, version: PatchVersion, report: VerifyReport) -> Plan:
    """Compare the install with the patch; count migrations pending and disk needed.

    Raises:
        DatabaseError: the database is configured but does not answer.
        BackupError: not enough free disk space (the message gives the numbers).
    """
    new_entries = {p: e for p, e in report.entries().items() if p != VERSION_PATH}
    rules = install_rules(ctx, report.manifest)
    check_patch_paths(new_entries, rules)
    current = scan_tree(ctx.paths.root, rules, strict=False)
    current.entries.pop(VERSION_PATH, None)
    diff = diff_trees(current.entries, new_entries)
    old_entries = {p: current.entries[p] for p in diff.changed + diff.deleted}
    installed = _read_installed_manifest(ctx)
    drift = []
    if installed:
        installed.pop(VERSION_PATH, None)
        drift = sorted(
            p
            for p, e in current.entries.items()
            if e.type == "file" and (p not in installed or not installed[p].same_content(e))
        )
    migrations = [m["name"] for m in report.manifest.get("migrations", [])]
    pending: list[str] | None = None
    db_bytes = 0
    description = "none"
    if ctx.database is not None:
        description = ctx.database.target.describe()
        _wait_database(ctx)
        if not ctx.runner.dry:
            db_bytes = int(ctx.database.properties()["size"])
            done = {r["name"] for r in ctx.database.migration_rows() if r["finished"] and not r["rolled_back"]}
            pending = [m for m in migrations if m not in done]
    staging = sum(e.size for e in new_entries.values())
    backup_bytes = sum(e.size for e in old_entries.values())
    margin = int(ctx.settings.free_space_margin)
    needed = staging + backup_bytes + db_bytes + margin
    free = shutil.disk_usage(ctx.paths.root).free
    plan = Plan(
        str(version),
        installed_version(ctx),
        diff,
        drift,
        migrations,
        pending,
        ctx.services.app_services(),
        description,
        staging,
        backup_bytes,
        db_bytes,
        needed,
        free,
        new_entries,
        old_entries,
        list(current.warnings),
    )
    if needed > free:
        raise BackupError(
            f"Not enough free disk space in {ctx.paths.root}: the apply needs {needed} bytes "
            f"(staging {staging} + code backup {backup_bytes} + database dump up to {db_bytes} + reserve {margin}) "
            f"but only {free} bytes are free.",
            "Free space (e.g. inv prune-backups) and apply again; nothing was changed.",
        )
    return plan


def _stage(ctx: Context, version: PatchVersion, report: VerifyReport, staging: Path) -> None:
    if staging.exists():
        shutil.rmtree(staging)
    staging.parent.mkdir(parents=True, exist_ok=True)
    extract_archive(report.folder / f"patch-{version.tag}.tar.gz", staging, report.entries())
    for label in ("install_command", "build_command"):
        command = getattr(ctx.settings, label).strip()
        if not command:
            continue
        ctx.log(f"   {label.replace('_command', '')}: {command}")
        try:
            ctx.runner.run(split_command(command), cwd=staging, timeout=3600, what=label.replace("_", " "))
        except CommandError as exc:
            raise ApplyError(
                f"{label.replace('_command', '').capitalize()} failed in staging: {exc.message}",
                "Nothing was stopped or changed; fix the patch and apply again.",
            ) from None
    if ctx.services.app_services():
        ctx.services.build(staging)


def switch_files(plan: Plan, staging: Path, root: Path, version: PatchVersion) -> None:
    """Make the tree equal to the staged patch: delete what the patch no longer has (deepest
    first), place added and changed entries (shallowest first, files renamed into place), then
    write ``VERSION``. Idempotent, so a re-run after a crash converges."""
    diff = plan.diff
    type_changed = [p for p in diff.changed if plan.old_entries[p].type != plan.new_entries[p].type]
    for rel in sorted(diff.deleted + type_changed, key=lambda p: p.count("/"), reverse=True):
        path = root / rel
        check_inside(root, path)
        if plan.old_entries[rel].type == "dir" and path.is_dir() and not path.is_symlink():
            try:
                path.rmdir()
            except OSError:
                # the folder still holds files the patch does not own (e.g. node_modules): keep it
                if rel in type_changed:
                    raise
            continue
        remove_path(path)
    for rel in sorted(diff.added + diff.changed, key=lambda p: (p.count("/"), p)):
        place_entry(plan.new_entries[rel], staging, root)
    tmp = root / ".VERSION.patchflow-tmp"
    tmp.write_text(f"{version}\n", encoding="utf-8")
    os.replace(tmp, root / VERSION_PATH)


def _commit(ctx: Context, report: VerifyReport) -> None:
    write_json_atomic(ctx.paths.installed_manifest, report.manifest, mode=0o644)


def _history(ctx: Context, **record: Any) -> None:
    append_history(ctx.paths.history, {"action": "apply", **record})


def apply_patch(
    ctx: Context, version: PatchVersion, options: ApplyOptions, confirm: Callable[[Plan], None] = lambda plan: None
) -> ApplyResult:
    """Apply patch ``version`` to the install of ``ctx`` (see the module docstring for the steps).

    Args:
        confirm: called with the plan before anything changes; raises to cancel.

    Raises:
        VerifyError: the patch is missing, incomplete or corrupt (nothing changed).
        VersionError: a downgrade without ``allow_downgrade`` (nothing changed).
        LockError, ConfirmationRefused, DatabaseError, BackupError: refused before anything changed.
        ApplyError: the apply failed; ``rolled_back`` says whether the old version was restored.
        RollbackError: the apply failed and the automatic rollback did not complete.
    """
    started = time.monotonic()
    started_at = utc_now()
    folder = ctx.paths.patch_dir(version)
    ctx.log(f"-> verify {folder}")
    report = verify_patch(folder, version, verify_key=ctx.settings.verify_key)
    current = installed_version(ctx)
    interrupted = Journal.load(ctx.paths.journal)
    if current is not None and interrupted is None:
        installed = parse_version(current)
        if installed == version and not options.force:
            ctx.log(f"version {version} is already installed; nothing to do (use --force to apply it again)")
            return ApplyResult(str(version), current, None, noop=True)
        if version < installed and not options.allow_downgrade:
            raise VersionError(
                f"Refusing to downgrade: {current} is installed and {version} is older.",
                f"Roll back with `inv rollback-patch --version {current}`, or pass --allow-downgrade. "
                "Nothing was changed.",
            )
    if options.dry_run:
        plan = make_plan(ctx, version, report)
        if interrupted is not None:
            plan.warnings.append(
                f"an interrupted {interrupted.action} of {interrupted.version} will be finished or undone first"
            )
        return ApplyResult(str(version), current, plan, dry_run=True)

    with install_lock(
        ctx.paths.lock, ctx.paths.lock_info, action="apply", version=str(version), break_stale=options.break_lock
    ):
        if interrupted is not None:
            recover_interrupted(ctx, interrupted)
            current = installed_version(ctx)
            if current == str(version) and not options.force:
                ctx.log(f"version {version} is installed (the interrupted apply was finished)")
                return ApplyResult(str(version), current, None, noop=True)
        plan = make_plan(ctx, version, report)
        confirm(plan)
        return _run_apply(ctx, version, report, plan, started, started_at)


def _run_apply(
    ctx: Context, version: PatchVersion, report: VerifyReport, plan: Plan, started: float, started_at: str
) -> ApplyResult:
    journal = Journal(ctx.paths.journal, "apply", str(version), plan.from_version or "")
    journal.save()
    staging = ctx.paths.staging(version)
    backup: Backup | None = None
    stopped_at: float | None = None
    applied: list[str] = []
    step = "stage"
    try:
        with run_step(journal, "stage", ctx.log):
            _stage(ctx, version, report, staging)
        step = "stop"
        stopped_at = time.monotonic()
        with run_step(journal, "stop", ctx.log):
            ctx.services.stop()
        step = "backup"
        with run_step(journal, "backup", ctx.log):
            backup = new_backup(
                ctx.paths,
                version,
                plan.from_version or "",
                old_entries=list(plan.old_entries.values()),
                new_paths=plan.diff.added,
            )
            journal.backup = backup.name
            journal.save()
            save_files(backup, ctx.paths.root, ctx.paths.installed_manifest)
            if ctx.database is not None:
                dump = ctx.database.dump(backup.folder / "database.dump")
                backup.data["database"] = {
                    "file": dump.path.name,
                    "size": dump.size,
                    "sha256": dump.sha256,
                    "properties": dump.properties,
                }
            backup.data["complete"] = True
            backup.save()
        step = "switch"
        with run_step(journal, "switch", ctx.log):
            switch_files(plan, staging, ctx.paths.root, version)
            assert backup is not None
            swapped = swap_build_outputs(backup, staging, ctx.paths.root, tuple(ctx.settings.build_outputs))
            if swapped:
                ctx.log(f"   build outputs switched: {', '.join(swapped)}")
        step = "migrate"
        with run_step(journal, "migrate", ctx.log):
            _wait_database(ctx)
            applied = run_migrations(ctx.settings, ctx.database, ctx.runner, ctx.paths.root, ctx.log)
        step = "start"
        with run_step(journal, "start", ctx.log):
            start_with_retries(ctx.services, ctx.settings.start_retries, log=ctx.log)
        step = "health"
        with run_step(journal, "health", ctx.log):
            if ctx.services.app_services():
                wait_healthy(
                    ctx.settings.health_url,
                    timeout=ctx.settings.health_timeout,
                    expect_version=str(version),
                    version_field=ctx.settings.health_version_field,
                )
        stopped = time.monotonic() - stopped_at
        with run_step(journal, "commit", ctx.log):
            _commit(ctx, report)
            _history(
                ctx,
                from_version=plan.from_version,
                to_version=str(version),
                started_at=started_at,
                duration_seconds=round(time.monotonic() - started, 3),
                stopped_seconds=round(stopped, 3),
                result="success",
                backup=backup.name if backup else None,
                migrations=applied,
            )
        journal.clear()
        shutil.rmtree(staging, ignore_errors=True)
        return ApplyResult(
            str(version),
            plan.from_version,
            plan,
            backup.name if backup else None,
            time.monotonic() - started,
            stopped,
            applied,
        )
    except BaseException as exc:
        failure = exc.message if isinstance(exc, PatchflowError) else (str(exc) or type(exc).__name__)
        _handle_failure(ctx, journal, backup, step, failure, plan, started, started_at, stopped_at, staging)
        raise  # pragma: no cover - _handle_failure always raises


def _handle_failure(
    ctx: Context,
    journal: Journal,
    backup: Backup | None,
    step: str,
    failure: str,
    plan: Plan,
    started: float,
    started_at: str,
    stopped_at: float | None,
    staging: Path,
) -> None:
    record = {
        "from_version": plan.from_version,
        "to_version": plan.version,
        "started_at": started_at,
        "error": f"{step}: {failure}",
        "backup": backup.name if backup else None,
    }
    if not journal.reached("stop"):
        shutil.rmtree(staging, ignore_errors=True)
        journal.clear()
        _history(ctx, **record, duration_seconds=round(time.monotonic() - started, 3), result="failed")
        raise ApplyError(f"Apply of {plan.version} failed at {step}: {failure}", "Nothing was stopped or changed.")
    ctx.log(f"!! {step} failed: {failure}")
    ctx.log("!! rolling back automatically")
    try:
        if backup is None or not backup.complete:
            # the backup never completed: files and database are untouched, bring services back
            undo_before_switch(ctx, journal, backup)
        else:
            restore_from_backup(
                ctx, journal, backup, code=journal.reached("switch"), database=journal.reached("migrate")
            )
    except RollbackError as exc:
        _history(
            ctx,
            **record,
            duration_seconds=round(time.monotonic() - started, 3),
            result="rollback_failed",
            rollback_error=exc.message,
        )
        raise RollbackError(
            f"Apply of {plan.version} failed at {step} ({failure}) and the automatic rollback "
            f"did not complete: {exc.message}",
            exc.hint,
        ) from None
    stopped = time.monotonic() - stopped_at if stopped_at else 0.0
    journal.clear()
    shutil.rmtree(staging, ignore_errors=True)
    _history(
        ctx,
        **record,
        duration_seconds=round(time.monotonic() - started, 3),
        stopped_seconds=round(stopped, 3),
        result="rolled_back",
    )
    raise ApplyError(
        f"Apply of {plan.version} failed at {step}: {failure}. It was rolled back automatically: "
        f"{plan.from_version or 'the previous version'} is running again and passed its health check.",
        f"Logs: {ctx.services.logs_hint()}; history in {ctx.paths.history}.",
        rolled_back=True,
    )


def undo_before_switch(ctx: Context, journal: Journal, backup: Backup | None) -> None:
    """Undo an apply that stopped services but changed no file: drop the partial backup, start again.

    Raises:
        RollbackError: the services do not come back healthy.
    """
    journal.phase = "rolling_back"
    journal.save()
    if backup is not None and not backup.complete:
        shutil.rmtree(backup.folder, ignore_errors=True)
    try:
        with run_step(journal, "start", ctx.log):
            # the staged build already re-tagged the images: rebuild the old ones from the tree
            start_with_retries(ctx.services, ctx.settings.start_retries, rebuild=True, log=ctx.log)
        with run_step(journal, "health", ctx.log):
            if ctx.services.app_services():
                wait_healthy(
                    ctx.settings.health_url,
                    timeout=ctx.settings.health_timeout,
                    expect_version=journal.from_version or None,
                    version_field=ctx.settings.health_version_field,
                )
    except PatchflowError as exc:
        raise RollbackError(
            f"Rollback incomplete: services did not come back: {exc.message}",
            f"Start them by hand (inv up) and check {ctx.services.logs_hint()}.",
        ) from None


def recover_interrupted(ctx: Context, journal: Journal) -> None:
    """Finish or undo the operation recorded in an existing journal, ending on exactly the old or
    exactly the new version. Called with the lock held.

    * apply that reached commit: the commit is finished (new version);
    * apply that never stopped services: the journal and staging are dropped (old version);
    * apply stopped but its backup incomplete: services are started again (old version);
    * otherwise (switched, migrated, started, rolling back, or an interrupted rollback):
      code and database are restored from the backup (old version).

    Raises:
        RollbackError: the recovery could not complete (the journal stays for the next attempt).
    """
    ctx.log(
        f"recovering an interrupted {journal.action} of {journal.version} "
        f"(last step: {journal.current_step or 'none'}, phase {journal.phase})"
    )
    version = parse_version(journal.version)
    staging = ctx.paths.staging(version)
    backup = load_backup(ctx.paths.backups / journal.backup) if journal.backup else None
    if journal.action == "apply" and journal.phase == "forward" and journal.reached("commit"):
        report = verify_patch(ctx.paths.patch_dir(version), version, verify_key=ctx.settings.verify_key)
        _commit(ctx, report)
        if not journal.done("commit"):
            _history(
                ctx,
                from_version=journal.from_version,
                to_version=journal.version,
                started_at=journal.started_at,
                result="success",
                recovered=True,
                backup=journal.backup,
            )
        journal.clear()
        shutil.rmtree(staging, ignore_errors=True)
        return
    if journal.action == "apply" and not journal.reached("stop"):
        journal.clear()
        shutil.rmtree(staging, ignore_errors=True)
        _history(
            ctx,
            from_version=journal.from_version,
            to_version=journal.version,
            started_at=journal.started_at,
            result="interrupted",
            recovered=True,
        )
        return
    if backup is None or not backup.complete:
        if journal.action == "apply" and not journal.reached("switch"):
            undo_before_switch(ctx, journal, backup)
            journal.clear()
            shutil.rmtree(staging, ignore_errors=True)
            _history(
                ctx,
                from_version=journal.from_version,
                to_version=journal.version,
                started_at=journal.started_at,
                result="rolled_back",
                recovered=True,
            )
            return
        raise RollbackError(
            f"The interrupted {journal.action} of {journal.version} cannot be undone: its backup "
            f"{journal.backup or '(none)'} is missing or incomplete.",
            "Restore by hand from the newest complete backup (inv patch-status lists them).",
        )
    forward_switch = journal.reached("switch") or journal.action == "rollback"
    forward_migrate = journal.reached("migrate") or journal.action == "rollback"
    restore_from_backup(
        ctx,
        journal,
        backup,
        code=forward_switch or journal.reached("restore-code", "rolling_back"),
        database=forward_migrate or journal.reached("restore-database", "rolling_back"),
    )
    journal.clear()
    shutil.rmtree(staging, ignore_errors=True)
    append_history(
        ctx.paths.history,
        {
            "action": journal.action,
            "from_version": journal.version,
            "to_version": backup.restores_version,
            "started_at": journal.started_at,
            "result": "rolled_back",
            "recovered": True,
            "backup": backup.name,
        },
    )
