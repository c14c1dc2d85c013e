"""The refusals before anything is sent: tools missing or locks held on a host, the staging gate, a delta off its base.

Each gate reads the facts every host already reported (or, for the staging gate, the staging
hosts' history) and raises one error naming every host that fails it; nothing has been sent to any
host when one refuses.
"""

from __future__ import annotations

from collections.abc import Sequence

from patchflow.config import Settings
from patchflow.errors import LockError, PatchflowError, PreconditionError, RemoteError
from patchflow.remote.facts import fetch_facts
from patchflow.remote.fleet import Fleet, combined_error, each_host
from patchflow.remote.hosts import PRODUCTION_ROLE, STAGING_ROLE, Log, Target, resolve_targets
from patchflow.remote.outcome import remote_recovery
from patchflow.remote.transfer import LocalPatch
from patchflow.remote.wire import HostFacts, RunStatus


def check_delta_bases(patch: LocalPatch, hosts: Sequence[tuple[str, HostFacts]]) -> None:
    """Refuse a delta patch for a fleet where some host to update is not on its base, before
    anything is sent anywhere (each apply would refuse it too, but a rolling deploy would then stop
    half-way with the first hosts updated): the host's version must be the base version and its
    record of its tree must hash to the delta's ``base_tree_sha256`` (not another build of that
    version, not an install without a record). ``hosts``: (name, its host-facts).

    Raises:
        RemoteError: names every host that is not on the base, with its version and why.
    """
    if patch.delta_base is None:
        return
    off = []
    for name, host in hosts:
        installed, tree = host.installed, host.installed_tree_sha256
        if installed != patch.delta_base:
            off.append(f"{name} ({installed or 'version unknown'})")
        elif tree != patch.base_tree_sha256:
            if not host.reads_delta_bases:
                why = f"patchflow {host.patchflow_version} there cannot read delta patches"
            else:
                why = "no record of its tree" if not tree else "another build of it"
            off.append(f"{name} ({installed}, but {why})")
    if off:
        raise RemoteError(
            f"Patch {patch.version} is a delta built on {patch.delta_base}, and not every host is on that "
            f"tree: {', '.join(off)}.",
            f"Deploy the full patch of {patch.version} (create-patch without --base), or bring those hosts to "
            f"{patch.delta_base} first. Nothing was sent to any host.",
        )


def check_ready(
    facts: dict[str, HostFacts], me: str, version: str | None, *, break_lock: bool = False
) -> dict[str, RunStatus]:
    """Refuse hosts missing a tool or locked by someone else; return, per host, a run of ``version``
    that this operator started and that still runs (to attach to instead of starting another).

    Raises:
        RemoteError: tools missing (named, with the environment they were looked up in).
        LockError: another apply or rollback holds a host's lock (its holder named), or a dead one
            left it (stale) and ``break_lock`` is not given.
        PreconditionError: a host is frozen (``inv lock`` there: its message, who and when).
    """
    problems: list[PatchflowError] = []
    running: dict[str, RunStatus] = {}
    for name, host in facts.items():
        if host.missing:
            problems.append(
                RemoteError(
                    f"{name}: the apply would need {', '.join(host.missing)}, not found in the non-interactive "
                    "SSH environment the apply runs in.",
                    "Install them where the deploy user's non-interactive shell finds them (system-wide, e.g. "
                    "/usr/local/bin), or configure their full path; nvm and login profiles are not loaded there. "
                    f"`inv setup-host --host {name}` lists what is missing.",
                )
            )
        mine = [
            r
            for r in host.runs
            if r.state in ("running", "starting")
            and r.record.operator == me
            and r.record.action == "apply"
            and (version is None or r.record.version == version)
        ]
        lock = host.lock
        freeze = host.report.get("freeze")
        if freeze:
            problems.append(
                PreconditionError(
                    f'{name}: frozen: "{freeze.get("message")}" (set by {freeze.get("user")}@{freeze.get("host")} at '
                    f"{freeze.get('set_at')}). Nothing was uploaded or changed there.",
                    f"Ask whoever set it; `patchflow unlock` on {name} lifts the freeze.",
                )
            )
        if mine:
            running[name] = mine[-1]
        elif lock and lock.get("state") in ("held", "held-too-long"):
            started = [r for r in host.runs if r.state in ("running", "starting")]
            by = f"; started by deploy from {started[-1].record.operator}" if started else ""
            problems.append(
                LockError(
                    f"{name}: another apply or rollback is running there: {lock.get('action')} of "
                    f"{lock.get('version')} by {lock.get('user')}@{lock.get('host')} (pid {lock.get('pid')}) "
                    f"since {lock.get('started_at')}{by}.",
                    f"Wait for it to finish (`inv patch-status --host {name}`); "
                    f"`inv deploy --attach --host {name}` follows a run deploy started.",
                )
            )
        elif lock and lock.get("state") == "stale" and not break_lock:
            command, does = remote_recovery(name, host.recovery, version or "")
            problems.append(
                LockError(
                    f"{name}: a {lock.get('action')} of {lock.get('version')} by {lock.get('user')}@{lock.get('host')} "
                    f"(pid {lock.get('pid')}) did not finish there (stale lock).",
                    (f"Recover it with `{command}` ({does}); " if command else "")
                    + f"`inv patch-status --host {name}` shows what it left; repeat with --break-lock to have the "
                    "remote task finish or undo it first.",
                )
            )
    if problems:
        raise combined_error(problems, "Nothing was done on any host.")
    return running


