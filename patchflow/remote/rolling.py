"""Deploy, rollback and attach over a fleet: one host at a time, the canary first, stopping at the first failure.

The steps of :func:`deploy` (:data:`DEPLOY_STEPS`, run by the lifecycle's runner, each logged as
apply-patch's are: ``-> upload``, ``   upload done in 2.1 s``), for one host or a fleet:

1. **check** (the local patch): ``patches/vX`` of this checkout verifies (checksums, signature, manifest). A
   delta patch is refused, before anything is sent, when a host to update is not on its base.
2. **connect** every host first (:class:`patchflow.remote.fleet.Fleet`; host keys checked as OpenSSH
   does). Any refusal stops the deploy before anything was sent to any host.
3. **plan**: the facts (``host-facts``) from every host, in the non-interactive environment the apply will
   have (field failure C22): patchflow there (else: run ``setup-host``), the tools the apply needs,
   the lock (a live holder refuses the deploy, naming it: C19 (d)), earlier uploads. With a host of
   role ``production`` among the targets, a host of role ``staging`` must have applied the version
   successfully (its history), unless ``skip_staging`` (:mod:`patchflow.remote.gates`).
4. **upload** (``parallel`` hosts at a time, :mod:`patchflow.remote.transfer`).
5. **apply**, rolling (also on a host where the version is installed when a killed run left it
   something to recover: apply-patch recovers it first): the canary first (its health probed again
   after its apply), then one host at a time, stopping at the first failure;
   ``rollback_on_failure`` rolls back, newest first, the hosts this run updated. Each apply is a
   detached run (:mod:`patchflow.remote.runs`) judged by :mod:`patchflow.remote.outcome`.

Nothing in the apply logic is written twice: on every host the *same* tasks run in the server's
checkout (``python -m patchflow apply-patch --root <path> --version X --yes``, and
``rollback-patch``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

from patchflow import __version__
from patchflow.commands.remote import apply_patch_args, rollback_patch_args
from patchflow.config import Settings
from patchflow.errors import PatchflowError, RemoteError
from patchflow.lifecycle.steps import Step, StepSpec, bind, checked_specs, run_forward
from patchflow.remote.facts import fetch_facts
from patchflow.remote.fleet import Fleet, combined_error, each_host
from patchflow.remote.gates import check_delta_bases, check_ready, staging_gate
from patchflow.remote.group_window import (
    DatabaseGroup,
    database_groups,
    each_service_task,
    left_by_a_window,
    restores,
    roll_back_group,
    roll_back_host,
    rollback_order,
    run_group_window,
    settled,
    sharing,
)
from patchflow.remote.hosts import Log, Target, operator
from patchflow.remote.outcome import FleetReport, HostResult
from patchflow.remote.runs import follow_and_judge, start_run
from patchflow.remote.session import ConnectionLost
from patchflow.remote.transfer import LocalPatch, UploadResult, local_patch, upload_patch
from patchflow.remote.wire import HostFacts, RunStatus
from patchflow.version import PatchVersion


@dataclass
class DeployOptions:
    """Flags of deploy (see :func:`deploy`)."""

    version: PatchVersion
    canary: str | None = None
    parallel: int = 1
    rollback_on_failure: bool = False
    skip_staging: bool = False
    accept_new_key: bool = False
    upload_only: bool = False
    force: bool = False
    allow_downgrade: bool = False
    break_lock: bool = False
    others_stopped: bool = False  # apply-patch --others-stopped on every host
    watch: float = 0.0  # apply-patch --watch on every host (0: the host's watch_seconds)


def _order(targets: Sequence[Target], canary: str | None) -> list[Target]:
    if canary is None:
        return list(targets)
    first = [t for t in targets if t.name == canary or t.host == canary]
    if not first:
        raise RemoteError(
            f"The canary {canary!r} is not one of the hosts of this deploy ({', '.join(t.name for t in targets)}).",
            "Name one of them with --canary.",
            exit_code=1,
        )
    return [first[0], *(t for t in targets if t is not first[0])]


class DeployRun:
    """One deploy, as the steps of :data:`DEPLOY_STEPS` (see the module docstring for what each does).

    Built by :func:`deploy`; the fleet's sessions stay open from ``connect`` until :meth:`execute`
    returns. The steps fill ``facts``, ``running``, ``pending`` and ``todo`` in turn and the
    report as they go.
    """

    def __init__(
        self,
        settings: Settings,
        targets: Sequence[Target],
        options: DeployOptions,
        *,
        log: Log,
        confirm: Callable[[str], None],
    ) -> None:
        self.settings, self.targets, self.options = settings, list(targets), options
        self.log, self.confirm = log, confirm
        self.version = str(options.version)
        self.ordered: list[Target] = []
        self.report = FleetReport("deploy", self.version, [])
        self.patch: LocalPatch | None = None
        self.fleet: Fleet | None = None
        self.facts: dict[str, HostFacts] = {}
        self.running: dict[str, RunStatus] = {}
        self.pending: set[str] = set()
        self.todo: list[Target] = []
        self.groups: list[DatabaseGroup] = []  # hosts on one database, one stopped window each
        self.finishing: dict[str, str] = {}  # hosts a killed group window left stopped -> its first host
        self._sessions = ExitStack()

    def steps(self) -> list[Step]:
        """The deploy, in order (:data:`DEPLOY_STEPS` bound to this run; no ``apply`` step with
        ``upload_only``)."""
        return [s for s in bind(DEPLOY_STEPS, self) if not (self.options.upload_only and s.name == "apply")]

    def execute(self) -> FleetReport:
        """Run the steps (each logged ``-> step`` and ``   step done in N s``), the sessions closed
        at the end whatever happens. Raises what a step raises (see :func:`deploy`)."""
        with self._sessions:
            run_forward(self.steps(), None, log=self.log)
        return self.report

    def _need(self) -> tuple[Fleet, LocalPatch]:
        assert self.fleet is not None and self.patch is not None, "connect and check run first"
        return self.fleet, self.patch

    # -- the steps ------------------------------------------------------------------------------
    def check(self) -> None:
        """The rolling order (the canary first) and the local patch, verified."""
        self.ordered = _order(self.targets, self.options.canary)
        self.patch = local_patch(self.settings, self.options.version)
        self.report = FleetReport("deploy", self.version, [HostResult(t.name, t.role) for t in self.ordered])

    def connect(self) -> None:
        """Every host's session opened and its host key checked before anything is sent anywhere."""
        self.fleet = self._sessions.enter_context(
            Fleet(self.settings, self.ordered, accept_new_key=self.options.accept_new_key, log=self.log)
        )
        self.log(f"connecting to {', '.join(t.name for t in self.ordered)}")
        self.fleet.connect_all()

    def plan(self) -> None:
        """Facts of every host, the locks, the staging gate, the delta bases; what is to do, confirmed."""
        fleet, patch = self._need()
        options, version, log = self.options, self.version, self.log
        ordered = self.ordered
        facts = self.facts = fleet.facts(version=options.version)
        self.running = running = check_ready(facts, operator(), version, break_lock=options.break_lock)
        for target in ordered:
            host = facts[target.name]
            self.report.get(target.name).before = host.installed
            if host.data.get("patchflow_version") != __version__:
                log(f"[{target.name}] note: patchflow {host.data.get('patchflow_version')} there, {__version__} here")
        if not options.skip_staging and not options.upload_only:
            staging_gate(self.settings, ordered, version, accept_new_key=options.accept_new_key, log=fleet.locked_log)
        # a host a killed run left mid-way (or with its lock) is deployed to even where VERSION says
        # the version is there: apply-patch recovers it first (the hint of a stale lock says how)
        self.pending = pending = {t.name for t in ordered if _recovery_pending(facts[t.name])}
        self.todo = todo = [
            t
            for t in ordered
            if t.name not in running
            and (options.force or options.upload_only or facts[t.name].installed != version or t.name in pending)
        ]
        if not options.upload_only:
            # the apply there checks a delta's base itself once the interrupted run is recovered
            check_delta_bases(patch, [(t.name, facts[t.name]) for t in todo if t.name not in pending])
        for target in ordered:
            if target.name in pending and target in todo and not options.upload_only:
                advice = facts[target.name].recovery
                does = advice.get("does") if advice else None
                log(f"[{target.name}] a killed run left it to recover ({does}): the apply does it first")
            if target.name in running:
                log(f"[{target.name}] a deploy of {version} you started is still running there: attaching to it")
            elif target not in todo:
                log(f"[{target.name}] {version} is already installed (--force applies it again)")
        if not options.upload_only:
            self.groups = database_groups(todo, facts, patch.migrations)
            for group in self.groups:
                log(group.describe())
            self.finishing = left_by_a_window(todo, facts, version, self.groups)
            for name, first in self.finishing.items():
                log(
                    f"[{name}] stopped by an unfinished group window of {version} (its database migrated by {first}): "
                    "its apply finishes it, with no database backup of its own"
                )
        plan = (
            "upload only"
            if options.upload_only
            else ("rolling" + (f", canary {ordered[0].name}" if options.canary else ""))
        )
        if self.groups:
            plan += "; one stopped window for " + "; ".join(", ".join(t.name for t in g.hosts) for g in self.groups)
        if todo:
            self.confirm(
                f"{'Upload' if options.upload_only else 'Deploy'} {version} to {', '.join(t.name for t in todo)} "
                f"({plan}; before: " + ", ".join(f"{t.name} {facts[t.name].installed or '?'}" for t in todo) + ")?"
            )

    def upload(self) -> None:
        """The patch uploaded to every host to update (``parallel`` at a time) and checked in place;
        one failure stops the deploy before any host is changed."""
        fleet, patch = self._need()
        todo, report = self.todo, self.report

        def upload(target: Target) -> UploadResult:
            uploaded = upload_patch(fleet.sessions[target.name], self.facts[target.name], patch)
            fleet.locked_log(f"[{target.name}] upload: {uploaded.describe()}")
            return uploaded

        if todo:
            self.log(
                f"uploading {patch.folder.name} ({patch.total_bytes} bytes) to {len(todo)} host(s), "
                f"{self.options.parallel} at a time"
            )
        uploads = each_host(todo, upload, max(1, self.options.parallel))
        failed = [(t, o) for t, o in zip(todo, uploads, strict=True) if isinstance(o, PatchflowError)]
        if failed:
            for target, error in failed:
                result = report.get(target.name)
                result.result = "unknown" if isinstance(error, ConnectionLost) else "refused"
                result.exit_code, result.detail = error.exit_code, error.message
            raise combined_error(
                [e for _, e in failed],
                "No host was changed: the deploy applies nothing until every upload is checked in place.",
            )
        for target in self.ordered:
            result = report.get(target.name)
            if target.name not in self.running and target not in todo:
                result.result, result.after = "already", result.before
            elif self.options.upload_only and target in todo:
                result.result, result.after = "uploaded", result.before

    def apply_host(self, target: Target, *, position: int, database_backup_on: str = "") -> HostResult:
        """One host's apply (a detached run there, or the run already going that this deploy attaches
        to) followed to its end and judged into the host's report entry, which is returned; the
        canary (``position`` 0 with ``canary``) is probed again after it. Never raises."""
        fleet, _ = self._need()
        options, version, log = self.options, self.version, self.log
        result = self.report.get(target.name)
        session = fleet.sessions[target.name]
        try:
            if target.name in self.running:
                record = self.running[target.name].record
                log(f"[{target.name}] attached to {record.id} (started by {record.operator} at {record.started_at})")
            else:
                args = apply_patch_args(
                    target.path,
                    version,
                    force=options.force,
                    allow_downgrade=options.allow_downgrade,
                    break_lock=options.break_lock,
                    others_stopped=options.others_stopped,
                    database_backup_on=database_backup_on,
                    watch=options.watch,
                )
                record = start_run(session, self.facts[target.name], "apply", version, args)
                log(f"[{target.name}] apply started there (pid {record.launch_pid}, log {record.log})")
            follow_and_judge(session, record, result, fleet.locked_log)
            if result.ok and options.canary and position == 0:
                checked = fetch_facts(session, health=True)
                probe = checked.probe
                detail = probe.get("detail") if probe else None
                if not (probe and probe.get("healthy")) or checked.installed != version:
                    result.result, result.exit_code = "failed", 2
                    result.detail = f"canary not healthy after its apply: {detail}"
                else:
                    log(f"[{target.name}] canary healthy on {version}: {detail}")
        except PatchflowError as exc:
            result.result = "unknown" if isinstance(exc, ConnectionLost) else "failed"
            result.exit_code, result.detail = exc.exit_code, f"{exc.message} {exc.hint}".strip()
        return result

    def apply(self) -> None:
        """The groups of hosts on one database first, each in one stopped window
        (:mod:`patchflow.remote.group_window`), then the other hosts rolling: each host's apply
        followed to its end, stopping at the first failure (``rollback_on_failure``: the hosts this
        run updated are rolled back, newest first; a group as a group). A failing host is recorded
        in the report (its exit code), not raised."""
        fleet, _ = self._need()
        options, version, log = self.options, self.version, self.log
        updated: list[Target] = []
        failure: HostResult | None = None
        in_groups = {t.name for g in self.groups for t in g.hosts}
        for group in self.groups:
            failure = run_group_window(self, group, updated)
            if failure is not None:
                break
        rolling = [t for t in self.ordered if t.name not in in_groups]
        for position, target in enumerate(rolling if failure is None else []):
            if target.name not in self.running and target not in self.todo:
                continue
            result = self.apply_host(
                target, position=position + len(in_groups), database_backup_on=self.finishing.get(target.name, "")
            )
            if result.ok:
                if result.result == "updated":
                    updated.append(target)
                continue
            failure = result
            break
        if failure is not None:
            log(f"[{failure.name}] {failure.result}: stopping the rollout (the remaining hosts are left as they are)")
            if options.rollback_on_failure and updated:
                alone = [t for t in updated if t.name not in in_groups]
                _roll_back_updated(fleet, self.facts, alone, self.report, version, log)
                for group in reversed(self.groups):
                    members = [t for t in updated if t in group.hosts]
                    if members:
                        roll_back_group(self, members, [])


