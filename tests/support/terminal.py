"""A command on a real pseudo-terminal, as an operator runs it: a prompt is answered by typing
into the terminal, Ctrl+C is the byte the terminal turns into SIGINT for its foreground process
group, Ctrl+D at the start of a line is end of input.

The child gets a new session whose controlling terminal is the pty (``setsid`` + ``TIOCSCTTY``),
so the line discipline of the kernel delivers those keys exactly as on a server's console; the
screen is 200 columns wide. :meth:`Terminal.expect` reads the screen (ANSI codes removed) until a
pattern shows, with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Sequence
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\r")
CTRL_C = b"\x03"
CTRL_D = b"\x04"


def _take_terminal() -> None:  # runs in the child between fork and exec
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """One process on its own pseudo-terminal. ``screen`` is everything it printed so far
    (stdout and stderr: both go to the terminal), ANSI codes and carriage returns removed."""

    def __init__(self, argv: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.primary, secondary = pty.openpty()
        fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        full_env = {**os.environ, "TERM": "xterm", "COLUMNS": "200", **(env or {})}
        self.process = subprocess.Popen(
            list(argv),
            stdin=secondary,
            stdout=secondary,
            stderr=secondary,
            env=full_env,
            cwd=cwd,
            preexec_fn=_take_terminal,  # setsid + the pty as controlling terminal, nothing else
            close_fds=True,
        )
        os.close(secondary)
        self._raw = b""
        self._seen = 0  # screen offset up to which expect() has matched

    @property
    def screen(self) -> str:
        return ANSI.sub("", self._raw.decode("utf-8", errors="replace"))

    def _read(self, timeout: float) -> bool:
        """Read what is there within ``timeout`` s; False at end of output."""
        ready, _, _ = select.select([self.primary], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.primary, 65536)
        except OSError:  # EIO: every holder of the secondary side closed it
            return False
        if not chunk:
            return False
        self._raw += chunk
        return True

    def expect(self, pattern: str, timeout: float = 120) -> re.Match[str]:
        """Wait until ``pattern`` (a regex) appears on the screen after the last match; returns it.

        Raises:
            AssertionError: the deadline passed or the process ended first (the screen is shown).
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.screen, self._seen)
            if match:
                self._seen = match.end()
                return match
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {pattern!r}; screen:\n{self.screen}")
            if not self._read(0.2) and self.process.poll() is not None:
                match = regex.search(self.screen, self._seen)
                if match:
                    self._seen = match.end()
                    return match
                raise AssertionError(
                    f"the process ended (exit {self.process.returncode}) before {pattern!r} appeared; "
                    f"screen:\n{self.screen}"
                )

    def send(self, data: bytes) -> None:
        """Type ``data`` (b"y\\n", :data:`CTRL_C`, :data:`CTRL_D`)."""
        os.write(self.primary, data)

    def wait(self, timeout: float = 300) -> int:
        """Read the rest of the output until the process ends; its exit code.

        Raises:
            AssertionError: still running after ``timeout`` s (it is killed; the screen is shown).
        """
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"still running after {timeout} s; screen:\n{self.screen}")
            self._read(0.2)
        while select.select([self.primary], [], [], 0)[0] and self._read(0):
            pass
        return int(self.process.returncode)

    def kill(self) -> None:
        """End the process group (test clean-up); nothing when it has ended."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=30)

    def close(self) -> None:
        self.kill()
        try:
            os.close(self.primary)
        except OSError:
            pass

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def prompts(self, question: str) -> int:
        """How many times ``question`` (plain text) was asked on the screen so far."""
        return self.screen.count(question)
