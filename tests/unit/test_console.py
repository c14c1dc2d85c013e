"""Confirmation never blocks a run without a terminal, and on a terminal (a real pty) every answer but
yes means not confirmed; byte/age formatting."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support.terminal import CTRL_C, CTRL_D, Terminal

from patchflow.console import confirm
from patchflow.errors import ConfirmationRefused
from patchflow.units import human_age, human_bytes


def test_no_terminal_without_yes_refuses() -> None:
    with pytest.raises(ConfirmationRefused) as caught:
        confirm("Apply patch v2.3.0?", yes=False, is_terminal=lambda: False)
    assert "Apply patch v2.3.0?" in caught.value.message
    assert "--yes" in caught.value.hint
    assert caught.value.exit_code == 5


def test_yes_returns_without_asking() -> None:
    def never() -> bool:
        raise AssertionError("--yes must not look for a terminal")

    assert confirm("Apply patch v2.3.0?", yes=True, is_terminal=never) is None


def test_a_child_without_a_terminal_refuses_at_once() -> None:
    code = (
        "from patchflow.console import confirm\n"
        "from patchflow.errors import ConfirmationRefused\n"
        "try:\n"
        "    confirm('Roll back?', yes=False)\n"
        "except ConfirmationRefused as exc:\n"
        "    print(exc.hint)\n"
        "    raise SystemExit(5)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], input="y\n", capture_output=True, text=True, timeout=30)
    assert proc.returncode == 5, proc.stderr
    assert "--yes" in proc.stdout


def _child_sees_a_terminal(stdin: int) -> str:
    code = "from patchflow.console import stdin_is_terminal; print(stdin_is_terminal())"
    proc = subprocess.run([sys.executable, "-c", code], stdin=stdin, capture_output=True, text=True, timeout=30)
    return proc.stdout.strip()


def test_stdin_is_terminal_follows_the_real_stdin() -> None:
    import os
    import pty

    primary, secondary = pty.openpty()
    try:
        assert _child_sees_a_terminal(secondary) == "True"
    finally:
        os.close(primary)
        os.close(secondary)
    assert _child_sees_a_terminal(subprocess.DEVNULL) == "False"


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (5 * 1024**2, "5.0 MiB"), (3 * 1024**4, "3.0 TiB")],
)
def test_human_bytes(size: int, text: str) -> None:
    assert human_bytes(size) == text


@pytest.mark.parametrize(
    ("seconds", "text"), [(-5, "0s"), (59, "59s"), (61, "1m 1s"), (3900, "1h 5m"), (90000, "1d 1h")]
)
def test_human_age(seconds: float, text: str) -> None:
    assert human_age(seconds) == text


PROMPT_CHILD = (
    "import sys\n"
    "from patchflow.console import confirm\n"
    "from patchflow.errors import ConfirmationRefused\n"
    "from patchflow.lifecycle.steps import interruptible\n"
    "try:\n"
    "    with interruptible():\n"  # as inside apply and rollback: SIGTERM/SIGHUP raise there too
    "        confirm('Apply 2.3.0 now?', yes=False)\n"
    "    print('CONFIRMED')\n"
    "except ConfirmationRefused as exc:\n"
    "    print('REFUSED', exc.message, exc.exit_code)\n"
)


def _prompt_on_terminal() -> Terminal:
    terminal = Terminal([sys.executable, "-c", PROMPT_CHILD])
    terminal.expect(r"Apply 2\.3\.0 now\? \[y/n\]", timeout=60)
    return terminal


@pytest.mark.parametrize(
    ("key", "how"),
    [(CTRL_C, "interrupted (Ctrl+C)"), (CTRL_D, "the input ended (Ctrl+D or a closed stdin)"), (b"n\n", "")],
)
def test_every_answer_but_yes_at_a_terminal_prompt_is_not_confirmed(key: bytes, how: str) -> None:
    with _prompt_on_terminal() as terminal:
        terminal.send(key)
        assert terminal.wait(60) == 0, terminal.screen
        expected = f"Not confirmed: {how} at the prompt; nothing was changed." if how else "Cancelled by the operator"
        assert f"REFUSED {expected}" in terminal.screen
        assert terminal.screen.rstrip().endswith(" 5")
        assert "Traceback" not in terminal.screen


def test_sigterm_while_the_prompt_waits_is_not_confirmed() -> None:
    import signal

    with _prompt_on_terminal() as terminal:
        terminal.process.send_signal(signal.SIGTERM)
        assert terminal.wait(60) == 0, terminal.screen
        assert "REFUSED Not confirmed: SIGTERM arrived at the prompt; nothing was changed. 5" in terminal.screen


def test_yes_at_a_terminal_prompt_confirms() -> None:
    with _prompt_on_terminal() as terminal:
        terminal.send(b"y\n")
        assert terminal.wait(60) == 0, terminal.screen
        assert "CONFIRMED" in terminal.screen
