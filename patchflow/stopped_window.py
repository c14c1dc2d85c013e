"""The stopped window: what each run records of its steps, and the estimate made from that history.

Each apply or rollback records its steps' seconds (and an apply the work they did) in its history
record; the next plan estimates how long the services will be stopped from them.

* :func:`step_record`: what an apply or rollback adds to its history record: the seconds of each
  step (``steps``) and, for an apply, the work they did (``work``: paths switched, bytes backed
  up, migrations run), which :func:`estimate_window` scales by.
* :func:`estimate_window`: how long the services will be stopped, from this install's own history
  of the same steps (``history.jsonl``), saying what the estimate is based on, or that there is no
  history yet.

Pure functions of their arguments (no I/O), so the estimates are table-tested.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import median
from typing import TYPE_CHECKING, Any, Literal, NotRequired, TypedDict

from patchflow.status_schema import Work

if TYPE_CHECKING:
    from patchflow.lifecycle.planning import Plan

#: The steps of an apply between stop and a healthy new version: the stopped window.
STOPPED_STEPS = ("stop", "snapshot", "backup", "switch", "migrate", "start", "health")
#: Stopped steps that records older than them lack (counted as 0 s and no work there).
OPTIONAL_STEPS = frozenset({"snapshot"})
WorkKey = Literal["files", "backup_bytes", "migrations", "snapshot_bytes"]
#: Steps whose duration grows with the work (the key of ``work`` it is scaled by).
SCALED: dict[str, WorkKey] = {
    "snapshot": "snapshot_bytes",
    "switch": "files",
    "backup": "backup_bytes",
    "migrate": "migrations",
}
HISTORY_USED = 5  # the newest applies an estimate reads


class StepRecord(TypedDict):
    """The keys a history record gets from a run's steps (both left out when there is nothing)."""

    steps: NotRequired[dict[str, float]]
    work: NotRequired[Work]


def plan_work(plan: Plan) -> Work:
    """The work of ``plan`` that the stopped steps scale with: ``files`` (paths added, changed or
    deleted), ``backup_bytes`` (bytes the backup step writes inside the stopped window: the files
    replaced or deleted, plus the database's size when it is dumped there: neither before the stop
    nor copied by a snapshot, as the plan measured them), ``migrations`` (pending) and, with a
    snapshot, ``snapshot_bytes`` (the database's size, copied by the snapshot step)."""
    diff = plan.diff
    size = sum(need.bytes for need in plan.needs if need.label == "database dump")
    dumped_inside = not plan.dump_before_stop and not plan.snapshot
    work: Work = {
        "files": len(diff.added) + len(diff.changed) + len(diff.deleted),
        "backup_bytes": plan.bytes_of(diff.changed + diff.deleted, "old") + (size if dumped_inside else 0),
        "migrations": len(plan.pending_migrations or []),
    }
    if plan.snapshot:
        work["snapshot_bytes"] = size
    return work


def step_record(step_seconds: Mapping[str, float], plan: Plan | None) -> StepRecord:
    """The keys a history record gets from a run: ``steps`` (step name -> seconds, the steps
    that ran) and, with ``plan``, ``work`` (:func:`plan_work`)."""
    record: StepRecord = {}
    if step_seconds:
        record["steps"] = dict(step_seconds)
    if plan is not None:
        record["work"] = plan_work(plan)
    return record


@dataclass(frozen=True)
class WindowEstimate:
    """How long the services are expected to be stopped (``seconds``; None: no estimate) and
    what that is based on (``basis``)."""

    seconds: float | None
    basis: str

    def describe(self) -> str:
        """``about 14 s (from the last 3 applies on this install, ...)`` or the reason there is none."""
        if self.seconds is None:
            return self.basis
        return f"about {human_seconds(self.seconds)} ({self.basis})"


