"""Deploy's group window: several app servers on one database (issue 24).

``host-facts`` reports the identity of the database each host uses (``<system_identifier>/<name>``:
:func:`patchflow.shared_database.database_identity`) and the migrations applied there. Hosts of
one deploy with the same identity form a *group*. For a patch whose migrations are not all applied
on the group's database, the group gets **one stopped window** instead of a host-by-host roll:

1. the application services of every host of the group but the first are stopped
   (``stop-services`` there), so nobody writes to the database;
2. the first host (the group's *migration host*, Capistrano's ``migration_role``) applies the patch:
   its own stop, the snapshot or dump of the database, the migrations, once; its apply refuses if a
   client it does not know is still connected (:func:`patchflow.shared_database.refuse_other_clients`);
3. every other host applies it with ``--database-backup-on <first host>``: no database backup of
   its own, no migration (it refuses if one is pending), its code switched and its services started
   and proven healthy;
4. a failure undoes the group: when the first host failed, its own apply restored the database
   with every other host stopped, and the others are started again on the old version. When a
   later host failed and ``--rollback-on-failure`` is given, every host of the group is stopped,
   the first host rolls back (the database restored once, from its snapshot: the rows written
   since the new version started are named and kept in the displaced database), then each updated
   host rolls back its code, then the hosts left stopped are started. Without it, the hosts left
   stopped are started on the old version (and said to run it on the migrated schema).

A patch without pending migrations keeps the host-by-host roll.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from patchflow.commands.remote import rollback_patch_args, task_command
from patchflow.errors import PatchflowError, RemoteError
from patchflow.remote.fleet import Fleet
from patchflow.remote.hosts import Target
from patchflow.remote.outcome import HostResult
from patchflow.remote.runs import follow_and_judge, start_run
from patchflow.remote.wire import HostFacts

if TYPE_CHECKING:
    from patchflow.remote.rolling import DeployRun


@dataclass
class DatabaseGroup:
    """Hosts of one deploy that use one database (``identity``), in rolling order: the first
    migrates; ``pending``: the patch's migrations not applied there."""

    identity: str
    hosts: list[Target]
    pending: list[str]

    def describe(self) -> str:
        """``database 7716.../app used by a, b, c: one stopped window, 1 migration on a``."""
        names = ", ".join(t.name for t in self.hosts)
        return (
            f"database {self.identity} is used by {names}: one stopped window for the group "
            f"({len(self.pending)} migration(s) run once, on {self.hosts[0].name}; its backup is the group's)"
        )


def sharing(targets: Sequence[Target], facts: dict[str, HostFacts]) -> list[list[Target]]:
    """The hosts of ``targets`` (order kept) that share their database with another of them, one
    list per database; hosts whose database identity is not known are in none."""
    by_identity: dict[str, list[Target]] = {}
    for target in targets:
        database = facts[target.name].database
        identity = database.get("identity") if database else ""
        if identity:
            by_identity.setdefault(identity, []).append(target)
    return [hosts for hosts in by_identity.values() if len(hosts) > 1]


def database_groups(
    todo: Sequence[Target], facts: dict[str, HostFacts], migrations: Sequence[str]
) -> list[DatabaseGroup]:
    """The groups of two or more hosts of ``todo`` (rolling order kept) whose database is the same
    and lacks some of ``migrations`` (the patch's, by name). Hosts whose database identity is not
    known (no database, an older patchflow, unreachable) are in no group."""
    groups = []
    for hosts in sharing(todo, facts):
        database = facts[hosts[0].name].database or {"identity": "", "applied": [], "error": ""}
        applied = set(database.get("applied", []))
        pending = [m for m in migrations if m not in applied]
        if pending:
            groups.append(DatabaseGroup(database["identity"], hosts, pending))
    return groups


def service_task(fleet: Fleet, facts: dict[str, HostFacts], target: Target, task: str, *extra: str) -> None:
    """Run ``stop-services`` or ``start-services`` (with ``extra`` arguments) in ``target``'s checkout
    and wait for it.

    Raises:
        RemoteError: it failed there (its last error line in the message).
        ConnectionLost: the host did not answer.
    """
    args = [task, "--root", target.path, *extra]
    done = fleet.sessions[target.name].run(task_command(target.path, facts[target.name].python, args), what=task)
    if done.exited != 0:
        raise RemoteError(f"{target.name}: {task} failed there: {done.last_error()}")
    said = done.stdout.strip().splitlines()
    fleet.locked_log(f"[{target.name}] {task}: {said[-1] if said else 'ok'}")


def each_service_task(
    fleet: Fleet, facts: dict[str, HostFacts], targets: Sequence[Target], task: str, *extra: str
) -> list[str]:
    """``task`` on each of ``targets`` in turn; the failures, as lines (the others still run)."""
    problems = []
    for target in targets:
        try:
            service_task(fleet, facts, target, task, *extra)
        except PatchflowError as exc:
            problems.append(f"{target.name}: {exc.message}")
            fleet.locked_log(f"[{target.name}] !! {task} failed: {exc.message}")
    return problems


