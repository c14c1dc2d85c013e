"""apply-patch as one list of steps: verify, plan, lock, stage, stop, backup, switch, migrate,
start, health, commit, cleanup (see :meth:`ApplyRun.steps`).

Slow, safe work (verification, extraction, install, build, image builds) happens while the old
version still runs; the stopped window is only stop -> backup -> switch -> migrate -> start ->
health. Each step carries its undo; when a step fails, or SIGINT/SIGTERM/SIGHUP arrives, the
reached steps are undone in reverse (:func:`patchflow.pipeline.run_undo`): services stopped, code
and database restored, the old version started and proven healthy. Every step is journaled, so a
kill at any instant is finished or undone by the next apply or rollback
(:mod:`patchflow.recovery`, which builds the same list with :meth:`ApplyRun.resume`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from patchflow.archive import extract_archive
from patchflow.backup import Backup, backup_name, load_backup, new_backup, save_files, swap_build_outputs
from patchflow.baseline import history_missing
from patchflow.commands import split_command
from patchflow.context import Context
from patchflow.database import stamp_now
from patchflow.delta import manifest_entries
from patchflow.errors import (
    ApplyError,
    BackupError,
    CommandError,
    MigrationError,
    PatchflowError,
    RollbackError,
    VerifyError,
    VersionError,
)
from patchflow.files import Ownership, check_inside, place_entry, remove_path, remove_tree, set_ownership
from patchflow.installed import InstalledRecord, installed_version, installed_version_or_error
from patchflow.journal import (
    RESERVE_BYTES,
    Journal,
    append_history,
    deactivate_reserve,
    take_reserve,
    utc_now,
    write_json_atomic,
)
from patchflow.leftovers import leftovers, remove_leftovers
from patchflow.lint import Finding, lint_sql
from patchflow.lock import InstallLock, LockHolder
from patchflow.manifest import Entry, ExcludeRules, TreeDiff, diff_trees, scan_tree
from patchflow.migrations import (
    MIGRATIONS_TABLE,
    MigrationHistory,
    find_migrations,
    from_manifest,
    migrate_command,
    run_migrations,
)
from patchflow.paths import VERSION_FILE, VERSION_TEMP
from patchflow.pipeline import (
    Decision,
    Interrupted,
    Recovery,
    Step,
    StopPipeline,
    checkpoint,
    describe_failure,
    held_back,
    interruptible,
    kill_point,
    run_forward,
    run_undo,
    undo_plan,
)
from patchflow.restore import restore_code, restore_database
from patchflow.services import health_now, start_with_retries, wait_services_healthy
from patchflow.space import Need, check_space
from patchflow.verify import VerifyReport, verify_patch
from patchflow.version import PatchVersion, parse_version, read_version_file


@dataclass
class ApplyOptions:
    """Flags of apply-patch."""

    force: bool = False
    allow_downgrade: bool = False
    dry_run: bool = False
    break_lock: bool = False
    remove_unowned: bool = False


@dataclass
class Plan:
    """What an apply will do. Sizes are bytes."""

    version: str
    from_version: str | None
    diff: TreeDiff
    drift: list[str]
    migrations: list[str]
    pending_migrations: list[str] | None
    migration_runner: str
    services: list[str]
    database: str
    restore_problems: list[str]
    needs: list[Need]
    health_proof: str
    unowned: list[str] = field(default_factory=list)
    seen: dict[str, tuple[int, int, str]] = field(repr=False, default_factory=dict)
    services_added: list[str] = field(default_factory=list)
    services_removed: list[str] = field(default_factory=list)
    lint: list[Finding] | None = None
    new_entries: dict[str, Entry] = field(repr=False, default_factory=dict)
    old_entries: dict[str, Entry] = field(repr=False, default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    delta: str = ""  # for a delta patch: its base and how its whole tree was rebuilt and checked

    def bytes_of(self, paths: list[str], side: str) -> int:
        """Bytes of ``paths`` as the patch has them (``new``) or as the install has them (``old``)."""
        source = self.new_entries if side == "new" else self.old_entries
        return sum(source[p].size for p in paths if p in source)


@dataclass
class ApplyResult:
    """Outcome of a successful apply (``noop`` when the version was already installed).
    Durations are seconds; ``cleanup`` deletes what was renamed aside after the commit (call it
    after printing the result)."""

    version: str
    from_version: str | None
    plan: Plan | None
    backup: str | None = None
    duration_seconds: float = 0.0
    stopped_seconds: float = 0.0
    migrations_applied: list[str] = field(default_factory=list)
    noop: bool = False
    dry_run: bool = False
    recovered: bool = False
    cleanup: Callable[[], None] = field(default=lambda: None, repr=False)
    recovery: Recovery | None = None
    cleaned: list[str] = field(default_factory=list)


def install_rules(ctx: Context, manifest: dict[str, Any]) -> ExcludeRules:
    """The rules deciding which installed paths the patch owns: the patch's own exclude patterns
    plus this install's patches/, backups/ and .patchflow/ folders."""
    return ExcludeRules(manifest.get("exclude", []), ctx.paths.excluded_roots())


