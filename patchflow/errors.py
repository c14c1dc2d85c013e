"""Typed errors: every failure carries a message (what went wrong) and a hint (what to do).

Only ``tasks.py`` turns these into exit codes; library code raises and never exits.
"""

from __future__ import annotations

import errno

#: What each exit code of a patchflow command means (the README's "Exit codes" table). Through
#: ``make`` every failing recipe is make's own exit 2; patchflow's last line names its own code.
EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "bad input or refused; nothing was changed",
    2: "the apply failed or was interrupted; the old version was kept or restored",
    3: "another apply or rollback holds the lock",
    4: "rollback incomplete; the install may be down, patch-status names the recovery",
    5: "not confirmed; nothing was changed",
    6: "a remote host was unreachable or refused, or its outcome is unknown",
    130: "interrupted (Ctrl+C)",
}


def exit_line(code: int) -> str:
    """The last line a failing command prints: ``patchflow: exit 4 (rollback incomplete; ...)``."""
    return f"patchflow: exit {code} ({EXIT_CODES.get(code, 'failed')})"


def describe_os_error(exc: OSError) -> str:
    """One line for a failed system call: what the kernel said, its errno name and the path(s),
    e.g. ``Input/output error (EIO) on /srv/primeflow/.patchflow/journal.json``; a full
    filesystem or quota reads as such (``ENOSPC``, ``EDQUOT``)."""
    name = errno.errorcode.get(exc.errno or 0, "")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        text = (
            "the filesystem is full, no space or no inodes left"
            if exc.errno == errno.ENOSPC
            else "the disk quota is exceeded"
        )
    else:
        text = exc.strerror or str(exc)
    where = ""
    if exc.filename:
        where = f" on {exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "")
    return f"{text}{f' ({name})' if name else ''}{where}"


def os_error_hint(exc: OSError) -> str:
    """What an operator does about a failed system call (the hint under :func:`describe_os_error`)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        first = "Free space on that filesystem (df -h, df -i) or raise the quota"
    elif exc.errno in (errno.EIO, errno.EROFS):
        first = "The disk reported a failure: read the kernel log (dmesg) and check the disk before anything else"
    else:
        first = "Fix what the error names"
    return f"{first}; then `inv patch-status` names anything left to finish (and the command that finishes it)."


class PatchflowError(Exception):
    """Base error: ``message`` says what went wrong, ``hint`` what to do next.

    ``exit_code`` is what the command line returns for this error (1 unless a subclass says).
    """

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} {self.hint}"
        return self.message


class ConfigError(PatchflowError):
    """A setting is missing or invalid (names the file or variable at fault)."""


class VersionError(PatchflowError):
    """A version string is missing, malformed or unsafe."""


class CreatePatchError(PatchflowError):
    """The project tree cannot be packed into a patch."""


class VerifyError(PatchflowError):
    """A patch folder fails verification (missing file, checksum or manifest mismatch)."""


class ArchiveError(VerifyError):
    """An archive member is unsafe (escapes the target, device, link outside) or unreadable."""


class LockError(PatchflowError):
    """Another apply/rollback holds the lock, or a stale lock needs breaking."""

    exit_code = 3


class BackupError(PatchflowError):
    """A backup cannot be taken, found or read."""


class DatabaseError(PatchflowError):
    """A database dump, restore, connection or migration failed."""


class MigrationError(DatabaseError):
    """A migration failed; ``migration`` names it and ``code`` carries a Prisma-style code."""

    def __init__(self, message: str, hint: str = "", *, migration: str = "", code: str = "") -> None:
        super().__init__(message, hint)
        self.migration = migration
        self.code = code


class PreconditionError(PatchflowError):
    """Something an apply or rollback needs once the services are stopped is missing (a healthy
    answer at the health URL, write access, a ``.env`` key, a service): refused before anything
    stopped or changed."""


class ServiceError(PatchflowError):
    """Services could not be stopped, started or inspected."""


class HealthCheckError(PatchflowError):
    """The health check did not pass before its deadline."""


class CommandError(PatchflowError):
    """An external command exited non-zero; ``returncode`` and ``output`` are kept."""

    def __init__(self, message: str, hint: str = "", *, returncode: int = 1, output: str = "") -> None:
        super().__init__(message, hint)
        self.returncode = returncode
        self.output = output


class ApplyError(PatchflowError):
    """The apply failed; ``rolled_back`` says whether the automatic rollback restored the old version."""

    exit_code = 2

    def __init__(self, message: str, hint: str = "", *, rolled_back: bool = False) -> None:
        super().__init__(message, hint)
        self.rolled_back = rolled_back


class RollbackError(PatchflowError):
    """A rollback could not complete: the install may be down; patch-status says what is left."""

    exit_code = 4


class ConfirmationRefused(PatchflowError):
    """The operator declined, or no terminal was there to ask and ``--yes`` was missing."""

    exit_code = 5


class PlanChanged(ConfirmationRefused):
    """What the operator confirmed is no longer what the run would do: a decision taken before the
    lock (installed version, backup, plan) came out differently under it, and nobody could confirm
    the new one (``--yes``, no terminal) or it cannot be carried out. Nothing was changed."""


class RemoteError(PatchflowError):
    """A remote host could not be used as asked: unreachable, a host key unknown or changed, patchflow
    or a tool missing there, a dropped connection, or an outcome that could not be read (unknown,
    never assumed done). ``exit_code`` is 6 unless the error carries the remote command's own code."""

    exit_code = 6

    def __init__(self, message: str, hint: str = "", *, exit_code: int | None = None) -> None:
        super().__init__(message, hint)
        if exit_code is not None:
            self.exit_code = exit_code