DEPLOY_STEPS: tuple[StepSpec, ...] = checked_specs(
    DeployRun,
    (
        StepSpec("check", "check"),
        StepSpec("connect", "connect"),
        StepSpec("plan", "plan"),
        StepSpec("upload", "upload"),
        StepSpec("apply", "apply"),
    ),
)
"""deploy's steps in order, as data (nothing to undo here: each host's apply undoes its own steps,
and ``rollback_on_failure`` is part of the apply step)."""


def deploy(
    settings: Settings, targets: Sequence[Target], options: DeployOptions, *, log: Log, confirm: Callable[[str], None]
) -> FleetReport:
    """Upload and apply a patch on hosts (:data:`DEPLOY_STEPS`: check, connect, plan, upload,
    apply; each logged like apply-patch's steps: ``-> upload``, ``   upload done in 2.1 s``).

    Args:
        settings: this checkout's settings (the patch comes from its ``patches/vX``).
        targets: the hosts, in rolling order (the canary first when given).
        options: version, canary, parallel uploads, rollback on failure, staging gate...
        log: receives progress lines (remote log lines prefixed with ``[host]``).
        confirm: asked once before anything is changed (raises to refuse).

    Returns:
        The report: per host versions before/after, the result and, for a host a run that died
        left to recover, the command that recovers it; ``exit_code`` is the first failing host's
        code (the remote task's own, or its true state for a run that died: see
        :mod:`patchflow.remote.outcome`; 6 when unknown).

    Raises:
        VerifyError: the local patch folder is missing or does not verify.
        RemoteError: a host refused before anything changed (host key, patchflow or tools missing,
            staging gate), or an upload failed (nothing was applied anywhere).
        LockError: a host's lock is held by another apply or rollback.
        ConfirmationRefused: not confirmed.
    """
    return DeployRun(settings, targets, options, log=log, confirm=confirm).execute()


