"""Hooks around apply and rollback (issue 23): the install's ``.patchflow/hooks/`` executables run
with the version, previous version, host and result in their environment (never patchflow's own
settings); a failing pre-hook refuses before anything stops; a post-hook's failure leaves the
result standing; on-failure runs after an automatic rollback. Real install, real hooks (sh)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.installs import Install, health

pytestmark = pytest.mark.integration

RECORD = """#!/bin/sh
env | grep -E '^(PF_|PATCHFLOW_)' | sort > "$PF_ROOT/.patchflow/hooks/$PF_HOOK.env"
echo "hook $PF_HOOK says hello"
exit {code}
"""


def _hook(install: Install, name: str, code: int = 0, mode: int = 0o700) -> Path:
    folder = install.root / ".patchflow" / "hooks"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(RECORD.format(code=code))
    os.chmod(path, mode)
    return path


def _seen(install: Install, name: str) -> dict[str, str]:
    text = (install.root / ".patchflow" / "hooks" / f"{name}.env").read_text()
    return dict(line.split("=", 1) for line in text.splitlines())


def test_a_failing_pre_apply_hook_refuses_before_anything_stops_and_hooks_see_the_run(
    install: Install, tmp_path: Path
) -> None:
    install.release(tmp_path, "2.3.0")
    _hook(install, "pre-apply", code=3)
    tree = install.state()
    done = install.inv("apply-patch", "--version", "2.3.0", "--yes")
    assert done.returncode == 1, done.stdout + done.stderr
    flat = " ".join(done.stderr.split())
    assert "The pre-apply hook refused the apply of 2.3.0" in flat and "exited with 3" in flat, flat
    assert "pre-apply: hook pre-apply says hello" in done.stdout
    assert install.state() == tree and health(install) == (200, "2.2.0")

    _hook(install, "pre-apply")
    _hook(install, "post-apply", code=1)  # a failing post-hook: reported, the apply stands
    done = install.inv("apply-patch", "--version", "2.3.0", "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "!! hook post-apply:" in done.stdout and "the apply's result stands: success" in done.stdout
    before, after = _seen(install, "pre-apply"), _seen(install, "post-apply")
    assert (
        before["PF_ACTION"] == "apply" and before["PF_VERSION"] == "2.3.0" and before["PF_PREVIOUS_VERSION"] == "2.2.0"
    )
    assert before["PF_RESULT"] == "" and after["PF_RESULT"] == "success" and after["PF_HOST"]
    assert not [k for k in {**before, **after} if k.startswith("PATCHFLOW_")], "patchflow's settings stay its own"
    assert health(install) == (200, "2.3.0")

    _hook(install, "post-rollback")
    rolled = install.inv("rollback-patch", "--version", "2.3.0", "--yes")
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert _seen(install, "post-rollback")["PF_ACTION"] == "rollback"


def test_on_failure_runs_after_an_automatic_rollback_and_an_unsafe_hook_is_refused(
    install: Install, tmp_path: Path
) -> None:
    install.release(tmp_path, "2.3.0", migration="SELECT 1/0;\n")
    _hook(install, "on-failure")
    done = install.inv("apply-patch", "--version", "2.3.0", "--yes")
    assert done.returncode == 2, done.stdout + done.stderr
    assert _seen(install, "on-failure")["PF_RESULT"] == "rolled_back"

    _hook(install, "pre-apply", mode=0o777)
    refused = install.inv("apply-patch", "--version", "2.3.0", "--yes")
    assert refused.returncode == 1
    assert "group or other users may change it (mode 0777)" in " ".join(refused.stderr.split())
    assert health(install) == (200, "2.2.0")
