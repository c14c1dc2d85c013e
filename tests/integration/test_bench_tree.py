"""The bench's generated tree is one patchflow accepts: a bench that cannot create its patch
measures nothing (issue 10's migration-layout rule once broke it unnoticed, since the bench is
not part of make test). An integration test: it writes the whole tree (2,000+ files, ~18 s on a
busy 2-core machine), too slow for the unit tier's 30 s budget."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from patchflow.migrations import find_migrations, migration_problems

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from bench_tree import make_tree  # noqa: E402

pytestmark = pytest.mark.integration


def test_the_small_bench_tree_has_a_valid_prisma_migration_layout(tmp_path: Path) -> None:
    stats = make_tree(tmp_path / "small", "small")
    assert stats["files"] > 2000
    assert migration_problems(tmp_path / "small") == []
    assert [m.name for m in find_migrations(tmp_path / "small")][:2] == [
        "20250101000000_step0",
        "20250101010000_step1",
    ]
