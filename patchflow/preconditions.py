"""Prove before you stop: what an apply needs once the services are stopped, checked in its plan.

An apply stops the application services, then backs up, switches, migrates, starts and proves the
new version. Whatever of that can be known before the stop is checked by :func:`check_before_stop`
(called by :func:`patchflow.lifecycle.planning.make_plan`, so a dry run shows the same checks); a failure
refuses the apply with nothing stopped or changed (:class:`PreconditionError`):

* **health**: the installed version answers healthy at the configured health URL(s) *now*, by the
  rules the check after the start uses (2xx, no redirect unless followed, a healthy status field,
  the installed version when the body reports one). Otherwise the new version would be judged by
  a URL that cannot pass, and rolled back. ``--force`` applies anyway (services down on purpose):
  the plan says so, and the automatic rollback then judges the old version by the settings it was
  last proven healthy with. A first install (no ``VERSION``) has nothing running to prove.
* **access**: the running user can write every folder the apply writes (the tree's folders of
  the paths it adds, replaces or deletes, the root for ``VERSION``, the state and backups folders,
  build outputs it swaps) and read every file it backs up; a file it cannot read is never
  replaced without a backup.
* **.env keys**: keys the release's ``.env.example`` adds (to the installed one's; all of them on
  a first install) are set in the host's ``.env`` or environment (``env_example_check``: refuse,
  warn, off); an empty value counts as set.
* **services**: names the settings give are services of the compose file(s) (the release's for
  application services) or, with the command manager, configured commands whose program exists.

The last two read the release's own files and live in :mod:`patchflow.release_checks`.

:func:`check_rollback_access` does the access part for a rollback (read every backup file it
restores, write where it restores them).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from patchflow.errors import LockError, PreconditionError
from patchflow.files import current_user, describe_owner, nearest_existing
from patchflow.health import judge, probe
from patchflow.installed import HealthRecord, describe_source, read_installed_record
from patchflow.lifecycle.journal import utc_now
from patchflow.lock import holder_state
from patchflow.manifest import Entry, TreeDiff
from patchflow.release_checks import check_env_keys, check_service_names
from patchflow.release_settings import SettingChange

if TYPE_CHECKING:
    from patchflow.backup import Backup
    from patchflow.config import Settings
    from patchflow.context import Context
    from patchflow.verify import VerifyReport

#: seconds the installed version has to answer healthy before the stop (at most health_timeout)
HEALTH_NOW_TIMEOUT = 5.0
LISTED = 8


@dataclass
class Checks:
    """What :func:`check_before_stop` found: ``lines`` for the plan (one per check), ``warnings``,
    ``problems`` as ``(message, hint)``, and ``old_health``: the settings that just proved the
    installed version healthy (None when it was not proven)."""

    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    old_health: HealthRecord | None = None

    def refuse(self, what: str) -> None:
        """Raise the problems found as one error (nothing was stopped or changed).

        Raises:
            PreconditionError: when there is a problem.
        """
        if not self.problems:
            return
        if len(self.problems) == 1:
            message, hint = self.problems[0]
        else:
            message = f"{what} is refused for {len(self.problems)} reasons: " + " ".join(
                f"({n}) {m}" for n, (m, _) in enumerate(self.problems, 1)
            )
            hint = " ".join(h for _, h in self.problems if h)
        raise PreconditionError(message, f"{hint} Nothing was stopped or changed.".strip())


@dataclass(frozen=True)
class Changes:
    """What an apply would change, as its plan found it: the patch's ``version``, the installed
    ``from_version`` (None: no ``VERSION``), the tree ``diff`` with the installed entries it
    replaces or deletes (``old_entries``) and the patch's tree (``new_entries``, without
    ``VERSION``), the tree paths this user could not read (``unreadable``), and the settings the
    release's ``[tool.patchflow]`` changes."""

    version: str
    from_version: str | None
    diff: TreeDiff
    old_entries: dict[str, Entry]
    new_entries: dict[str, Entry]
    unreadable: list[str]
    settings_changes: list[SettingChange]


