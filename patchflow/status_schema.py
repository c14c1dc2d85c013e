"""The shape of ``patch-status --json``: one TypedDict per object, and its version.

The README's section "patch-status --json" documents every field with its type and meaning;
``tests/unit/test_status_schema.py`` checks that the README, these TypedDicts and the JSON that
real installs emit name the same fields, so a renamed key fails a test. ``schema_version`` grows
when a field changes meaning or type or disappears; added fields keep it.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

SCHEMA_VERSION = 1


class PatchItem(TypedDict):
    """One folder ``patches/vX.Y.Z/``."""

    version: str
    folder: str
    state: str
    problems: list[str]
    created_at: str | None
    files: int | None
    installed: bool
    delta_base: str | None
    verified: str


class BackupItem(TypedDict):
    """One backup folder (newest first)."""

    name: str
    version: str
    restores_version: str
    created_at: str
    size_bytes: int
    age_seconds: float
    database: bool
    problems: list[str]


class RunningRun(TypedDict):
    """The apply or rollback running now (its holder holds the install's lock)."""

    action: str
    version: str
    from_version: str | None
    phase: str | None
    step: str | None
    step_state: str | None
    step_started_at: str | None
    started_at: str
    elapsed_seconds: float | None
    pid: int
    user: str
    host: str
    paused: bool
    recovering: str | None


class InterruptedRun(TypedDict):
    """The journal of an apply or rollback whose process is gone (or a damaged journal)."""

    action: str
    version: str
    from_version: str | None
    phase: str
    state: str
    step: str | None
    step_state: str | None
    failed_step: str | None
    error: str | None
    pid: int | None
    host: str | None
    started_at: str | None
    backup: str | None


class LockInfo(TypedDict):
    """The install's lock when taken (``held``, ``held-too-long``) or left by a dead run (``stale``)."""

    state: str
    age_seconds: float | None
    pid: int
    host: str
    user: str
    started_at: str
    action: str
    version: str


class RecoveryAdvice(TypedDict):
    """The one command that recovers the install."""

    command: str | None
    args: list[str]
    does: str


class HealthRecordJson(TypedDict):
    """The health settings a version was proven healthy with (:class:`patchflow.installed.HealthRecord`)."""

    urls: list[str]
    version_field: str
    status_field: str
    status_ok: list[str]
    follow_redirects: bool
    timeout: float
    source: str
    proven_at: str


class InstalledRecordJson(TypedDict):
    """``.patchflow/installed.json``: the record of the apply that installed the version."""

    version: str
    from_version: str
    backup: str
    applied_at: str
    migrations: list[str]
    health: NotRequired[HealthRecordJson]


class DisplacedDatabase(TypedDict):
    """A database a restore displaced and kept (``<name>_before_rollback_<stamp>``)."""

    name: str
    database: str
    created_at: str
    backup: str
    rows_since: str
    age_seconds: float | None
    exists: bool | None
    size_bytes: int | None


class SnapshotItem(TypedDict):
    """A snapshot of the database an apply took on the database server (``<name>_snap_<stamp>``)."""

    name: str
    database: str
    backup: str
    created_at: str | None
    dump: str
    dump_error: str | None
    expires_at: str | None
    age_seconds: float | None
    exists: bool | None
    size_bytes: int | None


class Work(TypedDict):
    """The work of an apply that its stopped steps scale with (a history record's ``work``; see
    :func:`patchflow.stopped_window.plan_work`)."""

    files: int
    backup_bytes: int
    migrations: int
    snapshot_bytes: NotRequired[int]


class RolledBack(TypedDict):
    """How an apply was undone (a history record's ``rolled_back``)."""

    by: str
    at: str | None


class HistoryItem(TypedDict):
    """One record of ``.patchflow/history.jsonl`` (an apply, a rollback or a watch window's
    outcome), as patch-status shows it: apply records get ``rolled_back``
    (:func:`patchflow.status_runs.annotate_history`). The
    optional keys are those only some records have (older records, failed runs, rollbacks)."""

    action: str
    run_id: NotRequired[str | None]
    from_version: str | None
    to_version: str | None
    started_at: str
    duration_seconds: NotRequired[float]
    stopped_seconds: NotRequired[float]
    result: str
    backup: str | None
    migrations: NotRequired[list[str]]
    recovered: NotRequired[bool]
    user: str
    host: str
    pid: NotRequired[int]
    finished_at: NotRequired[str]
    error: NotRequired[str]
    rollback_error: NotRequired[str]
    database_restored: NotRequired[bool]
    displaced_database: NotRequired[str | None]
    steps: NotRequired[dict[str, float]]
    work: NotRequired[Work]
    rolled_back: NotRequired[RolledBack | None]
    checklist: NotRequired[dict[str, object]]
    watch_seconds: NotRequired[float]


class FreezeJson(TypedDict):
    """A deploy freeze (``.patchflow/freeze.json``, ``freeze`` of ``patch-status --json``)."""

    message: str
    user: str
    host: str
    set_at: str


class StatusReport(TypedDict):
    """Everything patch-status shows (``--json``)."""

    schema_version: int
    root: str
    installed_version: str | None
    version_error: str | None
    patches: list[PatchItem]
    backups: list[BackupItem]
    history: list[HistoryItem]
    last_apply: HistoryItem | None
    latest_apply: HistoryItem | None
    running: RunningRun | None
    interrupted: InterruptedRun | None
    lock: LockInfo | None
    leftovers: list[str]
    recovery: RecoveryAdvice | None
    installed_record: InstalledRecordJson | None
    displaced_databases: list[DisplacedDatabase]
    displaced_databases_note: str | None
    snapshots: list[SnapshotItem]
    snapshots_note: str | None
    damaged_state: list[str]
    freeze: FreezeJson | None
    watch: dict[str, object] | None
    maintenance: dict[str, object] | None
