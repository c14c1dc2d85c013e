"""Every failing system call ends exactly old or new (issue 22; SQLite's I/O-error tests are the
model): an apply and a rollback of a small release run with ``tests/support/faultshim.c``
preloaded, which makes the N-th ``write``, ``fsync``, ``openat``, ``rename``, ``unlink`` or
``mkdir`` on the install's paths fail with ``ENOSPC`` or ``EDQUOT`` (from that call on: the disk
stays full) or ``EIO`` (that call alone), as the kernel would.

After each faulted run the test runs the recovery ``patch-status --json`` names (nothing when it
names none), then checks independently of patchflow that the install is exactly the old or the
new version: tree, VERSION, full database dump, migration history, services answering, no lock,
journal, leftovers or half-restored database (:func:`support.trials.check_exact`). No run may end
in a traceback.

``make test`` runs a sampled set for the apply (``make test-slow`` the same for the rollback): in
each part of the install the run touches (journal, logs, other state, backups, patches, staging,
tree), one call of the kind sampled least so far (``IO_FAULTS_PER_PART`` calls per part).
``nox -s stress`` runs the sweep: every N of every kind, for both, and prints the counts per kind
and errno (``IO_SWEEP_LIMIT`` caps the calls per kind, 0: all).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
from support.installs import Install, build_release
from support.iofaults import KINDS, build_shim, errno_for, run, spread_parts, tally
from support.trials import FIXED_AUDIT_MIGRATION, NEW, check_exact, other_databases, recover, snapshot

from patchflow.database import DISPLACED_MARK

pytestmark = pytest.mark.integration

APPLY = ("apply-patch", "--version", NEW, "--yes")
ROLLBACK = ("rollback-patch", "--version", NEW, "--yes")
ACTIONS = {"apply": (APPLY, "old"), "rollback": (ROLLBACK, "new")}
SAMPLED_PER_PART = int(os.environ.get("IO_FAULTS_PER_PART", "1"))
SWEEP_LIMIT = int(os.environ.get("IO_SWEEP_LIMIT", "0"))


def drop_displaced(install: Install) -> None:
    """Drop the databases restores displaced (kept for the operator; dozens of runs would fill the
    cluster), never a snapshot: when a faulted run could not dump it, it is its backup's only copy."""
    for name in other_databases(install):
        if DISPLACED_MARK in name:
            install.cluster.drop_database(name)


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_shim(tmp_path_factory.mktemp("faultshim"))


def _clean(install: Install, args: tuple[str, ...]) -> None:
    done = install.inv(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    drop_displaced(install)


def _prepare(
    install: Install, shim: Path, workdir: Path
) -> tuple[dict[str, Any], dict[str, list[Any]], dict[str, dict[str, int]]]:
    """The release, both versions' snapshots, and the counting runs' calls and counts per action."""
    build_release(install, workdir, NEW, migration=FIXED_AUDIT_MIGRATION)
    versions = {"old": snapshot(install)}
    calls, counts = {}, {}
    code, out, counts["apply"], calls["apply"] = run(install, shim, APPLY, workdir)
    assert code == 0, out
    drop_displaced(install)
    versions["new"] = snapshot(install)
    code, out, counts["rollback"], calls["rollback"] = run(install, shim, ROLLBACK, workdir)
    assert code == 0, out
    drop_displaced(install)
    assert all(counts[a][k] > 0 for a in counts for k in KINDS if k != "mkdir" or a == "apply"), counts
    return versions, calls, counts


def _trial(
    install: Install,
    shim: Path,
    workdir: Path,
    versions: dict[str, Any],
    action: str,
    fault: tuple[str, int, int],
) -> str:
    """One faulted run from the version ``action`` starts on; returns where the install landed."""
    args, start = ACTIONS[action]
    current = check_exact(install, versions)
    if current != start:
        _clean(install, APPLY if start == "new" else ROLLBACK)
    kind, number, code = fault
    exit_code, out, _, _ = run(install, shim, args, workdir, fault)
    label = f"{action} with {kind} #{number} failing ({errno.errorcode[code]})"
    assert "Traceback" not in out, f"{label} ended in a traceback:\n{out}"
    assert exit_code in (0, 1, 2, 4), f"{label}: exit {exit_code}\n{out}"
    try:
        recover(install)
        landed = check_exact(install, versions)
    except AssertionError as failure:
        raise AssertionError(f"{label} (exit {exit_code}) did not end exactly old or new: {failure}\n{out}") from None
    drop_displaced(install)
    if exit_code == 0:
        assert landed == ("new" if action == "apply" else "old"), f"{label}: exit 0 but the install is {landed}"
    return landed


@pytest.mark.parametrize("action", ["apply", "rollback"])
def test_sampled_syscall_faults_end_exactly_old_or_new(
    install: Install, shim: Path, tmp_path: Path, record_property: Any, action: str
) -> None:
    versions, calls, counts = _prepare(install, shim, tmp_path)
    outcomes = []
    sample = spread_parts(calls[action], SAMPLED_PER_PART)
    for index, call in enumerate(sample):
        code = errno_for(index)
        landed = _trial(install, shim, tmp_path, versions, action, (call.kind, call.number, code))
        outcomes.append((action, call.kind, code, landed))
    chosen = ", ".join(f"{c.kind}#{c.number} ({c.part})" for c in sample)
    record_property(
        "summary",
        f"io faults, sampled {action}: calls per run {counts[action]}; {tally(outcomes)}; all exact; {chosen}",
    )


@pytest.mark.stress
@pytest.mark.parametrize("action", ["apply", "rollback"])
def test_every_syscall_fault_ends_exactly_old_or_new(
    install: Install, shim: Path, tmp_path: Path, record_property: Any, action: str
) -> None:
    versions, _, counts = _prepare(install, shim, tmp_path)
    outcomes = []
    index = 0
    for kind in KINDS:
        total = counts[action][kind]
        for number in range(1, (min(total, SWEEP_LIMIT) if SWEEP_LIMIT else total) + 1):
            code = errno_for(index)
            index += 1
            landed = _trial(install, shim, tmp_path, versions, action, (kind, number, code))
            outcomes.append((action, kind, code, landed))
    record_property(
        "summary", f"io fault sweep, {action}: calls per run {counts[action]}; {tally(outcomes)}; all exact"
    )
