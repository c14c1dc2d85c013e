"""Backup naming, ordering and retention (C23: time zones, DST, same-second collisions)."""

from __future__ import annotations

import re
import stat
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from patchflow.backup import Backup, latest_backup_for, list_backups, new_backup, prune_backups
from patchflow.config import load_settings
from patchflow.paths import ProjectPaths
from patchflow.version import parse_version

NAME = re.compile(r"^pre-patch-v(?P<version>[0-9.]+)_(?P<stamp>\d{8}T\d{6}Z)_[0-9a-f]{6}$")


@pytest.fixture
def paths(tmp_path: Path) -> ProjectPaths:
    return ProjectPaths.from_settings(load_settings(tmp_path, environ={}))


@pytest.fixture
def set_tz(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Switch the process time zone (TZ + tzset), restored after the test."""

    def switch(zone: str) -> None:
        monkeypatch.setenv("TZ", zone)
        time.tzset()

    yield switch
    monkeypatch.undo()
    time.tzset()


def take(paths: ProjectPaths, version: str, now: datetime) -> Backup:
    backup = new_backup(paths, parse_version(version), "2.2.0", old_entries=[], new_paths=[], now=now)
    backup.data["complete"] = True
    backup.save()
    return backup


def stamp(backup: Backup) -> str:
    match = NAME.match(backup.name)
    assert match, backup.name
    return match["stamp"]


def test_dst_fall_back_gives_two_distinct_utc_names(paths: ProjectPaths, set_tz: Callable[[str], None]) -> None:
    set_tz("America/New_York")
    first = take(paths, "2.3.0", datetime(2025, 11, 2, 1, 30, fold=0))  # 01:30 EDT
    (first.folder / "marker").write_text("first", encoding="utf-8")
    second = take(paths, "2.3.0", datetime(2025, 11, 2, 1, 30, fold=1))  # 01:30 EST, an hour later
    assert stamp(first) == "20251102T053000Z"
    assert stamp(second) == "20251102T063000Z"
    assert first.data["created_at"] == "2025-11-02T05:30:00.000000Z"
    assert (first.folder / "marker").read_text(encoding="utf-8") == "first"
    latest = latest_backup_for(paths, parse_version("2.3.0"))
    assert latest is not None and latest.name == second.name


def test_aware_datetimes_across_the_fall_back(paths: ProjectPaths) -> None:
    zone = ZoneInfo("America/New_York")
    first = take(paths, "2.3.0", datetime(2025, 11, 2, 1, 30, tzinfo=zone))
    second = take(paths, "2.3.0", datetime(2025, 11, 2, 1, 30, fold=1, tzinfo=zone))
    assert (stamp(first), stamp(second)) == ("20251102T053000Z", "20251102T063000Z")
    assert [b.name for b in list_backups(paths)] == [first.name, second.name]


def test_two_backups_in_the_same_second(paths: ProjectPaths) -> None:
    moment = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
    first = take(paths, "2.3.0", moment)
    (first.folder / "marker").write_text("first", encoding="utf-8")
    second = take(paths, "2.3.0", moment)
    assert first.name != second.name
    assert stamp(first) == stamp(second) == "20250601T120000Z"
    assert second.data["sequence"] == first.data["sequence"] + 1
    assert (first.folder / "marker").read_text(encoding="utf-8") == "first"
    assert len(list_backups(paths)) == 2
    latest = latest_backup_for(paths, parse_version("2.3.0"))
    assert latest is not None and latest.name == second.name


def test_latest_follows_utc_not_local_clock_strings(paths: ProjectPaths, set_tz: Callable[[str], None]) -> None:
    set_tz("Asia/Tokyo")
    tokyo = take(paths, "2.3.0", datetime(2025, 3, 1, 21, 0))  # 12:00Z, local clock reads 21:00
    set_tz("UTC")
    utc = take(paths, "2.3.0", datetime(2025, 3, 1, 12, 1))  # 12:01Z, a minute later
    assert (stamp(tokyo), stamp(utc)) == ("20250301T120000Z", "20250301T120100Z")
    latest = latest_backup_for(paths, parse_version("2.3.0"))
    assert latest is not None and latest.name == utc.name
    assert [b.name for b in list_backups(paths)] == [tokyo.name, utc.name]


def test_latest_is_per_version(paths: ProjectPaths) -> None:
    base = datetime(2025, 6, 1, tzinfo=UTC)
    mine = take(paths, "2.3.0", base)
    take(paths, "2.4.0", base + timedelta(hours=1))
    latest = latest_backup_for(paths, parse_version("2.3.0"))
    assert latest is not None and latest.name == mine.name
    assert latest_backup_for(paths, parse_version("9.9.9")) is None


def test_incomplete_backups_are_not_latest(paths: ProjectPaths) -> None:
    base = datetime(2025, 6, 1, tzinfo=UTC)
    complete = take(paths, "2.3.0", base)
    new_backup(paths, parse_version("2.3.0"), "2.2.0", old_entries=[], new_paths=[], now=base + timedelta(minutes=5))
    latest = latest_backup_for(paths, parse_version("2.3.0"))
    assert latest is not None and latest.name == complete.name
    assert len(list_backups(paths, include_incomplete=True)) == 2


def test_backup_folder_and_json_are_private(paths: ProjectPaths) -> None:
    backup = take(paths, "2.3.0", datetime(2025, 6, 1, tzinfo=UTC))
    assert stat.S_IMODE(backup.folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((backup.folder / "backup.json").stat().st_mode) == 0o600
    assert backup.data["version"] == "2.3.0"
    assert backup.data["restores_version"] == "2.2.0"


NOW = datetime(2025, 6, 30, 12, 0, tzinfo=UTC)
AGES = {  # name -> (version, days old)
    "b0": ("2.2.0", 40),
    "b1": ("2.1.0", 30),
    "b2": ("2.2.0", 20),
    "b3": ("2.1.0", 15),
    "b4": ("2.3.0", 10),
    "b5": ("2.3.0", 3),
    "b6": ("2.4.0", 1),
}


@pytest.fixture
def aged(paths: ProjectPaths) -> dict[str, Backup]:
    return {label: take(paths, version, NOW - timedelta(days=days)) for label, (version, days) in AGES.items()}


def _left(paths: ProjectPaths, aged: dict[str, Backup]) -> set[str]:
    names = {b.name for b in list_backups(paths)}
    return {label for label, backup in aged.items() if backup.name in names}


def test_prune_keeps_young_newest_and_installed(paths: ProjectPaths, aged: dict[str, Backup]) -> None:
    keep = {aged["b2"].name}  # the backup the installed version's apply recorded
    removed = prune_backups(paths, keep_days=7, keep_last=1, keep=keep, now=NOW.timestamp())
    assert {b.name for b in removed} == {aged[k].name for k in ("b0", "b1", "b3", "b4")}
    assert _left(paths, aged) == {"b2", "b5", "b6"}
    assert not aged["b0"].folder.exists()


def test_prune_keeps_the_newest_n(paths: ProjectPaths, aged: dict[str, Backup]) -> None:
    prune_backups(paths, keep_days=0, keep_last=3, keep=set(), now=NOW.timestamp())
    assert _left(paths, aged) == {"b4", "b5", "b6"}


def test_prune_never_removes_a_kept_backup(paths: ProjectPaths, aged: dict[str, Backup]) -> None:
    prune_backups(paths, keep_days=0, keep_last=0, keep={aged["b3"].name}, now=NOW.timestamp())
    assert _left(paths, aged) == {"b3"}


def test_prune_dry_run_removes_nothing(paths: ProjectPaths, aged: dict[str, Backup]) -> None:
    removed = prune_backups(paths, keep_days=0, keep_last=0, keep=set(), now=NOW.timestamp(), dry_run=True)
    assert len(removed) == len(AGES)
    assert _left(paths, aged) == set(AGES)


def test_order_follows_the_sequence_when_the_clock_stepped_back(paths: ProjectPaths) -> None:
    """Fault 8.3: backup A taken with the clock 3 hours ahead, backup B later with the clock
    corrected: B is the newest (sequence), and keeping the newest one keeps B."""
    real = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    ahead = take(paths, "2.3.0", real + timedelta(hours=3))
    later = take(paths, "2.3.0", real + timedelta(minutes=10))
    assert later.created_at < ahead.created_at
    assert later.sequence == ahead.sequence + 1
    newest = latest_backup_for(paths, parse_version("2.3.0"))
    assert newest is not None and newest.name == later.name
    assert [b.name for b in list_backups(paths)] == [ahead.name, later.name]
    removed = prune_backups(paths, keep_days=0, keep_last=1, keep=set(), now=(real + timedelta(days=30)).timestamp())
    assert [b.name for b in removed] == [ahead.name]


def test_sequence_never_goes_back_when_the_newest_backup_is_removed(paths: ProjectPaths) -> None:
    first = take(paths, "2.3.0", datetime(2025, 6, 1, tzinfo=UTC))
    second = take(paths, "2.3.0", datetime(2025, 6, 2, tzinfo=UTC))
    import shutil

    shutil.rmtree(second.folder)
    third = take(paths, "2.4.0", datetime(2025, 6, 3, tzinfo=UTC))
    assert third.sequence == second.sequence + 1 > first.sequence
