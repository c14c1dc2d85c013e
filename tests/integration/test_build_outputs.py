"""Install/build run in staging before services stop; their outputs switch in with the files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.installs import Install

pytestmark = pytest.mark.integration


def test_build_in_staging_switches_dist_and_rollback_restores_it(install: Install, tmp_path: Path) -> None:
    env = (install.root / ".env").read_text()
    (install.root / ".env").write_text(env + "PATCHFLOW_BUILD_COMMAND=node scripts/build.js\n")
    old_bundle = (install.root / "dist" / "bundle.js").read_bytes()
    tree_before = install.state()
    install.release(tmp_path, "2.3.0")

    applied = install.inv("apply-patch", "--version", "2.3.0", "--yes")
    assert applied.returncode == 0, applied.stderr + applied.stdout
    assert "build outputs switched: dist" in applied.stdout
    built = json.loads((install.root / "dist" / "version.json").read_text())
    assert built["version"] == "2.3.0"
    assert not (install.root / "dist" / "bundle.js").exists()
    # the build ran in staging, before the stop step: its output is in the tree only after the switch
    steps = [line.strip() for line in applied.stdout.splitlines() if line.strip().startswith("->")]
    assert steps.index("-> stage") < steps.index("-> stop")

    rolled = install.inv("rollback-patch", "--version", "2.3.0", "--yes")
    assert rolled.returncode == 0, rolled.stderr + rolled.stdout
    assert (install.root / "dist" / "bundle.js").read_bytes() == old_bundle
    assert install.state() == tree_before
