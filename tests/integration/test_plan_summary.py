"""The plan of a large patch (issue 19, fault 6) on a real install: paths by folder with the whole
list one flag away and in the operation log, the stopped window estimated from this install's own
history (per-step durations recorded by every apply), and a migration lint that counts its findings
instead of flooding the screen. Real ``inv`` processes, a real squawk and PostgreSQL."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support.exact import NEW
from support.installs import Install, build_release, history

pytestmark = pytest.mark.integration

GENERATED = 40
INDEXES = 8  # each a plain CREATE INDEX: squawk flags every one (require-concurrent-index-creation)
MIGRATION = "".join(f'CREATE INDEX "User_idx_{n}" ON "User" ("email");\n' for n in range(INDEXES))


def _many_files(source: Path) -> None:
    folder = source / "src" / "components" / "generated"
    folder.mkdir(parents=True)
    for n in range(GENERATED):
        (folder / f"Widget{n}.js").write_text(f"export const widget{n} = {n};\n")


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_a_large_plan_is_summarised_by_folder_with_an_estimate_and_a_short_lint(
    install: Install, tmp_path: Path
) -> None:
    build_release(install, tmp_path, NEW, edit=_many_files, migration=MIGRATION)
    plan = install.inv("apply-patch", "--version", NEW, "--dry-run")
    assert plan.returncode == 0, plan.stderr + plan.stdout
    out = plan.stdout
    # the 40 files and their folder added, Header.js deleted: one line
    assert re.search(rf"^\s+src/components/\s+{GENERATED + 1} added, 1 deleted$", out, re.MULTILINE), out
    assert "by folder (each path: apply-patch --dry-run --list-files" in _flat(out)
    assert "Widget7.js" not in out  # no path of the summarised folders is listed
    # the template's apply of 2.2.0 recorded its steps: the estimate is read from them
    assert re.search(r"stopped window about [\d.]+ s \(from the last 1 apply on this install, step by step: stop", out)
    findings = re.findall(r"lock/rewrite: prisma/migrations/\S+ line \d+", out)
    assert len(findings) == 5, out
    assert f"and {INDEXES - 5} more lock/rewrite findings ({INDEXES} in all" in _flat(out), out

    listed = install.inv("apply-patch", "--version", NEW, "--dry-run", "--list-files")
    assert listed.returncode == 0, listed.stderr + listed.stdout
    assert all(f"A src/components/generated/Widget{n}.js" in listed.stdout for n in range(GENERATED))
    assert len(re.findall(r"lock/rewrite: prisma/migrations/", listed.stdout)) == INDEXES

    state = install.root / ".patchflow"
    saved = (state / "history.jsonl").read_bytes()
    (state / "history.jsonl").unlink()
    fresh = install.inv("apply-patch", "--version", NEW, "--dry-run")
    assert "stopped window no history yet: no apply has completed on this install" in _flat(fresh.stdout), fresh.stdout
    (state / "history.jsonl").write_bytes(saved)

    applied = install.inv("apply-patch", "--version", NEW, "--yes")
    assert applied.returncode == 0, applied.stderr + applied.stdout
    record = history(install)[-1]
    assert record["action"] == "apply" and record["result"] == "success"
    assert {"stop", "backup", "switch", "migrate", "start", "health"} <= set(record["steps"])
    assert record["work"]["files"] >= GENERATED and record["work"]["migrations"] == 1
    assert record["work"]["backup_bytes"] > 0
    log = (state / "logs" / "patchflow.log").read_text()
    assert all(f"plan: A src/components/generated/Widget{n}.js" in log for n in range(GENERATED))
    assert len(re.findall(r"plan: lock/rewrite: prisma/migrations/20250301090000_audit_log/", log)) == INDEXES
