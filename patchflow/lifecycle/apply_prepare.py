"""The apply steps before anything changes: verify, plan, lock (the decisions taken again under it).

Verify and plan run before the lock and change nothing (a dry run stops after them); the lock step
takes the install's lock, takes every decision again under it and compares it with what the
operator confirmed (:mod:`patchflow.lifecycle.decisions`), recovers an interrupted run and opens
the journal.
"""

from __future__ import annotations

from typing import NoReturn

from patchflow.errors import VerifyError, VersionError
from patchflow.freeze import refuse_when_frozen
from patchflow.hooks import pre_hook
from patchflow.installed import installed_version, installed_version_or_error
from patchflow.leftovers import leftovers, remove_leftovers
from patchflow.lifecycle.apply_state import ApplyState
from patchflow.lifecycle.decisions import (
    Change,
    as_reason,
    folder_stamp,
    journal_change,
    plan_differences,
    version_change,
)
from patchflow.lifecycle.journal import Journal, take_reserve, utc_now
from patchflow.lifecycle.planning import check_delta_base, make_plan
from patchflow.lifecycle.steps import StopPipeline
from patchflow.lock import InstallLock, LockHolder
from patchflow.signing import verify_key_hex
from patchflow.smoke import parse_checks
from patchflow.verify import verify_patch
from patchflow.version import parse_version
from patchflow.watch import compile_errors