def check_before_stop(
    ctx: Context, plan: Changes, report: VerifyReport, *, force: bool = False, interrupted: bool = False
) -> Checks:
    """Run every check of the module docstring for the apply ``plan`` of ``report``'s patch
    (before any database access: a wrong setting is named at once). Returns the plan's lines,
    warnings and the settings that proved the installed version healthy. With ``interrupted`` (a
    killed run's journal is there) the install is mid-run: health and access are checked when the
    plan is made again under the lock, once that run is finished or undone.

    Raises:
        LockError: another apply or rollback runs now (what it is doing would be judged instead).
        PreconditionError: one or more checks failed (all are named); nothing was changed.
    """
    _no_other_run(ctx)
    checks = Checks()
    if interrupted:
        checks.lines.append("health, access: checked once the interrupted run is finished or undone")
    else:
        _health(ctx, plan.from_version, force, checks)
        _access(ctx, plan, checks)
    check_env_keys(ctx, report, checks)
    check_service_names(ctx, plan, report, checks)
    checks.refuse(f"Applying {plan.version}")
    return checks


def _no_other_run(ctx: Context) -> None:
    """Refuse now, as the lock step would, when another process holds the install's lock: the
    install is mid-apply (services stopped, files half switched) and would fail every check."""
    holder, state = holder_state(ctx.paths.lock_info, ctx.paths.lock)
    if state == "held" and holder is not None and holder.pid != os.getpid():
        raise LockError(
            f"Another apply or rollback is running on this install: {holder.describe()}.",
            "Wait for it to finish (inv patch-status shows its progress); nothing was changed.",
        )


# -- health ----------------------------------------------------------------------------------------


def unhealthy_now(settings: Settings, expect: str | None, timeout: float) -> dict[str, str]:
    """``url -> why`` for each health URL of ``settings`` that does not answer healthy within
    ``timeout`` seconds, judged as after a start (:func:`patchflow.health.judge`, expecting the
    version ``expect`` when a body reports one). A definite answer (4xx, a redirect, another
    version) is not polled again; no answer or a 5xx is, until the deadline."""
    deadline = time.monotonic() + timeout
    pending = list(settings.health_url)
    why: dict[str, str] = {}
    delay = 0.25
    while True:
        again = []
        for url in pending:
            answer = probe(
                url,
                settings.health_version_field,
                timeout=max(0.2, min(3.0, deadline - time.monotonic())),
                status_field=settings.health_status_field,
                follow_redirects=settings.health_follow_redirects,
            )
            reason = judge(
                answer,
                expect_version=expect,
                version_field=settings.health_version_field,
                healthy_statuses=settings.health_status_ok,
            )
            if reason is None:
                why.pop(url, None)
                continue
            why[url] = reason
            if answer.status == 0 or answer.status >= 500:
                again.append(url)
        pending = again
        if not pending or time.monotonic() + delay > deadline:
            return why
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def _health(ctx: Context, installed: str | None, force: bool, checks: Checks) -> None:
    settings = ctx.settings
    if not ctx.services.app_services():
        checks.lines.append("health: no application services are managed here: nothing to prove")
        return
    urls = ", ".join(settings.health_url)
    where = describe_source(settings, "health_url")
    if installed is None:
        checks.lines.append(
            f"health: no installed version (a first install): nothing runs to prove; {urls} ({where}) is "
            "first checked after the start"
        )
        return
    # with --force a failure only warns: one look, no wait for a service that may be coming up
    failing = unhealthy_now(settings, installed, 0.0 if force else min(HEALTH_NOW_TIMEOUT, settings.health_timeout))
    if not failing:
        checks.old_health = HealthRecord.of(settings, proven_at=utc_now())
        checks.lines.append(f"health: {installed} answers healthy now at {urls} ({where})")
        return
    listed = "; ".join(f"{url}: {why}" for url, why in failing.items())
    record = read_installed_record(ctx.paths)
    recorded = record.health if record is not None and record.version == installed else None
    if force:
        judged_by = f"the settings it was proven healthy with ({recorded.describe()})" if recorded else "these settings"
        checks.lines.append(f"health: {installed} is NOT healthy now at {urls} ({where}): going on (--force)")
        checks.warnings.append(
            f"{installed} does not answer healthy now ({listed}); applying anyway (--force): the new version must "
            f"still pass at {urls} after the start; if it fails, the automatic rollback starts {installed} again "
            f"and judges it by {judged_by}"
        )
        return
    hints = []
    if any("redirect" in why for why in failing.values()):
        hints.append("A redirect counts as unhealthy (set health_follow_redirects = true if it redirects on purpose).")
    moved = recorded is not None and recorded.urls != tuple(settings.health_url)
    if recorded is not None and moved and not unhealthy_now(recorded.applied_to(settings), installed, 2.0):
        hints.append(
            f"{installed} answers healthy at {', '.join(recorded.urls)}, the URL it was last proven healthy with "
            f"(from {recorded.source or '?'})."
        )
    hints.append(
        f"Check the URL, then fix health_url (host setting, .patchflow/host.toml) or pass --force (applies while "
        f"{installed} is not healthy, e.g. its services are down on purpose; the new version must still pass at the "
        "URL after the start)."
    )
    checks.problems.append(
        (
            f"The installed version {installed} does not answer healthy at the health URL(s) now: {listed} "
            f"(health_url from {where}). The new version would be judged by the same URL after the stop and rolled "
            "back.",
            " ".join(hints),
        )
    )


