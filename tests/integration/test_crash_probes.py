"""Hostile probes of crash safety beyond the kill matrix (issue 13): a second signal while the
apply turns to its rollback, a kill right after the backup folder is made, a damaged journal and a
journal naming a deleted backup, two recoveries at once, full disks during rollbacks and while
build outputs move into a backups filesystem, an install command still writing after a kill.

The three random-instant probes (kills while build outputs move across filesystems, kills of the
automatic rollback and of its recoveries, signals at random instants) and the second and third
variants of some probes are marked ``stress``: they run with ``nox -s stress`` (``PROBE_TRIALS``,
``PROBE_SEED``), not in ``make test``, which keeps the seeded kill matrix
(tests/integration/test_kill_matrix.py) as its random-instant test and stays under 8 minutes.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from support.installs import (
    Install,
    backup_names,
    build_release,
    health,
    inv_popen,
    set_dotenv,
    status_json,
    wait_until,
)
from support.killing import backups_on_tmpfs, held_then_filled, kill
from support.trials import (
    FIXED_AUDIT_MIGRATION,
    NEW,
    check_exact,
    drop_displaced,
    measure,
    read_journal,
    recover,
    run_and_hit,
    snapshot,
)

pytestmark = pytest.mark.integration

TRIALS = int(os.environ.get("PROBE_TRIALS", "6"))
SEED = int(os.environ.get("PROBE_SEED", "1313"))

# node_modules with ~1500 files in nested folders, links, executables and an empty folder, and dist/
MAKE_MODULES = """import os, sys
tag = sys.argv[1]
for p in range(30):
    d = f"node_modules/.pnpm/pkg{p}@1.0.0/node_modules/pkg{p}/lib"
    os.makedirs(d, exist_ok=True)
    for f in range(50):
        with open(f"{d}/f{f}.js", "w") as h:
            h.write(tag * 200 + str(f))
    os.makedirs("node_modules/.bin", exist_ok=True)
    b = f"node_modules/.bin/pkg{p}"
    with open(b, "w") as h:
        h.write("#!/bin/sh\\n" + tag)
    os.chmod(b, 0o755)
    link = f"node_modules/pkg{p}"
    if not os.path.lexists(link):
        os.symlink(f".pnpm/pkg{p}@1.0.0/node_modules/pkg{p}", link)
os.makedirs("node_modules/.cache/empty", exist_ok=True)
os.makedirs("dist", exist_ok=True)
with open("dist/bundle.js", "w") as h:
    h.write(tag)
