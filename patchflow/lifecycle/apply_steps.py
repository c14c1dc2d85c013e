"""The apply steps that change the install (stage to cleanup), each with its undo.

Stage, dump, stop, snapshot, backup, switch, migrate, start, health, commit, dump-snapshot, cleanup
(dump and snapshot in :mod:`patchflow.lifecycle.apply_dump` and
:mod:`patchflow.lifecycle.apply_snapshot`).

Slow, safe work (extraction, install, build, image builds) happens in stage while the old version
still runs; the stopped window is only stop -> snapshot -> backup -> switch -> migrate -> start ->
health.
Every step and undo is idempotent: recovery may run one again after a kill inside it.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

from patchflow.archive.extract import extract_archive
from patchflow.backup import save_files, swap_build_outputs
from patchflow.commands import split_command
from patchflow.database import Database
from patchflow.errors import (
    ApplyError,
    CommandError,
    DatabaseError,
    HealthCheckError,
    PatchflowError,
    PreconditionError,
    VerifyError,
)
from patchflow.files import (
    Ownership,
    check_inside,
    place_entry,
    private_folder,
    remove_path,
    remove_tree,
    set_ownership,
    sync_filesystem,
)
from patchflow.installed import HealthRecord, InstalledRecord
from patchflow.lifecycle.apply_snapshot import SnapshotSteps
from patchflow.lifecycle.journal import HistoryRecord, append_history, utc_now, write_json_atomic
from patchflow.lifecycle.planning import Plan
from patchflow.maintenance_page import page_off, page_on
from patchflow.migrations import MigrationHistory, find_migrations, run_migrations
from patchflow.paths import VERSION_FILE, VERSION_TEMP
from patchflow.proving import old_version_health, start_old_version
from patchflow.restore import restore_code, restore_database_journaled
from patchflow.restore_in_place import restore_method
from patchflow.services import start_with_retries
from patchflow.shared_database import refuse_other_clients, write_counters
from patchflow.smoke import parse_checks, run_smoke_checks
from patchflow.snapshot import snapshot_of
from patchflow.space import check_space
from patchflow.state_files import seal
from patchflow.stopped_window import step_record
from patchflow.verify import VerifyReport, verify_patch
from patchflow.version import PatchVersion, read_version_file


def switch_files(
    plan: Plan,
    staging: Path,
    root: Path,
    version: PatchVersion,
    version_file: Path,
    written: Callable[[str], None] | None = None,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> None:
    """Make the tree equal to the staged patch: delete what the patch no longer has (deepest
    first), place added and changed entries (shallowest first, files renamed into place), then
    write ``VERSION`` (the patch's bytes when it carries one). Idempotent: a re-run converges.
    ``written`` is passed to :func:`patchflow.files.place_entry` (the kill hook); ``progress(done,
    total)`` is called after each path deleted or placed."""
    diff = plan.diff
    type_changed = [p for p in diff.changed if plan.old_entries[p].type != plan.new_entries[p].type]
    total = len(diff.deleted) + len(type_changed) + len(diff.added) + len(diff.changed)
    done = 0
    for rel in sorted(diff.deleted + type_changed, key=lambda p: p.count("/"), reverse=True):
        done += 1
        progress(done, total)
        path = root / rel
        check_inside(root, path)
        if plan.old_entries[rel].type == "dir" and path.is_dir() and not path.is_symlink():
            try:
                path.rmdir()
            except OSError as exc:
                # the folder still holds files the patch does not own (e.g. node_modules): keep it
                if rel in type_changed or exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            continue
        remove_path(path)
    for rel in sorted(diff.added + diff.changed, key=lambda p: (p.count("/"), p)):
        place_entry(plan.new_entries[rel], staging, root, written=written)
        done += 1
        progress(done, total)
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


def chosen_method(database: Database, plan: Plan | None) -> str:
    """How the undo of a failed migration restores the database: the plan's choice, else (a
    recovery, which has no plan) :func:`patchflow.restore_in_place.restore_method` now.

    Raises:
        DatabaseError: the role's rights cannot be read.
    """
    return plan.restore_method if plan is not None else restore_method(database)


class ChangeSteps(SnapshotSteps):
    """The steps of an apply from stage to cleanup and their undos (methods named by
    :data:`patchflow.lifecycle.apply.APPLY_STEPS`)."""

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
        private_folder(self.staging.parent)
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
                    "Rebuild it with create-patch (it always packs VERSION as the patch's own version). "
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
            if self.from_version:
                # the installed version's images, under a version tag: a rollback starts them, never builds
                kept = ctx.services.keep_images(self.from_version)
                if kept:
                    self._require_journal().note(kept_images=kept)
                    ctx.log(f"   kept {self.from_version}'s images: {', '.join(sorted(kept.values()))}")
            ctx.services.build(self.staging)
        if self.plan is not None:
            # again, before anything stops: the install and build may have used more than planned
            check_space(
                [n for n in self.plan.needs if n.label not in ("staging", "space reserve")],
                int(ctx.settings.free_space_margin),
            )

    def drop_staging(self) -> None:
        """Undo of stage: remove the staging folder; the images the staging build replaced are
        pointed back at the installed version's kept ones (a later ``up`` must not start a build
        that was never installed)."""
        remove_tree(self.staging)
        if self.from_version and self.ctx.services.app_services():
            self.ctx.services.restore_images(self.from_version)

    def stop(self) -> None:
        """Stop the application services (data services keep running). With a snapshot to take, a
        ``CHECKPOINT`` first, while they still run: the snapshot's copy (``STRATEGY FILE_COPY``)
        starts with a checkpoint of its own inside the stopped window, which then has only the
        pages written since to flush, not everything since the server's last checkpoint."""
        if self.plan is not None and self.plan.snapshot and self.ctx.database is not None:
            try:
                self.ctx.database.execute("CHECKPOINT", admin=True, what="checkpoint before the stop")
            except DatabaseError:
                self.ctx.log("   no checkpoint before the stop (the role is not superuser nor pg_checkpoint)")
        self.stopped_at = time.monotonic()
        self.stopped_wall = time.time()
        self.ctx.services.stop()
        self._notice_on()
        plan, database = self.plan, self.ctx.database
        if plan is not None and plan.pending_migrations and database is not None:
            if self.options.database_backup_on:
                raise ApplyError(
                    f"{len(plan.pending_migrations)} migration(s) are pending here, but this apply was told the "
                    f"database was backed up and migrated by {self.options.database_backup_on}: nothing was migrated.",
                    "Run `inv deploy` again: its group window migrates once, on the first host of the group.",
                )
            if not self.options.others_stopped:  # a shared database: deploy's group window, or --others-stopped
                refuse_other_clients(database, "migrate")

    def _checklist(self, report: VerifyReport) -> dict[str, object]:
        """The deploy record's evidence (README: Deploy checklist): the release checklist create-patch
        recorded, who signed the patch, what proved it healthy, how many smoke checks passed."""
        settings = self.ctx.settings
        release = report.manifest.get("checklist")
        return {
            "release": {k: v.get("ok") for k, v in release.items()} if isinstance(release, dict) else None,
            "signed_by": report.signed_by or None,
            "health": list(settings.health_url),
            "smoke_checks": len(parse_checks(settings.smoke_checks)),
        }

    def _notice_on(self) -> None:
        """The maintenance notice on the app's ports while they are stopped (:mod:`patchflow.maintenance_page`)."""
        settings = self.ctx.settings
        page_on(settings.maintenance_ports, settings.maintenance_page, self.ctx.paths.root, self.ctx.log)

    def start_old(self) -> None:
        """Undo of stop: start the old version again (whatever its health says) and prove it
        healthy with the settings it was proven with (:mod:`patchflow.proving`); a health failure
        is kept in ``old_unhealthy`` and reported by the failure's message.

        Raises:
            ServiceError: the old version does not run.
        """
        page_off(self.ctx.log)  # the ports are the old version's again
        notes = self.journal.notes if self.journal else {}
        health = old_version_health(self.ctx, self.from_version, notes.get("old_health"))
        removed = notes.get("removed_services")  # the services the patch had removed
        # compose: the installed version's images were kept under a version tag before the build
        self.old_unhealthy, used = start_old_version(
            self.ctx, self.from_version, health, extra=[str(s) for s in removed or []]
        )
        self.old_health_used = used.describe()

    def take_backup(self) -> None:
        """Back up what the switch replaces or deletes, VERSION, and the database (proven dump)
        unless the ``dump`` step took it before the stop or the ``snapshot`` step copied it
        (:mod:`patchflow.lifecycle.apply_dump`)."""
        assert self.plan is not None and self.journal is not None
        ctx = self.ctx
        backup = self.open_backup()
        if self.journal.notes.get("old_health"):  # what a rollback judges the restored version by
            backup.data["restores_health"] = self.journal.notes["old_health"]
        save_files(
            backup,
            ctx.paths.root,
            [ctx.paths.installed_manifest, ctx.paths.installed_record],
            progress=ctx.progress.files("backed up"),
        )
        snapshot = snapshot_of(backup)
        if snapshot is not None:
            ctx.log(f"   database: copied by the snapshot {snapshot} (dumped from it after the restart)")
        elif ctx.database is not None and self.options.database_backup_on:
            backup.data["database_backup_on"] = self.options.database_backup_on
            ctx.log(f"   database: backed up once for the group, by {self.options.database_backup_on}")
        elif ctx.database is not None and not backup.data.get("database"):
            self.dump_into(backup, when="after the stop")
            # how this apply undoes a failed migration from it (the undo records its own choice too)
            backup.data["database"]["restore"] = self.plan.restore_method
        elif backup.data.get("database"):
            ctx.log("   database: dumped before the stop (no migration pending)")
        backup.data["size_bytes"] = int(backup.data.get("files_bytes", 0)) + (
            int(backup.data["database"]["size"]) if backup.data.get("database") else 0
        )
        sync_filesystem(backup.folder)  # the copies on disk before "complete" vouches for them (the switch is next)
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
            self._require_journal().note(removed_services=removed)
            ctx.log(f"   removing services the patch drops: {', '.join(removed)}")
            ctx.services.remove(removed)
        switch_files(
            self.plan,
            self.staging,
            ctx.paths.root,
            self.version,
            ctx.paths.version_file,
            ctx.settings.faults.kill_point("switch-file"),
            ctx.progress.files("switched"),
        )
        swapped = swap_build_outputs(backup, self.staging, ctx.paths.root, tuple(ctx.settings.build_outputs))
        if swapped:
            ctx.log(f"   build outputs switched: {', '.join(swapped)}")
        sync_filesystem(ctx.paths.root)  # the new tree on disk before the journal says the switch is done

    def restore_code(self) -> None:
        """Undo of switch: put back the code from the backup (folders the apply added whole are
        renamed into a trash folder, deleted once the old version is back)."""
        trash = self.ctx.paths.trash(f"restore-{self._require_journal().run_id}")
        self.trash.append(trash)
        restore_code(
            self._require_backup(),
            self.ctx.paths,
            log=self.ctx.log,
            progress=self.ctx.progress.files("restored"),
            trash=trash,
        )

    def migrate(self) -> None:
        """Wait for a real database connection, then run the pending migrations (bounded)."""
        ctx = self.ctx
        if ctx.database is None:
            return
        assert self.journal is not None
        ctx.database.wait_ready(ctx.settings.db_wait_timeout, ctx.log)  # first: the server may be restarting
        if self.plan is not None and self.plan.pending_migrations and not self.options.others_stopped:
            try:  # again: a client that connected since the stop (a host started meanwhile) refuses too
                refuse_other_clients(ctx.database, "migrate", wait=0.5)
            except PreconditionError:
                self.journal.note(pending=[])  # none was run: the undo keeps the live database and its rows
                raise
        pending = [m.name for m in MigrationHistory(ctx.database).pending(find_migrations(ctx.paths.root))]
        self.journal.note(pending=pending)
        if pending and self.journal.notes.get("dump_before_stop"):
            # the dump was taken before the stop: it lacks the rows written since, so it could not
            # undo a migration without losing them
            raise ApplyError(
                f"Migration(s) {', '.join(pending)} became pending after the plan, which found none (the "
                "database's migration history changed meanwhile); none was run.",
                "The patch is rolled back and the database kept as it is. Check who changed _prisma_migrations, "
                "then apply again: the plan will show the pending migrations and dump inside the stopped window.",
            )
        self.applied = run_migrations(
            ctx.settings, ctx.database, ctx.runner, ctx.paths.root, ctx.log, progress=ctx.progress.migrations()
        )
        self.journal.note(migrations=self.applied)

    def restore_database(self) -> None:
        """Undo of migrate: when migrations were to run, restore the dump beside the live database
        and swap (the displaced one is kept); when none were, keep the live database."""
        ctx = self.ctx
        journal = self._require_journal()
        if ctx.database is None:
            return
        if journal.notes.get("dump_before_stop"):
            ctx.log("   database kept: no migration was pending, none was run")
            return
        if journal.notes.get("pending") == []:
            ctx.log("   database kept: this apply ran no migration")
            return
        ctx.database.terminate_sessions()
        database = ctx.database

        def choose() -> str:  # once, by the role's rights (the plan's choice, else read now)
            if self.plan is None:  # a recovery reads the role's rights: wait for a restarting server first
                database.wait_ready(ctx.settings.db_wait_timeout, ctx.log)
            return chosen_method(database, self.plan)

        restore_database_journaled(
            database,
            self._require_backup(),
            journal,
            ctx.paths,
            choose,
            log=ctx.log,
            wait=ctx.settings.db_wait_timeout,
            faults=ctx.settings.faults,
        )

    def start(self) -> None:
        """Start the new version (bounded retries) and wait until it serves its ports. First, with a
        database in the backup, the rows written per table so far are noted in it (``writes_baseline``:
        a restore names what was written since, :func:`patchflow.shared_database.writes_since`)."""
        ctx = self.ctx
        page_off(ctx.log)  # before the new version binds its ports
        backup = self._backup()
        if ctx.database is not None and backup is not None and (backup.database or snapshot_of(backup)):
            try:
                backup.data["writes_baseline"] = write_counters(ctx.database)
                backup.save()
            except DatabaseError as exc:
                ctx.log(f"   rows written per table not noted ({exc.message})")
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
        one) a process started after the stop answering, services still running; then the smoke
        checks (:mod:`patchflow.smoke`) pass.

        Raises:
            HealthCheckError: unhealthy, or a smoke check failed (the apply rolls back).
        """
        proof = self.plan.health_proof if self.plan is not None else ""
        since = self.stopped_wall if proof else None
        self.ctx.log(
            f"   waiting up to {self.ctx.settings.health_timeout:.0f} s for {', '.join(self.ctx.settings.health_url)}"
        )
        self._wait_healthy(str(self.version), since)
        checks = parse_checks(self.ctx.settings.smoke_checks)
        if checks:  # PATCH_SYSTEM.md's "test the critical features", before the commit
            failed = run_smoke_checks(checks, self.ctx.runner, self.ctx.paths.root, self.ctx.log)
            if failed:
                raise HealthCheckError(
                    f"{len(failed)} smoke check(s) failed on {self.version}: {'; '.join(failed[:5])}",
                    "The smoke_checks setting lists them; the old version is restored.",
                )
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
        write_json_atomic(ctx.paths.installed_manifest, seal(report.tree_manifest()), mode=0o644)
        ctx.settings.faults.checkpoint("manifest-recorded")  # inside the commit
        if self.plan is not None:
            write_json_atomic(ctx.paths.installed_stats, self._stats_after_switch(self.plan), mode=0o644)
        InstalledRecord(
            version=str(self.version),
            backup=backup.name if backup else "",
            from_version=self.from_version,
            applied_at=utc_now(),
            migrations=tuple(self.applied),
            health=HealthRecord.of(ctx.settings, proven_at=utc_now()),
        ).save(ctx.paths)
        if backup is not None:
            backup.data["migrations_applied"] = list(self.applied)
            backup.save()
        record: HistoryRecord = {
            "action": "apply",
            "run_id": journal.run_id,
            "from_version": self.from_version or None,
            "to_version": str(self.version),
            "started_at": self.started_at,
            "duration_seconds": round(time.monotonic() - self.started, 3),
            "stopped_seconds": round(self.stopped_seconds, 3),
            **cast(HistoryRecord, step_record(self.step_seconds, self.plan)),  # steps, work
            "result": "success",
            "backup": backup.name if backup else None,
            "migrations": self.applied,
            "checklist": self._checklist(report),
        }
        if self.resumed:
            record["recovered"] = True
        append_history(ctx.paths.history, record)

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
