"""Terminal output: rich console, progress bars, tables, and confirmation prompts.

Prompts never block a non-interactive run: without a terminal on stdin and without ``--yes``
:func:`confirm` refuses with :class:`ConfirmationRefused` instead of waiting.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, cast

from rich.console import Console
from rich.markup import escape

from patchflow.errors import ConfirmationRefused
from patchflow.redact import RedactingStream, shown

# without a terminal (logs, cron, SSH without a tty) lines and tables get room, never ANSI codes
# every line goes through the one redaction point (patchflow/redact.py): no password on a screen
console = Console(
    file=cast(IO[str], RedactingStream(lambda: sys.stdout)),
    highlight=False,
    soft_wrap=True,
    width=None if sys.stdout.isatty() else 160,
)
error_console = Console(
    file=cast(IO[str], RedactingStream(lambda: sys.stderr)),
    highlight=False,
    soft_wrap=True,
    width=None if sys.stderr.isatty() else 160,
)

PROGRESS_MIN_BYTES = 32 * 1024 * 1024


def cell(value: object) -> str:
    """A value from a host for a rich table cell or a markup line: :func:`shown`, markup escaped."""
    return escape(shown(str(value)))


def stdin_is_terminal() -> bool:
    """True when stdin is an interactive terminal."""
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (ValueError, OSError):
        return False


def confirm(question: str, *, yes: bool, is_terminal: Callable[[], bool] = stdin_is_terminal) -> None:
    """Ask ``question`` on a terminal; return if the operator agrees.

    Every answer but yes means one thing, not confirmed: "n", Ctrl+C (SIGINT), the end of input
    (Ctrl+D, a closed stdin) and SIGTERM or SIGHUP (the terminal went away) while the prompt waits.
    Nothing has been changed at a prompt, so none of them reads as a failed or interrupted run.

    Raises:
        ConfirmationRefused: the operator did not say yes, or there is no terminal and ``yes`` is
            False.
    """
    if yes:
        return
    if not is_terminal():
        raise ConfirmationRefused(
            f"Refusing to continue without confirmation: {question}",
            "stdin is not a terminal, so nobody can answer; pass --yes to confirm non-interactively.",
        )
    from patchflow.lifecycle.steps import Interrupted

    try:
        agreed = _ask_yes_no(question)
    except (KeyboardInterrupt, Interrupted, EOFError) as exc:
        console.print()  # end the prompt's line
        if isinstance(exc, EOFError):
            how = "the input ended (Ctrl+D or a closed stdin)"
        elif isinstance(exc, Interrupted) and exc.name != "SIGINT":
            how = f"{exc.name} arrived"
        else:
            how = "interrupted (Ctrl+C)"
        raise ConfirmationRefused(f"Not confirmed: {how} at the prompt; nothing was changed.", "") from None
    if not agreed:
        raise ConfirmationRefused("Cancelled by the operator; nothing was changed.", "")


#: how often (seconds) the prompt wakes to let a signal that came just before its wait be handled
PROMPT_WAKE_SECONDS = 0.2


def _ask_yes_no(question: str) -> bool:
    """Print ``question [y/n] (n): `` and read answers from stdin until one is yes or no (an empty
    answer is no).

    The wait is a ``select`` that wakes every :data:`PROMPT_WAKE_SECONDS`, not a blocking
    ``input()``: a signal delivered after the prompt was written but before a blocking read began
    would be noted by CPython and handled only after the next line of input, so Ctrl+C or SIGTERM
    at the prompt could be ignored. Waking lets the Python signal handlers run.

    Raises:
        EOFError: stdin ended (Ctrl+D, closed).
        KeyboardInterrupt, Interrupted: raised by the signal handlers while waiting.
    """
    import select

    stream = sys.stdin
    while True:
        console.print(f"{question} [bold magenta]\\[y/n][/] [bold cyan](n)[/]: ", end="")
        while not select.select([stream], [], [], PROMPT_WAKE_SECONDS)[0]:
            pass
        line = stream.readline()
        if not line:
            raise EOFError
        answer = line.strip().lower()
        if answer in ("", "n", "no"):
            return False
        if answer in ("y", "yes"):
            return True
        console.print("[prompt.invalid]Please enter Y or N")


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
