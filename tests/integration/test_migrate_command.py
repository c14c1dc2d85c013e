"""A configured migration command (as `pnpm prisma migrate deploy` would be) instead of the
built-in runner. Prisma itself cannot be installed here (no registry for its engines), so a
small script stands in for it and prints Prisma's error format; patchflow's handling is real."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.installs import Install, get

pytestmark = pytest.mark.integration

FAILING_PRISMA = """#!/bin/sh
echo "Applying migration \\`20250301090000_audit_log\\`"
echo "Error: P3018" >&2
echo "A migration failed to apply. Migration name: 20250301090000_audit_log" >&2
exit 1
"""


def test_a_failing_migration_command_is_reported_with_prisma_code_and_rolled_back(
    install: Install, tmp_path: Path
) -> None:
    tree_before = install.state()
    db_before = install.pg_dump()
    script = install.root.parent / "fake-prisma.sh"
    script.write_text(FAILING_PRISMA)
    script.chmod(0o755)
    env = (
        (install.root / ".env")
        .read_text()
        .replace("PATCHFLOW_MIGRATE_COMMAND=builtin", f"PATCHFLOW_MIGRATE_COMMAND={script}")
    )
    (install.root / ".env").write_text(env)
    tree_before[".env"] = install.state()[".env"]
    install.release(tmp_path, "2.3.0")

    applied = install.inv("apply-patch", "--version", "2.3.0", "--yes")
    assert applied.returncode == 2, applied.stderr + applied.stdout
    assert "P3018" in applied.stderr and "20250301090000_audit_log" in applied.stderr
    assert "rolled back automatically" in applied.stderr
    assert install.state() == tree_before
    assert install.pg_dump() == db_before
    status, body = get(install.health_url)
    assert status == 200 and json.loads(body)["version"] == "2.2.0"
