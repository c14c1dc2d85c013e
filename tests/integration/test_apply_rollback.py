"""apply-patch then rollback-patch on a running install: exact tree, exact database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.installs import Install, get

pytestmark = pytest.mark.integration


def test_apply_then_rollback_is_exact(install: Install, tmp_path: Path) -> None:
    tree_before = install.state()
    db_before = install.pg_dump()
    install.release(tmp_path, "2.3.0")

    applied = install.inv("apply-patch", "--version", "2.3.0", "--yes")
    assert applied.returncode == 0, applied.stderr + applied.stdout
    assert "services were down for" in applied.stdout
    status, body = get(install.health_url)
    assert status == 200 and json.loads(body)["version"] == "2.3.0"
    assert install.sql('SELECT count(*) FROM "User"') == "5"
    assert not (install.root / "src/components/Header.js").exists()
    assert (install.root / "apps/api/routes/audit.js").is_file()
    assert (install.root / "uploads/photo.jpg").is_file() and (install.root / ".env").is_file()
    assert (install.root / "node_modules/.pnpm/left-pad@1.3.0/index.js").is_file()

    rolled = install.inv("rollback-patch", "--version", "2.3.0", "--yes")
    assert rolled.returncode == 0, rolled.stderr + rolled.stdout
    assert install.state() == tree_before
    assert install.pg_dump() == db_before
    status, body = get(install.health_url)
    assert status == 200 and json.loads(body)["version"] == "2.2.0"
    history = [json.loads(line) for line in (install.root / ".patchflow/history.jsonl").read_text().splitlines()]
    assert [h["result"] for h in history[-2:]] == ["success", "success"]
    assert history[-2]["stopped_seconds"] > 0


def test_unhealthy_patch_is_rolled_back_automatically(install: Install, tmp_path: Path) -> None:
    tree_before = install.state()
    db_before = install.pg_dump()
    install.release(tmp_path, "2.3.0", health_status=500)

    applied = install.inv("apply-patch", "--version", "2.3.0", "--yes", "--health-timeout", "4")
    assert applied.returncode != 0
    assert "rolled back automatically" in applied.stderr
    assert "HTTP 500" in applied.stderr
    status, body = get(install.health_url)
    assert status == 200 and json.loads(body)["version"] == "2.2.0"
    assert install.state() == tree_before
    assert install.pg_dump() == db_before
