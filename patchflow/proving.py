"""Bringing the old version back: judged by the settings it was proven healthy with, always started.

When an apply fails after the stop, its automatic rollback (the undo ``start-old``) starts the
old version again; rollback-patch does the same in its start and health steps. The health
settings that judge the old version are, the first found (:func:`old_version_health`):

1. those that proved it healthy right before the apply stopped it (the plan's check, kept in the
   apply's journal and, as ``restores_health``, in its backup);
2. those recorded when it was last proven healthy (``health`` in ``.patchflow/installed.json``,
   written at the commit of an apply or a rollback);
3. the settings in effect now (an install older than these records).

Never a ``--health-url`` that the failed apply was given and that did not prove the old version.
When the settings found do not prove it and this host changed its own settings since (its host
file, ``.env`` or environment; not a flag), the current settings get a second chance: a port
that moved must not keep a rollback from finishing. The log says which settings are used.

The old services are started whatever their health says: a health
failure after a start that succeeded leaves them running and is reported as such
(:func:`start_old_version` returns it); only when they do not run is it an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from patchflow.config import Settings
from patchflow.context import Context
from patchflow.errors import HealthCheckError
from patchflow.installed import HealthRecord, read_installed_record
from patchflow.services import NotServing, start_with_retries, wait_services_healthy


@dataclass(frozen=True)
class OldHealth:
    """The health settings judging an old version (``record``) and where they come from."""

    record: HealthRecord
    origin: str

    def describe(self) -> str:
        """``http://... (from .env:PATCHFLOW_HEALTH_URL), the settings that proved 2.2.0 healthy ...``."""
        return f"{self.record.describe()}, {self.origin}"

    def settings(self, settings: Settings) -> Settings:
        """``settings`` with these health settings."""
        return self.record.applied_to(settings)


def old_version_health(ctx: Context, version: str, proven: object = None) -> OldHealth:
    """The health settings that judge ``version`` when it is brought back (see the module
    docstring); ``proven`` is the record of the settings that proved it healthy before the stop
    (a :meth:`HealthRecord.to_json` mapping, or None)."""
    label = version or "the previous version"
    record = HealthRecord.from_json(proven)
    if record is not None:
        return OldHealth(record, f"the settings that proved {label} healthy before the stop ({record.proven_at})")
    installed = read_installed_record(ctx.paths)
    if installed is not None and installed.version == version and installed.health is not None:
        when = installed.health.proven_at or "time unknown"
        return OldHealth(installed.health, f"the settings recorded when {label} was proven healthy ({when})")
    return OldHealth(
        HealthRecord.of(ctx.settings), f"the current settings (no record of those {label} was proven healthy with)"
    )


def second_chance(ctx: Context, health: OldHealth) -> OldHealth | None:
    """The current settings, to try when ``health`` (recorded earlier) does not prove the old
    version: only when they differ from it and this host set them (a host file, ``.env``, the
    environment: its port or URL may have moved since), never when a flag of this run set them."""
    current = HealthRecord.of(ctx.settings)
    if ctx.settings.source("health_url") == "flag" or current.urls == health.record.urls:
        return None
    return OldHealth(current, "the current settings of this host")


def prove_old_version(ctx: Context, version: str, health: OldHealth, *, skip_first: str = "") -> OldHealth:
    """Wait until the old ``version`` answers healthy by ``health``, else (when this host changed its
    settings since, :func:`second_chance`) by the current settings. ``skip_first`` (why ``health``
    cannot pass: its URLs are not served) goes straight to the second chance.

    Returns:
        The settings that proved it.

    Raises:
        HealthCheckError: neither proved it (the message names what each got).
        ServiceError: a started service exited meanwhile.
    """
    label = version or "the previous version"
    attempts = [health]
    other = second_chance(ctx, health)
    if other is not None:
        attempts.append(other)
    failures = []
    for number, attempt in enumerate(attempts):
        if number == 0 and skip_first:
            failures.append(skip_first)
        else:
            if number:
                ctx.log(f"   not proven by those; trying {attempt.describe()}")
            try:
                settings = attempt.settings(ctx.settings)
                took = wait_services_healthy(ctx.services, settings, expect_version=version or None)
            except HealthCheckError as exc:
                failures.append(exc.message)
                continue
            if took >= 1.0:
                ctx.log(f"   healthy after {took:.1f} s")
            return attempt
    raise HealthCheckError(
        f"{label} did not pass its health check: " + "; then, by the current settings: ".join(failures),
        "See the service logs (inv logs).",
    )


def start_kept_images(ctx: Context, version: str) -> bool:
    """Before starting ``version`` again: its build services are pointed at the images kept for it
    (compose, :mod:`patchflow.services.compose_images`), so the start builds nothing. Returns True
    when a service has no kept image and the start must build it from the tree (said in the log).

    Raises:
        ServiceError: docker failed to tag an image.
    """
    if not ctx.services.app_services():
        return False
    missing = ctx.services.restore_images(version) if version else []
    if missing:
        ctx.log(
            f"   no kept image of {version or 'the previous version'} for {', '.join(missing)}: built from the tree"
        )
    elif ctx.services.kind == "compose":
        ctx.log(f"   starting {version}'s kept images (no build)")
    return bool(missing)


def start_old_version(
    ctx: Context, version: str, health: OldHealth, *, extra: Sequence[str] = ()
) -> tuple[str | None, OldHealth]:
    """Start the old ``version`` (bounded retries, kept running whatever its health says) from
    the images kept for it (:func:`start_kept_images`), start the ``extra`` services too (those a
    patch had removed), and prove it healthy with ``health`` (:func:`prove_old_version`).

    Returns:
        ``(None, the settings that proved it)``, or ``(why not, health)`` when it did not pass its
        health check (its services run).

    Raises:
        ServiceError: the old version does not run (it could not be started, or exited).
    """
    settings = health.settings(ctx.settings)
    ctx.log(f"   judging {version or 'the previous version'} by {health.describe()}")
    rebuild = start_kept_images(ctx, version)
    not_serving = ""
    try:
        start_with_retries(
            ctx.services,
            ctx.settings.start_retries,
            rebuild=rebuild,
            urls=settings.health_url,
            ready_timeout=settings.health_timeout,
            log=ctx.log,
            keep_running=True,
        )
    except NotServing as exc:
        not_serving = exc.message
    if extra:
        ctx.services.start(list(extra), rebuild=rebuild)
    try:
        return None, prove_old_version(ctx, version, health, skip_first=not_serving)
    except HealthCheckError as exc:
        ctx.log(f"!! {version or 'the previous version'} runs again but did not pass its health check: {exc.message}")
        return exc.message, health
