"""State files are inputs (issue 22): a history line cut by a crash does not take the next record
with it, and a journal from a newer patchflow (a higher format, or steps this version does not know)
is refused with a message instead of being finished or undone by guesswork. Real files in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from patchflow.errors import PatchflowError
from patchflow.lifecycle.journal import JOURNAL_FORMAT, Journal, append_history, append_line, read_history
from patchflow.lifecycle.recovery import _specs


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
    journal.path.write_text(json.dumps(data))
    return journal.path


def test_a_journal_records_its_format_and_the_patchflow_that_wrote_it(tmp_path: Path) -> None:
    from patchflow import __version__

    data = json.loads(_journal(tmp_path).read_text())
    assert data["format"] == JOURNAL_FORMAT and data["written_by"] == __version__
    older = _journal(tmp_path)
    raw = json.loads(older.read_text())
    del raw["format"], raw["written_by"]  # a journal of patchflow before formats
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