# -- access ----------------------------------------------------------------------------------------


def _listed(items: list[str]) -> str:
    more = f" and {len(items) - LISTED} more" if len(items) > LISTED else ""
    return "; ".join(items[:LISTED]) + more


@dataclass
class _Access:
    """Folders to write in, files to read, files to write in place, with why each is needed."""

    root: Path
    write_dirs: dict[Path, str] = field(default_factory=dict)
    read_files: dict[Path, str] = field(default_factory=dict)
    write_files: dict[Path, str] = field(default_factory=dict)

    def folder(self, path: Path, why: str) -> None:
        """Writing in ``path``: in the nearest folder at or above it that is a folder now (the
        others, and a file that becomes a folder, are made by the apply in that one)."""
        probe = nearest_existing(path)
        while not probe.is_dir() and probe != probe.parent:
            probe = nearest_existing(probe.parent)
        self.write_dirs.setdefault(probe, why)

    def show(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix() or "."
        except ValueError:
            return str(path)

    def problems(self) -> tuple[list[str], list[str]]:
        """``(cannot write, cannot read)`` descriptions."""
        write = [
            f"{self.show(p)} ({describe_owner(p)}; {why})"
            for p, why in sorted(self.write_dirs.items())
            if not os.access(p, os.W_OK | os.X_OK)
        ]
        write += [
            f"{self.show(p)} ({describe_owner(p)}; {why})"
            for p, why in sorted(self.write_files.items())
            if os.path.lexists(p) and not os.access(p, os.W_OK)
        ]
        read = [
            f"{self.show(p)} ({describe_owner(p)}; {why})"
            for p, why in sorted(self.read_files.items())
            if os.path.lexists(p) and not os.path.islink(p) and not os.access(p, os.R_OK)
        ]
        return write, read


def _state_files(ctx: Context, access: _Access, *, backups: bool = True) -> None:
    """The state folder, the files in it written in place, its log and pid folders and (with
    ``backups``) the backups folder."""
    paths = ctx.paths
    access.folder(paths.state, "the journal, lock and staging go there")
    for path in (paths.history, paths.lock):
        access.write_files[path] = "written in place"
    for folder in (paths.logs, paths.pids):
        if folder.is_dir():
            access.folder(folder, "logs and pid files go there")
            for log in folder.glob("*.log"):
                access.write_files[log] = "appended"
    if backups:
        access.folder(paths.backups, "the backup goes there")


def _owner_hint(ctx: Context, what: str, paths: Iterable[Path]) -> str:
    root = ctx.paths.root
    owner = describe_owner(root).removeprefix("owned by ").split(",")[0]
    user = current_user().split(" ")[0]
    folders = " ".join(sorted({str(p) for p in paths})[:3]) or str(root)
    return (
        f"Run {what} as the user who owns the install ({owner} owns {root}), or give {user} access to what is "
        f"listed (e.g. chown -R {user} {folders})."
    )


def _access(ctx: Context, plan: Changes, checks: Checks) -> None:
    root = ctx.paths.root
    access = _Access(root)
    access.folder(root, "VERSION is replaced there")
    for rel in plan.diff.added:
        access.folder((root / rel).parent, f"{rel} is added")
    for rel in plan.diff.changed + plan.diff.deleted:
        verb = "replaced" if rel in plan.diff.changed else "deleted"
        access.folder((root / rel).parent, f"{rel} is {verb}")
        if plan.old_entries[rel].type == "file":
            access.read_files[root / rel] = f"backed up before it is {verb}"
    _state_files(ctx, access)
    settings = ctx.settings
    if settings.install_command.strip() or settings.build_command.strip():
        for pattern in settings.build_outputs:
            for found in root.glob(pattern):
                if found.is_dir() and not found.is_symlink():
                    # moving a folder to another folder rewrites its "..": it must be writable itself
                    access.write_dirs.setdefault(found, "a build output swapped with the staged one")
    write, read = access.problems()
    euid = os.geteuid()
    for rel in plan.diff.changed:
        path = root / rel
        entry = plan.new_entries.get(rel)
        is_dir = entry is not None and entry.type == "dir" and path.is_dir() and not path.is_symlink()
        if is_dir and euid != 0 and path.lstat().st_uid != euid:
            write.append(f"{rel} ({describe_owner(path)}; its mode changes, which only its owner may do)")
    touched = set(plan.new_entries)
    hidden = [
        f"{rel} ({describe_owner(root / rel)}; the patch writes "
        + ("it" if rel in touched else "inside it")
        + ", and it could not be backed up)"
        for rel in plan.unreadable
        if rel in touched or any(p.startswith(rel + "/") for p in touched) or rel == "."
    ]
    read += hidden
    if not write and not read:
        checks.lines.append(f"access: {current_user()} can write what the apply writes and read what it backs up")
        if euid != 0:
            foreign = sorted(
                rel
                for rel in plan.diff.changed + plan.diff.deleted
                if os.path.lexists(root / rel) and (root / rel).lstat().st_uid != euid
            )
            if foreign:
                checks.warnings.append(
                    f"{len(foreign)} path(s) the apply replaces or deletes belong to another user "
                    f"({_listed(foreign)}): replaced, they belong to {current_user()}; a rollback cannot give them back"
                )
        return
    parts = []
    if write:
        parts.append(f"cannot write in {_listed(write)}")
    if read:
        parts.append(f"cannot read {_listed(read)}")
    checks.problems.append(
        (
            f"User {current_user()} {' and '.join(parts)}: the apply would fail there after the services stopped.",
            _owner_hint(ctx, "apply-patch", [root]),
        )
    )


def check_rollback_access(ctx: Context, backup: Backup, restore_database: bool) -> None:
    """Check, before a rollback stops anything, that the running user can read every file of
    ``backup`` it restores (and the dump when ``restore_database``) and write where they go.

    Raises:
        PreconditionError: names what cannot be read or written, and by whom; nothing was changed.
    """
    root = ctx.paths.root
    access = _Access(root)
    saved = backup.paths
    access.read_files[saved.record] = "the backup's record"
    access.folder(backup.folder, "the backup keeps what the restore displaces")
    for entry in backup.old_entries().values():
        access.folder((root / entry.path).parent, f"{entry.path} is restored")
        if entry.type == "file":
            access.read_files[saved.files / entry.path] = f"restores {entry.path}"
    for rel in backup.new_paths():
        access.folder((root / rel).parent, f"{rel} is removed")
    access.folder(root, "VERSION is restored there")
    for name in ("version_file", "installed_manifest", "installed_record"):
        path = getattr(saved, name)
        if path.exists() or path.is_symlink():
            access.read_files[path] = "restored"
    for item in backup.data.get("build_outputs", []):
        target = root / str(item.get("path", ""))
        if target.is_dir() and not target.is_symlink():
            access.write_dirs.setdefault(target, "a build output moved back")
    if restore_database and backup.dump_path is not None:
        access.read_files[backup.dump_path] = "the database dump"
    _state_files(ctx, access, backups=False)
    write, read = access.problems()
    if not write and not read:
        return
    parts = []
    if read:
        parts.append(f"cannot read {_listed(read)}")
    if write:
        parts.append(f"cannot write in {_listed(write)}")
    raise PreconditionError(
        f"User {current_user()} {' and '.join(parts)}: rolling back from {backup.name} would fail there after "
        "the services stopped.",
        _owner_hint(ctx, "rollback-patch", [root]) + " Nothing was stopped or changed.",
    )
