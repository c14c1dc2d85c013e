"""The error-to-exit edge and the helpers every task shares.

``@command`` (``@task`` whose PatchflowError becomes one red line, a hint and an exit code), the
project root, the settings and core context of a task's checkout, a required ``--version``, and
the flags' help texts. The project root is the checkout whose ``tasks.py`` invoke loaded (wherever
the command starts inside it), else the nearest folder above holding ``VERSION`` or ``tasks.py``;
``--root`` overrides. Flags have no short forms, so ``-h`` is help on every task.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task
from rich.markup import escape

from patchflow.config import Settings, load_settings
from patchflow.console import console, error_console
from patchflow.errors import PatchflowError, exit_line
from patchflow.version import PatchVersion, parse_version

if TYPE_CHECKING:
    from patchflow.context import Context as CoreContext

F = TypeVar("F", bound=Callable[..., Any])
ROOT_HELP = "the PrimeFlow checkout to act on (default: the checkout holding tasks.py, found from here upwards)"
YES_HELP = "do not ask for confirmation (required without a terminal)"
REMOTE_HELP = {
    "host": "run it on this host over SSH (inventory name, ssh alias or user@host[:port]; see deploy)",
    "hosts": "run it on these hosts over SSH, comma separated",
    "role": "run it on every inventory host with this role",
}
UNSET = -1
#: The folder of the ``patchflow`` package (holding this ``tasks`` package).
PACKAGE_DIR = Path(__file__).resolve().parent.parent


def reports_errors(func: F) -> F:
    """Turn PatchflowError into invoke.Exit: one red line, the hint, the error's exit code. The
    last line on stderr of every failure names the code and its meaning (``patchflow: exit 4
    (rollback incomplete; ...)``): through make, whose own exit is always 2, it is the only place
    the operator sees patchflow's."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # whatever the operator's umask (000 included), nothing patchflow or the commands it runs
        # create may be written by group or other users; its own folders are 0700 (files.private_folder)
        os.umask(os.umask(0o022) | 0o022)
        try:
            return func(*args, **kwargs)
        except PatchflowError as exc:
            # messages name files, settings ([tool.patchflow]) and values: never read as markup
            error_console.print(f"[bold red]error:[/] {escape(exc.message)}")
            if exc.hint:
                error_console.print(f"[yellow]hint:[/] {escape(exc.hint)}")
            error_console.print(exit_line(exc.exit_code), markup=False)
            raise Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            error_console.print("[bold red]interrupted[/]")
            error_console.print(exit_line(130), markup=False)
            raise Exit(code=130) from None
        except PermissionError as exc:
            # the checks before the stop name what an apply or rollback cannot write or read; a
            # path they do not foresee still ends in one paragraph, not a traceback
            from patchflow.files import current_user, describe_owner

            where = f" {exc.filename} ({describe_owner(Path(exc.filename))})" if exc.filename else ""
            error_console.print(
                f"[bold red]error:[/] {escape(f'Permission denied for user {current_user()}:{where}.')}"
            )
            error_console.print(
                "[yellow]hint:[/] Run the command as the user who owns the install, or give this user access to "
                "that path; `inv patch-status` shows whether anything was left to finish."
            )
            error_console.print(exit_line(1), markup=False)
            raise Exit(code=1) from None
        except OSError as exc:
            # a system call nobody foresaw failed (a full disk, a disk error): one paragraph, never
            # a traceback; every run leaves what patch-status needs to name the recovery
            from patchflow.errors import describe_os_error, os_error_hint

            error_console.print(f"[bold red]error:[/] {escape(describe_os_error(exc))}.")
            error_console.print(f"[yellow]hint:[/] {escape(os_error_hint(exc))}")
            error_console.print(exit_line(1), markup=False)
            raise Exit(code=1) from None
        except Exit as exc:
            if exc.code:
                error_console.print(exit_line(exc.code), markup=False)
            raise

    return wrapper  # type: ignore[return-value]


def command(**kwargs: Any) -> Callable[[F], Any]:
    """``@task`` without automatic short flags (``-h`` stays help; flags mean the same everywhere),
    errors reported as one line with a hint."""

    def decorate(func: F) -> Any:
        return task(auto_shortflags=False, **kwargs)(reports_errors(func))

    return decorate


def project_root(c: Context, root: str | None) -> Path:
    """The checkout a task acts on (see the module docstring).

    Raises:
        ConfigError: no checkout found, or only patchflow's own repository; or another user
            controls the checkout (:func:`patchflow.trust.check_checkout_trusted`).
    """
    from patchflow.project import find_root
    from patchflow.trust import check_checkout_trusted

    if root:
        found = Path(root)
    else:
        prefix = getattr(c.config, "_project_prefix", None)
        if prefix and Path(prefix).resolve() == PACKAGE_DIR:
            # invoke started in patchflow's package folder finds this package (``tasks/``) as its
            # tasks module: that is no checkout's tasks.py, so the checkout is looked for upwards
            prefix = None
        found = find_root(Path.cwd(), Path(prefix) if prefix else None)
    check_checkout_trusted(found)  # before anything is read from it (patchflow/trust.py)
    return found


def required_version(version: str | None, task: str) -> PatchVersion:
    """``--version`` of a task that has no default version, parsed.

    Raises:
        VersionError: none given (one line naming ``--version`` and make's ``VERSION=``; a command
            acting on a version nobody named would act on the wrong one), or not a version.
    """
    from patchflow.errors import VersionError

    if version is None or not version.strip():
        raise VersionError(
            f"{task} needs the version to act on: pass --version X.Y.Z (make {task} VERSION=X.Y.Z); "
            "nothing was changed."
        )
    return parse_version(version, source="--version")


def optional_version(version: str | None) -> PatchVersion | None:
    """``--version`` of a task where it may be left out, parsed (None: not given).

    Raises:
        VersionError: not a version.
    """
    return parse_version(version, source="--version") if version else None


def settings_for(c: Context, root: str | None, **flags: Any) -> Settings:
    """The settings of the task's checkout, with ``flags`` (None: not given) on top."""
    return load_settings(project_root(c, root), overrides=flags)


def context_for(c: Context, root: str | None, *, record: bool = False, **flags: Any) -> CoreContext:
    """The core's Context for the task's checkout (progress lines printed, optionally recorded)."""
    from patchflow.context import Context as CoreContext

    settings = settings_for(c, root, **{k: v for k, v in flags.items() if v is not None})
    return CoreContext.create(
        settings, log=lambda line: console.print(f"  {line}", markup=False, highlight=False), record=record
    )
