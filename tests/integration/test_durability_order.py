"""Durability by design (issue 22): the order of an apply's syncs and renames, read from a real
syscall trace (``strace -y`` of the ``inv apply-patch`` process on a sample install at 2.2.0: its
own calls; the services it starts are not followed, or strace would wait for them to exit). For each
journal transition that vouches for data, that data was made durable before it:

* the backup's copies (files written under ``backups/<name>/files/``) are synced before the switch
  renames the first new file over an old one;
* the switched tree (each file renamed from its ``.pf-*.tmp`` name) is synced before the journal
  says the switch is done (the next rename of ``journal.json``);
* every rename of ``journal.json`` is followed by an fsync of its folder (the rename itself durable).

Removing any one of those syncs makes this test fail. Linux only (strace), a real install."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from support.installs import INV, Install

pytestmark = pytest.mark.integration

LINE = re.compile(r"^(?:\d+\s+)?(\w+)\((.*)\)\s+=\s+(-?\d+)")
PATH_ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')


def _events(trace: Path) -> list[tuple[str, list[str], str]]:
    """``(syscall, its quoted path arguments and <fd paths>, raw arguments)`` of each successful call."""
    events = []
    for line in trace.read_text(errors="replace").splitlines():
        found = LINE.match(line)
        if not found or found.group(3).startswith("-"):
            continue
        name, args = found.group(1), found.group(2)
        paths = PATH_ARG.findall(args) + re.findall(r"<([^>]+)>", args)
        events.append((name, paths, args))
    return events


def test_an_apply_makes_each_steps_data_durable_before_the_journal_vouches_for_it(
    install: Install, tmp_path: Path
) -> None:
    install.release(tmp_path, "2.3.0")
    trace = tmp_path / "trace"
    calls = "trace=syncfs,sync,fsync,fdatasync,rename,renameat,renameat2,openat"
    done = subprocess.run(
        [
            "strace",
            "-qq",
            "-y",
            "-e",
            calls,
            "-o",
            str(trace),
            *INV,
            "apply-patch",
            "--root",
            str(install.root),
            "--version",
            "2.3.0",
            "--yes",
        ],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    root = str(install.root.resolve())
    events = _events(trace)
    syncs = [i for i, (name, _, _) in enumerate(events) if name in ("syncfs", "sync")]

    def renamed_to(index: int) -> str:
        name, paths, _ = events[index]
        return paths[1] if name.startswith("rename") and len(paths) >= 2 else ""

    journal_renames = [i for i in range(len(events)) if renamed_to(i).endswith("/.patchflow/journal.json")]
    switched = [
        i
        for i in range(len(events))
        if events[i][0].startswith("rename")
        and Path(events[i][1][0]).name.startswith(".pf-")
        and renamed_to(i).startswith(root + "/")
        and "/.patchflow/" not in renamed_to(i)
        and "/backups/" not in renamed_to(i)
    ]
    copies = [
        i
        for i, (name, paths, args) in enumerate(events)
        if name == "openat"
        and "O_CREAT" in args
        and any("/backups/pre-patch-v2.3.0_" in p and "/files/" in p for p in paths)
    ]
    assert switched and copies and journal_renames and syncs, (len(switched), len(copies), len(journal_renames))
    # the backup's copies durable before the first file of the new version replaces an old one
    assert any(copies[-1] < s < switched[0] for s in syncs), "no sync between the backup's copies and the switch"
    # the switched tree durable before the journal says the switch is done
    after = [j for j in journal_renames if j > switched[-1]]
    assert after, "no journal transition after the switch"
    assert any(switched[-1] < s < after[0] for s in syncs), "no sync between the switch and its journal entry"
    # each journal rename followed by an fsync of .patchflow/ before the next step's work
    folder = f"{root}/.patchflow"
    for index in journal_renames:
        following = events[index + 1 : index + 6]
        assert any(name == "fsync" and folder in paths for name, paths, _ in following), (
            f"journal rename at event {index} not followed by an fsync of {folder}: {following}"
        )
