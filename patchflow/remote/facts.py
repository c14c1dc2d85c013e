"""Reading a host's facts over SSH: ``host-facts`` run in its checkout, its answer checked and typed.

The server side is :func:`patchflow.remote.serverside.host_facts`; the document is
:class:`patchflow.remote.wire.HostFacts`.
"""

from __future__ import annotations

import json

from patchflow.commands.remote import NO_CHECKOUT, NO_PYTHON, facts_script, host_facts_args
from patchflow.errors import RemoteError
from patchflow.remote.session import HostSession
from patchflow.remote.wire import HostFacts
from patchflow.version import PatchVersion


def fetch_facts(
    session: HostSession, *, version: PatchVersion | None = None, health: bool = False, history: int = 200
) -> HostFacts:
    """Run ``host-facts`` in the target's checkout with the first interpreter that exists.

    Raises:
        RemoteError: no checkout at the path, no Python, patchflow missing or too old there (the hint
            names ``setup-host``), or its output unreadable.
        ConnectionLost: the host did not answer.
    """
    target = session.target
    args = host_facts_args(target.path, history=history, version=str(version) if version else None, health=health)
    done = session.run(facts_script(target.path, target.python_candidates(), args), what="host-facts")
    setup = f"Run `inv setup-host --host {target.name}` to install or upgrade patchflow there."
    if done.exited == NO_CHECKOUT:
        raise RemoteError(
            f"{target.name}: no checkout at {target.path} on {session.address}.",
            "Set the host's path ([tool.patchflow.hosts.<name>] path, or remote_path), or run "
            f"`inv setup-host --host {target.name}`.",
        )
    if done.exited == NO_PYTHON:
        raise RemoteError(f"{target.name}: {done.last_error()}.", setup)
    if "No module named patchflow" in done.stderr:
        raise RemoteError(f"{target.name}: patchflow is not installed there ({done.last_error()}).", setup)
    if "No idea what 'host-facts' is" in done.stderr:
        raise RemoteError(f"{target.name}: the patchflow there is too old for deploy (no host-facts task).", setup)
    if done.exited != 0:
        raise RemoteError(f"{target.name}: host-facts failed there: {done.last_error()}", setup)  # e.g. bad settings
    try:
        data = json.loads(done.stdout)
    except ValueError:
        raise RemoteError(
            f"{target.name}: host-facts printed something that is not JSON: {done.stdout.strip()[:200]!r}.",
            "Check the shell start-up files of the deploy user there: they must not print in non-interactive shells.",
        ) from None
    try:
        return HostFacts.from_json(data)
    except ValueError:
        raise RemoteError(f"{target.name}: host-facts gave an unexpected answer.", setup) from None
