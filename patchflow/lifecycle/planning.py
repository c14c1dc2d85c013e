"""The plan of an apply: what it will change, computed before anything changes.

:func:`make_plan` compares the install with the patch (files added, changed, deleted; the host's
own files kept), lists the pending migrations, checks that a database restore would be possible,
that every filesystem has the bytes and inodes the apply needs, and what it needs after the stop
(:func:`patchflow.preconditions.check_before_stop`). The apply makes it before the lock (shown for
confirmation, or by a dry run) and again under it (:mod:`patchflow.lifecycle.decisions` compares
the two). Reading the install's records is cached by file identity, so planning again under the
lock costs a walk of the tree.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patchflow.context import Context
from patchflow.dbwait import check_answers_now
from patchflow.delta import manifest_entries
from patchflow.errors import BackupError, CommandError, MigrationError, VerifyError
from patchflow.history import refuse_uncovered_history
from patchflow.installed import HealthRecord, installed_version
from patchflow.lifecycle.journal import RESERVE_BYTES
from patchflow.lint import Finding, lint_sql
from patchflow.manifest import Entry, ExcludeRules, TreeDiff, diff_trees, scan_tree
from patchflow.migration_locks import refuse_lock_blockers
from patchflow.migration_state import refuse_row_states
from patchflow.migrations import MigrationHistory, from_manifest, migrate_command
from patchflow.paths import VERSION_FILE
from patchflow.preconditions import Changes, check_before_stop
from patchflow.rehearse import rehearsed_line
from patchflow.release_settings import PYPROJECT, SettingChange, pyproject_in_patch, release_changes
from patchflow.restore_in_place import BESIDE, IN_PLACE, restore_plan
from patchflow.schema_drift import plan_schema_drift
from patchflow.snapshot import snapshot_problem
from patchflow.space import Need, check_space
from patchflow.state_files import StateFileError, seal_problem
from patchflow.txn_statements import plan_transactions
from patchflow.verify import VerifyReport
from patchflow.version import PatchVersion


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
    settings_changes: list[SettingChange] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)  # what was proven before the stop (patchflow.preconditions)
    old_health: HealthRecord | None = None  # the settings that proved the installed version healthy now
    snapshot: bool = False  # pending migrations: the stopped window copies the database on its server
    no_snapshot: str = ""  # pending migrations without a snapshot: why (the dump is inside the stopped window)
    restore_method: str = BESIDE  # how a failed migration is undone from the dump (patchflow.restore_in_place)
    restore_role: str = ""  # the role that restores (database_admin_url's, else the application's)

    @property
    def dump_before_stop(self) -> bool:
        """True when the database is dumped before the stop: a database is configured and no
        migration is pending (:mod:`patchflow.lifecycle.apply_dump`)."""
        return self.pending_migrations is not None and not self.pending_migrations

    def bytes_of(self, paths: list[str], side: str) -> int:
        """Bytes of ``paths`` as the patch has them (``new``) or as the install has them (``old``)."""
        source = self.new_entries if side == "new" else self.old_entries
        return sum(source[p].size for p in paths if p in source)


def install_rules(ctx: Context, manifest: Mapping[str, object]) -> ExcludeRules:
    """The rules deciding which installed paths the patch owns: the patch's own exclude patterns,
    the paths this host keeps as its own (``host_paths``), and this install's patches/, backups/ and
    .patchflow/ folders. The same rules object for the same patterns (it remembers its answers:
    the plan made again under the lock asks about the same paths)."""
    exclude = manifest.get("exclude")
    patterns = tuple(str(p) for p in exclude) if isinstance(exclude, list) else ()
    return _rules(patterns + tuple(ctx.settings.host_paths), ctx.paths.excluded_roots())


@functools.lru_cache(maxsize=4)
def _rules(patterns: tuple[str, ...], roots: tuple[str, ...]) -> ExcludeRules:
    return ExcludeRules(patterns, roots)


def _file_key(path: Path) -> tuple[str, int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (str(path), st.st_ino, st.st_size, st.st_mtime_ns)


_records: dict[str, tuple[tuple[str, int, int, int], Any]] = {}  # path -> (file key, parsed value)


def _parsed_once(path: Path, parse: Callable[[str], Any]) -> Any:
    """``parse(text of path)``, parsed again only when the file changed (inode, size, mtime): the
    plan made again under the lock reads the same install records. Callers must not change the
    value. Raises what ``parse`` and reading raise."""
    key = _file_key(path)
    known = _records.get(str(path))
    if key is not None and known is not None and known[0] == key:
        return known[1]
    value = parse(path.read_text(encoding="utf-8"))
    if key is not None:
        _records[str(path)] = (key, value)
    return value


def _read_installed_manifest(ctx: Context) -> dict[str, Entry]:
    """The install's tree record (what the patches own here; empty when there is none: an install
    older than the record, or adopted).

    Raises:
        StateFileError: the record is damaged or fails its seal: it decides which files an apply
            deletes, so it is never guessed at (the hint says how to go on without it).
    """
    path = ctx.paths.installed_manifest

    def parse(text: str) -> dict[str, Entry]:
        data = json.loads(text)
        problem = seal_problem(data) if isinstance(data, dict) else "it is not a JSON object"
        if problem:
            raise StateFileError(f"The install's tree record {path} may not be trusted: {problem}.", TREE_REMEDY)
        return manifest_entries(data)

    try:
        entries = _parsed_once(path, parse)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise StateFileError(f"The install's tree record {path} cannot be read: {exc.strerror}.", TREE_REMEDY) from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StateFileError(f"The install's tree record {path} is damaged: {exc}.", TREE_REMEDY) from None
    return dict(entries)


TREE_REMEDY = (
    "It says which files the installed patches own, so an apply deletes only those. Move it aside "
    "(mv .patchflow/installed-manifest.json .patchflow/installed-manifest.json.damaged) and run the command "
    "again: without it the apply deletes only what the patch itself lists as deleted. Nothing was changed."
)


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
    def parse(text: str) -> dict[str, tuple[int, int, str]]:
        return {str(p): (int(v[0]), int(v[1]), str(v[2])) for p, v in json.loads(text).items()}

    try:
        stats: dict[str, tuple[int, int, str]] = _parsed_once(ctx.paths.installed_stats, parse)
    except (OSError, ValueError, TypeError, IndexError, AttributeError):
        return {}
    return stats


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
    from patchflow.archive.reader import read_member_bytes

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
    from patchflow.archive.reader import read_member_bytes

    wanted = {m.name: m.path for m in from_manifest(report.manifest) if m.name in pending}
    members = set(report.archive_entries())
    contents = read_member_bytes(ctx.paths.archive(report.version), {p for p in wanted.values() if p in members})
    files = {name: (path, contents[path]) for name, path in wanted.items() if path in contents}
    try:
        runner = migrate_command(ctx.settings, ctx.paths.root, from_manifest(report.manifest))
        timeout_set = runner == "builtin" and ctx.settings.migration_lock_timeout > 0  # else squawk's advice holds
        return lint_sql(files, ctx.runner, ctx.settings.environ, ctx.database, lock_timeout_set=timeout_set)
    except CommandError as exc:
        ctx.log(f"   migration lint failed and was skipped: {exc.message}")
        return None


def make_plan(
    ctx: Context,
    version: PatchVersion,
    report: VerifyReport,
    *,
    remove_unowned: bool = False,
    known: Mapping[str, tuple[int, int, str]] | None = None,
    force: bool = False,
    interrupted: bool = False,
) -> Plan:
    """Compare the install with the patch; list migrations pending, check that a database restore
    would be possible, that every filesystem written has the bytes and inodes needed, and what
    the apply needs after the stop (:func:`patchflow.preconditions.check_before_stop`; ``force``
    lets it go on when the installed version is not healthy now; ``interrupted``: a killed run is
    recovered first, the install's health and access are checked when the plan is made again).

    The tree is scanned with the install's stats cache (``installed-stats``) and ``known`` on top
    (``Plan.seen`` of an earlier plan: ``path -> (size, mtime_ns, sha256)``): a file whose size and
    mtime match is not read again, so planning again under the lock costs a walk of the tree.

    Only paths a patch owns are deleted: those of the installed patch's manifest (the install's
    record), or, on an install without a record, those the new patch lists as deleted since its
    predecessor. Anything else missing from the patch (files the host added: ``storage/``, an
    override file, generated files) is kept and listed as unowned, unless ``remove_unowned``.

    Raises:
        VerifyError: the patch would write where it may not, or a delta does not fit the install.
        DatabaseError: the database is configured but does not answer.
        BackupError: not enough free space or inodes on a filesystem (the message gives numbers),
            or pending migrations while a restore of the database would not be possible.
        PreconditionError: something the apply needs after the stop is missing (all named).
    """
    new_entries = {p: e for p, e in report.entries().items() if p != VERSION_FILE}
    rules = install_rules(ctx, report.manifest)
    check_patch_paths(new_entries, rules)
    cache = {**_read_installed_stats(ctx), **(known or {})}
    current = scan_tree(ctx.paths.root, rules, strict=False, known=cache)
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
    new_pyproject, removed = pyproject_in_patch(
        ctx.paths.archive(version),
        PYPROJECT in diff.added + diff.changed and PYPROJECT in report.archive_entries(),
        PYPROJECT not in diff.deleted,
    )
    settings_changes = release_changes(ctx.settings, new_pyproject, removed=removed)
    changes = Changes(
        str(version),
        installed_version(ctx.paths),
        diff,
        old_entries,
        new_entries,
        list(current.unreadable),
        settings_changes,
    )
    # before the database is asked anything
    checks = check_before_stop(ctx, changes, report, force=force, interrupted=interrupted)
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
    history_warnings: list[str] = []
    server_folder: Path | None = None
    no_snapshot = ""
    method, role = BESIDE, ""
    if ctx.database is not None:
        description = ctx.database.target.location()
        check_answers_now(ctx.database, ctx.settings.db_wait_timeout, ctx.log)
        db_bytes = int(ctx.database.properties()["size"])
        history = MigrationHistory(ctx.database)
        history_warnings = refuse_row_states(ctx, report)  # failed rows, edited applied migrations
        done = {r["name"] for r in history.rows() if r["finished"] and not r["rolled_back"]}
        pending = [m for m in migrations if m not in done]
        if pending:
            history_warnings += refuse_uncovered_history(ctx, report)
            history_warnings += plan_transactions(ctx, report, pending)  # statements refused in a transaction
            history_warnings += plan_schema_drift(ctx)  # hand-made changes the migrations do not know
            refuse_lock_blockers(ctx, report, pending)  # old transactions holding what they lock
            method, problems = restore_plan(ctx.database)
            role = ctx.database.properties(admin=True)["role"] if method == IN_PLACE else ""
            server_folder = ctx.database.server_folder()
            no_snapshot = snapshot_problem(ctx.database, ctx.settings.database_snapshot)
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
    if server_folder is not None:  # a snapshot, or a restore beside (or in place of) the live database
        label = "a restore beside the live one" if no_snapshot else "a snapshot of the database"
        if method == IN_PLACE:
            label = "an in-place restore (old and new rows side by side until it commits)"
        needs.append(Need(server_folder, f"{label} (database server)", db_bytes, 0))
    if pending and method == IN_PLACE:  # a failed apply keeps the live database as a dump, restores by a script
        needs.append(
            Need(ctx.paths.backups, "an in-place restore (a dump of the live database, a script)", 2 * db_bytes, 2)
        )
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
        list(current.warnings) + history_warnings,
    )
    plan.settings_changes = settings_changes
    plan.checks = checks.lines
    plan.checks += [line for line in [rehearsed_line(ctx.paths.state, str(version), pending or [])] if line]
    plan.warnings.extend(checks.warnings)
    plan.old_health = checks.old_health
    plan.snapshot, plan.no_snapshot = bool(pending) and not no_snapshot, no_snapshot
    plan.restore_method, plan.restore_role = method, role
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
        how = " in place (its role may not create databases)" if method == IN_PLACE else ""
        raise BackupError(
            f"The patch runs {len(pending or [])} migration(s), but the database could not be restored{how} if the "
            f"apply failed: {'; '.join(problems)}"
            + (f" (and it cannot be copied by a snapshot either: {no_snapshot})." if no_snapshot else "."),
            "Set PATCHFLOW_DATABASE_ADMIN_URL to a role that may (e.g. the PostgreSQL superuser), or give the "
            "role CREATEDB and the extensions in template1"
            + (", or make it the owner of the database and of what it holds" if method == IN_PLACE else "")
            + ". Nothing was stopped or changed.",
        )
    check_space(needs, margin)
    return plan