def _roll_back_updated(
    fleet: Fleet, facts: dict[str, HostFacts], updated: list[Target], report: FleetReport, version: str, log: Log
) -> None:
    """Roll back, newest first, the hosts this deploy updated (``--rollback-on-failure``)."""
    for target in reversed(updated):
        log(f"[{target.name}] rolling back {version} (--rollback-on-failure)")
        roll_back_host(fleet, facts, target, report.get(target.name), version, "after the failure")


@dataclass
class RollbackOptions:
    """Flags of the remote rollback-patch (passed to the task on each host)."""

    version: PatchVersion | None = None
    force: bool = False
    backup: str | None = None
    break_lock: bool = False
    restore_database: bool = False
    accept_new_key: bool = False


def rollback(
    settings: Settings, targets: Sequence[Target], options: RollbackOptions, *, log: Log, confirm: Callable[[str], None]
) -> FleetReport:
    """Run ``rollback-patch`` on each host, one at a time, stopping at the first failure.

    Returns:
        The report (``exit_code``: the first failing host's remote exit code).

    Raises:
        RemoteError, LockError: a host refused before anything changed (see :func:`deploy`).
        ConfirmationRefused: not confirmed.
    """
    version = str(options.version) if options.version else ""
    report = FleetReport("rollback", version, [HostResult(t.name, t.role) for t in targets])
    with Fleet(settings, targets, accept_new_key=options.accept_new_key, log=log) as fleet:
        fleet.connect_all()
        facts = fleet.facts()
        check_ready(facts, "", None, break_lock=options.break_lock)
        for target in targets:
            report.get(target.name).before = facts[target.name].installed
        groups = sharing(targets, facts)
        targets = rollback_order(targets, facts, groups, restore_database=options.restore_database)
        groups = [g for g in groups if restores(facts[g[0].name])]  # the others roll back code alone, host by host
        for group in groups:
            log(
                f"{', '.join(t.name for t in group)} use one database: all stopped first, {group[0].name} rolls back "
                "first (it restores the database, once), then the others"
            )
        confirm(
            f"Roll back {version or 'the installed version'} on "
            + ", ".join(f"{t.name} ({facts[t.name].installed or '?'})" for t in targets)
            + ", one host at a time?"
        )
        for target in targets:
            members: list[Target] = next((g for g in groups if g[0] is target), [])
            problems = each_service_task(fleet, facts, members, "stop-services") if members else []
            if problems:  # stopped when its first host's turn comes: nothing stopped before it
                each_service_task(fleet, facts, members, "start-services")
                result = report.get(target.name)
                result.result, result.exit_code = "refused", 2
                result.detail = "the hosts of its database could not all be stopped: " + "; ".join(problems)
                log(f"[{target.name}] refused: {result.detail}; stopping (nothing of its group was rolled back)")
                break
            session = fleet.sessions[target.name]
            result = report.get(target.name)
            args = rollback_patch_args(
                target.path,
                version,
                backup=options.backup,
                force=options.force,
                break_lock=options.break_lock,
                restore_database=options.restore_database,
            )
            try:
                record = start_run(session, facts[target.name], "rollback", version, args)
                log(f"[{target.name}] rollback started there (pid {record.launch_pid}, log {record.log})")
                follow_and_judge(session, record, result, fleet.locked_log)
            except PatchflowError as exc:
                result.result = "unknown" if isinstance(exc, ConnectionLost) else "failed"
                result.exit_code, result.detail = exc.exit_code, f"{exc.message} {exc.hint}".strip()
            if not result.ok:
                log(f"[{target.name}] {result.result}: stopping (the remaining hosts are left as they are)")
                left = [t for g in groups if target in g for t in g[g.index(target) + 1 :]]
                if left and any(g[0] is target for g in groups) and settled(result):
                    each_service_task(fleet, facts, left, "start-services")  # the database was not restored
                    log(f"{', '.join(t.name for t in left)} (same database) started again on {version}")
                elif left:
                    log(
                        f"!! {', '.join(t.name for t in left)} (same database) are left stopped: finish the "
                        f"rollback of {target.name} first, then roll them back"
                    )
                break
    return report


