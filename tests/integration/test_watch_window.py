"""The watch window (issue 23, PATCH_SYSTEM.md's "monitor the logs for 30 minutes"): a version that
logs a fatal error or dies a few seconds into its window is rolled back automatically and the
install ends exactly old; ``inv accept`` ends a window early and keeps the version. Real install
(sample, command services, real PostgreSQL); the new version's API is changed to fail on a timer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.exact import assert_exactly_old
from support.installs import Install, build_release, health, inv_popen, status_json, wait_until

pytestmark = pytest.mark.integration

FAILURES = {
    "error-pattern": "setTimeout(() => console.error('UnhandledPromiseRejection: boom in the new version'), 3000);\n",
    "dies": "setTimeout(() => process.exit(3), 3000);\n",
}


@pytest.mark.parametrize("how", sorted(FAILURES))
def test_a_version_that_fails_in_its_watch_window_is_rolled_back_exactly(
    install: Install, tmp_path: Path, how: str
) -> None:
    def edit(source: Path) -> None:
        with open(source / "apps" / "api" / "server.js", "a") as handle:
            handle.write(FAILURES[how])

    build_release(install, tmp_path, "2.3.0", edit=edit)
    tree, db = install.state(), install.pg_dump()
    done = install.inv("apply-patch", "--version", "2.3.0", "--yes", "--watch", "20")
    assert done.returncode == 2, done.stdout + done.stderr
    flat = " ".join(done.stderr.split())
    why = "its log shows 'UnhandledPromiseRejection'" if how == "error-pattern" else "service api is stopped"
    assert "2.3.0 failed its watch window" in flat and why in flat and "rolled back to 2.2.0" in flat, flat
    assert_exactly_old(install, tree, db)
    status = status_json(install)
    assert status["watch"] is None
    watched = [h for h in status["history"] if h["action"] == "watch"]
    assert watched[-1]["result"] == "rolled_back" and why in watched[-1]["error"]
    applied = [h for h in status["history"] if h["action"] == "apply" and h.get("to_version") == "2.3.0"][-1]
    assert applied["checklist"]["health"] == [install.health_url] and applied["checklist"]["signed_by"] is None


def test_accept_ends_the_window_early_and_keeps_the_version(install: Install, tmp_path: Path) -> None:
    install.release(tmp_path, "2.3.0")
    proc = inv_popen(install, "apply-patch", "--version", "2.3.0", "--yes", "--watch", "600")
    wait_until(lambda: status_json(install)["watch"] is not None, 120, "the watch window to start")
    watching = status_json(install)["watch"]
    assert watching["version"] == "2.3.0" and watching["until"].endswith("Z")
    accepted = install.inv("accept")
    assert accepted.returncode == 0 and "accepted: 2.3.0" in accepted.stdout
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert "watch ended early (accepted)" in out
    watched = [h for h in json.loads(install.inv("patch-status", "--json").stdout)["history"] if h["action"] == "watch"]
    assert watched[-1]["result"] == "accepted"
    assert (
        health(install) == (200, "2.3.0") and json.loads(install.inv("patch-status", "--json").stdout)["watch"] is None
    )
