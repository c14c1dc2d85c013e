"""Smoke checks (issue 23, PATCH_SYSTEM.md's "test the critical features"): after the health check
and before the commit; one that fails rolls the apply back exactly; a malformed one is refused
before anything changes. Real install (sample, command services, real PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.exact import assert_exactly_old
from support.installs import Install, health

pytestmark = pytest.mark.integration


def test_a_failing_smoke_check_rolls_back_and_passing_ones_let_the_apply_commit(
    install: Install, tmp_path: Path
) -> None:
    install.release(tmp_path, "2.3.0")
    tree, db = install.state(), install.pg_dump()
    url = install.health_url
    malformed = install.inv("apply-patch", "--version", "2.3.0", "--yes", env={"PATCHFLOW_SMOKE_CHECKS": "ftp://x"})
    assert malformed.returncode == 1 and "neither an http(s) URL nor cmd:<command>" in " ".join(
        malformed.stderr.split()
    )

    failing = {"PATCHFLOW_SMOKE_CHECKS": f"{url} 200 version=2.3.0,cmd:sh -c 'echo orders broken >&2; exit 4'"}
    done = install.inv("apply-patch", "--version", "2.3.0", "--yes", env=failing)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"smoke {url} 200 version=2.3.0: ok" in done.stdout
    flat = " ".join(done.stderr.split())
    assert "1 smoke check(s) failed on 2.3.0" in flat and "exit 4: orders broken" in flat, flat
    assert_exactly_old(install, tree, db)

    passing = {"PATCHFLOW_SMOKE_CHECKS": f"{url} 200 version=2.3.0,cmd:true"}
    done = install.inv("apply-patch", "--version", "2.3.0", "--yes", env=passing)
    assert done.returncode == 0, done.stdout + done.stderr
    assert health(install) == (200, "2.3.0")