def _each(run: DeployRun, targets: Sequence[Target], task: str, *extra: str) -> list[str]:
    fleet, _ = run._need()
    return each_service_task(fleet, run.facts, targets, task, *extra)


def run_group_window(run: DeployRun, group: DatabaseGroup, updated: list[Target]) -> HostResult | None:
    """The group window of the module docstring for ``group``; the hosts it updated are added to
    ``updated`` (they are rolled back here on a failure with ``rollback_on_failure``). Returns the
    failing host's result, or None when every host of the group ended on the new version."""
    log, report = run.log, run.report
    first, others = group.hosts[0], group.hosts[1:]
    log(group.describe())
    log(f"stopping the application services of {', '.join(t.name for t in others)} (the group's window opens)")
    names = ",".join(t.name for t in group.hosts)
    record = ("--group-version", run.version, "--group-first", first.name, "--group-hosts", names)
    problems = _each(run, others, "stop-services", *record)
    if problems:
        _each(run, others, "start-services")
        blamed = next(t for t in others if any(p.startswith(f"{t.name}:") for p in problems))
        result = report.get(blamed.name)
        result.result, result.exit_code = "refused", 2
        result.detail = "the group's window could not open: " + "; ".join(problems)
        return result
    done: list[Target] = []
    failure: HostResult | None = None
    for target in group.hosts:
        backup_on = "" if target is first else f"{first.name} (the group's first host)"
        result = run.apply_host(target, position=len(done), database_backup_on=backup_on)
        if not result.ok:
            failure = result
            break
        done.append(target)
        if result.result == "updated":
            updated.append(target)
    if failure is None:
        log(f"the group of {first.name} is on {run.version}: its window is closed")
        return None
    left = [t for t in group.hosts if t not in done and t.name != failure.name]
    failed = [t for t in group.hosts if t.name == failure.name]
    in_group = [t for t in updated if t in group.hosts]
    if not settled(failure):
        # its apply may still run or may yet restore the database (SSH lost, killed mid-way): nobody
        # else may write to it before that host is recovered
        log(
            f"!! {failure.name} ended {failure.result} (exit {failure.exit_code}): "
            f"{', '.join(t.name for t in left) or 'no other host'} of its group stay stopped until it is "
            f"recovered ({failure.recovery or 'inv patch-status --host ' + failure.name}); then "
            f"`inv deploy --hosts {','.join(t.name for t in group.hosts)} --version {run.version}` finishes the group"
        )
        return failure
    if failure.name == first.name or not run.options.rollback_on_failure or not in_group:
        if failure.name != first.name and in_group:
            log(
                f"!! {', '.join(t.name for t in in_group)} run {run.version} and the database is migrated; "
                f"{', '.join(t.name for t in left + failed) or 'no other host'} start again on the old version "
                "against it (--rollback-on-failure undoes the group)"
            )
        _each(run, left + failed, "start-services")  # the failed host too: refused before its own stop, it is down
        return failure
    roll_back_group(run, in_group, failed + left)
    for target in in_group:
        updated.remove(target)
    return failure


def settled(result: HostResult) -> bool:
    """True when the host's run ended with its install whole on a version: refused before any change
    (exit 1, 3, 5) or failed and rolled back by itself (exit 2); not a run that died mid-way (4),
    whose end is unknown (6) or that still runs."""
    return result.exit_code in (1, 2, 3, 5) and result.result not in ("unknown", "running", "interrupted")


def roll_back_group(run: DeployRun, updated: list[Target], idle: list[Target]) -> None:
    """Undo a group: stop every host (``updated``, first the group's first host, and ``idle``: the
    failed one, restarted on the old version by its own undo, and those not reached), roll back
    the first host (the database restored once), then the other updated hosts (their code), then
    start ``idle`` again. Each rollback is a detached run judged like deploy's applies."""
    fleet, _ = run._need()
    log, version, report = run.log, run.version, run.report
    log(f"undoing the group: stopping {', '.join(t.name for t in [*updated, *idle])} before the database is restored")
    stop_problems = _each(run, [*updated, *idle], "stop-services")
    if stop_problems:
        log("!! not every host of the group stopped: the first host's rollback refuses to restore under them")
    for target in updated:
        log(f"[{target.name}] rolling back {version} (--rollback-on-failure, the group's window)")
        if not roll_back_host(fleet, run.facts, target, report.get(target.name), version, "with its group"):
            log(f"[{target.name}] !! its rollback did not end well: the rest of the group is left stopped")
            return
    _each(run, idle, "start-services")


