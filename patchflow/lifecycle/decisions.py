"""Decisions taken again under the lock and compared with what was confirmed (field failure R01).

Check then act: CWE-367.

An apply verifies, plans and asks before it takes the install's lock; a rollback chooses its backup
and asks before it. Another run can complete in between (a second operator, a cron job). So every
decision taken before the lock is taken again under it, and compared with what the operator
confirmed: the installed version, the interrupted run (journal) to finish first, the patch folder's
verification, the plan (files, migrations, services, settings, delta base) or the backup. A
difference is a :class:`Change`: the run shows it and asks again on a terminal, and otherwise
refuses (:class:`patchflow.errors.PlanChanged`) with nothing changed.

This module holds the comparisons and the wording; :mod:`patchflow.lifecycle.apply_prepare` and
:mod:`patchflow.lifecycle.rollback` call them from their lock steps.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from patchflow.errors import PlanChanged
from patchflow.lifecycle.journal import HistoryRecord, Journal, read_history
from patchflow.lifecycle.planning import Plan
from patchflow.manifest import Entry

FolderStamp = tuple[tuple[str, int, int, int, int], ...]
SHOWN = 5  # paths named per reason (the rest counted)


def folder_stamp(folder: Path) -> FolderStamp:
    """``(name, size, mtime_ns, inode, ctime_ns)`` of every entry directly in ``folder`` (a patch
    folder), sorted; empty when the folder is missing. Rebuilding, re-copying or editing any file of
    the folder changes it (a rename into place changes the inode), reading it does not."""
    found = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                found.append((entry.name, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns))
    except OSError:
        return ()
    return tuple(sorted(found))


def _listed(paths: Iterable[str]) -> str:
    items = sorted(paths)
    more = f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more


def as_reason(message: str) -> str:
    """An error's message as one reason among others (lower-case start, no final period)."""
    return message[:1].lower() + message[1:].rstrip(".")


def describe_run(record: HistoryRecord) -> str:
    """``apply 2.2.0 -> 2.3.0 by ops@web1, pid 4242, finished 2025-03-01T14:02:11Z`` from a
    history record (fields missing in older records are left out)."""
    who = f"{record.get('user', '?')}@{record.get('host', '?')}"
    pid = f", pid {record['pid']}" if record.get("pid") else ""
    when = str(record.get("finished_at") or record.get("started_at") or "")
    at = f", finished {when[:19]}Z" if when else ""
    return (
        f"{record.get('action', '?')} {record.get('from_version') or '?'} -> {record.get('to_version') or '?'} "
        f"by {who}{pid}{at}"
    )


def runs_since(history: Path, since: str) -> list[HistoryRecord]:
    """History records of runs that ended after ``since`` (a :func:`patchflow.lifecycle.journal.utc_now`
    time; records without ``finished_at`` count by ``started_at``), oldest first. Records written by
    an older version may lack keys: they are read with ``get``."""
    return [
        cast(HistoryRecord, r)
        for r in read_history(history, 200)
        if str(r.get("finished_at") or r.get("started_at") or "") >= since and r.get("action") in ("apply", "rollback")
    ]


def version_change(history: Path, since: str, before: str | None, now: str | None) -> str:
    """One reason: the installed version went from ``before`` to ``now`` since ``since``, naming the
    run that did it from the history (action, user@host, pid, time), or saying none recorded it."""
    done = [r for r in runs_since(history, since) if r.get("result") == "success" and r.get("to_version") == now]
    if done:
        record = done[-1]
        verb = "rolled back" if record.get("action") == "rollback" else "installed"
        what = f"{before} was rolled back to {now}" if verb == "rolled back" else f"{now} was installed"
        return f"{what} by another run ({describe_run(record)})"
    return (
        f"the installed version changed from {before or 'none'} to {now or 'none'} and no run recorded it "
        "in the history (VERSION edited by hand?)"
    )


def journal_change(before: Journal | None, now: Journal | None, history: Path, since: str) -> str:
    """One reason about the interrupted run to finish first, or "" when it is the same one."""
    key_before = (before.action, before.version, before.run_id) if before else None
    key_now = (now.action, now.version, now.run_id) if now else None
    if key_before == key_now:
        return ""
    if now is not None:
        return (
            f"an {now.action} of {now.version} (pid {now.pid} on {now.host}, started {now.started_at[:19]}Z) was "
            f"interrupted and must be finished or undone first (last step {now.current_step})"
        )
    assert before is not None
    others = [describe_run(r) for r in runs_since(history, since)]
    by = f" by another run ({others[-1]})" if others else " by another run"
    return f"the interrupted {before.action} of {before.version} this run was to finish was finished or undone{by}"


def _entries_differ(before: Mapping[str, Entry], after: Mapping[str, Entry], paths: Iterable[str]) -> list[str]:
    return sorted(p for p in paths if p in before and p in after and not before[p].same_content(after[p]))


def _under_folders(paths: Iterable[str], folders: set[str]) -> list[str]:
    inside = []
    for path in paths:
        parts = path.split("/")
        if any("/".join(parts[:depth]) in folders for depth in range(1, len(parts))):
            inside.append(path)
    return sorted(inside)


