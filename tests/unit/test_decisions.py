"""patchflow.lifecycle.decisions: what counts as a changed decision under the lock, and how it is worded
(issue 19, field failure R01). The races themselves run on a pseudo-terminal in
tests/integration/test_two_operators.py; here each comparison gets its table of cases."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from patchflow.errors import ConfirmationRefused, PlanChanged
from patchflow.lifecycle.decisions import (
    Change,
    folder_stamp,
    journal_change,
    plan_differences,
    refuse_changes,
    runs_since,
    version_change,
)
from patchflow.lifecycle.journal import Journal
from patchflow.lifecycle.planning import Plan
from patchflow.manifest import Entry, TreeDiff
from patchflow.release_settings import SettingChange


def _file(path: str, sha: str = "a" * 64, mode: int = 0o644) -> Entry:
    return Entry(path, "file", mode, 10, sha)


def _dir(path: str) -> Entry:
    return Entry(path, "dir", 0o755)


def _plan(**changes: Any) -> Plan:
    """2.2.0 -> 2.3.0: adds routes/audit.js, changes src/main.js, deletes the folder
    src/components with its file; one pending migration; api and worker."""
    new_entries = {"routes/audit.js": _file("routes/audit.js", "b" * 64), "src/main.js": _file("src/main.js", "c" * 64)}
    old_entries = {
        "src/main.js": _file("src/main.js", "d" * 64),
        "src/components": _dir("src/components"),
        "src/components/Header.js": _file("src/components/Header.js"),
    }
    plan = Plan(
        version="2.3.0",
        from_version="2.2.0",
        diff=TreeDiff(["routes/audit.js"], ["src/main.js"], ["src/components", "src/components/Header.js"]),
        drift=[],
        migrations=["m1", "m2"],
        pending_migrations=["m2"],
        migration_runner="builtin",
        services=["api", "worker"],
        database="postgresql://db/app",
        restore_problems=[],
        needs=[],
        health_proof="",
        unowned=["uploads/photo.jpg"],
        new_entries=new_entries,
        old_entries=old_entries,
    )
    return replace(plan, **changes)


def test_the_same_plan_made_again_is_no_change() -> None:
    assert plan_differences(_plan(), _plan()) == []


def test_what_does_not_decide_anything_is_no_change() -> None:
    """A host file added where the patch does not delete or replace a folder, other space needs,
    warnings, another health proof: the apply does the same."""
    again = _plan(unowned=["uploads/photo.jpg", "uploads/new.jpg"], warnings=["x"], health_proof="ports")
    assert plan_differences(_plan(), again) == []


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"diff": TreeDiff([], ["routes/audit.js", "src/main.js"], ["src/components", "src/components/Header.js"])},
            [
                "the files the patch adds: no longer routes/audit.js",
                "the files the patch changes: now also routes/audit.js",
            ],
        ),
        (
            {"diff": TreeDiff(["routes/audit.js"], ["src/main.js"], [])},
            ["the files the patch deletes: no longer src/components, src/components/Header.js"],
        ),
        ({"pending_migrations": []}, ["pending migrations: m2 -> none"]),
        ({"pending_migrations": None}, ["pending migrations: m2 -> none"]),
        ({"migrations": ["m1", "m2", "m3"]}, ["the patch's migrations: m3 differ"]),
        ({"services": ["api"]}, ["services stopped and replaced: api, worker -> api"]),
        ({"services_added": ["search"]}, ["compose services the patch adds: none -> search"]),
        ({"services_removed": ["legacy"]}, ["compose services the patch removes: none -> legacy"]),
        ({"delta": "a delta on 2.1.0: ..."}, ["the patch's delta base: a delta on 2.1.0: ..."]),
        ({"database": "postgresql://db/other"}, ["database: postgresql://db/app -> postgresql://db/other"]),
        (
            {"settings_changes": [SettingChange("app_services", "release", "api", "api,worker", "", "api,worker")]},
            ["patchflow settings the release changes: app_services: api -> api,worker (release pyproject.toml)"],
        ),
    ],
)
def test_each_decision_that_differs_is_one_reason(changes: dict[str, Any], expected: list[str]) -> None:
    assert plan_differences(_plan(), _plan(**changes)) == expected


def test_a_rebuilt_patch_places_other_content() -> None:
    before = _plan()
    after = _plan(new_entries={**before.new_entries, "src/main.js": _file("src/main.js", "e" * 64)})
    assert plan_differences(before, after) == ["the patch now places other content in src/main.js"]


def test_a_file_the_patch_replaces_edited_on_the_host_meanwhile() -> None:
    before = _plan()
    after = _plan(old_entries={**before.old_entries, "src/main.js": _file("src/main.js", "f" * 64, 0o600)})
    assert plan_differences(before, after) == [
        "files the patch replaces or deletes were changed on this host: src/main.js"
    ]


def test_host_files_added_inside_a_folder_the_patch_deletes() -> None:
    after = _plan(unowned=["uploads/photo.jpg", "src/components/Notes.js", "src/components/deep/x.js"])
    (reason,) = plan_differences(_plan(), after)
    assert reason.startswith("files were added on this host inside folders the patch deletes or replaces")
    assert reason.endswith(": src/components/Notes.js, src/components/deep/x.js")


def test_many_paths_are_counted_not_listed() -> None:
    added = [f"f{i}.js" for i in range(12)]
    after = _plan(diff=TreeDiff(["routes/audit.js", *added], ["src/main.js"], _plan().diff.deleted))
    (reason,) = plan_differences(_plan(), after)
    assert reason == "the files the patch adds: now also f0.js, f1.js, f10.js, f11.js, f2.js and 7 more"


def _history(tmp_path: Path, *records: dict[str, Any]) -> Path:
    path = tmp_path / "history.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


APPLY = {
    "action": "apply",
    "from_version": "2.2.0",
    "to_version": "2.3.0",
    "result": "success",
    "user": "ops",
    "host": "web1",
    "pid": 4242,
    "started_at": "2025-03-01T14:00:00.000000Z",
    "finished_at": "2025-03-01T14:02:11.000000Z",
}


def test_the_run_that_changed_the_version_is_named_from_the_history(tmp_path: Path) -> None:
    history = _history(tmp_path, APPLY)
    reason = version_change(history, "2025-03-01T14:01:00.000000Z", "2.2.0", "2.3.0")
    assert reason == (
        "2.3.0 was installed by another run (apply 2.2.0 -> 2.3.0 by ops@web1, pid 4242, finished 2025-03-01T14:02:11Z)"
    )
    rollback = {**APPLY, "action": "rollback", "from_version": "2.3.0", "to_version": "2.2.0"}
    reason = version_change(_history(tmp_path, rollback), "2025-03-01T14:01:00.000000Z", "2.3.0", "2.2.0")
    assert reason.startswith("2.3.0 was rolled back to 2.2.0 by another run (rollback 2.3.0 -> 2.2.0 by ops@web1")


def test_a_version_changed_by_no_recorded_run_says_so(tmp_path: Path) -> None:
    history = _history(tmp_path, APPLY)  # finished before this run planned: not the one
    reason = version_change(history, "2025-03-01T15:00:00.000000Z", "2.2.0", "2.3.0")
    assert reason == (
        "the installed version changed from 2.2.0 to 2.3.0 and no run recorded it in the history "
        "(VERSION edited by hand?)"
    )
    assert version_change(tmp_path / "missing.jsonl", "x", None, "2.3.0").startswith(
        "the installed version changed from none to 2.3.0"
    )


def test_older_records_without_finished_at_count_by_their_start(tmp_path: Path) -> None:
    old = {k: v for k, v in APPLY.items() if k not in ("finished_at", "pid")}
    history = _history(tmp_path, old, {**APPLY, "action": "prune"})
    assert [r["action"] for r in runs_since(history, "2025-03-01T13:00:00.000000Z")] == ["apply"]
    reason = version_change(history, "2025-03-01T13:00:00.000000Z", "2.2.0", "2.3.0")
    assert "by ops@web1, finished 2025-03-01T14:00:00Z)" in reason


def test_an_interrupted_run_that_appeared_or_went_away(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.json", "apply", "2.4.0", "2.3.0", pid=77, host="web2")
    journal.steps.append({"name": "switch", "state": "started"})
    assert journal_change(journal, journal, tmp_path / "h.jsonl", "") == ""
    appeared = journal_change(None, journal, tmp_path / "h.jsonl", "")
    assert appeared.startswith("an apply of 2.4.0 (pid 77 on web2, started ")
    assert appeared.endswith("was interrupted and must be finished or undone first (last step switch)")
    history = _history(tmp_path, {**APPLY, "action": "rollback", "finished_at": "2099-01-01T00:00:00.000000Z"})
    gone = journal_change(journal, None, history, "2025-01-01T00:00:00.000000Z")
    assert gone.startswith(
        "the interrupted apply of 2.4.0 this run was to finish was finished or undone by another run"
    )


def test_a_change_is_refused_with_exit_5_and_its_reasons() -> None:
    change = Change("apply of 2.3.0", ["a", "b"], question="Apply?")
    error = change.refusal("while this run waited at its prompt")
    assert isinstance(error, PlanChanged) and isinstance(error, ConfirmationRefused)
    assert error.exit_code == 5
    assert (
        error.message
        == "The apply of 2.3.0 was refused: what it would do changed while this run waited at its prompt: a; b."
    )
    assert error.hint.endswith("Nothing was changed.")
    with pytest.raises(PlanChanged):
        refuse_changes(change)
    refuse_changes(Change("apply of 2.3.0", ["a"], question="Apply?", provisional=True))  # goes on
    with pytest.raises(PlanChanged):  # provisional but nothing that could be agreed to
        refuse_changes(Change("apply of 2.3.0", ["a"], provisional=True))


def test_the_patch_folder_stamp_changes_when_it_is_copied_again_not_when_it_is_read(tmp_path: Path) -> None:
    folder = tmp_path / "v2.3.0"
    folder.mkdir()
    (folder / "manifest.json").write_text("{}")
    (folder / "patch-v2.3.0.tar.gz").write_bytes(b"x" * 100)
    first = folder_stamp(folder)
    (folder / "manifest.json").read_bytes()
    assert folder_stamp(folder) == first
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    shutil.rmtree(folder)
    shutil.copytree(copy, folder)
    assert folder_stamp(folder) != first
    assert folder_stamp(tmp_path / "missing") == ()