def roll_back_host(
    fleet: Fleet, facts: dict[str, HostFacts], target: Target, result: HostResult, version: str, why: str
) -> bool:
    """Roll back ``version`` on ``target`` (a detached ``rollback-patch`` run there, judged like
    deploy's applies) after this deploy updated it; ``result`` (its report entry) says how it ended
    (``updated to X, then rolled back <why>``). Returns True when it was rolled back. Never raises."""
    back = HostResult(target.name, target.role, before=version)
    try:
        args = rollback_patch_args(target.path, version)
        record = start_run(
            fleet.sessions[target.name], facts[target.name], "rollback", version, args, installed=version
        )
        follow_and_judge(fleet.sessions[target.name], record, back, fleet.locked_log)
    except PatchflowError as exc:
        back.result, back.exit_code, back.detail = "unknown", exc.exit_code, f"{exc.message} {exc.hint}".strip()
    result.after = back.after
    result.recovery, result.recovery_does = back.recovery, back.recovery_does
    if back.result == "rolled back":
        result.result, result.detail = "rolled back", f"updated to {version}, then rolled back {why}"
        return True
    result.result = back.result if back.result.startswith("rollback") else f"rollback {back.result}"
    result.exit_code, result.detail = back.exit_code or 4, back.detail
    return False


def rollback_order(
    targets: Sequence[Target], facts: dict[str, HostFacts], groups: list[list[Target]], *, restore_database: bool
) -> list[Target]:
    """``targets`` in the order a remote rollback takes them: in each group of hosts on one database
    (:func:`sharing`) the host whose rollback restores the database (its installing apply ran
    migrations) first, moved to the group's first place in ``groups`` too, so it restores with
    every other host of the group stopped.

    Raises:
        RemoteError: in a group, more than one host would restore the shared database (or
            ``--restore-database`` asks each to): one restore must be chosen (nothing changed).
    """
    order = list(targets)
    for group in groups:
        restoring = [t for t in group if installed_migrations(facts[t.name])]
        if restore_database or len(restoring) > 1:
            names = ", ".join(t.name for t in (group if restore_database else restoring))
            raise RemoteError(
                f"{names} use one database and the rollback of each would restore it: the second restore would "
                "move the rows the first kept out of the live database. Nothing was rolled back.",
                "Roll back the host whose apply ran the migrations alone first (--host NAME, with the others "
                "stopped: --others-stopped there), then the others without --restore-database.",
                exit_code=1,
            )
        if restoring and restoring[0] is not group[0]:
            group.remove(restoring[0])
            group.insert(0, restoring[0])
        first = order.index(group[0])
        for target in group[1:]:
            if order.index(target) < first:
                order.remove(target)
                order.insert(order.index(group[0]) + 1, target)
    return order


def restores(facts: HostFacts) -> bool:
    """True when the host's rollback restores its database: the apply that installed its version ran
    migrations (a group window's other hosts ran none)."""
    return bool(installed_migrations(facts))


def installed_migrations(facts: HostFacts) -> list[str]:
    """The migrations the apply that installed the host's version ran (its ``installed_record``)."""
    record = facts.report.get("installed_record")
    migrations = record.get("migrations") if isinstance(record, dict) else None
    return [str(m) for m in migrations] if isinstance(migrations, list) else []


def left_by_a_window(
    todo: Sequence[Target], facts: dict[str, HostFacts], version: str, groups: Sequence[DatabaseGroup]
) -> dict[str, str]:
    """Hosts of ``todo`` that a group window of ``version`` stopped and that were never applied
    (a deploy killed mid-window: their record, :func:`patchflow.shared_database.read_group_window`),
    whose database needs no migration any more, in no new group: ``name -> the first host`` (their
    apply then runs with ``--database-backup-on``, as in the window)."""
    in_groups = {t.name for g in groups for t in g.hosts}
    left = {}
    for target in todo:
        record = facts[target.name].group_window
        if record and record.get("version") == version and target.name not in in_groups:
            left[target.name] = f"{record.get('first')} (the group's first host)"
    return left


def unfinished_windows(rows: Sequence[tuple[str, HostFacts | None]]) -> list[str]:
    """Lines for ``patch-status --hosts``: each group window a killed deploy left (hosts stopped by
    it, not applied since), with the command that finishes it."""
    windows: dict[tuple[str, str, str], list[str]] = {}
    for name, facts in rows:
        record = facts.group_window if facts is not None else None
        if record:
            key = (str(record.get("version")), str(record.get("first")), ",".join(record.get("hosts") or []))
            windows.setdefault(key, []).append(f"{name} (since {str(record.get('stopped_at', ''))[:19]}Z)")
    return [
        f"group window of {version} left unfinished: {', '.join(stopped)} stopped by it (first host {first}); "
        f"finish it with `inv deploy --hosts {hosts} --version {version}`"
        for (version, first, hosts), stopped in windows.items()
    ]
