"""What is installed: the version in ``VERSION`` and the record of the apply that installed it.

``.patchflow/installed.json`` is written at the commit of an apply (and put back by a rollback
from the backup that holds the previous one)::

    {"version": "2.3.0", "from_version": "2.2.0", "backup": "pre-patch-v2.3.0_...",
     "applied_at": "2025-01-01T14:30:22.123456Z", "migrations": ["20250301_audit_log"],
     "health": {"urls": ["http://127.0.0.1:3001/health"], "version_field": "version", ...}}

``backup`` names the backup that rolls this version back: rollback-patch uses it and
prune-backups never removes it, whatever the clock said when backups were taken. ``health`` holds
the health settings this version was proven healthy with (:class:`HealthRecord`; absent in records
written before they were kept): an automatic rollback judges the old version by them, never by a
``--health-url`` given to the apply that replaced it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from patchflow.config import Settings
from patchflow.errors import PatchflowError
from patchflow.lifecycle.journal import write_json_atomic
from patchflow.paths import ProjectPaths
from patchflow.state_files import StateFileError, read_sealed, seal
from patchflow.status_schema import HealthRecordJson, InstalledRecordJson
from patchflow.version import PatchVersion, read_version_file


def installed_version(paths: ProjectPaths) -> str | None:
    """The version in the install's ``VERSION`` (None when missing or not a semantic version)."""
    try:
        return str(read_version_file(paths.version_file))
    except PatchflowError:
        return None


def installed_version_or_error(paths: ProjectPaths) -> tuple[PatchVersion | None, str | None]:
    """``(version, None)`` or ``(None, why it cannot be read)``."""
    try:
        return read_version_file(paths.version_file), None
    except PatchflowError as exc:
        return None, exc.message


def describe_source(settings: Settings, name: str) -> str:
    """Where setting ``name`` came from, for an operator: ``--health-url`` (a flag),
    ``.patchflow/host.toml``, ``.env:PATCHFLOW_HEALTH_URL``, ``pyproject.toml``, ``the default``."""
    source = settings.source(name)
    if source == "flag":
        return "--" + name.replace("_", "-")
    return "the default" if source == "default" else source


@dataclass(frozen=True)
class HealthRecord:
    """The health settings a version was proven healthy with (the ``health_*`` settings of
    :class:`patchflow.config.Settings`): ``urls``, the JSON ``version_field`` and ``status_field``,
    the ``status_ok`` values, ``follow_redirects`` and ``timeout`` (seconds); ``source`` says where
    the URLs came from (``--health-url``, ``.patchflow/host.toml``...), ``proven_at`` when (UTC,
    ISO 8601, ``Z``)."""

    urls: tuple[str, ...]
    version_field: str = "version"
    status_field: str = "status"
    status_ok: tuple[str, ...] = ()
    follow_redirects: bool = False
    timeout: float = 60.0
    source: str = ""
    proven_at: str = ""

    @classmethod
    def of(cls, settings: Settings, proven_at: str = "") -> HealthRecord:
        """The health settings in effect in ``settings``."""
        return cls(
            urls=tuple(settings.health_url),
            version_field=settings.health_version_field,
            status_field=settings.health_status_field,
            status_ok=tuple(settings.health_status_ok),
            follow_redirects=settings.health_follow_redirects,
            timeout=float(settings.health_timeout),
            source=describe_source(settings, "health_url"),
            proven_at=proven_at,
        )

    def applied_to(self, settings: Settings) -> Settings:
        """``settings`` with these health settings in place of its own."""
        return replace(
            settings,
            health_url=self.urls,
            health_version_field=self.version_field,
            health_status_field=self.status_field,
            health_status_ok=self.status_ok or settings.health_status_ok,
            health_follow_redirects=self.follow_redirects,
            health_timeout=self.timeout,
        )

    def to_json(self) -> HealthRecordJson:
        """The record as ``installed.json`` and ``patch-status --json`` hold it (read back by
        :meth:`from_json`)."""
        return {
            "urls": list(self.urls),
            "version_field": self.version_field,
            "status_field": self.status_field,
            "status_ok": list(self.status_ok),
            "follow_redirects": self.follow_redirects,
            "timeout": self.timeout,
            "source": self.source,
            "proven_at": self.proven_at,
        }

    @classmethod
    def from_json(cls, data: object) -> HealthRecord | None:
        """The record in ``data`` (from :meth:`to_json`); None when absent or malformed."""
        if not isinstance(data, dict):
            return None
        urls = data.get("urls")
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) and u for u in urls):
            return None
        ok = data.get("status_ok") or []
        try:
            return cls(
                urls=tuple(urls),
                version_field=str(data.get("version_field", "version")),
                status_field=str(data.get("status_field", "status")),
                status_ok=tuple(str(v) for v in ok) if isinstance(ok, list) else (),
                follow_redirects=bool(data.get("follow_redirects", False)),
                timeout=float(data.get("timeout", 60.0)),
                source=str(data.get("source", "")),
                proven_at=str(data.get("proven_at", "")),
            )
        except (TypeError, ValueError):
            return None

    def describe(self) -> str:
        """``http://127.0.0.1:3001/health (from .env:PATCHFLOW_HEALTH_URL)``."""
        where = f" (from {self.source})" if self.source else ""
        return f"{', '.join(self.urls)}{where}"


@dataclass(frozen=True)
class InstalledRecord:
    """The record of the apply that installed the current version (see the module docstring)."""

    version: str
    backup: str = ""
    from_version: str = ""
    applied_at: str = ""
    migrations: tuple[str, ...] = field(default_factory=tuple)
    health: HealthRecord | None = None

    def to_json(self) -> InstalledRecordJson:
        """``.patchflow/installed.json`` (and ``installed_record`` of ``patch-status --json``)."""
        data: InstalledRecordJson = {
            "version": self.version,
            "from_version": self.from_version,
            "backup": self.backup,
            "applied_at": self.applied_at,
            "migrations": list(self.migrations),
        }
        if self.health is not None:
            data["health"] = self.health.to_json()
        return data

    def save(self, paths: ProjectPaths) -> None:
        """Write ``.patchflow/installed.json`` atomically."""
        write_json_atomic(paths.installed_record, seal(self.to_json()), mode=0o644)


RECORD_REMEDY = (
    "It says which version is installed and how it was proven healthy. Move it aside "
    "(mv .patchflow/installed.json .patchflow/installed.json.damaged): patchflow then reads the version from "
    "VERSION, as on an install older than the record. Nothing was changed."
)


def read_installed_record(paths: ProjectPaths) -> InstalledRecord | None:
    """The installed record, None when missing (installs older than the record).

    Raises:
        StateFileError: it is damaged (not JSON, no version), of a newer format or fails its
            checksum (:mod:`patchflow.state_files`): what it says is not guessed at.
    """
    data = read_sealed(paths.installed_record, "the installed record", RECORD_REMEDY)
    if data is None:
        return None
    if not isinstance(data.get("version"), str):
        raise StateFileError(
            f"The installed record {paths.installed_record} is damaged: it names no version.", RECORD_REMEDY
        )
    migrations = data.get("migrations") or []
    return InstalledRecord(
        version=data["version"],
        backup=str(data.get("backup") or ""),
        from_version=str(data.get("from_version") or ""),
        applied_at=str(data.get("applied_at") or ""),
        migrations=tuple(str(m) for m in migrations) if isinstance(migrations, list) else (),
        health=HealthRecord.from_json(data.get("health")),
    )
