"""Where an apply dumps the database: before the stop when the patch changes no schema; from a
snapshot after the restart when it does.

The backup's database dump (``pg_dump --format=custom``, proven by a full ``pg_restore``
read-through) is what ``rollback-patch --restore-database`` restores. Its place in the apply
follows from what it is for:

* **no pending migration** (the plan's ``pending_migrations`` is ``[]``): the apply never touches
  the database and its automatic undo keeps the live one, so the dump serves only a later
  ``rollback-patch --restore-database``; it is taken by the ``dump`` step, *before* the stop
  (:meth:`DumpSteps.dump_before_stop`), and the stopped window holds no database work, whatever
  the database's size. The backup step then adds the files to the same backup folder;
* **pending migrations**: a failed migration is undone from a copy holding every row written
  until the services stopped. Where the role may (:func:`patchflow.snapshot.snapshot_problem`),
  that copy is a **snapshot** on the database server taken by the ``snapshot`` step inside the
  stopped window (a file copy, no dump: :mod:`patchflow.lifecycle.apply_snapshot`), and the dump
  is taken *from the snapshot* by the ``dump-snapshot`` step after the commit, while the new
  version serves;
* **pending migrations, no snapshot** (``database_snapshot = off``, a database reached through
  ``docker compose exec``, a role that may not copy it, or a snapshot the server refused): the
  dump is taken inside the stopped window by the backup step (:meth:`DumpSteps.dump_into`). A
  role that owns the database but may not create databases can restore it only in place
  (:mod:`patchflow.restore_in_place`): the plan says so, with the cost and how to avoid it
  (:func:`dump_place`, :func:`undo_place`).

An apply whose dump was taken before the stop notes it in its journal (``dump_before_stop``): its
migrate step refuses to run a migration that became pending after the plan (the dump would miss
the rows written between the dump and the stop), and its undo ``restore-database`` keeps the live
database. Both steps are idempotent and a kill anywhere in them is undone by ``drop-dump`` /
``drop-backup`` (an incomplete backup folder is removed; no service was stopped by the dump step).
"""

from __future__ import annotations

from patchflow.backup import Backup, backup_name, load_backup, new_backup
from patchflow.errors import BackupError, PatchflowError
from patchflow.lifecycle.apply_state import ApplyState
from patchflow.lifecycle.planning import Plan
from patchflow.restore_in_place import IN_PLACE
from patchflow.snapshot import dump_snapshot as dump_copy


def dump_place(plan: Plan) -> str:
    """Where the apply of ``plan`` dumps the database, and why (one line for the plan); "" when no
    database is configured."""
    if plan.pending_migrations is None:
        return ""
    if plan.dump_before_stop:
        return (
            "before the stop, while the installed version still serves: no migration is pending, so this apply "
            "leaves the database as it is and the dump only serves a later rollback-patch --restore-database"
        )
    count = len(plan.pending_migrations)
    if plan.snapshot:
        return (
            f"after the restart, from a snapshot: {count} migration(s) pending; inside the stopped window the "
            "database is copied on its own server (CREATE DATABASE ... TEMPLATE, a file copy, no dump), a failed "
            "migration is undone from that snapshot, and the portable dump is taken from it once the new version "
            "is healthy"
        )
    place = (
        f"after the stop, inside the stopped window: {count} migration(s) pending, and a failed migration is undone "
        "from this dump, which must hold every row written until the services stop"
        + (f"; no snapshot: {plan.no_snapshot}" if plan.no_snapshot else "")
    )
    if plan.restore_method == IN_PLACE:
        role = plan.restore_role or "the restoring role"
        place += (
            ", so the dump runs while the services are stopped and the stopped window grows with the database "
            f"(give role {role} CREATEDB, or set PATCHFLOW_DATABASE_ADMIN_URL to a role that may create databases, "
            "to copy it by a snapshot instead)"
        )
    return place


def undo_place(plan: Plan) -> str:
    """How a failed migration of ``plan`` is undone (one line for the plan); "" when no migration is
    pending."""
    if not plan.pending_migrations:
        return ""
    if plan.snapshot:
        return "the snapshot is put back by a rename; the live database is kept beside it, renamed"
    if plan.restore_method == IN_PLACE:
        role = plan.restore_role or "the restoring role"
        return (
            f"in place, in one transaction (role {role} may not create databases, so the dump cannot be restored "
            "beside the live database): the live database is first dumped into the backup folder and kept, then "
            "emptied and refilled from the dump; a failure or a kill leaves it exactly as it was, never half restored"
        )
    return "the dump is restored beside the live database and swapped in by a rename; the live one is kept, renamed"


class DumpSteps(ApplyState):
    """The ``dump`` step of an apply and the dump shared with the backup step."""

    def open_backup(self) -> Backup:
        """This apply's backup folder: the one the ``dump`` step made, else a new one (its name
        recorded in the journal before the folder exists, so ``drop-backup`` finds a folder a kill
        left right after its creation).

        Raises:
            BackupError: the folder cannot be created.
        """
        assert self.plan is not None and self.journal is not None
        if self.journal.backup:
            existing = load_backup(self.ctx.paths.backups / self.journal.backup)
            if existing is not None and not existing.complete:
                self.backup = existing
                return existing
        self.journal.backup = backup_name(self.version)
        self.journal.save()
        backup = new_backup(
            self.ctx.paths,
            self.version,
            self.from_version,
            old_entries=list(self.plan.old_entries.values()),
            new_paths=self.plan.diff.added,
            name=self.journal.backup,
        )
        self.backup = backup
        return backup

    def dump_into(self, backup: Backup, *, when: str, snapshot: str | None = None) -> None:
        """Dump the database (or, with ``snapshot``, that snapshot of it) into ``backup`` (proven)
        and record it in ``backup.json``; ``when`` (``before the stop``, ``after the stop``...) is
        recorded as ``taken``.

        Raises:
            BackupError: the dump or its proof failed.
        """
        ctx = self.ctx
        assert ctx.database is not None
        ctx.log(f"   database dump ({when})")
        try:
            progress = ctx.progress.bytes("dumped")
            if snapshot is None:
                dump = ctx.database.dump(backup.paths.dump, progress=progress)
            else:
                dump = dump_copy(ctx.database, snapshot, backup.paths.dump, progress)
        except PatchflowError as exc:
            raise BackupError(f"The database backup failed: {exc.message}", exc.hint) from None
        backup.data["database"] = {
            "file": dump.path.name,
            "size": dump.size,
            "sha256": dump.sha256,
            "properties": dump.properties,
            "taken": when,
        }
        backup.save()
        ctx.log(f"   dump proven: {dump.size} bytes, sha256 {dump.sha256[:16]}...")

    def dump_before_stop(self) -> None:
        """The ``dump`` step, before the stop: with no pending migration, make the backup folder
        and dump the database into it (see the module docstring); otherwise nothing (the backup
        step dumps inside the stopped window)."""
        plan = self.plan
        if self.ctx.database is None or plan is None or not plan.dump_before_stop or self.options.database_backup_on:
            return  # (in deploy's group window the first host's apply backed the database up)
        journal = self.journal
        assert journal is not None
        journal.note(dump_before_stop=True)  # before the dump: migrate and restore-database read it
        self.dump_into(self.open_backup(), when="before the stop")
