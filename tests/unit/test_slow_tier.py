"""The slow tier's list (tests/slow_tier.txt): every entry names an existing test file, once, and
matches the way tests/support/tiers.py says (a whole test, or one parameter of it)."""

from __future__ import annotations

from pathlib import Path

from support.tiers import SLOW_TIER, in_entry, slow_tier_entries

TESTS = Path(__file__).resolve().parents[1]


def test_every_entry_names_an_existing_file_once() -> None:
    entries = slow_tier_entries()
    assert entries, "the list is read"
    assert len(entries) == len(set(entries)), "an entry is listed twice"
    for entry in entries:
        path, sep, name = entry.partition("::")
        assert sep and name.startswith("test_"), entry
        assert (TESTS.parent / path).is_file(), entry


def test_an_entry_without_an_id_takes_every_parameter_and_one_with_an_id_only_its_own(tmp_path: Path) -> None:
    listed = tmp_path / "tier.txt"
    listed.write_text("# a comment\n\ntests/a.py::test_x\ntests/a.py::test_y[file#2]\n", encoding="utf-8")
    assert slow_tier_entries(listed) == ["tests/a.py::test_x", "tests/a.py::test_y[file#2]"]
    assert in_entry("tests/a.py::test_x", "tests/a.py::test_x")
    assert in_entry("tests/a.py::test_x[SIGINT]", "tests/a.py::test_x")
    assert in_entry("tests/a.py::test_y[file#2]", "tests/a.py::test_y[file#2]")
    assert not in_entry("tests/a.py::test_y[file#3]", "tests/a.py::test_y[file#2]")
    assert not in_entry("tests/a.py::test_x_more", "tests/a.py::test_x")
    assert SLOW_TIER.name == "slow_tier.txt"
