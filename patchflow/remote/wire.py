"""The documents crossing the SSH boundary, typed once for both sides: host facts, run records, receive-patch.

The server side (:mod:`patchflow.remote.serverside`, run there by ``host-facts`` and
``receive-patch``) builds these TypedDicts; deploy reads them back through :class:`HostFacts`,
:class:`RunRecord` and :class:`RunStatus` (``from_json``/``to_json``), so a key renamed on one side
is a type error on the other. The JSON is what older patchflow versions wrote and read: a key is
never renamed, and one that older servers do not send (``installed_tree_sha256``, ``journal``) is
``NotRequired`` and read with ``.get``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict, cast

from patchflow.commands.remote import task_command
from patchflow.status_schema import InterruptedRun, LockInfo, RecoveryAdvice, StatusReport
from patchflow.version import PatchVersion

#: the ``format`` of the host-facts document
FACTS_FORMAT = 1
#: the name prefix of an upload's temporary folder under ``patches/``
UPLOAD_PREFIX = ".upload-"
#: the line ``receive-patch`` prints on its stdout when the upload does not verify (and only then)
NOT_VERIFIED = "receive-patch: not verified"

#: what ``receive-patch`` prints last: the upload was renamed into place, or that patch was there
Received = Literal["placed", "already"]
#: the folders of the checkout host-facts reports
PathKey = Literal["root", "patches", "state", "logs", "deploys"]


class PathsJSON(TypedDict):
    """The checkout's folders on the host (absolute)."""

    root: str
    patches: str
    state: str
    logs: str
    deploys: str


class FactsSettingsJSON(TypedDict):
    """The host's settings deploy and setup-host read (``verify_key``: whether one is set)."""

    service_manager: str
    database_mode: str
    verify_key: bool
    health_url: list[str]


class ToolJSON(TypedDict):
    """A program the apply will run there: ``found`` is its path or detail, None when missing."""

    name: str
    purpose: str
    found: str | None


class HealthAnswerJSON(TypedDict):
    """One health URL's answer to host-facts' quick probe (``problem``: why it is not healthy)."""

    url: str
    status: int | None
    version: str | None
    problem: str | None


class HealthJSON(TypedDict):
    """host-facts' quick health probe (``--health``)."""

    healthy: bool
    answers: list[HealthAnswerJSON]
    detail: str


class RunRecordJSON(TypedDict):
    """``.patchflow/deploys/<id>.json`` on the host: a run deploy started (see :class:`RunRecord`)."""

    id: str
    action: str
    version: str
    log: str
    pid_file: str
    exit_file: str
    operator: str
    started_at: str
    argv: list[str]
    from_version: str


class RunStatusJSON(RunRecordJSON):
    """A run's record with its state as the host sees it (see :class:`RunStatus`)."""

    state: str
    exit_code: int | None
    pid: int | None


class UploadFinalJSON(TypedDict):
    """The final ``patches/vX`` folder: the SHA-256 of its SHA256SUMS (None without one)."""

    sums_sha256: str | None


class UploadStateJSON(TypedDict):
    """What earlier uploads of a version left: ``partial`` maps each upload folder's name to its
    files, each ``[size in bytes, sha256]``."""

    final: UploadFinalJSON | None
    partial: dict[str, dict[str, tuple[int, str]]]


class JournalFactsJSON(TypedDict, total=False):
    """What the journal of an unfinished apply or rollback says (see
    :func:`patchflow.remote.serverside.journal_facts`): only ``damaged`` when it cannot be read."""

    damaged: str
    action: str
    version: str
    from_version: str | None
    phase: str
    reached: list[str]
    committed: bool
    services: str


class DatabaseFactsJSON(TypedDict):
    """The database a host uses (:func:`patchflow.remote.serverside.database_facts`): ``identity``
    (``<system_identifier>/<name>``, equal on every host using it; "" when it could not be read:
    ``error`` says why) and the migrations applied there (finished, not rolled back)."""

    identity: str
    applied: list[str]
    error: str


