"""Put an install back to what a backup holds: code (files, links, owners, modes, VERSION, the
installed manifest and record) and database.

Used by the undo steps of an apply (automatic rollback, recovery after a kill) and by the steps of
rollback-patch. The database comes back from the backup's snapshot on the database server while it
exists (:mod:`patchflow.snapshot`), else from its dump: beside the live database, or, for a role
that may not create databases, in place in one transaction (:mod:`patchflow.restore_in_place`).
Every function here is idempotent: run twice, or run again after a kill at any instant, it gives
the same install.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from patchflow.backup import Backup
from patchflow.database import DISPLACED_MARK, Database, derived_name, stamp_now, verify_recorded_dump
from patchflow.displaced import record_displaced
from patchflow.errors import BackupError, DatabaseError
from patchflow.faults import FaultHooks
from patchflow.files import (
    check_inside,
    move,
    place_entry,
    remove_path,
    remove_temporaries,
    remove_tree,
    set_ownership,
    sync_filesystem,
    temp_name,
)
from patchflow.lifecycle.journal import Journal
from patchflow.paths import ProjectPaths
from patchflow.restore_in_place import IN_PLACE, restore_in_place
from patchflow.shared_database import write_counters, writes_since
from patchflow.snapshot import forget_snapshots, restore_from_snapshot, snapshot_of


def restore_build_outputs(backup: Backup, root: Path) -> None:
    """Undo :func:`patchflow.backup.swap_build_outputs` (also a partial one): staged copies are
    removed and the old copies moved back.

    Raises:
        OSError: a move failed.
    """
    store = backup.paths.outputs
    for item in reversed(backup.data.get("build_outputs", [])):
        rel = item["path"]
        saved = store / rel
        target = root / rel
        remove_temporaries(saved)
        remove_temporaries(target)
        if item["had_old"] and not saved.exists() and not saved.is_symlink():
            continue  # the old copy was never moved: the tree still holds it
        remove_tree(target)
        if item["had_old"]:
            move(saved, target)


def restore_code(
    backup: Backup,
    paths: ProjectPaths,
    *,
    log: Callable[[str], None] = lambda line: None,
    progress: Callable[[int, int], None] = lambda done, total: None,
    trash: Path | None = None,
) -> list[str]:
    """Put back the code saved in ``backup``: remove what the apply added (and any temporary
    file an interrupted switch left), restore what it replaced or deleted with its exact owner,
    group and mode, restore ``VERSION`` byte-exact (or remove it when there was none) and the
    installed manifest and record. Returns the folders kept because they hold files the patch
    does not own (written since, e.g. uploads), which are also logged. ``progress(done, total)``
    is called after each path removed or put back.

    With ``trash`` (a folder on the install's filesystem, e.g. ``.patchflow/trash-<run>``), each
    folder the apply added whole (every path in it is one the patch added: no file written since)
    is renamed into it in one ``rename`` instead of deleted file by file, so tens of thousands of
    added files cost the stopped window nothing; the caller deletes ``trash`` once the services
    are back (:func:`patchflow.trash.delete_detached`; a folder left by a kill is a leftover the
    next run removes).

    Raises:
        BackupError: a saved file is missing from the backup, or the tree cannot be written.
    """
    root = paths.root
    old = backup.old_entries()
    owners = backup.old_ownership()
    files = backup.paths.files
    kept: list[str] = []
    added = [rel for rel in backup.new_paths() if rel not in old]
    total = len(added) + len(old)
    done = 0
    try:
        restore_build_outputs(backup, root)
        touched = set(backup.new_paths()) | set(old)
        for rel in touched:
            check_inside(root, root / rel)
            remove_path(temp_name(root / rel))
        remove_path(paths.version_temp)
        if trash is not None:
            moved = move_added_folders(root, added, trash)
            if moved:
                added = [rel for rel in added if rel not in moved]
                done += len(moved)
                progress(done, total)
        for rel in sorted(added, key=lambda p: p.count("/"), reverse=True):
            done += 1
            progress(done, total)
            path = root / rel
            check_inside(root, path)
            try:
                remove_path(path)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                kept.append(rel)  # a folder the patch created that now holds files it does not own
        for rel in sorted(old, key=lambda p: (p.count("/"), p)):
            done += 1
            progress(done, total)
            entry = old[rel]
            if entry.type == "file" and not (files / rel).is_file():
                raise BackupError(f"The backup {backup.name} lacks {rel}.", "Restore that file by hand.")
            dest = root / rel
            check_inside(root, dest)
            if entry.type != "dir" and dest.is_dir() and not dest.is_symlink():
                # a folder of the patch stands where a file was; it may hold files written since
                # (uploads...): move it into the backup instead of deleting anything
                aside = backup.paths.displaced / rel
                remove_tree(aside)
                move(dest, aside)
                backup.data.setdefault("displaced", []).append(rel)
                backup.save()
                log(f"   {rel} held files the patch does not own: kept in {aside}")
            place_entry(entry, files, root, exact=owners.get(rel))
        _restore_version(backup, paths)
        for saved, live in (
            (backup.paths.installed_manifest, paths.installed_manifest),
            (backup.paths.installed_record, paths.installed_record),
        ):
            if saved.is_file():
                live.parent.mkdir(parents=True, exist_ok=True)
                tmp = live.with_name(f".{live.name}.tmp")
                shutil.copyfile(saved, tmp)
                os.replace(tmp, live)
            else:
                live.unlink(missing_ok=True)
        sync_filesystem(root)  # the restored tree on disk before the journal says the step is done
    except OSError as exc:
        raise BackupError(
            f"Restoring code from {backup.name} failed: {exc}.",
            "Fix the cause (disk, permissions) and run rollback-patch again.",
        ) from None
    for rel in sorted(kept):
        log(f"   kept {rel}/: it holds files the patch does not own")
    return kept


def _only_added(folder: Path, rel: str, added: set[str]) -> list[str] | None:
    """Every path under ``folder`` (``rel`` in the tree), when each is in ``added``; None when one
    is not (a file written since the apply, e.g. an upload) or the folder cannot be read."""
    inside: list[str] = []
    try:
        for dirpath, dirnames, filenames in os.walk(folder, onerror=_raise):
            base = rel + dirpath[len(str(folder)) :].replace(os.sep, "/")
            for name in (*dirnames, *filenames):
                path = f"{base}/{name}"
                if path not in added:
                    return None
                inside.append(path)
    except OSError:
        return None
    return inside


def _raise(exc: OSError) -> None:
    raise exc


def move_added_folders(root: Path, added: Sequence[str], trash: Path) -> set[str]:
    """Rename into ``trash`` (keeping their relative paths) the outermost folders of ``added``
    (paths relative to ``root``) that hold nothing but paths of ``added``; returns every path so
    moved (the folders and all they hold). A folder holding another file, a rename the filesystem
    refuses (``trash`` on another filesystem) or a trash folder that cannot be made (a full disk:
    deleting path by path frees room, making folders takes it) is left for the caller to remove
    path by path; this never raises.
    """
    wanted = set(added)
    moved: set[str] = set()
    outermost: set[str] = set()
    folders = sorted(
        (rel for rel in wanted if (root / rel).is_dir() and not (root / rel).is_symlink()),
        key=lambda p: (p.count("/"), p),
    )
    for rel in folders:
        parts = rel.split("/")
        if any("/".join(parts[:i]) in outermost for i in range(1, len(parts))):
            continue  # inside a folder already moved
        inside = _only_added(root / rel, rel, wanted)
        if inside is None:
            continue
        dest = trash / rel
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            break  # no room for the trash folder (a full disk, no inodes): the rest is removed path by path
        try:
            os.rename(root / rel, dest)
        except OSError:
            continue  # another filesystem (EXDEV) or a name in the way: removed path by path
        outermost.add(rel)
        moved.add(rel)
        moved.update(inside)
    return moved


def _restore_version(backup: Backup, paths: ProjectPaths) -> None:
    saved = backup.paths.version_file
    if backup.data.get("version_file") and saved.is_file():
        shutil.copyfile(saved, paths.version_temp)
        owner = backup.data.get("version_owner")
        if isinstance(owner, dict) and all(isinstance(owner.get(k), int) for k in ("uid", "gid", "perm")):
            set_ownership(paths.version_temp, owner["uid"], owner["gid"], owner["perm"])
        os.replace(paths.version_temp, paths.version_file)
    else:  # there was no VERSION before the patch
        paths.version_file.unlink(missing_ok=True)


def restore_database(
    database: Database,
    backup: Backup,
    stamp: str,
    paths: ProjectPaths,
    *,
    log: Callable[[str], None] = lambda line: None,
    wait: float = 0.0,
    attempts: int = 3,
    method: str = "",
    checkpoint: Callable[[str], None] = lambda point: None,
) -> str:
    """Put the database of ``backup`` back in place of the live one and keep the live one: its
    snapshot on the database server when it is still there (a rename swap:
    :func:`patchflow.snapshot.restore_from_snapshot`; then forgotten, it is the live database now),
    else its dump, proven first, restored beside the live database and swapped in (see
    :meth:`patchflow.database.Database.restore_beside`), or, with ``method`` ``in-place`` (a role that
    may not create databases: :func:`patchflow.restore_in_place.restore_method`), restored in place in
    one transaction after the live database is dumped into the backup folder
    (:func:`patchflow.restore_in_place.restore_in_place`; no snapshot is used then). Returns the name
    the displaced database is kept under (in place: the path of its dump).

    With ``wait`` (seconds: ``db_wait_timeout``) the server is waited for first, as after a
    fail-over or a crash (the undo of a migration the restart interrupted), and when it stops
    answering during the restore it is waited for again and the restore repeated (``attempts`` in
    all; the restore is idempotent for one ``stamp``). ``checkpoint`` is passed to
    :meth:`patchflow.database.Database.restore_beside` (the tests' kill hooks).

    Raises:
        BackupError: the backup has neither a snapshot left nor a dump, or its dump is corrupt or
            incomplete (nothing changed).
        DatabaseError: the server did not come back within ``wait``, or the restore failed; the
            live database is unchanged.
    """
    from patchflow.dbwait import answers, classify, reason_of, wait_for_server

    dump = backup.dump_path
    recorded = backup.database
    snapshot = snapshot_of(backup)
    if (dump is None or recorded is None) and snapshot is None:
        raise BackupError(
            f"Backup {backup.name} holds no database dump.",
            "Nothing was restored; the database is as it was.",
        )
    if wait:
        wait_for_server(database, wait, log, admin=True)
    displaced = derived_name(database.target.dbname, DISPLACED_MARK, stamp)
    # the snapshot while it exists (or once it was swapped in by an earlier attempt with this stamp)
    in_place = method == IN_PLACE
    use_snapshot = not in_place and snapshot is not None and (database.exists(snapshot) or database.exists(displaced))
    if not use_snapshot:
        if dump is None or recorded is None:
            why = "cannot be put back by a role without CREATEDB" if in_place else "is gone from the server"
            raise BackupError(
                f"Backup {backup.name} holds no database dump and its snapshot {snapshot} {why}.",
                "Nothing was restored; the database is as it was. Restore by hand from another backup.",
            )
        verify_recorded_dump(database, dump, recorded, backup.name)
    attempt = 1
    while True:
        try:
            if use_snapshot:
                assert snapshot is not None
                displaced = restore_from_snapshot(database, snapshot, stamp, log, checkpoint)
            elif in_place:
                assert dump is not None
                displaced = str(restore_in_place(database, dump, stamp, backup.folder, log))
            else:
                assert dump is not None
                displaced = database.restore_beside(dump, stamp, log, checkpoint)
            break
        except DatabaseError as exc:
            lost = answers(database, admin=True) if wait and attempt < attempts else None
            if lost is None or classify(lost) != "down":
                raise DatabaseError(
                    f"Restoring the database from {backup.name} failed: {exc.message}", exc.hint
                ) from None
            log(f"   the database server stopped answering during the restore ({reason_of(lost)}): restoring again")
            wait_for_server(database, wait, log, admin=True)
            attempt += 1
    if in_place:
        log(f"   rows written since {backup.created_at[:19]}Z are kept in the dump {displaced}")
        return displaced
    record_displaced(paths, displaced, database.target.dbname, backup.name, backup.created_at)
    if use_snapshot and snapshot is not None:
        forget_snapshots(paths, {snapshot})  # it is the live database now
    log(f"   rows written since {backup.created_at[:19]}Z are kept in database {displaced}")
    baseline = backup.data.get("writes_baseline")
    if isinstance(baseline, dict):  # noted by the apply before its services started
        try:
            written = writes_since(baseline, write_counters(database, displaced))
        except DatabaseError as exc:
            written = [f"not known ({exc.message})"]
        head = f"   rows written since the new version started, kept only in {displaced}"
        log(f"{head}: none" if not written else f"{head}:")
        for line in written:
            log(f"     {line}")
    return displaced


def restore_database_journaled(
    database: Database,
    backup: Backup,
    journal: Journal,
    paths: ProjectPaths,
    choose_method: Callable[[], str],
    *,
    log: Callable[[str], None],
    wait: float,
    faults: FaultHooks,
) -> str:
    """:func:`restore_database` as a step of an apply's undo or of a rollback: the time stamp and
    the method (``choose_method()`` when the journal has none yet) are noted in ``journal`` before
    the restore starts, so a recovery after a kill restores the same way into the same names; the
    displaced database is noted after it. Returns its name (in place: the path of its dump).

    Raises:
        BackupError, DatabaseError: as :func:`restore_database` (the live database unchanged).
    """
    stamp = journal.notes.get("restore_stamp") or stamp_now()
    method = journal.notes.get("restore_method") or choose_method()
    journal.note(restore_stamp=stamp, restore_method=method)
    displaced = restore_database(
        database, backup, stamp, paths, log=log, wait=wait, method=method, checkpoint=faults.checkpoint
    )
    faults.checkpoint("database-restored")  # restored, the step not yet done: it runs again
    journal.note(displaced_database=displaced)
    return displaced
