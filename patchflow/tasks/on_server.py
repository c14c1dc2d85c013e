"""The tasks deploy runs on a server over SSH: host-facts, receive-patch, stop-services, start-services.

host-facts prints what deploy needs to know about the checkout there, as JSON; receive-patch
checks an uploaded patch folder and puts it in place (see :mod:`patchflow.remote.serverside`)."""

from __future__ import annotations

import json

from invoke.context import Context

from patchflow.tasks.edge import ROOT_HELP, command, optional_version, settings_for
from patchflow.version import parse_version


@command(
    help={
        "root": ROOT_HELP,
        "version": "also report what uploads of this version left (final folder, partial uploads)",
        "health": "probe the health URLs once",
        "history": "INT: history records to include",
    }
)
def host_facts(
    c: Context, root: str | None = None, version: str | None = None, health: bool = False, history: int = 200
) -> None:
    """Print what deploy needs to know about this checkout as JSON (deploy runs it over SSH)."""
    from patchflow.remote.serverside import host_facts as collect

    settings = settings_for(c, root)
    parsed = optional_version(version)
    print(json.dumps(collect(settings, version=parsed, health=health, history=history), ensure_ascii=True))


@command(
    help={
        "root": ROOT_HELP,
        "version": "the version uploaded",
        "upload": "the upload folder's name under patches/ (.upload-vX.Y.Z-<id>)",
    }
)
def receive_patch(c: Context, root: str | None = None, version: str | None = None, upload: str | None = None) -> None:
    """Check an uploaded patch folder here and rename it to patches/vX.Y.Z (deploy runs it over SSH)."""
    from patchflow.errors import ConfigError
    from patchflow.remote.serverside import NotVerified, receive_upload
    from patchflow.remote.wire import NOT_VERIFIED

    if not upload:
        raise ConfigError("No --upload given.", "deploy passes the upload folder's name.")
    settings = settings_for(c, root)
    try:
        outcome = receive_upload(settings, parse_version(version, source="--version"), upload)
    except NotVerified:
        print(NOT_VERIFIED, flush=True)  # deploy says "does not verify" only after this line
        raise
    print(outcome)


@command(
    help={
        "root": ROOT_HELP,
        "group_version": "deploy's group window: the version it deploys (recorded in .patchflow/group-window.json)",
        "group_first": "deploy's group window: the host that migrates",
        "group_hosts": "deploy's group window: every host of the group, comma separated",
    }
)
def stop_services(
    c: Context, root: str | None = None, group_version: str = "", group_first: str = "", group_hosts: str = ""
) -> None:
    """Stop this checkout's application services (data services keep running): deploy's group window
    runs it on every host that uses the database before the one migration, and records it (see
    :mod:`patchflow.remote.group_window`)."""
    from patchflow.lock import _user
    from patchflow.shared_database import record_group_window
    from patchflow.tasks.edge import context_for

    ctx = context_for(c, root)
    if group_version:  # first: a kill after the stop still leaves the record saying why it is down
        record_group_window(ctx.paths, group_version, group_first, [h for h in group_hosts.split(",") if h], _user())
    ctx.services.stop()
    print("stopped")


@command(help={"root": ROOT_HELP})
def start_services(c: Context, root: str | None = None) -> None:
    """Start this checkout's application services and wait until the installed version answers
    healthy (deploy's group window, after its hosts are done or undone)."""
    from patchflow.errors import PatchflowError
    from patchflow.installed import installed_version
    from patchflow.lifecycle.journal import Journal
    from patchflow.services import start_with_retries, wait_services_healthy
    from patchflow.shared_database import clear_group_window
    from patchflow.tasks.edge import context_for

    ctx = context_for(c, root)
    pending = Journal.load(ctx.paths.journal)
    if pending is not None:  # a half-done tree must not serve: its recovery starts what it should
        raise PatchflowError(
            f"An interrupted {pending.action} of {pending.version} is recorded in {ctx.paths.root} (last step "
            f"{pending.current_step}): its services are not started over a half-done install.",
            "Recover it first: `inv patch-status` there names the command (from the operator's checkout: "
            "`inv patch-status --host NAME`).",
        )
    settings = ctx.settings
    start_with_retries(
        ctx.services, settings.start_retries, urls=settings.health_url, ready_timeout=settings.health_timeout
    )
    installed = installed_version(ctx.paths)
    wait_services_healthy(ctx.services, settings, expect_version=str(installed) if installed else None)
    clear_group_window(ctx.paths)
    print(f"started {installed or '?'}")
