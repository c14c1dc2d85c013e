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
from collections.abc import Callable, Collection, Sequence
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


class NoImages:
    """The image part of :class:`ServiceManager` for managers without images (command, none):
    nothing to build, keep, restore or prune."""

    def build(self, project_dir: Path) -> None:
        """No images here: nothing to build."""
        return None

    def keep_images(self, version: str) -> dict[str, str]:
        """No images here: nothing to keep."""
        return {}

    def restore_images(self, version: str) -> list[str]:
        """No images here: nothing to point back."""
        return []

    def prune_images(self, keep_versions: Collection[str]) -> list[str]:
        """No images here: nothing to prune."""
        return []


class ServiceManager(Protocol):
    """What the apply/rollback steps and the service tasks need from a service manager."""

    kind: str

    def app_services(self) -> list[str]: ...
    def build(self, project_dir: Path) -> None: ...
    def keep_images(self, version: str) -> dict[str, str]: ...
    def restore_images(self, version: str) -> list[str]: ...
    def prune_images(self, keep_versions: Collection[str]) -> list[str]: ...
    def stop(self, services: Sequence[str] | None = None) -> None: ...
    def start(self, services: Sequence[str] | None = None, *, rebuild: bool = False) -> None: ...
    def check_running(self) -> None: ...
    def remove(self, services: Sequence[str]) -> None: ...
    def serves(self, port: int) -> bool | None: ...
    def proof_of_new(self, url: str, since: float) -> str | None: ...
    def proof_available(self, urls: Sequence[str]) -> str: ...
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


class NotServing(ServiceError):
    """The services were started and still run, but did not serve the health URLs in time (they
    were kept running: see ``keep_running`` of :func:`start_with_retries`)."""


def still_running(services: ServiceManager) -> bool:
    """True when no started service has exited and at least one application service runs now
    (whatever its health says); False when that cannot be told."""
    try:
        services.check_running()
        names = set(services.app_services())
        return any(s.state == "running" for s in services.status() if s.name in names)
    except ServiceError:
        return False


def start_with_retries(
    services: ServiceManager,
    attempts: int,
    *,
    rebuild: bool = False,
    urls: Sequence[str] = (),
    ready_timeout: float = 60.0,
    log: Callable[[str], None] = lambda line: None,
    sleep: Callable[[float], None] = time.sleep,
    keep_running: bool = False,
) -> None:
    """Start the application services and wait until they serve ``urls`` (:func:`wait_started`),
    retrying up to ``attempts`` times with 1, 2, 4 ... s pauses (at most 8 s); a failed attempt
    stops what it started before the next one. With ``keep_running`` (starting the old version
    again: it must run whatever its health says) the last attempt's services are not stopped when
    they still run (:func:`still_running`): :class:`NotServing` is raised instead.

    Raises:
        NotServing: ``keep_running``, and the last attempt's services run but did not serve ``urls``.
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
            if keep_running and attempt == attempts and still_running(services):
                log("   the services run: they are kept running")
                raise NotServing(
                    f"The services started and run, but after {attempts} attempts: {exc.message}", exc.hint
                ) from None
            try:
                services.stop()
            except ServiceError:
                pass
            if attempt < attempts:
                sleep(min(2 ** (attempt - 1), 8))
    assert last is not None
    raise ServiceError(f"Services did not start after {attempts} attempts: {last.message}", last.hint)


def wait_services_healthy(
    services: ServiceManager,
    settings: Settings,
    *,
    expect_version: str | None,
    since: float | None = None,
) -> float:
    """Health-check what ``services`` run (see :mod:`patchflow.health`): 2xx, a healthy reported
    status, the ``expect_version`` when the body reports one, else, with ``since`` (epoch seconds
    of the stop), the proof that the answer comes from a process started after it. Started
    services must still run at the end. Returns the seconds it took (0 without app services).

    Raises:
        HealthCheckError: not healthy by ``health_timeout``.
        ServiceError: a started service exited meanwhile.
    """
    from patchflow.health import wait_healthy

    if not services.app_services():
        return 0.0
    proof = None
    if since is not None:
        moment = since

        def proof(url: str) -> str | None:
            return services.proof_of_new(url, moment)

    took = wait_healthy(
        settings.health_url,
        timeout=settings.health_timeout,
        expect_version=expect_version,
        version_field=settings.health_version_field,
        status_field=settings.health_status_field,
        healthy_statuses=settings.health_status_ok,
        follow_redirects=settings.health_follow_redirects,
        proof=proof,
        check=services.check_running,
    )
    services.check_running()
    return took


def health_now(services: ServiceManager, settings: Settings) -> str:
    """One sentence on whether the install answers right now (one quick probe of each health URL),
    for error messages that must not guess "may be down"."""
    from patchflow.health import judge, probe

    if not services.app_services():
        return "No services are managed here."
    answers = [
        probe(
            url,
            settings.health_version_field,
            timeout=2.0,
            status_field=settings.health_status_field,
            follow_redirects=settings.health_follow_redirects,
        )
        for url in settings.health_url
    ]
    healthy = [
        a
        for a in answers
        if judge(a, expect_version=None, version_field="", healthy_statuses=settings.health_status_ok) is None
    ]
    if len(healthy) == len(answers):
        seen = ", ".join(f"{a.url} {a.detail}" + (f" version {a.version}" if a.version else "") for a in answers)
        return f"The services answer now ({seen})."
    down = ", ".join(f"{a.url}: {a.detail}" for a in answers if a not in healthy)
    return f"The install is DOWN right now ({down})."