def _read_installed_manifest(ctx: Context) -> dict[str, Entry]:
    try:
        return manifest_entries(json.loads(ctx.paths.installed_manifest.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError):
        return {}


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


def _read_installed_stats(ctx: Context) -> dict[str, tuple[int, int, str]]:
    try:
        data = json.loads(ctx.paths.installed_stats.read_text(encoding="utf-8"))
        return {str(p): (int(v[0]), int(v[1]), str(v[2])) for p, v in data.items()}
    except (OSError, ValueError, TypeError, IndexError, AttributeError):
        return {}


def check_delta_base(ctx: Context, report: VerifyReport) -> None:
    """Refuse a delta patch whose base is not the installed version (naming both), then rebuild its
    whole tree from the install's record of its tree (:meth:`VerifyReport.expand`).

    Raises:
        VerifyError: another version is installed, or the install's tree is not the delta's base
            tree (another build, no record), or the delta does not rebuild its own tree. Nothing
            was changed.
    """
    delta = report.delta
    if not delta:
        return
    base = str(delta.get("base_version", ""))
    installed = installed_version(ctx.paths)
    if base != installed and installed != str(report.version):  # a forced re-apply: its record is its tree
        raise VerifyError(
            f"Patch {report.version} is a delta built on {base}, but {installed or 'an unknown version'} is installed.",
            f"Apply the full patch of {report.version}, or bring the install to {base} first. Nothing was changed.",
        )
    report.expand([ctx.paths.installed_manifest])


def check_delta(report: VerifyReport, diff: TreeDiff, new_entries: dict[str, Entry]) -> None:
    """Refuse a delta patch that cannot end on its tree because a file it must place is not in its
    archive (the install drifted from the base: a file edited or removed by hand).

    Raises:
        VerifyError: names the paths; nothing was changed.
    """
    if not report.delta:
        return
    members = set(report.archive_entries())
    missing = [p for p in diff.added + diff.changed if new_entries[p].type == "file" and p not in members]
    if missing:
        raise VerifyError(
            f"The delta patch {report.version} lacks files this install needs (it differs from "
            f"{report.delta.get('base_version')}): {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}.",
            f"Apply the full patch of {report.version}. Nothing was changed.",
        )


def check_unowned_inside_replaced(unowned: list[str], new_entries: dict[str, Entry]) -> None:
    """Refuse a patch that turns a folder into a file or link while the host keeps its own files in
    that folder (they could be neither kept nor removed: the switch would fail with the services
    stopped).

    Raises:
        VerifyError: names the folders and the host's files; nothing was changed.
    """
    blocked: dict[str, list[str]] = {}
    for path in unowned:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            entry = new_entries.get(folder)
            if entry is not None and entry.type != "dir":
                blocked.setdefault(folder, []).append(path)
                break
    if blocked:
        listed = "; ".join(
            f"{folder} (a {new_entries[folder].type} in the patch) holds {', '.join(paths[:5])}"
            + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
            for folder, paths in sorted(blocked.items())
        )
        raise VerifyError(
            f"The patch replaces folders with a file or link, but this host keeps its own files in them: {listed}.",
            "Move those files out of the folder (they are not part of any patch), or pass --remove-unowned to "
            "delete them with it. Nothing was changed.",
        )


def _compose_services(text: bytes | str) -> set[str]:
    import yaml

    try:
        model = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        return set()
    services = model.get("services") if isinstance(model, dict) else None
    return set(services) if isinstance(services, dict) else set()


def compose_service_changes(ctx: Context, report: VerifyReport) -> tuple[list[str], list[str]]:
    """``(added, removed)``: services the patch's compose file(s) define that the installed ones do
    not, and the other way round (compose manager only; read from the archive, no docker needed)."""
    if ctx.services.kind != "compose":
        return [], []
    from patchflow.archive import read_member_bytes

    files = list(ctx.settings.compose_files)
    old: set[str] = set()
    for name in files:
        path = ctx.paths.root / name
        if path.is_file():
            old |= _compose_services(path.read_bytes())
    in_archive = {f for f in files if f in report.archive_entries()}
    contents = read_member_bytes(ctx.paths.archive(report.version), in_archive) if in_archive else {}
    new: set[str] = set()
    for name in files:
        if name in contents:
            new |= _compose_services(contents[name])
        elif name in report.entries() and (ctx.paths.root / name).is_file():
            new |= _compose_services((ctx.paths.root / name).read_bytes())  # a delta leaves it as it is
    if not new:
        return [], []  # no compose file in the patch: nothing to compare
    return sorted(new - old), sorted(old - new)


def lint_pending(ctx: Context, report: VerifyReport, pending: list[str]) -> list[Finding] | None:
    """Lint the patch's pending migrations with squawk (read from the archive; table sizes from the
    live database); None when linting is off or squawk is not installed."""
    if not pending or ctx.settings.migration_lint == "off":
        return [] if pending else None
    from patchflow.archive import read_member_bytes

    wanted = {m.name: m.path for m in from_manifest(report.manifest) if m.name in pending}
    members = set(report.archive_entries())
    contents = read_member_bytes(ctx.paths.archive(report.version), {p for p in wanted.values() if p in members})
    files = {name: (path, contents[path]) for name, path in wanted.items() if path in contents}
    try:
        return lint_sql(files, ctx.runner, ctx.settings.environ, ctx.database)
    except CommandError as exc:
        ctx.log(f"   migration lint failed and was skipped: {exc.message}")
        return None


def make_plan(ctx: Context, version: PatchVersion, report: VerifyReport, *, remove_unowned: bool = False) -> Plan:
    """Compare the install with the patch; list migrations pending, check that a database restore
    would be possible, and that every filesystem written has the bytes and inodes needed.

    Only paths a patch owns are deleted: those of the installed patch's manifest (the install's
    record), or, on an install without a record, those the new patch lists as deleted since its
    predecessor. Anything else missing from the patch (files the host added: ``storage/``, an
    override file, generated files) is kept and listed as unowned, unless ``remove_unowned``.

    Raises:
        VerifyError: the patch would write where it may not, or a delta does not fit the install.
        DatabaseError: the database is configured but does not answer.
        BackupError: not enough free space or inodes on a filesystem (the message gives numbers),
            or pending migrations while a restore of the database would not be possible.
    """
    new_entries = {p: e for p, e in report.entries().items() if p != VERSION_FILE}
    rules = install_rules(ctx, report.manifest)
    check_patch_paths(new_entries, rules)
    current = scan_tree(ctx.paths.root, rules, strict=False, known=_read_installed_stats(ctx))
    current.entries.pop(VERSION_FILE, None)
    installed = _read_installed_manifest(ctx)
    installed.pop(VERSION_FILE, None)
    full = diff_trees(current.entries, new_entries)
    # the install's record says what the patches own here; a patch's own ``deleted`` list (relative
    # to the patch before it, which this install may never have had) only when there is no record
    owned = set(installed) if installed else set(report.manifest.get("deleted", []))
    deleted = [p for p in full.deleted if remove_unowned or p in owned]
    unowned = [p for p in full.deleted if p not in set(deleted)]
    check_unowned_inside_replaced(unowned, new_entries)
    diff = TreeDiff(full.added, full.changed, deleted)
    check_delta(report, diff, new_entries)
    old_entries = {p: current.entries[p] for p in diff.changed + diff.deleted}
    drift = []
    if installed:
        drift = sorted(
            p
            for p, e in current.entries.items()
            if e.type == "file" and p in installed and not installed[p].same_content(e)
        )
    seen = {
        p: (size, mtime, current.entries[p].sha256)
        for p, (size, mtime) in current.stats.items()
        if p in current.entries and current.entries[p].sha256
    }
    migrations = [m["name"] for m in report.manifest.get("migrations", [])]
    pending: list[str] | None = None
    db_bytes = 0
    description = "none"
    problems: list[str] = []
    server_folder: Path | None = None
    if ctx.database is not None:
        description = ctx.database.target.location()
        waited = ctx.database.wait_ready(ctx.settings.db_wait_timeout)
        if waited >= 1.0:
            ctx.log(f"   database accepted connections after {waited:.1f} s")
        db_bytes = int(ctx.database.properties()["size"])
        history = MigrationHistory(ctx.database)
        done = {r["name"] for r in history.rows() if r["finished"] and not r["rolled_back"]}
        pending = [m for m in migrations if m not in done]
        if pending and history_missing(ctx.database):
            raise MigrationError(
                f"The database already holds tables but has no migration history ({MIGRATIONS_TABLE} is missing): "
                f"all {len(pending)} migrations of the patch look pending and would fail on objects that exist.",
                "Record the migrations of the installed version first: `inv baseline-migrations` (it shows what "
                "it records and asks). Nothing was stopped or changed.",
            )
        if pending:
            problems = ctx.database.restore_problems()
            server_folder = ctx.database.server_folder()
    runner = migrate_command(ctx.settings, ctx.paths.root, from_manifest(report.manifest))
    findings = lint_pending(ctx, report, pending or [])
    proof = ctx.services.proof_available(ctx.settings.health_url) if ctx.services.app_services() else ""
    new_bytes = sum(e.size for e in new_entries.values())
    changed_bytes = sum(new_entries[p].size for p in diff.added + diff.changed if p in new_entries)
    backup_bytes = sum(e.size for e in old_entries.values())
    margin = int(ctx.settings.free_space_margin)
    needs = [
        Need(ctx.paths.state, "staging", new_bytes, len(new_entries)),
        Need(ctx.paths.root, "switch", changed_bytes, len(diff.added)),
        Need(ctx.paths.backups, "code backup", backup_bytes, len(old_entries) + 8),
        Need(ctx.paths.backups, "database dump", db_bytes, 1),
        Need(ctx.paths.state, "space reserve", RESERVE_BYTES, 1),
    ]
    if server_folder is not None:  # a failed migration is undone by a restore beside the live database
        needs.append(Need(server_folder, "a database restore beside the live one (database server)", db_bytes, 0))
    plan = Plan(
        str(version),
        installed_version(ctx.paths),
        diff,
        drift,
        migrations,
        pending,
        runner,
        ctx.services.app_services(),
        description,
        problems,
        needs,
        proof,
        unowned,
        seen,
        *compose_service_changes(ctx, report),
        findings,
        new_entries,
        old_entries,
        list(current.warnings),
    )
    if report.delta:
        plan.delta = (
            f"a delta on {report.delta['base_version']}: {len(report.archive_entries())} entries in its archive; the "
            f"whole tree ({len(report.entries())} entries) rebuilt from this install's record of its tree and "
            f"checked (tree sha256 {str(report.delta['tree_sha256'])[:12]})"
        )
    if findings and ctx.settings.migration_lint == "refuse":
        raise MigrationError(
            "The pending migrations take heavy locks or rewrite tables: "
            + "; ".join(f.describe() for f in findings[:5])
            + (f" (and {len(findings) - 5} more)" if len(findings) > 5 else ""),
            "Rewrite them (e.g. CREATE INDEX CONCURRENTLY, NOT VALID constraints) or set "
            "PATCHFLOW_MIGRATION_LINT=warn. Nothing was stopped or changed.",
        )
    if problems:
        raise BackupError(
            f"The patch runs {len(pending or [])} migration(s), but the database could not be restored if the "
            f"apply failed: {'; '.join(problems)}.",
            "Set PATCHFLOW_DATABASE_ADMIN_URL to a role that may (e.g. the PostgreSQL superuser), or give the "
            "role CREATEDB and the extensions in template1. Nothing was stopped or changed.",
        )
    check_space(needs, margin)
    return plan


def switch_files(
    plan: Plan,
    staging: Path,
    root: Path,
    version: PatchVersion,
    version_file: Path,
    written: Callable[[str], None] | None = None,
) -> None:
    """Make the tree equal to the staged patch: delete what the patch no longer has (deepest
    first), place added and changed entries (shallowest first, files renamed into place), then
    write ``VERSION`` (the patch's bytes when it carries one). Idempotent: a re-run converges.
    ``written`` is passed to :func:`patchflow.files.place_entry` (the kill hook)."""
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
        place_entry(plan.new_entries[rel], staging, root, written=written)
    tmp = version_file.with_name(VERSION_TEMP)
    staged = staging / VERSION_FILE
    if staged.is_file() and not staged.is_symlink():
        shutil.copyfile(staged, tmp)
    else:
        tmp.write_text(f"{version}\n", encoding="utf-8")
    current = Ownership.of(version_file)
    if current is not None:  # VERSION keeps its owner, group and mode
        set_ownership(tmp, current.uid, current.gid, current.perm)
    os.replace(tmp, version_file)


@dataclass
class ApplyRun:
    """One apply: its state, and the step list that works on it (:meth:`steps`).

    ``recover`` finishes or undoes an interrupted run found when the lock is taken (given by
    :mod:`patchflow.operations`); ``confirm`` sees the plan before anything changes.
    """

    ctx: Context
    version: PatchVersion
    options: ApplyOptions = field(default_factory=ApplyOptions)
    confirm: Callable[[Plan], None] = lambda plan: None
    recover: Callable[[Journal], Recovery | None] = lambda journal: None
    report: VerifyReport | None = None
    plan: Plan | None = None
    journal: Journal | None = None
    lock: InstallLock | None = None
    backup: Backup | None = None
    from_version: str = ""
    applied: list[str] = field(default_factory=list)
    recovered: bool = False
    recovery: Recovery | None = None
    cleaned: list[str] = field(default_factory=list)
    resumed: bool = False
    started: float = field(default_factory=time.monotonic)
    started_at: str = field(default_factory=utc_now)
    stopped_at: float | None = None
    stopped_wall: float | None = None
    stopped_seconds: float = 0.0
    trash: list[Path] = field(default_factory=list)

    @property
    def staging(self) -> Path:
        return self.ctx.paths.staging(self.version)

    def steps(self) -> list[Step]:
        """The apply, in order; each step with its undo."""
        return [
            Step("verify", self.verify, journaled=False),
            Step("plan", self.make_plan, journaled=False),
            Step("lock", self.take_lock),
            Step("stage", self.stage, undo=self.drop_staging, undo_name="drop-staging"),
            Step("stop", self.stop, undo=self.start_old, stopped=True, undo_name="start-old"),
            Step("backup", self.take_backup, undo=self.drop_incomplete_backup, stopped=True, undo_name="drop-backup"),
            Step("switch", self.switch, undo=self.restore_code, stopped=True, undo_name="restore-code"),
            Step("migrate", self.migrate, undo=self.restore_database, stopped=True, undo_name="restore-database"),
            Step("start", self.start, undo=self.stop_new, stopped=True, undo_name="stop-new"),
            Step("health", self.health, stopped=True),
            Step("commit", self.commit, no_return=True),
            Step("cleanup", self.cleanup),
        ]

    @classmethod
    def outline(cls, version: PatchVersion) -> list[Step]:
        """The step list of an apply of ``version`` for decisions only (names, flags, which steps
        have an undo): its callables belong to a run without a context and must not be run."""
        return cls(cast(Context, None), version).steps()

    @classmethod
    def resume(cls, ctx: Context, journal: Journal) -> ApplyRun:
        """The run recorded in ``journal`` (killed), ready for recovery to finish or undo it.

        Raises:
            VersionError: the journal names an invalid version (a damaged journal).
        """
        run = cls(ctx, parse_version(journal.version), journal=journal, from_version=journal.from_version)
        run.started_at = journal.started_at
        run.resumed = True
        if journal.backup:
            run.backup = load_backup(ctx.paths.backups / journal.backup)
        run.applied = list(journal.notes.get("migrations", []))
        return run

    # -- the steps ------------------------------------------------------------------------------
    def verify(self) -> None:
        """Check checksums, signature and manifest of the patch folder (read-only). A version
        already installed stops here (after finishing the clean-up a killed run left)."""
        paths = self.ctx.paths
        if (
            not self.options.force
            and Journal.load(paths.journal) is None
            and installed_version(paths) == str(self.version)
        ):
            self.cleaned = [] if self.options.dry_run else self._finish_leftovers()
            raise StopPipeline(f"version {self.version} is already installed")
        folder = self.ctx.paths.patch_dir(self.version)
        self.ctx.log(f"-> verify {folder}")
        self.report = verify_patch(folder, self.version, verify_key=self.ctx.settings.verify_key)
        interrupted = Journal.load(paths.journal)
        if interrupted is None:
            check_delta_base(self.ctx, self.report)
        elif self.report.delta is not None:  # VERSION may be mid-switch: the records tell the tree
            try:
                self.report.expand(self._tree_records(interrupted))
            except VerifyError as exc:
                raise VerifyError(
                    f"{exc.message} An interrupted {interrupted.action} of {interrupted.version} is not finished "
                    "or undone yet, so the install's tree is not settled.",
                    f"Recover it first (`inv patch-status` names the command), then apply {self.version}. "
                    "Nothing was changed.",
                ) from None

    def _tree_records(self, journal: Journal | None) -> list[Path]:
        """Where a delta's base tree may be recorded: the install's record, then the copy of it in
        this run's backup (or the backup of the interrupted run ``journal``)."""
        backup = self.backup
        if backup is None and journal is not None and journal.backup:
            backup = load_backup(self.ctx.paths.backups / journal.backup)
        return [self.ctx.paths.installed_manifest] + ([backup.paths.installed_manifest] if backup else [])

    def _check_versions(self) -> None:
        parsed, why = installed_version_or_error(self.ctx.paths)
        current = str(parsed) if parsed is not None else None
        self.from_version = current or ""
        if current is None:
            if self.ctx.paths.version_file.exists() and not self.options.force:
                raise VersionError(
                    f"The installed version cannot be read, so neither a downgrade nor the installed version "
                    f"can be checked: {why}",
                    "Fix VERSION (a semantic version such as 2.2.0), or pass --force to apply anyway. "
                    "Nothing was changed.",
                )
            return
        installed = parse_version(current)
        if installed == self.version and not self.options.force:
            raise StopPipeline(f"version {self.version} is already installed")
        if self.version < installed and not self.options.allow_downgrade:
            raise VersionError(
                f"Refusing to downgrade: {current} is installed and {self.version} is older.",
                f"Roll back with `inv rollback-patch --version {current}`, or pass --allow-downgrade. "
                "Nothing was changed.",
            )

    def make_plan(self) -> None:
        """Decide what the apply does (files, migrations, space) and ask for confirmation."""
        assert self.report is not None
        interrupted = Journal.load(self.ctx.paths.journal)
        if interrupted is None:
            self._check_versions()
        self.ctx.log("-> plan")
        self.plan = make_plan(self.ctx, self.version, self.report, remove_unowned=self.options.remove_unowned)
        if interrupted is not None:
            self.plan.warnings.append(
                f"an interrupted {interrupted.action} of {interrupted.version} will be finished or undone first"
            )
        if not self.options.dry_run:
            self.confirm(self.plan)

    def take_lock(self) -> None:
        """Take the install's lock and the space reserve; finish or undo an interrupted run; clear
        what killed runs left (staging, trash); start this run's journal (with this run's marker,
        before any command runs)."""
        assert self.report is not None
        paths = self.ctx.paths
        self.lock = InstallLock(paths.lock, paths.lock_info)
        self.lock.acquire(action="apply", version=str(self.version), break_stale=self.options.break_lock)
        self.ctx.start_recording()
        interrupted = Journal.load(paths.journal)
        take_reserve(paths.space_reserve, required=interrupted is None, log=self.ctx.log)
        if interrupted is not None:
            self.recovery = self.recover(interrupted)
            self.recovered = True
        # after the recovery (it ends the killed run's commands first), before any early stop
        self.cleaned = remove_leftovers(paths)
        if interrupted is not None:
            self._check_versions()
            check_delta_base(self.ctx, self.report)  # the recovery may have ended on another version
            self.plan = make_plan(self.ctx, self.version, self.report, remove_unowned=self.options.remove_unowned)
        assert self.plan is not None
        self.from_version = self.plan.from_version or ""
        self.journal = Journal(paths.journal, "apply", str(self.version), self.from_version)
        if self.ctx.run_marker:
            self.journal.notes["runners"] = [self.ctx.run_marker]
        self.journal.start("lock")
        checkpoint(self.ctx.settings.test_kill_at, "journal-opened", "before")  # lock not yet marked done

    def stage(self) -> None:
        """Extract the patch beside the tree, run install/build there, build compose images; then
        check again that every filesystem has the bytes and inodes the rest of the apply needs.

        Raises:
            ApplyError: the install or build command failed.
            BackupError: a filesystem is now short of room (nothing was stopped).
        """
        assert self.report is not None
        ctx = self.ctx
        remove_tree(self.staging)
        self.staging.parent.mkdir(parents=True, exist_ok=True)
        extract_archive(ctx.paths.archive(self.version), self.staging, self.report.archive_entries())
        staged_version = self.staging / VERSION_FILE
        if staged_version.is_file() and not staged_version.is_symlink():
            try:
                carried = read_version_file(staged_version)
            except PatchflowError as exc:
                raise VerifyError(f"The patch's VERSION file is not a version: {exc.message}", "Rebuild it.") from None
            if carried != self.version:
                raise VerifyError(
                    f"Patch {self.version} carries a VERSION file saying {carried}.",
                    "Rebuild it with create-patch (it refuses a tree whose VERSION names another version). "
                    "Nothing was stopped or changed.",
                )
        for label, command in (("install", ctx.settings.install_command), ("build", ctx.settings.build_command)):
            if not command.strip():
                continue
            ctx.log(f"   {label}: {command}")
            try:
                ctx.runner.run(split_command(command), cwd=self.staging, timeout=3600, what=f"{label} command")
            except CommandError as exc:
                raise ApplyError(
                    f"{label.capitalize()} failed in staging: {exc.message}",
                    "Nothing was stopped or changed; fix the patch and apply again.",
                ) from None
        if ctx.services.app_services():
            ctx.services.build(self.staging)
        if self.plan is not None:
            # again, before anything stops: the install and build may have used more than planned
            check_space(
                [n for n in self.plan.needs if n.label not in ("staging", "space reserve")],
                int(ctx.settings.free_space_margin),
            )

    def drop_staging(self) -> None:
        remove_tree(self.staging)

    def stop(self) -> None:
        """Stop the application services (data services keep running)."""
        self.stopped_at = time.monotonic()
        self.stopped_wall = time.time()
        self.ctx.services.stop()

    def start_old(self) -> None:
        """Undo of stop: start the old version again and prove it healthy."""
        ctx = self.ctx
        # compose: staging re-tagged the images; the old ones come back from a rebuild of the tree
        start_with_retries(
            ctx.services,
            ctx.settings.start_retries,
            rebuild=True,
            urls=ctx.settings.health_url,
            ready_timeout=ctx.settings.health_timeout,
            log=ctx.log,
        )
        removed = self.journal.notes.get("removed_services") if self.journal else None
        if removed:
            ctx.services.start(list(removed), rebuild=True)  # the services the patch had removed
        self._wait_healthy(self.from_version or None)  # the version when the body has it

    def take_backup(self) -> None:
        """Back up what the switch replaces or deletes, VERSION, and the database (proven dump)."""
        assert self.plan is not None and self.journal is not None
        ctx = self.ctx
        # named in the journal before the folder exists: a kill right after it is made leaves a
        # folder that the undo (drop-backup) finds and removes
        self.journal.backup = backup_name(self.version)
        self.journal.save()
        backup = new_backup(
            ctx.paths,
            self.version,
            self.from_version,
            old_entries=list(self.plan.old_entries.values()),
            new_paths=self.plan.diff.added,
            name=self.journal.backup,
        )
        self.backup = backup
        save_files(backup, ctx.paths.root, [ctx.paths.installed_manifest, ctx.paths.installed_record])
        if ctx.database is not None:
            ctx.log("   database dump")
            try:
                dump = ctx.database.dump(backup.paths.dump)
            except PatchflowError as exc:
                raise BackupError(f"The database backup failed: {exc.message}", exc.hint) from None
            backup.data["database"] = {
                "file": dump.path.name,
                "size": dump.size,
                "sha256": dump.sha256,
                "properties": dump.properties,
            }
            ctx.log(f"   dump proven: {dump.size} bytes, sha256 {dump.sha256[:16]}...")
        backup.data["size_bytes"] = int(backup.data.get("files_bytes", 0)) + (
            int(backup.data["database"]["size"]) if backup.data.get("database") else 0
        )
        backup.data["complete"] = True
        backup.save()

    def drop_incomplete_backup(self) -> None:
        """Undo of backup: a backup that never completed is removed (a complete one is kept)."""
        backup = self._backup()
        if backup is not None and not backup.complete:
            remove_tree(backup.folder)
        elif backup is None and self.journal is not None and self.journal.backup:
            # killed before its backup.json was written: the folder is an empty start
            folder = self.ctx.paths.backups / self.journal.backup
            if "/" not in self.journal.backup and folder.parent == self.ctx.paths.backups:
                remove_tree(folder)

    def switch(self) -> None:
        """Make the tree the patch's: delete, replace, add files; switch build outputs; VERSION."""
        assert self.plan is not None
        backup = self._require_backup()
        ctx = self.ctx
        removed = self.plan.services_removed
        if removed:
            # while the installed compose file still defines them; rollback brings them back
            backup.data["removed_services"] = removed
            backup.save()
            self._require_journal().note("removed_services", removed)
            ctx.log(f"   removing services the patch drops: {', '.join(removed)}")
            ctx.services.remove(removed)
        switch_files(
            self.plan,
            self.staging,
            ctx.paths.root,
            self.version,
            ctx.paths.version_file,
            kill_point(ctx.settings.test_kill_at, "switch-file"),
        )
        swapped = swap_build_outputs(backup, self.staging, ctx.paths.root, tuple(ctx.settings.build_outputs))
        if swapped:
            ctx.log(f"   build outputs switched: {', '.join(swapped)}")

    def restore_code(self) -> None:
        """Undo of switch: put back the code from the backup."""
        restore_code(self._require_backup(), self.ctx.paths, log=self.ctx.log)

    def migrate(self) -> None:
        """Wait for a real database connection, then run the pending migrations (bounded)."""
        ctx = self.ctx
        if ctx.database is None:
            return
        assert self.journal is not None
        pending = [m.name for m in MigrationHistory(ctx.database).pending(find_migrations(ctx.paths.root))]
        self.journal.note("pending", pending)
        waited = ctx.database.wait_ready(ctx.settings.db_wait_timeout)
        if waited >= 1.0:
            ctx.log(f"   database accepted connections after {waited:.1f} s")
        self.applied = run_migrations(ctx.settings, ctx.database, ctx.runner, ctx.paths.root, ctx.log)
        self.journal.note("migrations", self.applied)

    def restore_database(self) -> None:
        """Undo of migrate: when migrations were to run, restore the dump beside the live database
        and swap (the displaced one is kept); when none were, keep the live database."""
        ctx = self.ctx
        journal = self._require_journal()
        if ctx.database is None:
            return
        if journal.notes.get("pending") == []:
            ctx.log("   database kept: this apply ran no migration")
            return
        ctx.database.terminate_sessions()
        stamp = journal.notes.get("restore_stamp") or stamp_now()
        journal.note("restore_stamp", stamp)
        displaced = restore_database(ctx.database, self._require_backup(), stamp, ctx.paths, log=ctx.log)
        journal.note("displaced_database", displaced)

    def start(self) -> None:
        """Start the new version (bounded retries) and wait until it serves its ports."""
        ctx = self.ctx
        start_with_retries(
            ctx.services,
            ctx.settings.start_retries,
            urls=ctx.settings.health_url,
            ready_timeout=ctx.settings.health_timeout,
            log=ctx.log,
        )

    def stop_new(self) -> None:
        """Undo of start: stop what the start step started."""
        self.ctx.services.stop()

    def health(self) -> None:
        """Prove the new version healthy: 2xx, a healthy status, the reported version or (without
        one) a process started after the stop answering, services still running."""
        proof = self.plan.health_proof if self.plan is not None else ""
        since = self.stopped_wall if proof else None
        self.ctx.log(
            f"   waiting up to {self.ctx.settings.health_timeout:.0f} s for {', '.join(self.ctx.settings.health_url)}"
        )
        self._wait_healthy(str(self.version), since)
        if self.stopped_at is not None:
            self.stopped_seconds = time.monotonic() - self.stopped_at
        elif self.journal is not None:  # finished by a recovery: the window began in the killed run
            self.stopped_seconds = self.journal.seconds_since("stop") or 0.0

    def commit(self) -> None:
        """Point of no return: record the installed manifest and record, and the history."""
        ctx = self.ctx
        journal = self._require_journal()
        report = self.report or verify_patch(
            ctx.paths.patch_dir(self.version), self.version, verify_key=ctx.settings.verify_key
        )
        backup = self._backup()
        # a delta's whole tree: from the record of the base, or (a killed apply's record) its own
        report.expand(self._tree_records(None))
        write_json_atomic(ctx.paths.installed_manifest, report.tree_manifest(), mode=0o644)
        checkpoint(ctx.settings.test_kill_at, "manifest-recorded", "before")  # inside the commit
        if self.plan is not None:
            write_json_atomic(ctx.paths.installed_stats, self._stats_after_switch(self.plan), mode=0o644)
        InstalledRecord(
            version=str(self.version),
            backup=backup.name if backup else "",
            from_version=self.from_version,
            applied_at=utc_now(),
            migrations=tuple(self.applied),
        ).save(ctx.paths)
        if backup is not None:
            backup.data["migrations_applied"] = list(self.applied)
            backup.save()
        append_history(
            ctx.paths.history,
            {
                "action": "apply",
                "run_id": journal.run_id,
                "from_version": self.from_version or None,
                "to_version": str(self.version),
                "started_at": self.started_at,
                "duration_seconds": round(time.monotonic() - self.started, 3),
                "stopped_seconds": round(self.stopped_seconds, 3),
                "result": "success",
                "backup": backup.name if backup else None,
                "migrations": self.applied,
                **({"recovered": True} if self.resumed else {}),
            },
        )

    def _stats_after_switch(self, plan: Plan) -> dict[str, list[int | str]]:
        """(size, mtime_ns, sha256) of the installed tree's files now: the plan's scan for files the
        switch left alone, a fresh stat for those it placed."""
        stats: dict[str, list[int | str]] = {p: list(v) for p, v in plan.seen.items()}
        for rel in plan.diff.deleted:
            stats.pop(rel, None)
        for rel in plan.diff.added + plan.diff.changed:
            entry = plan.new_entries[rel]
            stats.pop(rel, None)
            if entry.type != "file":
                continue
            try:
                st = os.lstat(self.ctx.paths.root / rel)
            except OSError:
                continue
            stats[rel] = [st.st_size, st.st_mtime_ns, entry.sha256]
        return stats

    def cleanup(self) -> None:
        """Rename the staging folder aside (deleted after the result is printed)."""
        if self.staging.exists():
            aside = self.ctx.paths.trash(f"{self.staging.name}-{self._require_journal().run_id}")
            os.replace(self.staging, aside)
            self.trash.append(aside)

    # -- helpers --------------------------------------------------------------------------------
    def _wait_healthy(self, expect: str | None, since: float | None = None) -> None:
        took = wait_services_healthy(self.ctx.services, self.ctx.settings, expect_version=expect, since=since)
        if took >= 1.0:
            self.ctx.log(f"   healthy after {took:.1f} s")

    def _backup(self) -> Backup | None:
        if self.backup is None and self.journal is not None and self.journal.backup:
            self.backup = load_backup(self.ctx.paths.backups / self.journal.backup)
        return self.backup

    def _require_backup(self) -> Backup:
        backup = self._backup()
        if backup is None or not backup.complete:
            name = self.journal.backup if self.journal else None
            raise BackupError(
                f"The backup {name or '(none)'} of this apply is missing or incomplete.",
                "Restore by hand from the newest complete backup (inv patch-status lists them).",
            )
        return backup

    def _require_journal(self) -> Journal:
        assert self.journal is not None, "journal expected after the lock step"
        return self.journal

    # -- running it -----------------------------------------------------------------------------
    def execute(self) -> ApplyResult:
        """Run the whole list (or, with ``dry_run``, verify and plan only).

        Raises:
            VerifyError, VersionError, LockError, ConfirmationRefused, DatabaseError, BackupError:
                refused before anything changed.
            ApplyError: the apply failed or was interrupted; ``rolled_back`` says whether the old
                version was restored (and proven healthy).
            RollbackError: the apply failed and the automatic rollback did not complete.
        """
        steps = self.steps()
        if self.options.dry_run:
            steps = steps[:2]
        try:
            with interruptible():
                run_forward(
                    steps,
                    lambda: self.journal,
                    log=self.ctx.log,
                    kill_at=self.ctx.settings.test_kill_at,
                    on_done=self._done,
                )
                if self.journal is not None:
                    self.journal.clear()
                    checkpoint(self.ctx.settings.test_kill_at, "release", "before")
        except StopPipeline as stop:
            self._finish_quietly()
            self.ctx.log(str(stop))
            return ApplyResult(
                str(self.version),
                self.from_version or None,
                None,
                noop=True,
                recovered=self.recovered,
                recovery=self.recovery,
                cleaned=self.cleaned,
            )
        except BaseException as exc:
            # from here on a further signal (a second Ctrl+C, a repeated SIGTERM) must not cut the
            # automatic rollback short before run_undo holds signals back: removing a big staging
            # folder first takes long enough for one to land
            with held_back(self.ctx.log):
                if self.journal is None or not self.journal.done("commit"):
                    self._fail(steps, exc)
                # interrupted once committed: the apply is complete; what is left is clean-up
                self.ctx.log(f"   {describe_failure(exc)} after the commit: the apply is complete")
                self._complete_after_commit()
        finally:
            deactivate_reserve()
            if self.lock is not None:
                self.lock.release()
        if self.options.dry_run:
            return ApplyResult(str(self.version), self.from_version or None, self.plan, dry_run=True)
        backup = self._backup()
        return ApplyResult(
            str(self.version),
            self.from_version or None,
            self.plan,
            backup.name if backup else None,
            time.monotonic() - self.started,
            self.stopped_seconds,
            self.applied,
            recovered=self.recovered,
            cleanup=self._empty_trash,
            recovery=self.recovery,
            cleaned=self.cleaned,
        )

    def _complete_after_commit(self) -> None:
        with held_back(self.ctx.log):
            try:
                self.cleanup()
            except OSError:
                pass  # the staging folder is removed by the next run
            self._require_journal().clear()

    def _done(self, step: Step, seconds: float) -> None:
        if step.journaled or step.name == "verify":
            self.ctx.log(f"   {step.name} done in {seconds:.1f} s")

    def _empty_trash(self) -> None:
        checkpoint(self.ctx.settings.test_kill_at, "empty-trash", "before")
        for folder in self.trash:
            remove_tree(folder)

    def cleanup_after_recovery(self, decision: Decision) -> None:
        """After recovery finished or undid this run: no staging folder or trash is left."""
        remove_tree(self.staging)
        self._empty_trash()
        remove_leftovers(self.ctx.paths)

    def _finish_leftovers(self) -> list[str]:
        """For a run with nothing to apply: when a killed run left its lock (stale) or clean-up
        (staging, trash), take the lock (breaking a stale one only with ``--break-lock``) and
        finish the clean-up. Returns the folders removed.

        Raises:
            LockError: another run holds the lock, or it is stale and ``--break-lock`` is missing.
        """
        paths = self.ctx.paths
        if not leftovers(paths, reserve=True) and LockHolder.read(paths.lock_info) is None:
            return []
        lock = InstallLock(paths.lock, paths.lock_info)
        lock.acquire(action="apply", version=str(self.version), break_stale=self.options.break_lock)
        try:
            if Journal.load(paths.journal) is not None:
                return []  # a run was killed meanwhile: the real apply path recovers it
            removed = remove_leftovers(paths, reserve=True)
        finally:
            lock.release()
        for name in removed:
            self.ctx.log(f"   removed {name}, left by a killed run")
        return removed

    def _finish_quietly(self) -> None:
        if self.journal is not None:
            self.journal.clear()
            self.journal = None

    def _record(self, result: str, **extra: Any) -> None:
        append_history(
            self.ctx.paths.history,
            {
                "action": "apply",
                "run_id": self.journal.run_id if self.journal else None,
                "from_version": self.from_version or None,
                "to_version": str(self.version),
                "started_at": self.started_at,
                "duration_seconds": round(time.monotonic() - self.started, 3),
                "result": result,
                "backup": self.journal.backup if self.journal else None,
                **extra,
            },
        )

    def _fail(self, steps: list[Step], exc: BaseException) -> None:
        """Undo what was reached and raise the error that says what happened."""
        if not isinstance(exc, (PatchflowError, Interrupted, KeyboardInterrupt, StopPipeline)):
            self.ctx.record_exception(exc)
        journal = self.journal
        failure = describe_failure(exc).rstrip(".")
        failed_step = journal.current_step if journal else None
        if journal is None:
            if isinstance(exc, PatchflowError):
                raise exc
            if isinstance(exc, (Interrupted, KeyboardInterrupt)):
                raise ApplyError(f"Apply of {self.version} {failure} before anything changed.", "") from None
            raise exc
        where = f"at {failed_step}" if failed_step else ""
        names = undo_plan(steps, journal.steps)
        stopped = any(s.stopped and journal.reached(s.name) for s in steps)
        try:
            remove_tree(self.staging)  # room first (a run out of space): no undo needs the staged tree
        except OSError:
            pass
        if not stopped:
            try:
                run_undo(steps, names, journal, log=lambda line: None, kill_at=self.ctx.settings.test_kill_at)
            except Exception:  # noqa: S110 - the staging folder is cleaned by the next run
                pass
            journal.clear()
            self._record("failed", error=f"{failed_step}: {failure}")
            raise ApplyError(f"Apply of {self.version} failed {where}: {failure}", "Nothing was stopped or changed.")
        self.ctx.log(f"!! {failed_step} failed: {failure}")
        self.ctx.log("!! rolling back automatically")
        try:
            run_undo(steps, names, journal, log=self.ctx.log, kill_at=self.ctx.settings.test_kill_at)
        except Exception as undo_exc:
            if not isinstance(undo_exc, PatchflowError):
                self.ctx.record_exception(undo_exc)
            detail = describe_failure(undo_exc)
            self._record("rollback_failed", error=f"{failed_step}: {failure}", rollback_error=detail)
            hint = undo_exc.hint if isinstance(undo_exc, PatchflowError) else ""
            raise RollbackError(
                f"Apply of {self.version} failed {where} ({failure}) and the automatic rollback did not "
                f"complete: {detail}. {health_now(self.ctx.services, self.ctx.settings)}",
                (hint + " " if hint else "") + "`inv patch-status` shows what is left. Fix the cause and run "
                f"`inv rollback-patch --version {self.version} --yes` to finish the rollback; "
                f"{self.ctx.services.logs_hint()}.",
            ) from None
        stopped_for = time.monotonic() - self.stopped_at if self.stopped_at else 0.0
        displaced = journal.notes.get("displaced_database")
        journal.clear()
        self._record("rolled_back", error=f"{failed_step}: {failure}", stopped_seconds=round(stopped_for, 3))
        kept = f" The database was restored; the one it replaced is kept as {displaced}." if displaced else ""
        raise ApplyError(
            f"Apply of {self.version} failed {where}: {failure}. It was rolled back automatically: "
            f"{self.from_version or 'the previous version'} is running again and passed its health check.{kept}",
            f"Logs: {self.ctx.paths.operation_log}; {self.ctx.services.logs_hint()}; history in "
            f"{self.ctx.paths.history}.",
            rolled_back=True,
        )
