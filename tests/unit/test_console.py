"""Confirmation never blocks a run without a terminal; byte/age formatting."""

from __future__ import annotations

import subprocess
import sys

import pytest

from patchflow.console import confirm, human_age, human_bytes
from patchflow.errors import ConfirmationRefused


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
