"""Terminal output: rich console, progress bars, tables, and confirmation prompts.

Prompts never block a non-interactive run: without a terminal on stdin and without ``--yes``
:func:`confirm` refuses with :class:`ConfirmationRefused` instead of waiting.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console

from patchflow.errors import ConfirmationRefused

# without a terminal (logs, cron, SSH without a tty) lines and tables get room, never ANSI codes
console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
error_console = Console(stderr=True, highlight=False, soft_wrap=True, width=None if sys.stderr.isatty() else 160)

PROGRESS_MIN_BYTES = 32 * 1024 * 1024


def stdin_is_terminal() -> bool:
    """True when stdin is an interactive terminal."""
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (ValueError, OSError):
        return False


def confirm(question: str, *, yes: bool, is_terminal: Callable[[], bool] = stdin_is_terminal) -> None:
    """Ask ``question`` on a terminal; return if the operator agrees.

    Raises:
        ConfirmationRefused: the operator said no, or there is no terminal and ``yes`` is False.
    """
    if yes:
        return
    if not is_terminal():
        raise ConfirmationRefused(
            f"Refusing to continue without confirmation: {question}",
            "stdin is not a terminal, so nobody can answer; pass --yes to confirm non-interactively.",
        )
    from rich.prompt import Confirm

    if not Confirm.ask(question, console=console, default=False):
        raise ConfirmationRefused("Cancelled by the operator; nothing was changed.", "")


@contextmanager
def byte_progress(enabled: bool = True) -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    """Yield a factory ``start(label, total_bytes) -> advance(n_bytes)`` drawing rich progress bars.

    Bars appear only on a terminal and for totals of at least 32 MiB; otherwise the callbacks
    do nothing, so small runs and logs stay clean.
    """
    show = enabled and console.is_terminal
    if not show:  # no terminal (cron, CI, pipes): rich.progress is not even imported (13 ms of start-up)

        def silent(label: str, total: int) -> Callable[[int], None]:
            return lambda n: None

        yield silent
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )

    def start(label: str, total: int) -> Callable[[int], None]:
        if total < PROGRESS_MIN_BYTES:
            return lambda n: None
        task = progress.add_task(label, total=total)
        return lambda n: progress.advance(task, n)

    with progress:
        yield start


def human_bytes(size: float) -> str:
    """``1536`` -> ``1.5 KiB`` (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover


def human_age(seconds: float) -> str:
    """``3900`` -> ``1h 5m``."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"
