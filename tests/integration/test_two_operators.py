"""Two operators (field failure R01, issue 19 fault 2) and prompt answers that mean one thing
(fault 5), with the real confirmation prompt on a pseudo-terminal.

Operator A runs ``inv apply-patch`` / ``rollback-patch`` on a pty and waits at its prompt (no lock
is held there); operator B runs the same command with ``--yes`` to completion, or changes the tree
or the patch folder by hand; then A answers. Nothing in patchflow is hooked: the race is the real
one, decided by the order of the operators' actions. The install must end exactly old or exactly
new (tests/support/exact.py), with no journal its named recovery cannot clear and no row moved
out of the live database.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.exact import (
    NEW,
    OLD,
    assert_clean_after,
    assert_exactly_new,
    assert_exactly_old,
    expected_tree_after_apply,
    read_manifest,
)
from support.installs import INV, Install, build_release, health, history, status_json
from support.terminal import CTRL_C, CTRL_D, Terminal

pytestmark = pytest.mark.integration

APPLY_PROMPT = r"Apply 2\.3\.0 now \(services [^)]*will be stopped\)\?"
ROLLBACK_PROMPT = r"Roll back 2\.3\.0 to 2\.2\.0 from backup (pre-patch-\S+) \(stops services"
NEW_PLAN_PROMPT = r"Apply 2\.3\.0 now with this plan \(services [^)]*will be stopped\)\?"


def _out(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout + done.stderr


@pytest.fixture
def operator_a(install: Install) -> Iterator[list[Terminal]]:
    """Terminals opened by a test (closed, their process group killed if still running, after)."""
    opened: list[Terminal] = []
    yield opened
    for terminal in opened:
        terminal.close()


def _on_terminal(opened: list[Terminal], install: Install, *args: str) -> Terminal:
    terminal = Terminal([*INV, args[0], "--root", str(install.root), *args[1:]])
    opened.append(terminal)
    return terminal


def _no_recovery_needed(install: Install) -> None:
    """patch-status names no recovery and no interrupted run; the lock is free."""
    status = status_json(install)
    assert status["interrupted"] is None, status["interrupted"]
    assert status["recovery"] is None, status["recovery"]
    assert status["lock"] is None, status["lock"]


def _single_line_on(screen: str, text: str) -> str:
    lines = [line for line in screen.splitlines() if text in line]
    assert lines, screen
    return lines[-1]


# -- apply against apply ----------------------------------------------------------------------


def test_r01_an_apply_confirmed_after_another_apply_completed_is_refused_naming_it(
    install: Install, tmp_path: Path, operator_a: list[Terminal]
) -> None:
    install.release(tmp_path)
    before = install.state()
    old, new = read_manifest(install, OLD), read_manifest(install, NEW)
    a = _on_terminal(operator_a, install, "apply-patch", "--version", NEW)
    a.expect(APPLY_PROMPT)

    b = install.inv("apply-patch", "--version", NEW, "--yes")
    assert b.returncode == 0, _out(b)
    record = [h for h in history(install) if h["action"] == "apply" and h["result"] == "success"][-1]

    a.send(b"y\n")
    code = a.wait()
    assert code == 5, a.screen
    refusal = _single_line_on(a.screen, "was refused")
    assert f"{NEW} was installed by another run" in refusal
    assert f"pid {record['pid']}" in refusal and f"{record['user']}@{record['host']}" in refusal
    assert "while this run waited at its prompt" in refusal
    assert "Nothing was changed" in a.screen
    assert a.prompts("Apply 2.3.0 now") == 1  # nothing to ask: the version it was to install is there
    assert_exactly_new(install, before, old, new)
    _no_recovery_needed(install)
    applies = [h for h in history(install) if h["action"] == "apply" and h["to_version"] == NEW]
    assert [h["result"] for h in applies] == ["success"]


# -- rollback against rollback ----------------------------------------------------------------


@pytest.mark.parametrize("force", [(), ("--force",)], ids=["plain", "force"])
def test_r01_a_rollback_confirmed_after_another_rollback_never_restores_twice(
    install: Install, tmp_path: Path, operator_a: list[Terminal], force: tuple[str, ...]
) -> None:
    """Also with --force (which restores a backup over another installed version): the backup
    was restored by another run after A chose it, so A is refused, not asked again."""
    tree_old = install.state()
    install.release(tmp_path)
    applied = install.inv("apply-patch", "--version", NEW, "--yes")
    assert applied.returncode == 0, _out(applied)
    a = _on_terminal(operator_a, install, "rollback-patch", "--version", NEW, *force)
    backup = a.expect(ROLLBACK_PROMPT).group(1)

    b = install.inv("rollback-patch", "--version", NEW, "--yes")
    assert b.returncode == 0, _out(b)
    assert f"backup {backup}" in b.stdout
    install.sql(
        'INSERT INTO "User" ("email", "name", "role", "updatedAt") '
        "VALUES ('written-between@example.com', 'between the rollbacks', 'MEMBER', now())"
    )

    a.send(b"y\n")
    code = a.wait()
    assert code == 5, a.screen
    refusal = _single_line_on(a.screen, "was refused")
    assert f"{NEW} was rolled back to {OLD} by another run" in refusal
    record = [h for h in history(install) if h["action"] == "rollback"][-1]
    assert f"pid {record['pid']}" in refusal
    assert f"backup {backup} was restored by another run (rollback 2.3.0 -> 2.2.0 by" in refusal
    assert a.prompts("Roll back 2.3.0") == 1
    # the row is in the live database; one restore for one backup, one displaced database
    assert install.sql("SELECT count(*) FROM \"User\" WHERE email = 'written-between@example.com'") == "1"
    rollbacks = [h for h in history(install) if h["action"] == "rollback"]
    assert [(h["result"], h["backup"]) for h in rollbacks] == [("success", backup)]
    assert len(status_json(install)["displaced_databases"]) == 1
    assert install.state() == tree_old
    assert health(install) == (200, OLD)
    assert_clean_after(install)
    _no_recovery_needed(install)


def test_r01_a_rollback_whose_backup_changed_is_asked_again(
    install: Install, tmp_path: Path, operator_a: list[Terminal]
) -> None:
    """B rolls 2.3.0 back and applies it again (a new backup) while A waits: the installed version
    is the same, the backup to restore is not; A is asked again naming both, says no."""
    install.release(tmp_path)
    first = install.inv("apply-patch", "--version", NEW, "--yes")
    assert first.returncode == 0, _out(first)
    a = _on_terminal(operator_a, install, "rollback-patch", "--version", NEW)
    old_backup = a.expect(ROLLBACK_PROMPT).group(1)
    for args in (("rollback-patch", "--version", NEW, "--yes"), ("apply-patch", "--version", NEW, "--yes")):
        done = install.inv(*args)
        assert done.returncode == 0, _out(done)
    state_new = install.state()
    dump_new = install.pg_dump()

    a.send(b"y\n")
    match = a.expect(r"Roll back 2\.3\.0 to 2\.2\.0 from backup (pre-patch-\S+) \(stops services")
    new_backup = match.group(1)
    assert new_backup != old_backup
    assert f"the backup to restore is now {new_backup} (was {old_backup})" in a.screen
    a.send(b"n\n")
    assert a.wait() == 5, a.screen
    assert "Cancelled by the operator; nothing was changed." in a.screen
    assert install.state() == state_new
    assert install.pg_dump() == dump_new
    assert health(install) == (200, NEW)
    _no_recovery_needed(install)


# -- the plan changed for another reason than the version -------------------------------------


def test_r01_files_added_where_the_patch_writes_are_shown_and_asked_again(
    install: Install, tmp_path: Path, operator_a: list[Terminal]
) -> None:
    """While A waits, files appear on this host inside a folder the patch deletes (so the folder
    will stay) and at a path the patch adds (so it will replace the host's file): A is shown both
    and asked again; yes applies the new plan exactly."""

    def drop_components(source: Path) -> None:
        shutil.rmtree(source / "src/components")

    build_release(install, tmp_path, NEW, edit=drop_components)
    old, new = read_manifest(install, OLD), read_manifest(install, NEW)
    assert "src/components" not in {e["path"] for e in new["files"]}  # the folder goes with its file
    a = _on_terminal(operator_a, install, "apply-patch", "--version", NEW)
    a.expect(APPLY_PROMPT)
    (install.root / "src/components/Notes.js").write_text("// written on this host while A waited\n")
    (install.root / "apps/api/routes/audit.js").write_text("// a hand-made route, also while A waited\n")
    before = install.state()

    a.send(b"y\n")
    a.expect(NEW_PLAN_PROMPT)
    assert "while this run waited at its prompt" in a.screen
    assert "inside folders the patch deletes or replaces" in a.screen and "src/components/Notes.js" in a.screen
    assert "the files the patch adds: no longer apps/api/routes/audit.js" in a.screen
    assert "the files the patch changes: now also apps/api/routes/audit.js" in a.screen
    a.send(b"y\n")
    assert a.wait() == 0, a.screen
    assert a.prompts("Apply 2.3.0 now") == 2
    # exactly new, with the host's file (and so its folder) kept, as the new plan said
    status = assert_clean_after(install)
    assert status["installed_version"] == NEW
    expected = expected_tree_after_apply(before, old, new)
    expected["src/components"] = before["src/components"]
    assert install.state() == expected
    assert health(install) == (200, NEW)
    _no_recovery_needed(install)


def test_r01_a_patch_folder_rebuilt_while_waiting_is_verified_again_and_asked_again(
    install: Install, tmp_path: Path, operator_a: list[Terminal]
) -> None:
    install.release(tmp_path)
    tree_old = install.state()
    dump_old = install.pg_dump()
    a = _on_terminal(operator_a, install, "apply-patch", "--version", NEW)
    a.expect(APPLY_PROMPT)

    def edit(source: Path) -> None:
        (source / "src/main.js").write_text((source / "src/main.js").read_text() + "// rebuilt\n")

    build_release(install, tmp_path / "rebuild", NEW, edit=edit)
    a.send(b"y\n")
    a.expect(NEW_PLAN_PROMPT)
    assert "was rebuilt or replaced on disk (archive sha256" in a.screen
    assert "the patch now places other content in src/main.js" in a.screen
    a.send(b"n\n")
    assert a.wait() == 5, a.screen
    assert "Cancelled by the operator; nothing was changed." in a.screen
    assert_exactly_old(install, tree_old, dump_old)


def test_r01_nothing_changed_is_asked_once_even_if_the_patch_folder_was_copied_again(
    install: Install, tmp_path: Path, operator_a: list[Terminal]
) -> None:
    """The same patch copied again (new inodes and times, the same bytes) is verified again and is
    no change: A is asked once and the apply goes on."""
    folder = install.release(tmp_path)
    before = install.state()
    old, new = read_manifest(install, OLD), read_manifest(install, NEW)
    a = _on_terminal(operator_a, install, "apply-patch", "--version", NEW)
    a.expect(APPLY_PROMPT)
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    shutil.rmtree(folder)
    shutil.copytree(copy, folder)

    a.send(b"y\n")
    assert a.wait() == 0, a.screen
    assert a.prompts("Apply 2.3.0 now") == 1
    assert "changed on disk: verifying it again" in a.screen
    assert_exactly_new(install, before, old, new)


# -- answers that mean one thing ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "how"), [(CTRL_C, "interrupted (Ctrl+C)"), (CTRL_D, "the input ended (Ctrl+D or a closed stdin)")]
)
def test_ctrl_c_or_eof_at_the_apply_prompt_is_not_confirmed_and_changes_nothing(
    install: Install, tmp_path: Path, operator_a: list[Terminal], key: bytes, how: str
) -> None:
    install.release(tmp_path)
    tree_old = install.state()
    dump_old = install.pg_dump()
    a = _on_terminal(operator_a, install, "apply-patch", "--version", NEW)
    a.expect(APPLY_PROMPT)
    a.send(key)
    assert a.wait(60) == 5, a.screen
    assert f"Not confirmed: {how} at the prompt; nothing was changed." in a.screen
    assert "Traceback" not in a.screen and "apply failed" not in a.screen.lower()
    assert_exactly_old(install, tree_old, dump_old)
    assert not [h for h in history(install) if h.get("to_version") == NEW]


def test_ctrl_c_at_the_rollback_prompt_is_not_confirmed_and_changes_nothing(
    install: Install, operator_a: list[Terminal]
) -> None:
    tree_old = install.state()
    dump_old = install.pg_dump()
    a = _on_terminal(operator_a, install, "rollback-patch")
    a.expect(r"Roll back 2\.2\.0 .*from backup")
    a.send(CTRL_C)
    assert a.wait(60) == 5, a.screen
    assert "Not confirmed: interrupted (Ctrl+C) at the prompt; nothing was changed." in a.screen
    assert "Traceback" not in a.screen
    assert_exactly_old(install, tree_old, dump_old)


@pytest.mark.parametrize("task", ["apply-patch", "deploy"])
@pytest.mark.parametrize("given", [(), ("--version", ""), ("--version", "  ")])
def test_a_task_without_its_version_fails_with_one_line_naming_version(
    install: Install, task: str, given: tuple[str, ...]
) -> None:
    """apply-patch and deploy have no default version (verify-patch and create-patch read VERSION,
    rollback-patch rolls back the installed one)."""
    where = ("--host", "nobody@127.0.0.1:9") if task == "deploy" else ()  # never reached: refused first
    done = install.inv(task, *where, *given, "--yes")
    assert done.returncode == 1, _out(done)
    error, exit_line = done.stderr.strip().splitlines()  # one line of error (no hint), then the code
    assert "--version X.Y.Z" in error and f"make {task} VERSION=X.Y.Z" in error
    assert exit_line.startswith("patchflow: exit 1 ")
    assert "nothing to do" not in done.stdout


def test_history_records_name_the_run_that_wrote_them(install: Install, tmp_path: Path) -> None:
    install.release(tmp_path)
    done = install.inv("apply-patch", "--version", NEW, "--yes")
    assert done.returncode == 0, _out(done)
    record = history(install)[-1]
    assert isinstance(record["pid"], int) and record["pid"] > 0
    assert record["finished_at"] >= record["started_at"]
    assert json.loads(json.dumps(record))["user"]


# -- neighbours: a run interrupted meanwhile, a newer version, --yes ---------------------------


def test_r01_an_apply_interrupted_while_a_waits_is_not_recovered_without_asking(
    install: Install, tmp_path: Path, operator_a: list[Terminal]
) -> None:
    """B's apply is killed (SIGKILL at its switch) while A waits: A did not agree to finish or undo
    another run; it is asked, then the plan made after the recovery is the one it confirmed.
    (Without --break-lock A is refused by the stale lock B left, exit 3; A passes it here, as the
    hint of that refusal says, to reach the journal.)"""
    install.release(tmp_path)
    before = install.state()
    old, new = read_manifest(install, OLD), read_manifest(install, NEW)
    a = _on_terminal(operator_a, install, "apply-patch", "--version", NEW, "--break-lock")
    a.expect(APPLY_PROMPT)
    b = install.inv("apply-patch", "--version", NEW, "--yes", env={"PATCHFLOW_TEST_KILL_AT": "switch"})
    assert b.returncode == -9, _out(b)
    assert status_json(install)["interrupted"] is not None

    a.send(b"y\n")
    a.expect(r"Finish or undo the interrupted apply of 2\.3\.0 first \(then the plan of 2\.3\.0 is made again")
    assert "was interrupted and must be finished or undone first (last step backup)" in a.screen
    a.send(b"y\n")
    assert a.wait() == 0, a.screen
    assert "the interrupted apply of 2.3.0 was undone" in a.screen
    assert a.prompts("Apply 2.3.0 now") == 1  # the plan after the recovery is the one confirmed
    assert_exactly_new(install, before, old, new)


def test_r01_a_newer_version_installed_while_a_waits_is_not_downgraded(
    install: Install, tmp_path: Path, operator_a: list[Terminal]
) -> None:
    install.release(tmp_path)
    install.release(tmp_path, "2.4.0")
    a = _on_terminal(operator_a, install, "apply-patch", "--version", NEW)
    a.expect(APPLY_PROMPT)
    b = install.inv("apply-patch", "--version", "2.4.0", "--yes")
    assert b.returncode == 0, _out(b)
    state, dump = install.state(), install.pg_dump()

    a.send(b"y\n")
    assert a.wait() == 5, a.screen
    refusal = _single_line_on(a.screen, "was refused")
    assert "2.4.0 was installed by another run (apply 2.2.0 -> 2.4.0 by" in refusal
    assert "refusing to downgrade: 2.4.0 is installed and 2.3.0 is older" in refusal
    assert "--allow-downgrade" in a.screen and "Nothing was changed." in a.screen
    assert install.state() == state and install.pg_dump() == dump
    assert health(install) == (200, "2.4.0")
    _no_recovery_needed(install)


def test_r01_with_yes_a_changed_plan_is_refused_with_its_reason(install: Install, tmp_path: Path) -> None:
    """With --yes nobody sees a new plan, so a plan that changed between the plan and the lock is
    refused. The change is made from the confirm callback, the point where the CLI's prompt (or,
    with --yes, nothing) runs: the same window the pty tests open with a real prompt."""
    from patchflow.config import load_settings
    from patchflow.context import Context
    from patchflow.errors import PlanChanged
    from patchflow.lifecycle.apply import ApplyOptions
    from patchflow.lifecycle.planning import Plan
    from patchflow.operations import apply_patch
    from patchflow.tasks.plan_view import ask_again
    from patchflow.version import parse_version

    install.release(tmp_path)
    tree_old = install.state()
    dump_old = install.pg_dump()

    def operator_b_meanwhile(plan: Plan) -> None:
        (install.root / "src/main.js").write_text("// edited on the server\n")

    ctx = Context.create(load_settings(install.root))
    with pytest.raises(PlanChanged) as caught:
        apply_patch(ctx, parse_version(NEW), ApplyOptions(), confirm=operator_b_meanwhile, reconfirm=ask_again(True))
    assert caught.value.exit_code == 5
    assert caught.value.message == (
        "The apply of 2.3.0 was refused: what it would do changed after this run made its plan: files the patch "
        "replaces or deletes were changed on this host: src/main.js."
    )
    tree_old["src/main.js"] = install.state()["src/main.js"]  # the operator's own edit, nothing else
    assert_exactly_old(install, tree_old, dump_old)
