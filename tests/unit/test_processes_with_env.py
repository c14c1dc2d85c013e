"""runner.processes_with_env finds real processes by one variable of their environment (the
markers patchflow puts on the commands and services it starts), exactly or by prefix."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from patchflow.runner import processes_with_env

KEY = "PF_TEST_MARKER"


@pytest.fixture
def sleepers() -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """Three sleeping processes marked ``<tag>``, ``<tag>::b`` and ``<tag>x`` (started in this
    order), ended after the test."""
    tag = f"m{uuid.uuid4().hex[:10]}"
    procs = [
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env={**os.environ, KEY: value})
        for value in (tag, f"{tag}::b", f"{tag}x")
    ]
    try:
        yield tag, procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_an_exact_value_matches_only_that_value(sleepers: tuple[str, list[subprocess.Popen[bytes]]]) -> None:
    tag, procs = sleepers
    assert processes_with_env(KEY, tag) == [procs[0].pid]
    assert processes_with_env(KEY, f"{tag}::b") == [procs[1].pid]


def test_a_prefix_matches_every_value_starting_with_it_oldest_first(
    sleepers: tuple[str, list[subprocess.Popen[bytes]]],
) -> None:
    tag, procs = sleepers
    assert processes_with_env(KEY, tag, prefix=True) == [p.pid for p in procs]
    assert processes_with_env(KEY, f"{tag}::", prefix=True) == [procs[1].pid]


def test_a_value_only_inside_another_variable_matches_nothing(
    sleepers: tuple[str, list[subprocess.Popen[bytes]]],
) -> None:
    tag, _ = sleepers
    # the bytes 'PF_TEST_MARKER=<tag>' occur in no variable of another name, and no process has
    # the value under a longer key
    assert processes_with_env("MARKER", tag) == []
    assert processes_with_env(KEY, f"x{tag}", prefix=True) == []
