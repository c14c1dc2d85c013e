"""Pure builders of argument lists; nothing in this package runs anything.

``Secret`` wraps values (passwords, URLs with credentials) so that ``display()`` prints ``***``.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence


class Secret(str):
    """A string argument that is shown as ``***`` in logs and dry runs."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Secret('***')"


def display(args: Sequence[str]) -> str:
    """Shell-quoted form of ``args`` for logs, with every :class:`Secret` replaced by ``***``."""
    return shlex.join("***" if isinstance(a, Secret) else str(a) for a in args)


def split_command(command: str) -> list[str]:
    """Split a configured command line (``pnpm prisma migrate deploy``) into arguments (POSIX rules)."""
    return shlex.split(command)
