"""State files are inputs (issue 22): a history line cut by a crash does not take the next record
with it, a journal from a newer patchflow (a higher format, or steps this version does not know)
is refused with a message instead of being finished or undone by guesswork, and every sealed record
(patchflow/state_files.py) that changed after it was written is refused or left out, named. Real
files in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from patchflow.errors import PatchflowError
from patchflow.lifecycle.journal import (
    JOURNAL_FORMAT,
    Journal,
    append_history,
    append_line,
    history_problems,
    read_history,
)
from patchflow.lifecycle.recovery import _specs
from patchflow.state_files import (
    STATE_FORMAT,
    StateFileError,
    read_sealed,
    record_checksum,
    seal,
    seal_problem,
    unsealed,
)


def test_an_append_after_a_torn_line_starts_on_a_new_line_and_both_whole_records_are_read(tmp_path: Path) -> None:
    history = tmp_path / "history.jsonl"
    append_history(history, {"action": "apply", "run_id": "a1", "result": "success", "to_version": "2.2.0"})
    with open(history, "ab") as handle:  # a crash in the middle of the next append
        handle.write(b'{"action": "apply", "run_id": "b2", "resu')
    append_history(history, {"action": "rollback", "run_id": "c3", "result": "success", "to_version": "2.2.0"})
    records = read_history(history)
    assert [r["run_id"] for r in records] == ["a1", "c3"], history.read_text()
    assert history.read_bytes().endswith(b"\n")
    lines = history.read_text().splitlines()
    assert lines[1] == '{"action": "apply", "run_id": "b2", "resu', "the torn line is left alone, on its own line"


def test_appends_to_a_whole_file_add_no_empty_line(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    append_line(path, "{}")
    append_line(path, "{}")
    assert path.read_text() == "{}\n{}\n"


def _journal(tmp_path: Path, **changes: object) -> Path:
    journal = Journal(tmp_path / "journal.json", "apply", "2.3.0", "2.2.0")
    journal.steps.append({"name": "lock", "state": "done", "at": "2026-12-07T21:00:00.000000Z", "phase": "forward"})
    journal.save()
    data = json.loads(journal.path.read_text())
    data.update(changes)
    data["checksum"] = record_checksum(data)  # as the (newer) patchflow that wrote it would seal it
    journal.path.write_text(json.dumps(data))
    return journal.path


def test_a_journal_records_its_format_and_the_patchflow_that_wrote_it(tmp_path: Path) -> None:
    from patchflow import __version__

    data = json.loads(_journal(tmp_path).read_text())
    assert data["format"] == JOURNAL_FORMAT and data["written_by"] == __version__
    older = _journal(tmp_path)
    raw = json.loads(older.read_text())
    del raw["format"], raw["written_by"], raw["checksum"]  # a journal of patchflow before formats
    older.write_text(json.dumps(raw))
    loaded = Journal.load(older)
    assert loaded is not None and loaded.format == 1 and loaded.written_by == ""


def test_a_journal_of_a_newer_format_is_refused_naming_who_wrote_it(tmp_path: Path) -> None:
    path = _journal(tmp_path, format=JOURNAL_FORMAT + 1, written_by="9.0.0")
    before = path.read_bytes()
    with pytest.raises(PatchflowError) as refused:
        Journal.load(path)
    assert "was written by a newer patchflow (9.0.0, journal format 2" in refused.value.message
    assert "Nothing was changed" in refused.value.message and "upgrade patchflow" in refused.value.hint
    assert path.read_bytes() == before


def test_a_journal_with_a_step_this_version_does_not_know_is_refused(tmp_path: Path) -> None:
    path = _journal(
        tmp_path,
        steps=[
            {"name": "lock", "state": "done", "at": "2026-12-07T21:00:00.000000Z", "phase": "forward"},
            {"name": "warm-cache", "state": "started", "at": "2026-12-07T21:00:01.000000Z", "phase": "forward"},
        ],
        written_by="9.0.0",
    )
    journal = Journal.load(path)
    assert journal is not None
    with pytest.raises(PatchflowError) as refused:
        _specs(journal)
    assert "records steps this patchflow does not know (warm-cache; written by 9.0.0)" in refused.value.message
    fine = Journal.load(_journal(tmp_path))
    assert fine is not None and _specs(fine)


# -- the seal (patchflow/state_files.py) --------------------------------------------------------------------------


def test_a_sealed_record_reads_back_and_any_change_fails_its_seal() -> None:
    sealed = seal({"version": "2.3.0", "files": [{"path": "a.js"}]})
    assert sealed["state_format"] == STATE_FORMAT and seal_problem(sealed) == ""
    assert unsealed(sealed) == {"version": "2.3.0", "files": [{"path": "a.js"}]}
    changed = {**sealed, "files": [{"path": "a.js"}, {"path": "uploads/photo.jpg"}]}
    assert "fails its checksum" in seal_problem(changed)
    newer = seal({**sealed, "state_format": STATE_FORMAT + 1})
    assert "written by a newer patchflow (state format 2" in seal_problem(newer)
    assert seal_problem({"version": "2.2.0"}) == "", "a record older than the seal is read as it is"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "is damaged: it is not JSON"),
        ("[1, 2]", "is damaged: it is not a JSON object"),
        (json.dumps({**seal({"version": "2.3.0"}), "version": "9.9.9"}), "may not be trusted: it fails its checksum"),
    ],
    ids=["torn", "not-an-object", "changed"],
)
def test_read_sealed_refuses_a_damaged_record_naming_the_file_and_the_remedy(
    tmp_path: Path, content: str, expected: str
) -> None:
    path = tmp_path / "installed.json"
    path.write_text(content)
    with pytest.raises(StateFileError) as refused:
        read_sealed(path, "the installed record", "Move it aside.")
    assert refused.value.message.startswith(f"The installed record {path} {expected}"), refused.value.message
    assert refused.value.hint == "Move it aside."
    assert path.read_text() == content, "nothing changed on disk"
    assert read_sealed(tmp_path / "missing.json", "x", "y") is None


def test_a_history_line_changed_after_it_was_written_is_left_out_and_named(tmp_path: Path) -> None:
    history = tmp_path / "history.jsonl"
    append_history(history, {"action": "apply", "run_id": "a1", "result": "failed", "to_version": "2.3.0"})
    append_history(history, {"action": "apply", "run_id": "b2", "result": "success", "to_version": "2.2.0"})
    lines = history.read_text().splitlines()
    forged = json.loads(lines[0])
    forged["result"] = "success"  # a hand edit (or a disk fault) that turns a failure into a success
    history.write_text(json.dumps(forged) + "\n" + lines[1] + "\n")
    assert [r["run_id"] for r in read_history(history)] == ["b2"]
    assert "checksum" not in read_history(history)[0], "records are given without their seal"
    assert history_problems(history) == [
        "history.jsonl line 1: it fails its checksum (changed after patchflow wrote it: a torn write, a disk fault, "
        "a hand edit)"
    ]


def test_a_journal_changed_after_it_was_written_is_refused_as_damaged(tmp_path: Path) -> None:
    path = _journal(tmp_path)
    data = json.loads(path.read_text())
    data["steps"] = []  # the record of what was done, emptied: recovery would skip the undo
    path.write_text(json.dumps(data))
    with pytest.raises(PatchflowError) as refused:
        Journal.load(path)
    assert "is damaged (it fails its checksum" in refused.value.message
    assert "move the journal away" in refused.value.hint


def test_a_lock_record_changed_after_it_was_written_names_no_holder(tmp_path: Path) -> None:
    from patchflow.lock import InstallLock, LockHolder

    lock = InstallLock(tmp_path / "apply.lock", tmp_path / "apply.lock.json")
    lock.acquire(action="apply", version="2.3.0")
    try:
        held = LockHolder.read(tmp_path / "apply.lock.json")
        assert held is not None and held.version == "2.3.0"
        data = json.loads((tmp_path / "apply.lock.json").read_text())
        data["pid"] = 1
        (tmp_path / "apply.lock.json").write_text(json.dumps(data))
        assert LockHolder.read(tmp_path / "apply.lock.json") is None
    finally:
        lock.release()