def attach(
    settings: Settings, targets: Sequence[Target], version: PatchVersion | None, *, accept_new_key: bool, log: Log
) -> FleetReport:
    """Follow again the newest run deploy started on each host (of ``version`` when given), from
    the start of its log, and report its true outcome (exit code, history, journal, VERSION there).

    Raises:
        RemoteError: a host cannot be reached, or has no run recorded.
    """
    report = FleetReport("attach", str(version or ""), [HostResult(t.name, t.role) for t in targets])
    with Fleet(settings, targets, accept_new_key=accept_new_key, log=log) as fleet:
        fleet.connect_all()
        facts = fleet.facts()
        for target in targets:
            runs = [r for r in facts[target.name].runs if version is None or r.record.version == str(version)]
            if not runs:
                raise RemoteError(
                    f"{target.name}: no run of deploy is recorded there" + (f" for {version}." if version else "."),
                    f"`inv patch-status --host {target.name}` shows its history.",
                )
            record = runs[-1].record
            result = report.get(target.name)
            log(
                f"[{target.name}] {record.action} of {record.version or 'the installed version'} ({record.id}) started "
                f"by {record.operator} at {record.started_at}: {runs[-1].state}; its log follows"
            )
            follow_and_judge(fleet.sessions[target.name], record, result, fleet.locked_log)
    return report


def _recovery_pending(host: HostFacts) -> bool:
    """True when a killed run left the host something to recover (a journal, its lock, clean-up):
    patch-status there names a recovery command."""
    advice = host.recovery
    return host.interrupted is not None or (advice is not None and bool(advice.get("command")))
