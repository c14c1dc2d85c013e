"""Hooks: the operator's own executables around an apply and a rollback (Kamal's ``.kamal/hooks``,
Capistrano's ``before``/``after``).

They live in the install's ``.patchflow/hooks/`` (this host's, like ``host.toml``: no patch writes
there), one executable per moment, named:

* ``pre-apply`` / ``pre-rollback``: after the plan was confirmed, before the lock and long before
  anything stops; a hook that fails (exit code not 0, or :data:`HOOK_TIMEOUT` seconds) refuses the
  run, nothing changed;
* ``post-apply`` / ``post-rollback``: after the run ended well (the new version committed, or the
  old one restored); a failure is reported, the run's result stands;
* ``on-failure``: after an apply or rollback that failed (``PF_RESULT`` says how it ended).

Each runs in the install's folder with the app's environment (never patchflow's own
``PATCHFLOW_*`` settings) and ``PF_HOOK``, ``PF_ACTION`` (apply, rollback), ``PF_VERSION`` (the
version the run installs or rolls back), ``PF_PREVIOUS_VERSION`` (the version installed before the
run), ``PF_HOST`` (this machine), ``PF_ROOT`` and, after a run, ``PF_RESULT`` (success,
rolled_back, rollback_failed, failed). Its output goes to the run's log. A hook another user could
change (another owner than the running user or root, or writable by group or others) is refused,
as patchflow refuses a checkout others control.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from patchflow.context import Context
from patchflow.errors import PreconditionError

HOOKS = ("pre-apply", "post-apply", "pre-rollback", "post-rollback", "on-failure")
#: Seconds a hook may run before it counts as failed.
HOOK_TIMEOUT = 300.0


def hook_path(ctx: Context, name: str) -> Path:
    """Where hook ``name`` of the install of ``ctx`` lives."""
    return ctx.paths.state / "hooks" / name


def _unsafe(path: Path) -> str:
    st = path.stat()
    if st.st_uid not in (os.geteuid(), 0):
        return "it belongs to another user"
    if st.st_mode & 0o022:
        return f"group or other users may change it (mode {stat.S_IMODE(st.st_mode):04o})"
    if not st.st_mode & 0o100:
        return "it is not executable (chmod u+x)"
    return ""


def run_hook(
    ctx: Context, name: str, *, action: str, version: str, previous: str, result: str = ""
) -> tuple[bool, str] | None:
    """Run hook ``name`` when the install has one; None when it has not, else ``(ok, why)`` (``why``
    empty when it passed). Its output lines go to ``ctx.log``."""
    path = hook_path(ctx, name)
    if not path.is_file():
        return None
    problem = _unsafe(path)
    if problem:
        return False, f"{path} is not run: {problem}"
    env = {
        "PF_HOOK": name,
        "PF_ACTION": action,
        "PF_VERSION": version,
        "PF_PREVIOUS_VERSION": previous,
        "PF_HOST": socket.gethostname(),
        "PF_ROOT": str(ctx.paths.root),
        "PF_RESULT": result,
    }
    ctx.log(f"-> hook {name}")
    try:
        done = ctx.runner.run(
            [str(path)], cwd=ctx.paths.root, env=env, check=False, timeout=HOOK_TIMEOUT, what=f"hook {name}"
        )
    except PreconditionError:
        raise
    except Exception as exc:
        return False, f"{path} failed: {getattr(exc, 'message', exc)}"
    for line in (done.stdout + done.stderr).splitlines()[-40:]:
        ctx.log(f"   {name}: {line}")
    if done.returncode != 0:
        return False, f"{path} exited with {done.returncode}"
    return True, ""


def announce(
    ctx: Context,
    action: str,
    result: str,
    version: str,
    previous: str,
    *,
    stopped_seconds: float | None = None,
    detail: str = "",
    recovery: str = "",
) -> None:
    """Tell the ``notify_urls`` channels (:mod:`patchflow.notify`) how a run stands; never raises."""
    from patchflow.notify import message, send

    urls = ctx.settings.notify_urls
    if urls:
        title, body = message(
            action, result, version, previous, stopped_seconds=stopped_seconds, detail=detail, recovery=recovery
        )
        send(urls, title, body, failed=result not in ("started", "success"), log=ctx.log)


def pre_hook(ctx: Context, name: str, *, action: str, version: str, previous: str) -> None:
    """Run a ``pre-*`` hook; its failure refuses the run; otherwise the run is announced as started
    (:func:`announce`).

    Raises:
        PreconditionError: the hook failed or may not be run; nothing was changed.
    """
    outcome = run_hook(ctx, name, action=action, version=version, previous=previous)
    if outcome is None or outcome[0]:
        announce(ctx, action, "started", version, previous)  # the run goes on: its channels hear of it
    else:
        raise PreconditionError(
            f"The {name} hook refused the {action} of {version}: {outcome[1]}. Nothing was changed.",
            f"Read its output above (and in .patchflow/logs/patchflow.log); fix what it checks, or the hook "
            f"({hook_path(ctx, name)}).",
        )


def post_hook(ctx: Context, name: str, *, action: str, version: str, previous: str, result: str) -> None:
    """Run a ``post-*`` or ``on-failure`` hook; a failure is logged, never raised (the run's result stands)."""
    outcome = run_hook(ctx, name, action=action, version=version, previous=previous, result=result)
    if outcome is not None and not outcome[0]:
        ctx.log(f"!! hook {name}: {outcome[1]} (the {action}'s result stands: {result})")
