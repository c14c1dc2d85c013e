"""Fixtures of the integration tests that fill a disk: an install on its own small filesystem
(tests/integration/test_disk_full.py, test_crash_probes.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.installs import Install, InstallTemplate
from support.killing import install_on, mounted_tmpfs


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs with 3000 inodes, mounted for this test."""
    with mounted_tmpfs(tmp_path / "fs", "32m", 3000) as mount:
        yield mount


@pytest.fixture
def full_install(small_fs: Path, install_template: InstallTemplate, pg_cluster: object) -> Iterator[Install]:
    """A running 2.2.0 install on the small filesystem."""
    with install_on(install_template, small_fs) as install:
        yield install