def human_seconds(seconds: float) -> str:
    """``7.24`` -> ``7.2 s``; ``125`` -> ``2 min 5 s``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def _detailed(record: Mapping[str, Any]) -> bool:
    steps, work = record.get("steps"), record.get("work")
    return (
        isinstance(steps, dict)
        and isinstance(work, dict)
        and all(_number(steps.get(step)) for step in STOPPED_STEPS if step not in OPTIONAL_STEPS)
        and all(_number(work.get(SCALED[step])) for step in SCALED if step not in OPTIONAL_STEPS)
    )


def _seconds(record: Mapping[str, Any], step: str) -> float:
    value = record["steps"].get(step, 0.0)
    return float(value) if _number(value) else 0.0


def _work(record: Mapping[str, Any], key: WorkKey) -> float:
    value = record["work"].get(key, 0)
    return float(value) if _number(value) else 0.0


def _step_estimate(step: str, records: Sequence[Mapping[str, Any]], work: Work) -> float:
    times = [_seconds(r, step) for r in records]
    key = SCALED.get(step)
    if key is None:
        return float(median(times))
    if not work.get(key):  # nothing of that kind this time: what such runs took (else the least)
        without = [t for t, r in zip(times, records, strict=True) if not _work(r, key)]
        return float(median(without)) if without else min(times)
    rates = [t / _work(r, key) for t, r in zip(times, records, strict=True) if _work(r, key)]
    if not rates and step == "snapshot":  # never timed here: a dump's rate, its upper bound
        rates = [_seconds(r, "backup") / _work(r, "backup_bytes") for r in records if _work(r, "backup_bytes")]
    return float(median(rates)) * float(work.get(key, 0)) if rates else float(median(times))


def step_estimate(history: Sequence[Mapping[str, Any]], work: Work, step: str) -> float | None:
    """Seconds the stopped step ``step`` is expected to take for ``work``, from the newest applies
    of ``history`` that recorded their steps (as :func:`estimate_window` does); None without one."""
    detailed = [
        r
        for r in history
        if r.get("action") == "apply" and r.get("result") == "success" and not r.get("recovered") and _detailed(r)
    ][-HISTORY_USED:]
    return _step_estimate(step, detailed, work) if detailed else None


def estimate_window(history: Sequence[Mapping[str, Any]], work: Work, rehearsed: float | None = None) -> WindowEstimate:
    """Estimate the stopped window of an apply doing ``work`` (:func:`plan_work`) from this
    install's ``history`` (``history.jsonl`` records, oldest first) and, when its pending migrations
    were rehearsed on a copy of this database (:mod:`patchflow.rehearse`), their ``rehearsed``
    seconds.

    With applies that recorded their steps (:func:`step_record`), each stopped step is estimated
    from the newest :data:`HISTORY_USED` of them: stop, start and health by their median; switch,
    backup and migrate by their median rate per path, byte and migration times this patch's; the
    migrate step by the rehearsal instead when there is one. With only older records, the median
    of their stopped windows. Applies finished by a recovery are left out (their window includes
    the time until someone recovered them). With no history, the rehearsal alone (the migrate
    step) or no estimate."""
    applies = [
        r
        for r in history
        if r.get("action") == "apply"
        and r.get("result") == "success"
        and not r.get("recovered")
        and _number(r.get("stopped_seconds"))
    ]
    detailed = [r for r in applies if _detailed(r)][-HISTORY_USED:]
    scaled = (
        "switch, backup and migrate scaled to this patch's paths, bytes and migrations"
        if rehearsed is None
        else "switch and backup scaled to this patch's paths and bytes, migrate as rehearsed on a copy of this database"
    )
    if detailed:
        parts = {
            step: _step_estimate(step, detailed, work)
            for step in STOPPED_STEPS
            if step not in OPTIONAL_STEPS or work.get(SCALED[step])
        }
        if rehearsed is not None:
            parts["migrate"] = rehearsed
        count = len(detailed)
        steps = ", ".join(f"{step} {human_seconds(seconds)}" for step, seconds in parts.items())
        return WindowEstimate(
            sum(parts.values()),
            f"from the last {count} appl{'y' if count == 1 else 'ies'} on this install, step by step: {steps}; "
            + scaled,
        )
    if applies:
        recent = applies[-HISTORY_USED:]
        count = len(recent)
        return WindowEstimate(
            float(median(float(r["stopped_seconds"]) for r in recent)),
            f"the median stopped window of the last {count} appl{'y' if count == 1 else 'ies'} on this install, "
            "which recorded no per-step durations, whatever their size",
        )
    if rehearsed is not None:
        return WindowEstimate(
            rehearsed,
            "its migrations as rehearsed on a copy of this database; no apply has completed on this install to "
            "time the other steps",
        )
    return WindowEstimate(None, "no history yet: no apply has completed on this install")
