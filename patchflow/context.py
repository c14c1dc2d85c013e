"""What an apply or rollback works with, and the step machinery both share.

:class:`Context` bundles settings, paths, the runner, the service manager and the database so
core functions take one explicit argument instead of globals. :func:`run_step` records a step
in the journal before and after it runs; :func:`checkpoint` is the documented test hook that
kills the process at a step boundary (``PATCHFLOW_TEST_KILL_AT=<step>`` or ``<step>:after``),
used by the crash-safety tests with a real SIGKILL.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from patchflow.config import Settings
from patchflow.database import Database, target_from_settings
from patchflow.errors import PatchflowError, ServiceError
from patchflow.journal import Journal
from patchflow.paths import ProjectPaths
from patchflow.runner import LocalRunner, Runner
from patchflow.services import (
    ComposeManager,
    ServiceManager,
    compose_prefix,
    compose_service_environment,
    make_manager,
)

KILL_HOOK = "PATCHFLOW_TEST_KILL_AT"


@dataclass
class Context:
    """Everything one operation needs; ``log`` receives progress lines for the operator."""

    settings: Settings
    paths: ProjectPaths
    runner: Runner
    services: ServiceManager
    database: Database | None
    log: Callable[[str], None] = field(default=lambda line: None)

    @classmethod
    def create(
        cls, settings: Settings, *, runner: Runner | None = None, log: Callable[[str], None] | None = None
    ) -> Context:
        """Build the context of ``settings``: service manager and database from the settings.

        Raises:
            ConfigError: the settings name an unusable manager or database.
        """
        paths = ProjectPaths.from_settings(settings)
        run = runner or LocalRunner()
        services = make_manager(settings, paths, run)
        prefix: list[str] = []
        if isinstance(services, ComposeManager):
            prefix = services.prefix()
        elif settings.database_mode == "compose":
            prefix = compose_prefix(settings, paths.root)
        service_env: dict[str, str] = {}
        if settings.database_mode == "compose" and not (settings.database_name and settings.database_user):
            service_env = compose_service_environment(settings, paths.root, settings.database_service)
        target = target_from_settings(settings, prefix, service_env)
        database = Database(target, run) if target is not None else None
        return cls(settings, paths, run, services, database, log or (lambda line: None))


def checkpoint(step: str, when: str) -> None:
    """Test hook: SIGKILL this process at ``step`` ``before``/``after`` when asked by the environment."""
    wanted = os.environ.get(KILL_HOOK, "")
    if not wanted:
        return
    name, _, moment = wanted.partition(":")
    if name == step and (moment or "before") == when:
        os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def run_step(journal: Journal, name: str, log: Callable[[str], None]) -> Iterator[None]:
    """Record ``name`` as started, run the block, record it done (or failed, then re-raise)."""
    checkpoint(name, "before")
    journal.start(name)
    log(f"{(journal.phase == 'forward' and '->') or '<-'} {name}")
    try:
        yield
    except BaseException as exc:
        message = exc.message if isinstance(exc, PatchflowError) else (str(exc) or type(exc).__name__)
        journal.fail(name, message)
        raise
    journal.finish(name)
    checkpoint(name, "after")


def start_with_retries(
    services: ServiceManager,
    attempts: int,
    *,
    rebuild: bool = False,
    log: Callable[[str], None] = lambda line: None,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Start the application services, retrying up to ``attempts`` times with 1, 2, 4 ... s pauses.

    Raises:
        ServiceError: the last attempt failed (its message says how many attempts were made).
    """
    attempts = max(1, attempts)
    last: ServiceError | None = None
    for attempt in range(1, attempts + 1):
        try:
            services.start(rebuild=rebuild)
            return
        except ServiceError as exc:
            last = exc
            log(f"start attempt {attempt}/{attempts} failed: {exc.message}")
            try:
                services.stop()
            except ServiceError:
                pass
            if attempt < attempts:
                sleep(min(2 ** (attempt - 1), 8))
    assert last is not None
    raise ServiceError(f"Services did not start after {attempts} attempts: {last.message}", last.hint)
