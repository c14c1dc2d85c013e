"""Services behind one interface: stop, start, restart, status, logs (and build for compose).

One module per manager:

* :mod:`patchflow.services.command` runs configured commands as background processes tracked by
  pidfiles (and a marker in their environment, so an untracked orphan is still found);
* :mod:`patchflow.services.compose` drives ``docker compose``: only application services stop,
  data services keep running, images build before anything stops, start is ``up -d --wait``;
* :mod:`patchflow.services.none` manages nothing.

:func:`make_manager` picks one from the settings; :func:`start_with_retries` is the bounded start
used by apply and rollback.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from patchflow.config import Settings
from patchflow.errors import ServiceError
from patchflow.paths import ProjectPaths
from patchflow.runner import Runner

PROXY_GRACE = 5.0


@dataclass(frozen=True)
class ServiceState:
    """One service: ``state`` is running, stopped, exited, unhealthy, ...; ``detail`` free text."""

    name: str
    state: str
    detail: str = ""


class ServiceManager(Protocol):
    """What the apply/rollback steps and the service tasks need from a service manager."""

    kind: str

    def app_services(self) -> list[str]: ...
    def build(self, project_dir: Path) -> None: ...
    def stop(self, services: Sequence[str] | None = None) -> None: ...
    def start(self, services: Sequence[str] | None = None, *, rebuild: bool = False) -> None: ...
    def check_running(self) -> None: ...
    def serves(self, port: int) -> bool | None: ...
    def restart(self, services: Sequence[str] | None = None) -> None: ...
    def up(self) -> None: ...
    def down(self) -> None: ...
    def status(self) -> list[ServiceState]: ...
    def logs(self, services: Sequence[str], *, follow: bool, tail: int | None) -> None: ...
    def logs_hint(self) -> str: ...


def make_manager(settings: Settings, paths: ProjectPaths, runner: Runner) -> ServiceManager:
    """The manager selected by the ``service_manager`` setting.

    Raises:
        ConfigError: the settings of that manager are unusable (no commands, a service listed as
            both application and data service).
    """
    if settings.service_manager == "command":
        from patchflow.services.command import CommandManager

        return CommandManager(settings, paths, runner)
    if settings.service_manager == "compose":
        from patchflow.services.compose import ComposeManager

        return ComposeManager(settings, paths, runner)
    from patchflow.services.none import NoServices

    return NoServices()


def wait_started(
    services: ServiceManager,
    urls: Sequence[str],
    timeout: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> float:
    """Poll until every URL's port is served by the started services, while checking that no
    started service has exited. Polls every 0.05 s, growing to 0.5 s; returns the seconds it took.

    Where the manager cannot tell who listens (compose), a URL that accepts connections is
    ready; where it can but the port is not its own (a proxy in front of the app), the URL must
    accept connections while the services stay up for ``PROXY_GRACE`` seconds.

    Raises:
        ServiceError: a service exited (with the log lines naming the cause), or the ports were
            not served within ``timeout`` seconds.
    """
    from patchflow.health import accepts_connections

    began = clock()
    delay = 0.05
    ports = {url: urllib.parse.urlsplit(url).port or 80 for url in urls}
    while True:
        services.check_running()
        waiting = []
        for url, port in ports.items():
            served = services.serves(port)
            if served:
                continue
            grace = 0.0 if served is None else min(PROXY_GRACE, timeout / 4)
            if clock() - began < grace or not accepts_connections(url, timeout=0.5):
                waiting.append(url)
        if not waiting:
            return clock() - began
        if clock() - began > timeout:
            raise ServiceError(
                f"The services started but nothing of theirs listens for {', '.join(waiting)} after {timeout:.0f} s.",
                services.logs_hint(),
            )
        sleep(delay)
        delay = min(delay * 1.5, 0.5)


def start_with_retries(
    services: ServiceManager,
    attempts: int,
    *,
    rebuild: bool = False,
    urls: Sequence[str] = (),
    ready_timeout: float = 60.0,
    log: Callable[[str], None] = lambda line: None,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Start the application services and wait until they serve ``urls`` (:func:`wait_started`),
    retrying up to ``attempts`` times with 1, 2, 4 ... s pauses (at most 8 s); a failed attempt
    stops what it started before the next one.

    Raises:
        ServiceError: the last attempt failed (its message says how many attempts were made).
    """
    attempts = max(1, attempts)
    last: ServiceError | None = None
    for attempt in range(1, attempts + 1):
        try:
            services.start(rebuild=rebuild)
            if services.app_services():
                wait_started(services, urls, ready_timeout, sleep=sleep)
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