def staging_gate(
    settings: Settings, targets: Sequence[Target], version: str, *, accept_new_key: bool, log: Log
) -> None:
    """Refuse a deploy that includes production hosts unless a staging host of the inventory applied
    ``version`` successfully (read from its history on the host), or a staging host comes before
    every production host in this rolling deploy (the rollout stops there if it fails).

    Raises:
        RemoteError: no staging host passed the version (exit 1), or none passed among those read and
            some could not be read (exit 6: unknown, not refused).
    """
    production = [i for i, t in enumerate(targets) if t.role == PRODUCTION_ROLE]
    if not production:
        return
    first = [t.name for t in targets[: production[0]] if t.role == STAGING_ROLE]
    if first:
        log(f"staging: {', '.join(first)} first in this rolling deploy; production hosts follow only if it passes")
        return
    stagers = (
        resolve_targets(settings, role=STAGING_ROLE) if any(e.role == STAGING_ROLE for e in settings.hosts) else []
    )
    skip = "Deploy it to staging first, or pass --skip-staging to deploy to production anyway."
    if not stagers:
        raise RemoteError(
            f"Refusing to deploy {version} to production: the inventory has no host of role {STAGING_ROLE!r} "
            "whose history could show the version passed there.",
            skip,
            exit_code=1,
        )
    with Fleet(settings, stagers, accept_new_key=accept_new_key, log=log) as fleet:
        outcomes = each_host(list(fleet.sessions.values()), lambda s: fetch_facts(s, history=1000), 8)
    passed = []
    unread = []
    for target, outcome in zip(stagers, outcomes, strict=True):
        if isinstance(outcome, PatchflowError):
            unread.append(f"{target.name} ({outcome.message})")
        elif any(
            h.get("action") == "apply" and h.get("to_version") == version and h.get("result") == "success"
            for h in outcome.history
        ):
            passed.append(target.name)
    if passed:
        log(f"staging: {version} was applied and passed its health check on {', '.join(passed)}")
        return
    names = ", ".join(t.name for t in stagers)
    if unread:  # a host that did not answer is not a host that never passed: unknown, not refused
        read = [t.name for t, o in zip(stagers, outcomes, strict=True) if not isinstance(o, PatchflowError)]
        raise RemoteError(
            f"Refusing to deploy {version} to production: whether a staging host passed it is unknown, its history "
            f"could not be read: {'; '.join(unread)}"
            + (f" ({', '.join(read)} has not passed it)" if read else "")
            + ". Nothing was done on any host.",
            f"Check the connection to the staging host(s) and deploy again. {skip}",
        )
    raise RemoteError(
        f"Refusing to deploy {version} to production: no staging host ({names}) has applied it and passed its "
        "health check. Nothing was done on any host.",
        skip,
        exit_code=1,
    )