"""


@contextmanager
def _outputs_install(install: Install, tmp_path: Path, size: str, inodes: int) -> Iterator[Install]:
    """``install`` with big old node_modules/ and dist/, an install command that builds new ones in
    staging, and backups/ on a tmpfs of ``size`` and ``inodes`` (build outputs move across
    filesystems); the backups already there are copied onto it."""
    script = tmp_path / "make_modules.py"
    script.write_text(MAKE_MODULES)
    subprocess.run(["python3", str(script), "old"], cwd=install.root, check=True)
    with backups_on_tmpfs(install, size, inodes):
        set_dotenv(install, "PATCHFLOW_INSTALL_COMMAND", f"python3 {script} new")
        yield install


@pytest.fixture
def outputs_install(install: Install, tmp_path: Path) -> Iterator[Install]:
    """Build outputs moving across filesystems: backups/ on a 256 MiB tmpfs."""
    with _outputs_install(install, tmp_path, "256m", 200_000) as ready:
        yield ready


APPLY = ("apply-patch", "--version", NEW, "--yes")
ROLLBACK = ("rollback-patch", "--version", NEW, "--yes")


def _to(install: Install, want: str, current: str) -> None:
    if want == current:
        return
    done = install.inv(*(APPLY if want == "new" else ROLLBACK))
    assert done.returncode == 0, done.stdout + done.stderr
    drop_displaced(install)


@pytest.mark.stress
def test_random_kills_while_build_outputs_move_across_filesystems(
    outputs_install: Install, tmp_path: Path, record_property: Any
) -> None:
    install = outputs_install
    build_release(install, tmp_path, NEW, migration=FIXED_AUDIT_MIGRATION)
    versions = {"old": snapshot(install)}
    switch_span, done = measure(install, APPLY, "switch", "forward")
    assert done[0] == 0, done[1]
    versions["new"] = snapshot(install)
    restore_span, done = measure(install, ROLLBACK, "restore-code", "rolling_back")
    assert done[0] == 0, done[1]
    drop_displaced(install)
    assert check_exact(install, versions) == "old"
    rng = random.Random(SEED)
    current = "old"
    landed: Counter[str] = Counter()
    for trial in range(TRIALS):
        how = ("main", "tree")[trial % 2]
        if trial % 4 < 2:
            _to(install, "old", current)
            args, label, span = APPLY, "switch", switch_span
        else:
            _to(install, "new", current)
            args, label, span = ROLLBACK, "restore-code", restore_span
        delay = rng.uniform(0, span)
        where, _code, out = run_and_hit(
            install, args, label, "forward" if label == "switch" else "rolling_back", delay, how
        )
        ran = recover(install, rng, kills=trial % 3 == 2, span=3.0, how=how)
        try:
            current = check_exact(install, versions)
        except AssertionError as exc:
            raise AssertionError(
                f"trial {trial}: {args[0]} killed ({how}) {delay:.3f}s into {label} (span {span:.3f}), "
                f"landed {where}; recovery {ran}: {exc}\n{out[-3000:]}"
            ) from None
        landed[f"{args[0]} {how} {where} -> {current}"] += 1
        drop_displaced(install)
    summary = f"probe: outputs across filesystems: spans {switch_span:.2f} / {restore_span:.2f} s; {dict(landed)}"
    record_property("summary", summary)
    print(summary)


def _wait_stopped(proc: subprocess.Popen[str]) -> None:
    """Wait until ``proc`` is stopped (state T: its ``PATCHFLOW_TEST_KILL_AT=...=SIGSTOP`` point)."""

    def stopped() -> bool:
        if proc.poll() is not None:
            raise AssertionError("ended first: " + "".join(proc.communicate()))
        stat = Path(f"/proc/{proc.pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] == "T"

    wait_until(stopped, 120, "the apply to stop at its kill point")


def _wait_journal_state(install: Install, proc: subprocess.Popen[str], name: str, state: str) -> None:

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        data = read_journal(install)
        if data and any(s["name"] == name and s["state"] == state for s in data.get("steps", [])):
            return
        if proc.poll() is not None:
            raise AssertionError("ended first: " + "".join(proc.communicate()))
        time.sleep(0.001)
    raise AssertionError(f"{name} never {state}")


@pytest.mark.parametrize(
    "signame", ["SIGINT", *(pytest.param(name, marks=pytest.mark.stress) for name in ("SIGTERM", "SIGHUP"))]
)
def test_a_second_signal_while_the_apply_turns_to_its_rollback_still_rolls_back(
    outputs_install: Install, tmp_path: Path, signame: str
) -> None:
    """An operator presses Ctrl+C twice (or a supervisor repeats SIGTERM): the first signal
    interrupts the backup step (services stopped); the second arrives 20-50 ms later, while the
    apply turns to its automatic rollback (it first removes its staging folder, big with
    node_modules). Further signals must be held back: the rollback happens, exit 2, the old version
    runs. (Before the fix: exit 130 "interrupted" for SIGINT, death by the signal for SIGTERM and
    SIGHUP, services left stopped until the recovery patch-status names is run.)"""
    install = outputs_install
    build_release(install, tmp_path, NEW, migration=FIXED_AUDIT_MIGRATION)
    versions = {"old": snapshot(install)}
    results = []
    for gap in (0.02, 0.05):
        # held at the backup step's start (services stopped): the step is milliseconds long now that
        # the snapshot takes the database, too short to catch by watching the journal
        proc = inv_popen(install, *APPLY, env={"PATCHFLOW_TEST_KILL_AT": "backup=SIGSTOP"})
        _wait_stopped(proc)
        os.kill(proc.pid, signal.Signals[signame])  # pending until it goes on
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(gap)
        if proc.poll() is None:
            os.kill(proc.pid, signal.Signals[signame])
        _out, err = proc.communicate(timeout=300)
        results.append((gap, proc.returncode, err.strip().splitlines()[-2:]))
        if proc.returncode != 2:
            recover(install)  # the recovery patch-status names still ends exactly old
        assert check_exact(install, versions) == "old"
        drop_displaced(install)
    assert [code for _, code, _ in results] == [2, 2], results


@pytest.mark.stress
def test_random_kills_of_the_automatic_rollback_and_of_its_recoveries(
    outputs_install: Install, tmp_path: Path, record_property: Any
) -> None:
    """A migration fails, so the apply rolls back by itself (restore-database, restore-code with
    build outputs moving back across filesystems, drop-backup, start-old); the kill lands at a
    random instant of one of those undos; the recovery patch-status names is itself killed up to
    three times at random instants before one runs to the end. Exactly old every time."""
    install = outputs_install
    build_release(install, tmp_path, NEW, migration=FIXED_AUDIT_MIGRATION + "SELECT 1/0;\n")
    versions = {"old": snapshot(install)}
    labels = ("restore-database", "restore-code", "drop-backup", "start-old")
    spans = {}
    for label in labels:
        spans[label], done = measure(install, APPLY, label, "rolling_back")
        assert done[0] == 2, done[1]
        drop_displaced(install)
    assert check_exact(install, versions) == "old"
    rng = random.Random(SEED + 1)
    landed: Counter[str] = Counter()
    for trial in range(TRIALS):
        how = ("main", "tree")[trial % 2]
        label = labels[(trial // 2) % len(labels)]
        delay = rng.uniform(0, spans[label])
        where, code, out = run_and_hit(install, APPLY, label, "rolling_back", delay, how)
        kills = trial % 4
        ran = recover(install, rng, kills=kills, span=4.0, how=how)
        try:
            check_exact(install, versions)
        except AssertionError as exc:
            raise AssertionError(
                f"trial {trial}: apply killed ({how}) {delay:.3f}s into {label} (span {spans[label]:.3f}), "
                f"landed {where} (exit {code}); recovery {ran}: {exc}\n{out[-3000:]}"
            ) from None
        landed[f"{how} {where} / {len(ran)} recoveries"] += 1
        drop_displaced(install)
    summary = f"probe: automatic rollback kills: spans { {k: round(v, 2) for k, v in spans.items()} }; {dict(landed)}"
    record_property("summary", summary)
    print(summary)


def test_a_kill_just_after_the_backup_folder_is_made_leaves_no_orphan_backup(install: Install, tmp_path: Path) -> None:
    """SIGKILL the apply the moment its new backup folder appears (before the journal names it).
    The recovery patch-status names must end exactly old and leave backups/ as it was: no
    incomplete backup folder nobody will ever remove."""
    build_release(install, tmp_path, NEW, migration=FIXED_AUDIT_MIGRATION)
    versions = {"old": snapshot(install)}
    before = backup_names(install)
    folder = install.root / "backups"
    proc = inv_popen(install, *APPLY)
    while proc.poll() is None:
        if len(os.listdir(folder)) > len(before):
            kill(proc.pid, "main")
            break
    proc.communicate()

    named = (read_journal(install) or {}).get("backup")
    recover(install)
    assert check_exact(install, versions) == "old"
    assert backup_names(install) == before, f"journal named {named!r}; backups now {backup_names(install)}"


APPLY_STEPS = (
    "stage", "dump", "stop", "snapshot", "backup", "switch", "migrate", "start", "health", "commit", "dump-snapshot",
    "cleanup",
)  # fmt: skip


def _step_spans(output: str, steps: tuple[str, ...]) -> dict[str, float]:

    spans = {}
    for step in steps:
        found = re.search(rf"^\s+{re.escape(step)} done in ([0-9.]+) s", output, re.M)
        spans[step] = float(found.group(1)) if found else 0.05
    return spans


@pytest.mark.stress
def test_signals_at_random_instants_roll_back_or_complete(
    outputs_install: Install, tmp_path: Path, record_property: Any
) -> None:
    """SIGINT, SIGTERM or SIGHUP (to the main process) at a random instant of a random step of an
    apply: before the commit it rolls back by itself (exit 2, exactly old); from the commit on it
    completes (exit 0, exactly new). A rollback-patch interrupted the same way ends with the
    journal kept (exit 4) and the recovery patch-status names finishes it (exactly old)."""
    install = outputs_install
    build_release(install, tmp_path, NEW, migration=FIXED_AUDIT_MIGRATION)
    versions = {"old": snapshot(install)}
    done = install.inv(*APPLY)
    assert done.returncode == 0, done.stdout + done.stderr
    apply_spans = _step_spans(done.stdout, APPLY_STEPS)
    versions["new"] = snapshot(install)
    done = install.inv(*ROLLBACK)
    assert done.returncode == 0, done.stdout + done.stderr
    rollback_steps = ("stop", "restore-code", "restore-database", "start", "health", "commit")
    rollback_spans = _step_spans(done.stdout, rollback_steps)
    drop_displaced(install)
    rng = random.Random(SEED + 2)
    current = "old"
    landed: Counter[str] = Counter()
    for trial in range(TRIALS):
        signame = ("SIGINT", "SIGTERM", "SIGHUP")[trial % 3]
        if trial % 4 != 3:
            _to(install, "old", current)
            step = rng.choice(APPLY_STEPS)
            args, phase, spans = APPLY, "forward", apply_spans
        else:
            _to(install, "new", current)
            step = rng.choice(rollback_steps)
            args, phase, spans = ROLLBACK, "rolling_back", rollback_spans
        delay = rng.uniform(0, spans[step])
        where, code, out = run_and_hit(install, args, step, phase, delay, signame)
        ran = recover(install) if code != 0 else []
        late = code < 0 and ("applied 2.2.0 -> 2.3.0" in out or "rolled back 2.3.0 -> 2.2.0" in out)
        if late:  # the signal landed after the run had finished and printed its result
            landed[f"{args[0]} {signame} after its result was printed: died of it, exit {code}"] += 1
            code = 0 if args is ROLLBACK or "applied" in out else code
        try:
            current = check_exact(install, versions)
            if args is APPLY:
                assert code in (0, 2), f"exit {code}"
                assert (code == 0) == (current == "new"), f"exit {code} but {current}"
            else:
                assert code in (0, 4), f"exit {code}"
            assert "Traceback" not in out
        except AssertionError as exc:
            raise AssertionError(
                f"trial {trial}: {args[0]} got {signame} {delay:.3f}s into {step}, landed {where}, exit {code}; "
                f"recovery {ran}: {exc}\n{out[-3000:]}"
            ) from None
        landed[f"{args[0]} {signame} {where} exit {code} -> {current}"] += 1
        drop_displaced(install)
    summary = f"probe: random signals: {dict(sorted(landed.items()))}"
    record_property("summary", summary)
    print(summary)


def _killed_at(install: Install, point: str) -> None:
    done = install.inv(*APPLY, env={"PATCHFLOW_TEST_KILL_AT": point})
    assert done.returncode == -9, done.stdout + done.stderr


def test_a_truncated_journal_is_reported_and_its_hint_can_be_followed(install: Install, tmp_path: Path) -> None:
    """A journal cut short (a disk fault, a hand edit): patch-status reports it without a
    traceback, apply and rollback refuse, and the hint's own steps bring the install back."""
    build_release(install, tmp_path, NEW, migration=FIXED_AUDIT_MIGRATION)
    versions = {"old": snapshot(install)}
    _killed_at(install, "migrate")
    path = install.root / ".patchflow" / "journal.json"
    text = path.read_text()
    path.write_text(text[: len(text) // 2])

    status = status_json(install)
    assert status["recovery"]["command"] is None, status["recovery"]
    assert "damaged" in status["recovery"]["does"]
    for args in (APPLY, ROLLBACK):
        done = install.inv(*args)
        assert done.returncode != 0 and "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
        assert "damaged" in done.stderr, done.stderr
    hint = status["recovery"]["does"]
    # the hint's order: move the journal away first (nothing runs while it is there), then restore
    assert hint.index("move the journal away") < hint.index("rollback-patch"), hint
    backup = next(p.name for p in (install.root / "backups").iterdir() if p.name.startswith("pre-patch-v2.3.0"))
    path.rename(tmp_path / "journal.json")
    done = install.inv("rollback-patch", "--version", NEW, "--backup", backup, "--force", "--break-lock", "--yes")
    assert done.returncode == 0, f"{hint}\n{done.stdout}\n{done.stderr}"
    check_exact(install, versions)


def test_a_journal_naming_a_deleted_backup(install: Install, tmp_path: Path) -> None:
    """The backup an interrupted apply named is deleted (by hand, by a disk cleaner). Killed before
    the switch, it is not needed: the recovery ends exactly old. Killed after the switch, the
    recovery cannot restore: it must say so clearly (no traceback) and change nothing more."""
    build_release(install, tmp_path, NEW, migration=FIXED_AUDIT_MIGRATION)
    versions = {"old": snapshot(install)}

    _killed_at(install, "backup:after")
    shutil.rmtree(install.root / "backups" / read_journal(install)["backup"])
    recover(install)
    check_exact(install, versions)

    _killed_at(install, "migrate")
    named = read_journal(install)["backup"]
    shutil.rmtree(install.root / "backups" / named)
    tree = install.state()
    advice = status_json(install)["recovery"]
    done = install.inv(*advice["args"])
    out = done.stdout + done.stderr
    assert done.returncode != 0 and "Traceback" not in out, out
    assert f"The backup {named} of this apply is missing or incomplete" in done.stderr, out
    assert install.state() == tree, "a recovery that cannot restore changed the tree"
    assert status_json(install)["interrupted"] is not None, "the journal must stay for the operator"


def test_two_recoveries_started_at_once(install: Install, tmp_path: Path) -> None:
    """Two operators run the recovery patch-status names at the same instant: one recovers, the
    other is refused (or finds nothing left to do); exactly old after both."""
    build_release(install, tmp_path, NEW, migration=FIXED_AUDIT_MIGRATION)
    versions = {"old": snapshot(install)}
    for point in ("switch-file#2", "migrate", "restore-database"):
        if point == "restore-database":
            build_release(install, tmp_path / "failing", NEW, migration=FIXED_AUDIT_MIGRATION + "SELECT 1/0;\n")
        _killed_at(install, point)
        args = status_json(install)["recovery"]["args"]
        procs = [inv_popen(install, *args) for _ in range(2)]
        results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
        codes = sorted(code for code, _, _ in results)
        # the other one: 0 (found nothing left), 3 (refused, the lock is held) or, when it began
        # after the first had ended, 1: nothing to do, naming the run that ended first
        assert codes[0] == 0 and codes[1] in (0, 1, 3), results
        for code, out, err in results:
            if code == 1:
                assert "Nothing to do" in err and "the last run on" in err and "--force" not in err, (out, err)
        assert all("Traceback" not in o + e for _, o, e in results), results
        check_exact(install, versions)
        drop_displaced(install)


# -- full disks ------------------------------------------------------------------------------------


def _media_release(install: Install, workdir: Path, migration: str = FIXED_AUDIT_MIGRATION) -> None:
    def edit(source: Path) -> None:
        rng = random.Random(5)
        folder = source / "public" / "media"
        folder.mkdir(parents=True)
        for index in range(60):
            (folder / f"m{index:03}.bin").write_bytes(rng.randbytes(24 * 1024))

    build_release(install, workdir, NEW, edit=edit, migration=migration)


@pytest.mark.parametrize("fill", ["inodes"])  # bytes: tests/integration/test_disk_full.py
def test_a_full_disk_during_rollback_patch_restore_code(
    full_install: Install, small_fs: Path, tmp_path: Path, fill: str
) -> None:
    """rollback-patch finds the disk full (bytes or inodes, nothing left) as restore-code starts:
    it must end exactly old with services up, or fail with one clear error, services up, and
    finish once space is freed."""
    install = full_install
    _media_release(install, tmp_path)
    versions = {"old": snapshot(install)}
    done = install.inv(*APPLY)
    assert done.returncode == 0, done.stdout + done.stderr
    code, out, err = held_then_filled(install, ROLLBACK, "restore-code", small_fs / "filler", fill, 0)
    assert "Traceback" not in out + err, out + err

    state = health(install)
    shutil.rmtree(small_fs / "filler")
    ran = recover(install)
    check_exact(install, versions)
    assert code == 0, f"exit {code}, health while full {state}, recovery after freeing {ran}:\n{err}"


@pytest.mark.parametrize("fill", ["bytes"])
def test_a_full_disk_during_the_automatic_rollback(
    full_install: Install, small_fs: Path, tmp_path: Path, fill: str
) -> None:
    """A migration fails; as the automatic rollback reaches restore-code the disk is full (bytes or
    inodes). Exactly old, services up, exit 2 with a clear error, no traceback; the next apply of a
    good release works after freeing space."""
    install = full_install
    _media_release(install, tmp_path / "bad", migration=FIXED_AUDIT_MIGRATION + "SELECT 1/0;\n")
    versions = {"old": snapshot(install)}
    code, out, err = held_then_filled(install, APPLY, "restore-code", small_fs / "filler", fill, 0)
    assert "Traceback" not in out + err, out + err

    state = health(install)
    shutil.rmtree(small_fs / "filler")
    ran = recover(install)
    check_exact(install, versions)
    drop_displaced(install)
    assert code == 2 and "rolled back automatically" in err, f"exit {code}, health {state}, recovery {ran}:\n{err}"
    _media_release(install, tmp_path / "good")
    done = install.inv(*APPLY)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def outputs_small_backups(install: Install, tmp_path: Path) -> Iterator[Install]:
    """Like ``outputs_install``, with backups/ on a 64 MiB tmpfs of 20000 inodes."""
    with _outputs_install(install, tmp_path, "64m", 20_000) as ready:
        set_dotenv(ready, "PATCHFLOW_FREE_SPACE_MARGIN", str(1024 * 1024))
        yield ready


@pytest.mark.parametrize(
    ("point", "fill"),
    [("switch", "bytes"), pytest.param("switch", "inodes", marks=pytest.mark.stress)],
)
def test_a_full_backups_filesystem_while_build_outputs_move_into_it(
    outputs_small_backups: Install, tmp_path: Path, point: str, fill: str
) -> None:
    """backups/ is another filesystem; it fills while the apply is held at ``point``; the switch
    then copies the old node_modules into the backup. Exactly old, services up, exit 2, a clear
    error, no traceback; the next apply works once space is freed."""
    install = outputs_small_backups
    build_release(install, tmp_path, NEW, migration=FIXED_AUDIT_MIGRATION)
    versions = {"old": snapshot(install)}
    filler = install.root / "backups" / "filler"
    code, out, err = held_then_filled(install, APPLY, point, filler, fill, 64 * 1024 if fill == "bytes" else 20)
    assert "Traceback" not in out + err, out + err
    shutil.rmtree(filler)
    ran = recover(install)
    check_exact(install, versions)
    assert code == 2, f"exit {code}; recovery {ran}\n{err}"
    assert "rolled back automatically" in err and ("full" in err or "space" in err), err
    drop_displaced(install)
    done = install.inv(*APPLY)
    assert done.returncode == 0, done.stdout + done.stderr


#: argv: mode (``daemon``: fork into its own session first), then a file it creates once it has
#: written its first files (the event the test waits for before the kill)
SLOW_WRITER = """import os, sys, time
os.makedirs("node_modules/.slow", exist_ok=True)
if sys.argv[1] == "daemon":
    if os.fork():
        sys.exit(0)
    os.setsid()
for i in range(100000):
    with open(f"node_modules/.slow/f{i}", "w") as h:
        h.write("x" * 100)
    if i == 10:
        open(sys.argv[2], "w").close()
    time.sleep(0.002)
"""


@pytest.mark.parametrize(("how", "mode"), [("tree", "daemon"), pytest.param("main", "plain", marks=pytest.mark.stress)])
def test_a_kill_during_stage_with_an_install_command_still_writing(
    install: Install, tmp_path: Path, how: str, mode: str
) -> None:
    """The install command keeps writing into staging (an orphan after a kill of the main process,
    or a daemon it left in its own session). The recovery ends it before it removes staging:
    exactly old, no process of the killed run left."""

    script = tmp_path / "slow.py"
    script.write_text(SLOW_WRITER)
    writing = tmp_path / "writing"
    set_dotenv(install, "PATCHFLOW_INSTALL_COMMAND", f"python3 {script} {mode} {writing}")
    set_dotenv(install, "PATCHFLOW_BUILD_COMMAND", "sleep 30")
    build_release(install, tmp_path, NEW, migration=FIXED_AUDIT_MIGRATION)
    versions = {"old": snapshot(install)}
    proc = inv_popen(install, *APPLY)
    _wait_journal_state(install, proc, "stage", "started")
    wait_until(writing.exists, 120, "the install command to be writing into staging")
    kill(proc.pid, how)
    proc.communicate()

    def writers() -> list[str]:
        found = []
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if str(script).encode() in cmd:
                    found.append(pid)
        return found

    alive_before = writers()
    ran = recover(install)
    assert writers() == [], f"still writing after the recovery {ran} (before: {alive_before})"
    check_exact(install, versions)
