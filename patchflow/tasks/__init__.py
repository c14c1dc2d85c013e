"""patchflow's task layer: the invoke tasks gathered into one collection, ``ns``.

A PrimeFlow checkout's ``tasks.py`` imports it (``from patchflow.cli import ns``) and the
``patchflow`` command runs it. Only this package prints: each task parses flags, calls patchflow's
core (which returns data), shows the result and turns a PatchflowError into one red line with a
hint and an exit code (:mod:`patchflow.tasks.edge`). Run ``inv --list`` for the commands.
"""

from __future__ import annotations

import os
import sys

if not sys.flags.utf8_mode and sys.getfilesystemencoding().lower() not in ("utf-8", "utf8"):
    # File names are UTF-8 in patches whatever the locale (field failure C07): under a non-UTF-8
    # locale with Python's automatic UTF-8 mode off, run again in UTF-8 mode.
    os.execv(sys.executable, [sys.executable, "-X", "utf8", *sys.argv])  # noqa: S606

from invoke.collection import Collection

from patchflow.tasks.apply_rollback import apply_patch, rollback_patch
from patchflow.tasks.deploy import deploy, setup_host
from patchflow.tasks.maintenance import accept, baseline_migrations, lock, maintenance, prune_backups, unlock
from patchflow.tasks.migrations import rehearse, resolve_migration
from patchflow.tasks.on_server import host_facts, receive_patch, start_services, stop_services
from patchflow.tasks.patches import create_patch, create_signing_key, patch_status, verify_patch
from patchflow.tasks.services import down, logs, ps, restart, up
from patchflow.tasks.setup import init, preflight

ns = Collection(
    create_patch,
    create_signing_key,
    verify_patch,
    patch_status,
    preflight,
    init,
    apply_patch,
    rollback_patch,
    prune_backups,
    baseline_migrations,
    lock,
    unlock,
    accept,
    maintenance,
    resolve_migration,
    rehearse,
    up,
    down,
    ps,
    restart,
    logs,
    deploy,
    setup_host,
    host_facts,
    receive_patch,
    stop_services,
    start_services,
)
ns.configure({"run": {"echo": False}})

__all__ = ["ns"]
