"""nox sessions a PrimeFlow checkout's ``noxfile.py`` gets from patchflow (importing this module
registers them)::

    from patchflow.nox_sessions import *  # noqa: F403

They run in the environment patchflow is installed in (no extra virtualenv), through the same
tasks as ``inv``.
"""

from __future__ import annotations

import nox

__all__ = ["patch_status", "preflight"]


@nox.session(venv_backend="none")
def preflight(session: nox.Session) -> None:
    """pnpm lint / typecheck / prisma validate of this checkout (patchflow's preflight)."""
    session.run("python", "-m", "patchflow", "preflight", "--skip-tool", *session.posargs, external=True)


@nox.session(name="patch-status", venv_backend="none")
def patch_status(session: nox.Session) -> None:
    """The installed version, patches, backups and history of this checkout."""
    session.run("python", "-m", "patchflow", "patch-status", *session.posargs, external=True)