class PrepareSteps(ApplyState):
    """The steps verify, plan and lock of an apply (methods named by
    :data:`patchflow.lifecycle.apply.APPLY_STEPS`)."""

    def verify(self) -> None:
        """Check checksums, signature and manifest of the patch folder (read-only). A version
        already installed stops here (after finishing the clean-up a killed run left). A frozen
        install (``inv lock``) refuses first."""
        paths = self.ctx.paths
        refuse_when_frozen(paths.state, "apply")
        parse_checks(self.ctx.settings.smoke_checks)  # a malformed check is refused before anything
        compile_errors(self.ctx.settings.watch_errors)  # so is a watch_errors pattern that is no regex
        if (
            not self.options.force
            and Journal.load(paths.journal) is None
            and installed_version(paths) == str(self.version)
        ):
            self.cleaned = [] if self.options.dry_run else self._finish_leftovers()
            raise StopPipeline(f"version {self.version} is already installed")
        folder = self.ctx.paths.patch_dir(self.version)
        self.ctx.log(f"-> verify {folder}")
        self.patch_stamp = folder_stamp(folder)  # before reading: a change while it is read shows later
        self.report = verify_patch(folder, self.version, verify_key=self.ctx.settings.verify_key)
        self._check_signed()
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

    def _check_signed(self) -> None:
        """Without a verify key an apply runs what nobody vouches for: refused unless the host
        accepts it on purpose (``allow_unsigned``), and then said in the plan.

        Raises:
            VerifyError: no ``verify_key`` and no ``allow_unsigned`` (nothing changed).
        """
        settings = self.ctx.settings
        if settings.verify_key.strip():
            assert self.report is not None
            signer = self.report.signed_by
            if signer and signer != verify_key_hex(settings.verify_key):
                self.ctx.log(
                    f"   !! {self.version.tag} is signed by a new key {signer}, announced by the pinned one: pin it "
                    "here (verify_key in .patchflow/host.toml, or the inventory's verify_key and setup-host)"
                )
            return
        tag = self.version.tag
        if not settings.allow_unsigned:
            raise VerifyError(
                f"Patch {tag} is checked against nobody's signature: this host has no verify_key, so nothing "
                "proves who built it, and an apply runs what it carries (its install and build commands, its "
                "migrations, its tasks.py). Nothing was changed.",
                "Pin the release signer's verify key here (verify_key in .patchflow/host.toml; `inv "
                "create-signing-key --out KEY` makes a pair on the developer's machine, and create-patch signs with "
                "signing_key), or accept unsigned patches on this host on purpose: allow_unsigned = true in "
                ".patchflow/host.toml (PATCHFLOW_ALLOW_UNSIGNED=true, or --allow-unsigned for one apply).",
            )
        self.ctx.log(
            f"   !! UNSIGNED: {tag} matches its own checksums, but no signature says who built it (allow_unsigned)"
        )

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
        self.planned_at = utc_now()
        interrupted = Journal.load(self.ctx.paths.journal)
        self.planned_journal = interrupted
        if interrupted is None:
            self._check_versions()
        self.ctx.log("-> plan")
        self.plan = make_plan(
            self.ctx,
            self.version,
            self.report,
            remove_unowned=self.options.remove_unowned,
            force=self.options.force or bool(self.options.database_backup_on),
            interrupted=interrupted is not None,
        )
        if interrupted is not None:
            self.plan.warnings.append(
                f"an interrupted {interrupted.action} of {interrupted.version} will be finished or undone first"
            )
        if not self.options.dry_run:
            self.confirm(self.plan)

    def take_lock(self) -> None:
        """Take the install's lock; decide again under it what was decided before it (a run that
        was interrupted meanwhile, the installed version, the patch folder, the plan:
        :meth:`decide_again`); take the space reserve; finish or undo an interrupted run; clear
        what killed runs left (staging, trash); start this run's journal (with this run's marker,
        before any command runs).

        Raises:
            PlanChanged: a decision came out differently and was not confirmed again (nothing changed).
        """
        assert self.report is not None
        paths = self.ctx.paths
        if not self.options.dry_run:  # the operator's own check, before anything is locked or stopped
            pre_hook(self.ctx, "pre-apply", action="apply", version=str(self.version), previous=self.from_version)
        self.lock = InstallLock(paths.lock, paths.lock_info)
        self.lock.acquire(action="apply", version=str(self.version), break_stale=self.options.break_lock)
        self.ctx.start_recording()
        interrupted = Journal.load(paths.journal)
        changed = journal_change(self.planned_journal, interrupted, paths.history, self.planned_at)
        if changed and interrupted is not None:
            # interrupted while this run waited: nobody agreed to finish or undo it
            self._ask_again(
                Change(
                    f"apply of {self.version}",
                    [changed],
                    question=f"Finish or undo the interrupted {interrupted.action} of {interrupted.version} first "
                    f"(then the plan of {self.version} is made again and shown if it changed)?",
                    hint="Run the command again: it offers to finish or undo the interrupted run first "
                    "(`inv patch-status` shows it).",
                )
            )
        take_reserve(paths.space_reserve, required=interrupted is None, log=self.ctx.log)
        if interrupted is not None:
            self.recovery = self.recover(interrupted)
            self.recovered = True
        # after the recovery (it ends the killed run's commands first), before any early stop
        self.cleaned = remove_leftovers(paths)
        # a plan made before a recovery the operator agreed to was known to be provisional
        self.decide_again(
            provisional=self.planned_journal is not None, reasons=[changed] if changed and not interrupted else []
        )
        assert self.plan is not None
        self.from_version = self.plan.from_version or ""
        self.journal = Journal(paths.journal, "apply", str(self.version), self.from_version)
        if self.ctx.run_marker:
            self.journal.notes["runners"] = [self.ctx.run_marker]
        if self.plan.old_health is not None:  # what judges the old version if it comes back
            self.journal.notes["old_health"] = self.plan.old_health.to_json()
        self.journal.start("lock")
        self.ctx.settings.faults.checkpoint("journal-opened")  # lock not yet marked done

    def decide_again(self, *, provisional: bool, reasons: list[str]) -> None:
        """Under the lock, take again every decision the confirmed plan was made from: the installed
        version (who changed it, from the history), the patch folder (verified again when it changed
        on disk), the version checks, a delta's base, the plan (:func:`make_plan`, the tree scanned
        with the first scan's stats). When something that matters differs
        (:func:`patchflow.lifecycle.decisions.plan_differences`), :attr:`reconfirm` gets the new plan: it asks
        again or refuses. ``reasons`` are differences found by the caller (a recovery done by another
        run); ``provisional`` says the confirmed plan expected a recovery first.

        Raises:
            PlanChanged: the change was not confirmed, or the new decision cannot be carried out
                (the version is installed now, a downgrade): nothing was changed.
            StopPipeline: (provisional) the recovery installed this version: nothing to do.
            VerifyError, VersionError, BackupError, DatabaseError: as :meth:`verify` and
                :func:`make_plan` (nothing changed).
        """
        assert self.report is not None and self.plan is not None
        ctx, paths = self.ctx, self.ctx.paths
        confirmed, reasons = self.plan, list(reasons)
        what = f"apply of {self.version}"
        while True:
            now = installed_version(paths)
            if now != confirmed.from_version:
                reasons.append(version_change(paths.history, self.planned_at, confirmed.from_version, now))
            reasons += self._verify_again()
            try:
                self._check_versions()
            except StopPipeline:
                if provisional:
                    raise
                self._refuse(
                    Change(
                        what,
                        reasons,
                        hint=f"{self.version} is installed now: nothing is left to apply (`inv patch-status`).",
                    )
                )
            except VersionError as exc:
                if provisional or not reasons:
                    raise
                hint = exc.hint.replace(" Nothing was changed.", "")
                self._refuse(Change(what, [*reasons, as_reason(exc.message)], hint=hint))
            check_delta_base(ctx, self.report)  # the install may be on another version now
            plan = make_plan(
                ctx,
                self.version,
                self.report,
                remove_unowned=self.options.remove_unowned,
                known=confirmed.seen,
                force=self.options.force or bool(self.options.database_backup_on),
            )
            reasons += plan_differences(confirmed, plan)
            self.plan = plan
            if not reasons:
                return
            self._ask_again(
                Change(
                    what,
                    reasons,
                    question=f"Apply {plan.version} now with this plan (services {', '.join(plan.services) or 'none'} "
                    "will be stopped)?",
                    plan=plan,
                    provisional=provisional,
                )
            )
            # confirmed again (the lock is held): only a change by hand can still come; look once more
            confirmed, reasons, provisional = plan, [], False
            self.planned_at = utc_now()

    def _verify_again(self) -> list[str]:
        """Verify the patch folder again when it changed on disk since it was verified; a reason when
        its archive is another one now.

        Raises:
            VerifyError: the folder does not verify any more (nothing changed).
        """
        assert self.report is not None
        folder = self.ctx.paths.patch_dir(self.version)
        stamp = folder_stamp(folder)
        if stamp == self.patch_stamp:
            return []
        before = self.report
        self.patch_stamp = stamp
        self.ctx.log(f"   {folder} changed on disk: verifying it again")
        self.report = verify_patch(folder, self.version, verify_key=self.ctx.settings.verify_key)
        old = str(before.manifest.get("archive", {}).get("sha256", ""))
        new = str(self.report.manifest.get("archive", {}).get("sha256", ""))
        if old == new:
            return []
        return [f"patch {self.version.tag} was rebuilt or replaced on disk (archive sha256 {old[:12]} -> {new[:12]})"]

    def _ask_again(self, change: Change) -> None:
        """Hand ``change`` to :attr:`reconfirm`; refuse when it returns without a question to agree to."""
        self.reconfirm(change)
        if not change.question:
            raise change.refusal()

    def _refuse(self, change: Change) -> NoReturn:
        """Refuse ``change`` (through :attr:`reconfirm`, which words it for the operator)."""
        change.question = ""
        self.reconfirm(change)
        raise change.refusal()

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
