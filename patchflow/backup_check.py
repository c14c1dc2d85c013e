"""A backup is an input (issue 22): checked before a rollback restores it and by ``patch-status --verify``.

``backup.json`` carries ``checksum``: the SHA-256 of its own JSON without that key (sorted keys,
compact separators, UTF-8), set by every :meth:`patchflow.backup.Backup.save`. A backup whose
record was changed since (a path added to ``new_paths``, ``old_entries`` emptied, another
``restores_version``) is refused, never restored as it says; a backup of patchflow before the
checksum has none and is read as before.

:func:`backup_problems` lists, in words, what makes a backup unfit to restore: the checksum; each
saved file missing, of another size or (``deep``) another SHA-256 than recorded; the database dump
missing, short or (``deep``) another SHA-256; and, given the installed tree, a path the rollback
would delete that the installed version does not hold (it can only be a file of the host: an
upload, a setting), so a rollback never deletes what the patch did not add.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from patchflow.backup import Backup
from patchflow.delta import manifest_entries
from patchflow.digests import file_digest
from patchflow.errors import BackupError
from patchflow.installed import read_installed_record
from patchflow.manifest import Entry
from patchflow.paths import ProjectPaths
from patchflow.state_files import CHECKSUM_KEY, StateFileError, record_checksum


def backup_problems(
    backup: Backup, *, tree: Mapping[str, Entry] | None = None, deep: bool = False, dump_digest: bool = True
) -> list[str]:
    """What makes ``backup`` unfit to restore, one phrase each (empty: fit). ``tree``: the
    installed version's entries (``.patchflow/installed-manifest.json``), when the backup is the
    one restoring from it; ``deep``: also hash every saved file and (with ``dump_digest``) the dump
    (seconds per GB; a rollback proves its dump itself, :func:`patchflow.database.verify_recorded_dump`)."""
    problems = []
    recorded = backup.data.get(CHECKSUM_KEY)
    if isinstance(recorded, str) and recorded != record_checksum(backup.data):
        problems.append("its backup.json was changed after patchflow wrote it (its checksum does not match)")
    if tree is not None:
        foreign = [rel for rel in backup.new_paths() if rel not in tree]
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            problems.append(
                f"it would delete {len(foreign)} path(s) the installed version's tree does not hold ({shown})"
            )
    files = backup.paths.files
    for rel, entry in sorted(backup.old_entries().items()):
        if entry.type != "file":
            continue
        saved = files / rel
        try:
            size = saved.lstat().st_size
        except OSError:
            problems.append(f"the saved copy of {rel} is missing")
            continue
        if size != entry.size:
            problems.append(f"the saved copy of {rel} has {size} bytes, {entry.size} recorded")
        elif deep and file_digest(saved)[0] != entry.sha256:
            problems.append(f"the saved copy of {rel} differs from its recorded sha256")
    dump, path = backup.database, backup.dump_path
    if dump is not None and path is not None:
        recorded_size, recorded_sha = dump.get("size"), dump.get("sha256")
        try:
            size = path.stat().st_size
        except OSError:
            problems.append(f"its database dump {dump.get('file')} is missing")
        else:
            if not isinstance(recorded_size, int) or not isinstance(recorded_sha, str):
                problems.append("its database dump has no size or sha256 on record")
            elif size != recorded_size:
                problems.append(
                    f"its database dump is corrupt or incomplete: {size} bytes, {recorded_size} recorded (cut short?)"
                )
            elif deep and dump_digest and file_digest(path)[0] != recorded_sha:
                problems.append("its database dump is corrupt or incomplete: it differs from its recorded sha256")
    return problems


def check_backup(backup: Backup, paths: ProjectPaths) -> None:
    """Refuse to restore ``backup`` when :func:`backup_problems` finds anything (``deep``; the
    installed tree is the one it restores from when the install's record, written at the commit
    with ``installed-manifest.json``, names the backup's version: an apply killed before its commit
    has switched ``VERSION`` but not yet recorded its tree).

    Raises:
        BackupError: the backup is damaged or was changed (each problem named; nothing changed).
    """
    tree = None
    try:
        record = read_installed_record(paths)
    except StateFileError:
        record = None  # a damaged record: the rollback puts the backup's copy back; its checksum holds
    if record is not None and record.version == backup.version:
        try:
            tree = manifest_entries(json.loads(paths.installed_manifest.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError):
            tree = None  # no record of the tree (an install older than it): the checksum still holds
    problems = backup_problems(backup, tree=tree, deep=True, dump_digest=False)  # the rollback proves the dump
    if problems:
        raise BackupError(
            f"Backup {backup.name} cannot be trusted to restore: {'; '.join(problems)}. Nothing was changed.",
            "Roll back from another backup (--backup NAME; inv patch-status --verify lists them and their state), "
            "or restore by hand from this one after checking what is named.",
        )