class HostFactsJSON(TypedDict):
    """The document ``host-facts`` prints (see :func:`patchflow.remote.serverside.host_facts`)."""

    format: int
    patchflow_version: str
    python: str
    host: str
    user: str
    now: str
    paths: PathsJSON
    settings: FactsSettingsJSON
    tools: list[ToolJSON]
    missing: list[str]
    status: StatusReport
    health: HealthJSON | None
    runs: list[RunStatusJSON]
    upload: UploadStateJSON | None
    installed_tree_sha256: NotRequired[str | None]  # not sent by patchflow before delta patches
    journal: NotRequired[JournalFactsJSON | None]  # not sent by older patchflow
    database: NotRequired[DatabaseFactsJSON | None]  # None: no database configured; not sent by older patchflow
    group_window: NotRequired[dict[str, Any] | None]  # patchflow.shared_database.read_group_window


def _text(data: Mapping[str, object], key: str, *, required: bool = False) -> str:
    value = data.get(key)
    if required and not isinstance(value, str):
        raise ValueError(f"a run record without {key!r}")
    return str(value) if value else ""


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class RunRecord:
    """A task started detached on a host (``.patchflow/deploys/<id>.json`` there); ``from_version``
    is the version installed there when it started (empty in records of older patchflow);
    ``launch_pid`` is the launcher's ``$!`` (known only after the launch; not in the file)."""

    id: str
    action: str
    version: str
    log: str
    pid_file: str
    exit_file: str
    operator: str
    started_at: str
    argv: tuple[str, ...] = ()
    launch_pid: int | None = None
    from_version: str = ""

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> RunRecord:
        """Read a record as written by :meth:`to_json` (any patchflow version).

        Raises:
            ValueError: ``id``, ``log``, ``pid_file`` or ``exit_file`` is missing or not text.
        """
        argv = data.get("argv")
        return cls(
            _text(data, "id", required=True),
            _text(data, "action"),
            _text(data, "version"),
            _text(data, "log", required=True),
            _text(data, "pid_file", required=True),
            _text(data, "exit_file", required=True),
            _text(data, "operator"),
            _text(data, "started_at"),
            tuple(str(a) for a in argv) if isinstance(argv, list) else (),
            _int_or_none(data.get("launch_pid")),
            _text(data, "from_version"),
        )

    def to_json(self) -> RunRecordJSON:
        """The record as written on the host (the launch pid is only known afterwards)."""
        return {
            "id": self.id,
            "action": self.action,
            "version": self.version,
            "log": self.log,
            "pid_file": self.pid_file,
            "exit_file": self.exit_file,
            "operator": self.operator,
            "started_at": self.started_at,
            "argv": list(self.argv),
            "from_version": self.from_version,
        }


@dataclass(frozen=True)
class RunStatus:
    """A run deploy started, as the host sees it now: ``state`` is ``exited`` (``exit_code``),
    ``running`` (a process of its group lives), ``starting`` (launched a moment ago) or ``vanished``
    (no exit code, no process); ``pid`` is its wrapper's (its process group)."""

    record: RunRecord
    state: str
    exit_code: int | None = None
    pid: int | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> RunStatus:
        """Read one entry of host-facts' ``runs``.

        Raises:
            ValueError: its record is incomplete (see :meth:`RunRecord.from_json`).
        """
        return cls(
            RunRecord.from_json(data),
            _text(data, "state"),
            _int_or_none(data.get("exit_code")),
            _int_or_none(data.get("pid")),
        )

    def to_json(self) -> RunStatusJSON:
        """The entry of host-facts' ``runs``: the record's keys, then ``state``, ``exit_code``, ``pid``."""
        record = self.record.to_json()
        return {**record, "state": self.state, "exit_code": self.exit_code, "pid": self.pid}


def upload_dir_name(version: PatchVersion, sums_sha256: str) -> str:
    """The temporary folder name an upload of ``version`` lands in: ``.upload-v2.3.0-<16 hex>``, the
    hex from the SHA-256 of its ``SHA256SUMS`` (the same content resumes into the same folder)."""
    return f"{UPLOAD_PREFIX}{version.tag}-{sums_sha256[:16]}"


def received(stdout: str) -> Received:
    """What ``receive-patch`` answered (its stdout), as every patchflow version prints it."""
    return "already" if stdout.strip().endswith("already") else "placed"


