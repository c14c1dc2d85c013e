"""The fault hooks (:mod:`patchflow.faults`): built from the environment at the edge, not settings,
a no-op by default, and carried on to a child process exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from patchflow.config import FIELDS, load_settings
from patchflow.errors import ConfigError
from patchflow.faults import KILL_AT_VARIABLE, NO_FAULTS, UPLOAD_CUT_VARIABLE, FaultHooks


def test_the_hooks_are_not_settings_and_default_to_nothing(tmp_path: Path) -> None:
    assert not [f for f in FIELDS if f.name.startswith("test_")], "no test_* setting is public"
    assert load_settings(tmp_path, environ={}).faults == NO_FAULTS
    built = load_settings(tmp_path, environ={KILL_AT_VARIABLE: "migrate=SIGSTOP", UPLOAD_CUT_VARIABLE: "4096"}).faults
    assert built == FaultHooks(kill_at="migrate=SIGSTOP", upload_cut=4096)


def test_a_server_under_test_gets_them_through_its_dotenv(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"{KILL_AT_VARIABLE}=receive-check=SIGSTOP\n")
    assert load_settings(tmp_path, environ={}).faults.kill_at == "receive-check=SIGSTOP"
    assert load_settings(tmp_path, environ={KILL_AT_VARIABLE: "migrate"}).faults.kill_at == "migrate", "env wins"


def test_a_hook_in_a_file_is_no_setting(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.patchflow]\ntest_kill_at = 'migrate'\n")
    with pytest.raises(ConfigError, match="Unknown setting 'test_kill_at'"):
        load_settings(tmp_path, environ={})


def test_an_upload_cut_that_is_no_number_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"{UPLOAD_CUT_VARIABLE}='lots' is not a number of bytes"):
        load_settings(tmp_path, environ={UPLOAD_CUT_VARIABLE: "lots"})


def test_no_faults_does_nothing_anywhere() -> None:
    NO_FAULTS.checkpoint("migrate")
    NO_FAULTS.kill_point("switch-file")("public/a.js")
    assert NO_FAULTS.upload_chunk(1000, 0) == 1000
    assert not NO_FAULTS.upload_cut_reached(10**9)


def test_upload_cut_stops_exactly_at_the_byte() -> None:
    hooks = FaultHooks(upload_cut=2500)
    assert hooks.upload_chunk(1000, 0) == 1000
    assert hooks.upload_chunk(1000, 2000) == 500
    assert not hooks.upload_cut_reached(2499) and hooks.upload_cut_reached(2500)


@pytest.mark.parametrize(
    ("kill_at", "calls", "signum"),
    [
        ("migrate", [("migrate", "before")], -signal.SIGKILL),
        ("migrate:after=SIGTERM", [("migrate", "before"), ("migrate", "after")], -signal.SIGTERM),
        ("switch-file#2=SIGINT", [], -signal.SIGINT),
        ("switch-file@b.js=SIGTERM", [], -signal.SIGTERM),
        ("build", [("migrate", "before"), ("migrate", "after")], 0),
    ],
)
def test_the_kill_lands_at_the_named_point_only(kill_at: str, calls: list[tuple[str, str]], signum: int) -> None:
    script = (
        "import sys; from patchflow.faults import FaultHooks\n"
        f"hooks = FaultHooks(kill_at={kill_at!r})\n"
        f"for point, when in {calls!r}: hooks.checkpoint(point, when)\n"
        "hit = hooks.kill_point('switch-file')\n"
        "for label in ('a.js', 'b.js', 'c.js'): hit(label)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == signum, done.stderr


def test_a_child_gets_these_hooks_and_no_others() -> None:
    outer = {"PATH": os.environ.get("PATH", ""), KILL_AT_VARIABLE: "old", UPLOAD_CUT_VARIABLE: "7"}
    assert FaultHooks(kill_at="trash-deleter=SIGSTOP").child_environ(outer) == {
        "PATH": outer["PATH"],
        KILL_AT_VARIABLE: "trash-deleter=SIGSTOP",
    }
    assert NO_FAULTS.child_environ(outer) == {"PATH": outer["PATH"]}