def plan_differences(before: Plan, after: Plan) -> list[str]:
    """What differs between the plan the operator confirmed (``before``) and the plan made under the
    lock (``after``), one reason each; [] when they would do the same. The installed version is
    compared by the caller (:func:`version_change` names who changed it).

    Compared: the files added, changed and deleted, what the patch places there (a rebuilt patch),
    what it replaces or deletes (edited on this host meanwhile), host files added inside folders it
    deletes or turns into files, pending migrations, services, patchflow settings, a delta's base and
    whether the database is copied by a snapshot or dumped inside the stopped window.
    """
    reasons = []
    for label, old, new in (
        ("adds", before.diff.added, after.diff.added),
        ("changes", before.diff.changed, after.diff.changed),
        ("deletes", before.diff.deleted, after.diff.deleted),
    ):
        gained, lost = set(new) - set(old), set(old) - set(new)
        if gained or lost:
            parts = [f"now also {_listed(gained)}"] if gained else []
            parts += [f"no longer {_listed(lost)}"] if lost else []
            reasons.append(f"the files the patch {label}: {'; '.join(parts)}")
    placed = set(after.diff.added + after.diff.changed) & set(before.diff.added + before.diff.changed)
    other = _entries_differ(before.new_entries, after.new_entries, placed)
    if other:
        reasons.append(f"the patch now places other content in {_listed(other)}")
    replaced = set(after.diff.changed + after.diff.deleted) & set(before.diff.changed + before.diff.deleted)
    edited = _entries_differ(before.old_entries, after.old_entries, replaced)
    if edited:
        reasons.append(f"files the patch replaces or deletes were changed on this host: {_listed(edited)}")
    olds = after.old_entries
    emptied = {p for p in after.diff.deleted + after.diff.changed if p in olds and olds[p].type == "dir"}
    added_inside = set(_under_folders(after.unowned, emptied)) - set(before.unowned)
    if added_inside:
        reasons.append(
            f"files were added on this host inside folders the patch deletes or replaces (they belong to no patch "
            f"and stay, so those folders stay too): {_listed(added_inside)}"
        )
    if before.pending_migrations != after.pending_migrations:
        reasons.append(
            f"pending migrations: {', '.join(before.pending_migrations or []) or 'none'} -> "
            f"{', '.join(after.pending_migrations or []) or 'none'}"
        )
    if before.migrations != after.migrations:
        reasons.append(f"the patch's migrations: {_listed(set(after.migrations) ^ set(before.migrations))} differ")
    for label, old_list, new_list in (
        ("services stopped and replaced", before.services, after.services),
        ("compose services the patch adds", before.services_added, after.services_added),
        ("compose services the patch removes", before.services_removed, after.services_removed),
    ):
        if list(old_list) != list(new_list):
            reasons.append(f"{label}: {', '.join(old_list) or 'none'} -> {', '.join(new_list) or 'none'}")
    old_settings = [c.describe() for c in before.settings_changes]
    new_settings = [c.describe() for c in after.settings_changes]
    if old_settings != new_settings:
        reasons.append(f"patchflow settings the release changes: {'; '.join(new_settings) or 'none any more'}")
    if before.delta != after.delta:
        reasons.append(f"the patch's delta base: {after.delta or 'not a delta any more'}")
    if before.database != after.database:
        reasons.append(f"database: {before.database} -> {after.database}")
    if before.snapshot != after.snapshot and after.pending_migrations:
        reasons.append(
            "the database is now copied by a snapshot inside the stopped window"
            if after.snapshot
            else f"the database is now dumped inside the stopped window (no snapshot: {after.no_snapshot})"
        )
    if before.restore_method != after.restore_method and after.pending_migrations and not after.snapshot:
        reasons.append(
            f"a failed migration is now undone by a restore {after.restore_method} (the role's rights changed)"
        )
    return reasons


@dataclass
class Change:
    """Decisions that came out differently under the lock.

    Attributes:
        what: the operation, e.g. ``apply of 2.3.0``.
        reasons: one line per difference (:func:`plan_differences`, :func:`version_change`...).
        question: what to ask the operator on a terminal to go on with the new decision; "" when
            the new decision cannot be carried out (then the run refuses even on a terminal).
        plan: the new plan of an apply (None for a rollback or a refusal).
        provisional: the confirmed decision was known to be provisional (made before a recovery
            the operator agreed to): with ``--yes`` the run goes on; on a terminal it asks again.
        hint: what to do instead (default: run the command again to see the new plan).
    """

    what: str
    reasons: list[str]
    question: str = ""
    plan: Plan | None = None
    provisional: bool = False
    hint: str = ""

    def refusal(self, waited: str = "while this run waited") -> PlanChanged:
        """The error that refuses the change: what changed (``waited`` says when: at the prompt, for
        the lock), nothing was changed, what to do."""
        return PlanChanged(
            f"The {self.what} was refused: what it would do changed {waited}: {'; '.join(self.reasons)}.",
            (self.hint or "Run the command again to see what it would do now (`inv patch-status` shows the install).")
            + " Nothing was changed.",
        )


Reconfirm = Callable[[Change], None]


def refuse_changes(change: Change) -> None:
    """The default when nobody can be asked (library callers): a provisional decision goes on, any
    other change is refused.

    Raises:
        PlanChanged: the change, with its reasons.
    """
    if change.provisional and change.question:
        return
    raise change.refusal()
