"""Prisma's checksum rule and row states (patchflow.migration_state), without a database: the
rules are pure functions over rows and file bytes (the database side is in
tests/integration/test_migration_states.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import pytest

from patchflow.errors import ConfigError
from patchflow.migration_state import Row, check_resolve_flags, check_rows, checksum_matches, prisma_checksum
from patchflow.migrations import Migration


def test_prisma_checksum_is_the_zero_padded_sha256_hex() -> None:
    # prisma-engines checksum.rs: format_checksum_does_not_strip_zeros
    assert prisma_checksum(b"hello") == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"


@pytest.mark.parametrize(
    "scripts",
    [
        (b"ab\ncd\nef\ngh\rab", b"ab\r\ncd\r\nef\r\ngh\rab"),
        (b"ab\ncd\nef\ngh\rab\n", b"ab\r\ncd\r\nef\r\ngh\rab\r\n"),
    ],
)
def test_checksums_match_across_line_endings_as_prisma_s_do(scripts: tuple[bytes, bytes]) -> None:
    for script in scripts:
        for other in scripts:
            assert checksum_matches(script, prisma_checksum(other))


def test_a_changed_script_does_not_match() -> None:
    assert not checksum_matches(b"abc", prisma_checksum(b"abcd"))
    assert not checksum_matches(b"abc\n", prisma_checksum(b"abc"))


def test_an_old_unpadded_checksum_matches_its_script() -> None:
    # prisma-engines issue 1887: old engines wrote each byte without its leading zero
    script = next(s for s in (f"-- {n}\n".encode() for n in range(100)) if min(hashlib.sha256(s).digest()) < 16)
    unpadded = "".join(f"{b:x}" for b in hashlib.sha256(script).digest())
    assert len(unpadded) < 64
    assert checksum_matches(script, unpadded)
    assert not checksum_matches(script + b" ", unpadded)


def _row(name: str, checksum: str, *, finished: bool = True, rolled_back: bool = False) -> Row:
    return Row(f"id-{name}-{checksum}", name, checksum, "2025-01-01 00:00:00+00", finished, rolled_back)


def _loader(contents: Mapping[str, bytes]) -> tuple[list[str], object]:
    asked: list[str] = []

    def load(migrations: Sequence[Migration]) -> dict[str, bytes]:
        asked.extend(m.name for m in migrations)
        return {m.path: contents[m.path] for m in migrations if m.path in contents}

    return asked, load


def test_rows_are_judged_as_prisma_judges_them() -> None:
    init = Migration("1_init", "prisma/migrations/1_init/migration.sql", prisma_checksum(b"init\r\n"))
    users = Migration("2_users", "prisma/migrations/2_users/migration.sql", prisma_checksum(b"users v2\n"))
    later = Migration("3_later", "prisma/migrations/3_later/migration.sql", prisma_checksum(b"later\n"))
    rows = [
        _row("1_init", prisma_checksum(b"init\n")),  # recorded on Linux, packed with CRLF: the same
        _row("2_users", prisma_checksum(b"users v1\n")),  # edited since it ran
        _row("3_later", "x", finished=False),  # failed
        _row("0_hotfix", prisma_checksum(b"hotfix\n")),  # applied, not in the patch
        _row("0_undone", "y", finished=True, rolled_back=True),  # rolled back: not applied
    ]
    asked, load = _loader({init.path: b"init\r\n", users.path: b"users v2\n"})
    states = check_rows(rows, [init, users, later], load)  # type: ignore[arg-type]
    assert [r.name for r in states.failed] == ["3_later"]
    assert [(e.name, e.recorded, e.actual) for e in states.edited] == [
        ("2_users", prisma_checksum(b"users v1\n"), users.checksum)
    ]
    assert states.absent == ["0_hotfix"]
    assert asked == ["1_init", "2_users"], "only files whose sha256 differs are read"


def test_a_file_that_cannot_be_read_is_judged_by_its_sha256() -> None:
    init = Migration("1_init", "prisma/migrations/1_init/migration.sql", prisma_checksum(b"init\r\n"))
    _, load = _loader({})
    states = check_rows([_row("1_init", prisma_checksum(b"init\n"))], [init], load)  # type: ignore[arg-type]
    assert [e.name for e in states.edited] == ["1_init"]


def test_a_migration_applied_twice_matches_any_of_its_applied_rows() -> None:
    init = Migration("1_init", "prisma/migrations/1_init/migration.sql", prisma_checksum(b"new\n"))
    rows = [_row("1_init", prisma_checksum(b"old\n")), _row("1_init", prisma_checksum(b"new\n"))]
    _, load = _loader({})
    assert check_rows(rows, [init], load).edited == []  # type: ignore[arg-type]


@pytest.mark.parametrize("flags", [(False, False), (True, True)])
def test_resolve_needs_exactly_one_flag(flags: tuple[bool, bool]) -> None:
    with pytest.raises(ConfigError, match="exactly one of --applied and --rolled-back"):
        check_resolve_flags(*flags)
    assert check_resolve_flags(True, False) == "applied"
    assert check_resolve_flags(False, True) == "rolled-back"


def test_resolve_migration_refuses_bad_flags_before_reading_anything(capsys: pytest.CaptureFixture[str]) -> None:
    from invoke.context import Context
    from invoke.exceptions import Exit

    from patchflow.tasks.migrations import resolve_migration

    for kwargs, expected in (
        ({"name": " ", "applied": True}, "resolve-migration needs --name"),
        ({"name": "20250101120000_init"}, "exactly one of --applied and --rolled-back"),
        ({"name": "20250101120000_init", "applied": True, "rolled_back": True}, "exactly one of --applied and"),
    ):
        with pytest.raises(Exit) as refused:  # the task's exit 1, the paragraph on stderr
            resolve_migration(Context(), root="/nonexistent/checkout", **kwargs)
        assert refused.value.code == 1
        assert expected in " ".join(capsys.readouterr().err.split())
