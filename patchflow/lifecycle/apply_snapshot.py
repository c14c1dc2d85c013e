"""The apply steps of a snapshot (:mod:`patchflow.snapshot`): ``snapshot`` inside the stopped
window, its undo ``drop-snapshot``, and ``dump-snapshot`` after the commit.

* ``snapshot`` (stopped, before ``backup``): with pending migrations and a role that may
  (:attr:`patchflow.lifecycle.planning.Plan.snapshot`), the backup folder is opened and the
  database copied on its own server under :func:`patchflow.snapshot.snapshot_name`. The name is
  noted in the journal, then recorded in ``.patchflow/snapshots.json``, *before* the copy exists:
  a kill anywhere in the step leaves a name its undo drops and patch-status lists. The copy is
  this backup's copy of the database (``backup.json`` ``snapshot``), so the backup step dumps
  nothing; if the server refuses it, the backup step dumps inside the window as before.
* ``drop-snapshot`` drops it (when a restore did not put it in place of the live database
  already) and forgets it; a drop the server refuses is logged and leaves the record, which
  ``prune-backups`` drops once its backup is gone.
* ``dump-snapshot`` (after ``commit``: the new version is installed and serves) dumps the
  snapshot into the backup and proves it, then drops the snapshots past ``snapshot_keep_hours``.
  It never turns a success into a failure: a dump that fails leaves the snapshot as its backup's
  copy of the database, recorded as such, and the apply's output and patch-status say so.
"""

from __future__ import annotations

from datetime import UTC, datetime

from patchflow.errors import DatabaseError, PatchflowError
from patchflow.lifecycle.apply_dump import DumpSteps
from patchflow.lifecycle.journal import utc_now
from patchflow.snapshot import (
    FAILED,
    PROVEN,
    create_snapshot,
    drop_expired,
    expires_at,
    forget_snapshots,
    read_snapshots,
    record_snapshot,
    snapshot_name,
    snapshot_of,
    update_snapshot,
)
from patchflow.snapshot import drop_snapshot as drop_on_server


class SnapshotSteps(DumpSteps):
    """The ``snapshot`` and ``dump-snapshot`` steps of an apply and the undo ``drop-snapshot``
    (methods named by :data:`patchflow.lifecycle.apply.APPLY_STEPS`)."""

    def take_snapshot(self) -> None:
        """Copy the database on its server as this apply's backup of it, when the plan says so
        (see the module docstring); nothing otherwise.

        Raises:
            BackupError: the backup folder cannot be created.
            OSError: the snapshot's record cannot be written (nothing was copied).
        """
        ctx, plan = self.ctx, self.plan
        if ctx.database is None or plan is None or not plan.snapshot:
            return
        journal = self._require_journal()
        backup = self.open_backup()
        live = ctx.database.target.dbname
        name = snapshot_name(live, backup.name)
        journal.note(snapshot=name)  # before anything exists: drop-snapshot finds it after a kill
        record_snapshot(ctx.paths, name, live, backup.name)
        ctx.settings.faults.checkpoint("snapshot-recorded")
        ctx.log(f"   snapshot of {live} on its server: {name}")
        try:
            create_snapshot(ctx.database, name, ctx.log)
        except DatabaseError as exc:
            forget_snapshots(ctx.paths, {name})
            ctx.log(f"!! {exc.message}: the database is dumped inside the stopped window instead")
            return
        ctx.settings.faults.checkpoint("snapshot-created")
        backup.data["snapshot"] = {"name": name, "database": live, "taken": "inside the stopped window"}
        backup.save()
        update_snapshot(ctx.paths, name, created_at=utc_now())

    def drop_snapshot(self) -> None:
        """Undo of snapshot: drop the snapshot this apply noted and forget it (nothing when a restore
        put it in place of the live database: its name is gone)."""
        ctx = self.ctx
        name = self.journal.notes.get("snapshot") if self.journal is not None else None
        if not name or ctx.database is None:
            return
        try:
            drop_on_server(ctx.database, name)
        except DatabaseError as exc:
            ctx.log(
                f"!! the snapshot {name} could not be dropped: {exc.message}; it stays recorded (patch-status lists "
                "it, prune-backups drops it)"
            )
            return
        forget_snapshots(ctx.paths, {name})

    def dump_snapshot(self) -> None:
        """After the commit: dump the snapshot into the backup (proven), then drop the snapshots past
        ``snapshot_keep_hours``; what became of it is kept in :attr:`database_note`. Never raises
        for a failed dump or drop (the apply is complete): see the module docstring."""
        ctx = self.ctx
        journal = self._require_journal()
        name = journal.notes.get("snapshot")
        backup = self._backup()
        if not name or ctx.database is None or backup is None or snapshot_of(backup) != name:
            return
        if backup.database is None:  # not yet dumped (a recovery runs this step again after a kill)
            try:
                self.dump_into(backup, when=f"from the snapshot {name}, after the restart", snapshot=name)
                backup.data["size_bytes"] = int(backup.data.get("files_bytes", 0)) + int(
                    backup.data["database"]["size"]
                )
                backup.save()
                update_snapshot(ctx.paths, name, dump=PROVEN)
            except (PatchflowError, OSError) as exc:
                reason = exc.message if isinstance(exc, PatchflowError) else str(exc)
                try:
                    update_snapshot(ctx.paths, name, dump=FAILED, dump_error=reason)
                except OSError:
                    pass  # listed as pending: kept all the same
                self.database_note = (
                    f"the dump of the snapshot failed ({reason}): {self.version} is applied and the snapshot {name} "
                    f"is kept as backup {backup.name}'s copy of the database (patch-status lists it; rollback-patch "
                    "puts it back; it is dropped only with its backup)"
                )
                ctx.log(f"!! {self.database_note}")
                return
        try:
            dropped = drop_expired(ctx.database, ctx.paths, ctx.settings.snapshot_keep_hours, log=ctx.log)
        except (PatchflowError, OSError) as exc:
            reason = exc.message if isinstance(exc, PatchflowError) else str(exc)
            ctx.log(f"!! expired snapshots were not dropped: {reason} (prune-backups drops them)")
            dropped = []
        record = next((r for r in read_snapshots(ctx.paths) if r["name"] == name), None)
        until = expires_at(record, ctx.settings.snapshot_keep_hours) if record is not None else None
        if name in dropped or record is None:
            kept = f"was dropped once its dump was proven (snapshot_keep_hours = {ctx.settings.snapshot_keep_hours:g})"
        elif until is not None:
            stamp = datetime.fromtimestamp(until, UTC).strftime("%Y-%m-%d %H:%M UTC")
            kept = f"is kept until {stamp} (snapshot_keep_hours): a rollback-patch meanwhile puts it back by a rename"
        else:
            kept = "is kept"
        self.database_note = f"database dumped from the snapshot {name} after the restart (proven); the snapshot {kept}"