@dataclass
class HostFacts:
    """The host-facts document deploy read from a host (:meth:`from_json`), with typed accessors.

    ``data`` is the document as received; keys older servers do not send are read with ``.get``.
    """

    data: HostFactsJSON

    @classmethod
    def from_json(cls, data: object) -> HostFacts:
        """Take a parsed host-facts document (``json.loads`` of its output).

        Raises:
            ValueError: it is not an object with ``paths`` and ``status``.
        """
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("paths"), dict)
            or not isinstance(data.get("status"), dict)
        ):
            raise ValueError("not a host-facts document (no paths and status)")
        return cls(cast(HostFactsJSON, data))

    def to_json(self) -> HostFactsJSON:
        """The document as received (JSON-ready)."""
        return self.data

    @property
    def python(self) -> str:
        """The interpreter that ran host-facts there (deploy runs its tasks with it)."""
        return str(self.data["python"])

    @property
    def root(self) -> str:
        """The checkout's folder there (absolute)."""
        return str(self.data["paths"]["root"])

    def path(self, key: PathKey) -> str:
        """An absolute folder of the checkout there: ``patches``, ``state``, ``logs``, ``deploys``."""
        return str(self.data["paths"][key])

    @property
    def patchflow_version(self) -> str:
        """The patchflow version there (``?`` when not said)."""
        return str(self.data.get("patchflow_version") or "?")

    @property
    def report(self) -> StatusReport:
        """The host's patch-status report (as ``patch-status --json`` prints it there)."""
        return self.data["status"]

    @property
    def installed(self) -> str | None:
        """The version installed there, None when unknown."""
        value = self.report.get("installed_version")
        return str(value) if value else None

    @property
    def lock(self) -> LockInfo | None:
        """The install's lock there when taken or left (see patch-status)."""
        value = self.report.get("lock")
        return value if isinstance(value, dict) else None

    @property
    def interrupted(self) -> InterruptedRun | None:
        """The journal of an apply or rollback whose process is gone, if any."""
        value = self.report.get("interrupted")
        return value if isinstance(value, dict) else None

    @property
    def recovery(self) -> RecoveryAdvice | None:
        """The one command patch-status there names to recover the install, if any."""
        value = self.report.get("recovery")
        return value if isinstance(value, dict) else None

    @property
    def history(self) -> list[Mapping[str, object]]:
        """The host's history records, oldest first."""
        return [h for h in self.report.get("history") or [] if isinstance(h, dict)]

    @property
    def runs(self) -> list[RunStatus]:
        """The runs deploy started there, oldest first (an incomplete record is left out)."""
        out = []
        for item in self.data.get("runs") or []:
            if isinstance(item, dict):
                try:
                    out.append(RunStatus.from_json(item))
                except ValueError:
                    continue
        return out

    @property
    def probe(self) -> HealthJSON | None:
        """The quick health probe (with ``--health``), None otherwise."""
        value = self.data.get("health")
        return value if isinstance(value, dict) else None

    @property
    def missing(self) -> list[str]:
        """The programs the apply needs that are not found there (with what needs them)."""
        return [str(m) for m in self.data.get("missing") or []]

    @property
    def tools(self) -> list[ToolJSON]:
        """Every program the apply needs, found or not."""
        return [t for t in self.data.get("tools") or [] if isinstance(t, dict)]

    @property
    def service_manager(self) -> str:
        """The host's ``service_manager`` setting."""
        return str(self.data["settings"]["service_manager"])

    @property
    def upload(self) -> UploadStateJSON | None:
        """What uploads of the version asked about left there (None when none was asked)."""
        value = self.data.get("upload")
        return value if isinstance(value, dict) else None

    @property
    def journal(self) -> JournalFactsJSON | None:
        """What the journal of an unfinished run says (None without one, or from older patchflow)."""
        value = self.data.get("journal")
        return value if isinstance(value, dict) else None

    @property
    def database(self) -> DatabaseFactsJSON | None:
        """The database the host uses (None without one, or from older patchflow)."""
        value = self.data.get("database")
        return value if isinstance(value, dict) else None

    @property
    def group_window(self) -> dict[str, Any] | None:
        """The record deploy's group window left when it stopped the host (None: none)."""
        value = self.data.get("group_window")
        return value if isinstance(value, dict) else None

    @property
    def reads_delta_bases(self) -> bool:
        """True when the patchflow there reports its install's tree (``installed_tree_sha256``)."""
        return "installed_tree_sha256" in self.data

    @property
    def installed_tree_sha256(self) -> str | None:
        """The SHA-256 of the install's record of its tree, None without a record."""
        value = self.data.get("installed_tree_sha256")
        return str(value) if value else None

    def task(self, *args: str) -> str:
        """The shell command running ``python -m patchflow <args>`` in the checkout there."""
        return task_command(self.root, self.python, args)
