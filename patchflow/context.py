"""What an operation works with: settings, paths, the runner, the services and the database.

:class:`Context` bundles them so core functions take one explicit argument instead of globals.
Progress lines go to ``log`` (the operator's terminal); with ``record=True`` they also go, with
every command the runner starts and a UTC time, to ``.patchflow/logs/patchflow.log``.
``run_marker`` is this process's mark on every command it runs (see :mod:`patchflow.runner`).
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from patchflow.config import Settings
from patchflow.database import Database
from patchflow.files import private_folder
from patchflow.paths import ProjectPaths
from patchflow.pg_target import target_from_settings
from patchflow.progress import QUIET, Reporter
from patchflow.redact import redact
from patchflow.runner import LocalRunner, Runner
from patchflow.services import ServiceManager, make_manager
from patchflow.trust import close_folders, secure_state


def _quiet(line: str) -> None:
    return None


@dataclass
class Context:
    """Everything one operation needs; ``log`` receives progress lines for the operator and
    ``progress`` how far a long step is (see :mod:`patchflow.progress`)."""

    settings: Settings
    paths: ProjectPaths
    runner: Runner
    services: ServiceManager
    database: Database | None
    log: Callable[[str], None] = field(default=_quiet)
    recorder: Recorder | None = None
    run_marker: str = ""
    progress: Reporter = QUIET

    def record_exception(self, exc: BaseException) -> None:
        """Write the traceback of an unexpected exception to the operation log only (the operator
        sees one line; the log keeps what a developer needs)."""
        if self.recorder is not None:
            import traceback

            for line in "".join(traceback.format_exception(exc)).rstrip().splitlines():
                self.recorder.write(f"   | {line}")

    def start_recording(self) -> None:
        """From now on (the run holds the lock and will change the install) progress lines and
        commands go to the operation log too, starting with those buffered so far."""
        close_folders(self.paths)
        if self.recorder is not None:
            self.recorder.start()

    @classmethod
    def create(
        cls,
        settings: Settings,
        *,
        runner: Runner | None = None,
        log: Callable[[str], None] | None = None,
        record: bool = False,
        progress: Reporter = QUIET,
    ) -> Context:
        """Build the context of ``settings``: service manager and database from the settings.

        Raises:
            ConfigError: the settings name an unusable manager or database, or patchflow's own
                state files could have been planted by another user (:func:`patchflow.trust.secure_state`).
        """
        paths = ProjectPaths.from_settings(settings)
        secure_state(paths)
        show = log or _quiet
        recorder = Recorder(paths) if record else None
        write = recorder.write if recorder else _quiet

        def lines(line: str) -> None:
            show(line)
            write(line)

        marker = f"{paths.root}::{secrets.token_hex(8)}"
        run = runner or LocalRunner(base_env=settings.environ, log=write, marker=marker)
        services = make_manager(settings, paths, run)
        database = _database(settings, paths, run)
        return cls(
            settings, paths, run, services, database, lines, recorder, marker if runner is None else "", progress
        )


def _database(settings: Settings, paths: ProjectPaths, runner: Runner) -> Database | None:
    """The database of ``settings`` (None for ``database_mode = none``), with its admin target."""
    from patchflow.services.compose import compose_prefix, compose_service_environment

    prefix: list[str] = []
    service_env: dict[str, str] = {}
    if settings.database_mode == "compose":
        prefix = compose_prefix(settings, paths.root)
        if not (settings.database_name and settings.database_user):
            service_env = compose_service_environment(settings, paths.root, settings.database_service, runner)
    target = target_from_settings(settings, prefix, service_env)
    if target is None:
        return None
    admin = None
    if settings.database_admin_url and settings.database_mode == "url":
        admin_target = target_from_settings(settings, url=settings.database_admin_url)
        if admin_target is not None:
            admin = dataclasses.replace(admin_target, dbname=target.dbname, schema=target.schema)
    return Database(target, runner, admin)


class Recorder:
    """Timestamped lines for the operation log: held in memory until :meth:`start` (a refused run
    writes nothing on disk), then appended to ``.patchflow/logs/patchflow.log``. Write errors are
    ignored: a full disk must not turn logging into the failure."""

    def __init__(self, paths: ProjectPaths) -> None:
        self.paths = paths
        self.started = False
        self.pending: list[str] = []

    def write(self, line: str) -> None:
        stamped = f"{datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%S.%fZ')} {redact(line)}"
        if not self.started:
            self.pending.append(stamped)
            return
        self._append([stamped])

    def start(self) -> None:
        if not self.started:
            self.started = True
            self._append(self.pending)
            self.pending = []

    def _append(self, lines: list[str]) -> None:
        try:
            private_folder(self.paths.logs)
            with open(self.paths.operation_log, "a", encoding="utf-8") as handle:
                handle.writelines(f"{line}\n" for line in lines)
        except OSError:
            pass
