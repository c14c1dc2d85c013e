"""Benchmark (nox -s bench): patchflow against the tools an operator would use instead.

Trees are generated with a fixed seed (scripts/bench_tree.py): ``small`` (2,000 files, ~20 MB)
and ``large`` (40,000 patchable files, ~400 MB, plus an excluded node_modules/ and .git/).
Each row runs patchflow and its baseline interleaved in the same run (the order alternates),
``--repeat`` times; the table shows medians and ratios, never absolute thresholds:

  create-patch small/large   inv create-patch        vs  tar -czf with the same excludes
  create-patch large         (the same samples)      vs  tar -I pigz, tar -I 'zstd -T0' (every core; info)
  verify-patch large         inv verify-patch        vs  sha256sum -c SHA256SUMS
  verify-patch --deep large  inv verify-patch --deep vs  tar -tzf (both decompress everything)
  staging extraction         extract_archive (fresh Python process, against the manifest)  vs  tar -xzf
  patch-status               inv patch-status, 50 patches + 50 backups (cached and first run)
  inv start-up               inv --list: the fixed cost inside every inv row (Python, invoke, tasks.py)
  database dump / restore    patchflow Database.dump / restore_beside  vs  pg_dump -Fc / createdb + pg_restore
  peak RSS                   create and extraction, small and large (does it grow with the tree?)
  delta size                 full patch vs delta patch (--base) for a one-file change
  upload, small patch        inv deploy --upload-only to 3 hosts --parallel 3  vs  to 1 host (3 local sshd)
  rehearsal                  inv rehearse's migration seconds  vs  the apply's migrate step, sample at ~100 MB
                             (scripts/bench_rehearse.py; also: no database left behind, no service stopped)
  stopped window, no migration  apply-patch's stopped window (~100 MB database)  vs  the floor: the same
                             services stopped, started and healthy with no patch (goal: floor + 0.5 s)
  stopped window, a migration   the same with the sample's migration: the snapshot inside the window
                             (and its dump after the commit), and database_snapshot=off (the dump inside)

Usage: python scripts/bench.py [--small-only] [--repeat N] [--keep DIR] [--workdir DIR] [--skip-db] [--skip-upload]
       [--skip-rehearse] [--skip-window]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO))

from bench_tree import SEED, SPECS, make_tree  # noqa: E402

INV = [str(Path(sys.executable).parent / "inv"), "-r", str(REPO)]
TAR_EXCLUDES = [
    f"--exclude={p}"
    for p in (
        "node_modules", ".git", "dist", ".turbo", ".next", "coverage", "uploads", "*.log", ".DS_Store",
        "patches", "backups", ".patchflow", ".env", ".env.*", "*.pem", "*.key",
    )
]  # fmt: skip
EXTRACT = """
import json, sys
from pathlib import Path
from patchflow.archive.extract import extract_archive
from patchflow.manifest import Entry
manifest = json.loads(Path(sys.argv[2]).read_text(encoding="utf-8"))
entries = {e["path"]: Entry.from_json(e) for e in manifest["files"]}  # a delta lists its members only
del manifest
extract_archive(Path(sys.argv[1]), Path(sys.argv[3]), entries)
"""
WRAPPER = (
    "import json,resource,subprocess,sys,time;"
    "args=json.loads(sys.argv[1]);cwd=sys.argv[2] or None;"
    "s=time.perf_counter();"
    "p=subprocess.run(args,cwd=cwd,stdout=subprocess.DEVNULL,stderr=subprocess.PIPE,stdin=subprocess.DEVNULL);"
    "d=time.perf_counter()-s;"
    "print(json.dumps([d,resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,p.returncode,p.stderr.decode()[-2000:]]))"
)


def run_isolated(args: list[str], cwd: Path | None = None) -> tuple[float, int]:
    """Run ``args`` from a fresh Python wrapper; returns (seconds, peak RSS of the process tree in KiB)."""
    out = subprocess.run(
        [sys.executable, "-c", WRAPPER, json.dumps(args), str(cwd or "")], capture_output=True, text=True, check=True
    ).stdout
    seconds, rss, code, err = json.loads(out)
    if code != 0:
        raise SystemExit(f"bench: {' '.join(args)} failed ({code}): {err}")
    return float(seconds), int(rss)


def settle() -> None:
    """Flush dirty pages so one measurement does not pay for the previous one's writes."""
    os.sync()
    time.sleep(0.5)


def remove(*paths: Path) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    settle()


class Row:
    """One line of the table: samples of patchflow and of the baseline (seconds)."""

    def __init__(
        self, label: str, baseline: str, goal: float | None, note: str = "", margin: float | None = None
    ) -> None:
        """``goal``: the ratio patchflow/baseline that holds; ``margin``: instead, the seconds
        patchflow may take beyond the baseline (a floor)."""
        self.label, self.baseline, self.goal, self.note, self.margin = label, baseline, goal, note, margin
        self.ours: list[float] = []
        self.theirs: list[float] = []
        self.rss_ours: list[int] = []
        self.rss_theirs: list[int] = []

    def pair(self, index: int, ours: Callable[[], tuple[float, int]], theirs: Callable[[], tuple[float, int]]) -> None:
        """Run both, in alternating order, with caches flushed before each."""
        order = [(ours, self.ours, self.rss_ours), (theirs, self.theirs, self.rss_theirs)]
        for action, times, rss in order if index % 2 == 0 else reversed(order):
            settle()
            seconds, peak = action()
            times.append(seconds)
            rss.append(peak)

    @property
    def ratio(self) -> float | None:
        if not self.ours or not self.theirs:
            return None
        return statistics.median(self.ours) / statistics.median(self.theirs)


def fmt_s(values: list[float]) -> str:
    return f"{statistics.median(values):8.3f} s" if values else "        —"


def print_table(rows: list[Row]) -> None:
    print(f"| {'operation':<40} | {'patchflow':>10} | {'baseline':<30} | {'ratio':>6} | {'goal':>7} | holds |")
    print(f"|{'-' * 42}|{'-' * 12}|{'-' * 32}|{'-' * 8}|{'-' * 9}|-------|")
    for row in rows:
        ratio = row.ratio
        theirs = f"{row.baseline} {statistics.median(row.theirs):.3f} s" if row.theirs else row.baseline
        goal = f"<= {row.goal:.1f}x" if row.goal is not None and row.theirs else (row.note or "")
        if row.margin is not None and row.ours and row.theirs:
            goal = f"<=+{row.margin:.1f}s"
            holds = "yes" if statistics.median(row.ours) <= statistics.median(row.theirs) + row.margin else "NO"
        elif row.goal is not None and ratio is not None:
            holds = "yes" if ratio <= row.goal else "NO"
        elif row.goal is not None and not row.theirs:
            holds = "yes" if statistics.median(row.ours) < row.goal else "NO"
            goal = f"< {row.goal:.1f} s"
        else:
            holds = ""
        ratio_text = f"{ratio:5.2f}x" if ratio is not None else "     —"
        print(f"| {row.label:<40} | {fmt_s(row.ours):>10} | {theirs:<30} | {ratio_text:>6} | {goal:>7} | {holds:<5} |")


def ensure_tree(base: Path, kind: str) -> Path:
    """The ``kind`` tree under ``base`` (generated once; reused when ``--keep`` kept it)."""
    root = base / kind
    marker = base / f".{kind}.done"
    expected = f"{SEED} {SPECS[kind]}"
    if not (marker.is_file() and marker.read_text() == expected):
        shutil.rmtree(root, ignore_errors=True)
        started = time.perf_counter()
        stats = make_tree(root, kind)
        marker.write_text(expected)
        print(f"generated {kind} tree: {stats} in {time.perf_counter() - started:.1f} s", flush=True)
    for leftover in ("patches", "backups", ".patchflow"):
        shutil.rmtree(root / leftover, ignore_errors=True)
    return root


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def make_status_root(root: Path) -> Path:
    """50 real small patches (create-patch) and 50 backup folders with backup.json."""
    import secrets
    from datetime import UTC, datetime, timedelta

    from patchflow.config import load_settings
    from patchflow.lifecycle.create import create_patch
    from patchflow.version import parse_version

    shutil.rmtree(root, ignore_errors=True)
    (root / "src").mkdir(parents=True)
    settings = load_settings(root, environ={})
    for index in range(50):
        (root / "VERSION").write_text(f"1.0.{index}\n")  # create-patch refuses a VERSION naming another
        (root / "src/index.js").write_text(f"console.log({index});\n" * 500)
        (root / f"src/feature{index}.js").write_text(f"export const feature{index} = true;\n" * 100)
        create_patch(settings, parse_version(f"1.0.{index}"))
    start = datetime(2025, 1, 1, tzinfo=UTC)
    for index in range(50):
        moment = start + timedelta(hours=index)
        folder = root / "backups" / f"pre-patch-v1.0.{index}_{moment:%Y%m%dT%H%M%SZ}_{secrets.token_hex(3)}"
        (folder / "files/src").mkdir(parents=True)
        (folder / "files/src/index.js").write_text("x" * 5000)
        (folder / "database.dump").write_bytes(os.urandom(50_000))
        data = {
            "format": 1,
            "id": folder.name,
            "version": f"1.0.{index}",
            "restores_version": f"1.0.{index - 1}" if index else "0.9.0",
            "created_at": moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "sequence": index + 1,
            "complete": True,
            "old_entries": [{"path": "src/index.js", "type": "file", "size": 5000, "sha256": "0" * 64, "mode": "0644"}],
            "new_paths": [],
            "database": {"file": "database.dump", "size": 50_000, "sha256": "0" * 64, "properties": {}},
            "version_file": None,
            "files_bytes": 5000,
        }
        (folder / "backup.json").write_text(json.dumps(data))
    return root


#: the archivers an operator would reach for when tar -czf is too slow: (label, tar -I program, apt package)
PARALLEL_COMPRESSORS = (("tar -I pigz", "pigz", "pigz"), ("tar -I 'zstd -T0'", "zstd -T0", "zstd"))


def parallel_compressor_rows(root: Path, work: Path, create: Row, repeat: int) -> list[Row]:
    """create-patch (its samples from ``create``) against tar with a parallel compressor on every
    core, same tree and excludes; informational: those archives are neither gzip nor checked. A
    compressor that is not installed gives a row that says so (``apt-get install <package>``)."""
    rows = []
    for label, program, package in PARALLEL_COMPRESSORS:
        row = Row("create-patch, large", label, None, "info")
        row.ours, row.rss_ours = create.ours, create.rss_ours
        if shutil.which(program.split()[0]) is None:
            row.baseline = f"{label}: not installed (apt-get install {package})"
            rows.append(row)
            continue
        out = work / f"baseline-{package}.tar"
        for _ in range(repeat):
            remove(out)
            seconds, peak = run_isolated(["tar", "-I", program, "-cf", str(out), "-C", str(root), *TAR_EXCLUDES, "."])
            row.theirs.append(seconds)
            row.rss_theirs.append(peak)
        remove(out)
        rows.append(row)
    return rows


def bench_tree(kind: str, root: Path, work: Path, repeat: int, rows: list[Row], rss: dict[str, Any]) -> None:
    patch = root / "patches" / "v1.0.0"
    archive = patch / "patch-v1.0.0.tar.gz"
    baseline = work / f"baseline-{kind}.tar.gz"
    create = Row(f"create-patch, {kind}", "tar -czf", 0.5 if kind == "large" else 0.7)
    for index in range(repeat):
        remove(root / "patches", baseline)
        create.pair(
            index,
            lambda: run_isolated([*INV, "create-patch", "--root", str(root), "--version", "1.0.0"]),
            lambda: run_isolated(["tar", "-czf", str(baseline), "-C", str(root), *TAR_EXCLUDES, "."]),
        )
    rows.append(create)
    sizes = {"ours": archive.stat().st_size, "tar": baseline.stat().st_size}
    if kind == "large":
        rows.extend(parallel_compressor_rows(root, work, create, repeat))
    rss[f"create {kind}"] = (max(create.rss_ours), max(create.rss_theirs))
    print(
        f"  {kind}: archive {sizes['ours'] / 1e6:.1f} MB vs tar.gz {sizes['tar'] / 1e6:.1f} MB "
        f"(x{sizes['ours'] / sizes['tar']:.3f}); create medians ours {statistics.median(create.ours):.2f} s, "
        f"tar {statistics.median(create.theirs):.2f} s",
        flush=True,
    )

    if kind == "large":
        verify = Row("verify-patch, large", "sha256sum -c", 1.2)
        deep = Row("verify-patch --deep, large", "tar -tzf", None, "info")
        for index in range(repeat):
            verify.pair(
                index,
                lambda: run_isolated([*INV, "verify-patch", "--root", str(root), "--version", "1.0.0"]),
                lambda: run_isolated(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=patch),
            )
            deep.pair(
                index,
                lambda: run_isolated([*INV, "verify-patch", "--deep", "--root", str(root), "--version", "1.0.0"]),
                lambda: run_isolated(["tar", "-tzf", str(archive)]),
            )
        rows += [verify, deep]

    places = [("", work)]
    shm = Path("/dev/shm")
    if kind == "large" and shm.is_dir() and shutil.disk_usage(shm).free > 3 * sizes["ours"] * 2:
        places.append((", tmpfs", shm))  # the CPU part alone: no disk, no journal
    for label, place in places:
        extract = Row(f"staging extraction, {kind}{label}", "tar -xzf", 1.5 if kind == "large" else None, "info")
        ours_dest, tar_dest = place / f"patchflow-x-ours-{kind}", place / f"patchflow-x-tar-{kind}"

        def ours_extract(dest: Path = ours_dest) -> tuple[float, int]:
            return run_isolated([sys.executable, "-c", EXTRACT, str(archive), str(patch / "manifest.json"), str(dest)])

        def tar_extract(dest: Path = tar_dest) -> tuple[float, int]:
            dest.mkdir()
            return run_isolated(["tar", "-xzf", str(archive), "-C", str(dest)])

        try:
            for index in range(repeat):
                remove(ours_dest, tar_dest)
                extract.pair(index, ours_extract, tar_extract)
        finally:
            remove(ours_dest, tar_dest)
        rows.append(extract)
        if not label:
            rss[f"extract {kind}"] = (max(extract.rss_ours), max(extract.rss_theirs))

    # delta: one source file changed (and VERSION, which create-patch requires to name the patch)
    target = next(p for p in sorted((root / "src").rglob("*.tsx")))
    original = target.read_bytes()
    version_file = root / "VERSION"
    original_version = version_file.read_bytes()
    try:
        target.write_bytes(original + b"\n// changed in 1.0.1\n")
        version_file.write_text("1.0.1\n")
        seconds, _ = run_isolated([*INV, "create-patch", "--root", str(root), "--version", "1.0.1", "--base", "1.0.0"])
        delta = root / "patches" / "v1.0.1"
        rss[f"delta {kind}"] = {
            "full archive": sizes["ours"],
            "delta archive": (delta / "patch-v1.0.1.tar.gz").stat().st_size,
            "full folder": folder_bytes(patch),
            "delta folder": folder_bytes(delta),
            "manifest": (delta / "manifest.json").stat().st_size,
            "seconds": seconds,
        }
    finally:
        target.write_bytes(original)
        version_file.write_bytes(original_version)
        shutil.rmtree(root / "patches" / "v1.0.1", ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--small-only", action="store_true", help="only the small tree (quick check)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement (median)")
    parser.add_argument("--keep", type=Path, help="generate the trees in this folder and keep them for reuse")
    parser.add_argument("--workdir", type=Path, help="folder for temporary files (default: the system temp)")
    parser.add_argument("--skip-db", action="store_true", help="skip the database dump/restore row")
    parser.add_argument("--skip-upload", action="store_true", help="skip the upload row (three local sshd)")
    parser.add_argument("--skip-rehearse", action="store_true", help="skip the rehearsal row (sample at ~100 MB)")
    parser.add_argument("--skip-window", action="store_true", help="skip the stopped-window rows (sample install)")
    parser.add_argument(
        "--window-large-rows",
        type=int,
        default=0,
        help="also time the stopped-window rows with a database of this many rows (3,500,000: about 1 GB)",
    )
    options = parser.parse_args()

    load_start = os.getloadavg()
    print(
        f"patchflow bench: {os.cpu_count()} cores, load average at start "
        f"{load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}; median of {options.repeat}",
        flush=True,
    )
    from patchflow.archive.codec import CODEC, LEVEL_PACKED, LEVEL_TEXT

    print(f"codec {CODEC} (levels {LEVEL_TEXT}/{LEVEL_PACKED}), trees seed {SEED}", flush=True)
    if options.workdir:  # the bench's folder goes inside it: make it, as --keep's
        Path(options.workdir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="patchflow-bench-", dir=options.workdir))
    trees = options.keep.resolve() if options.keep else work / "trees"
    trees.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    extra: dict[str, Any] = {}
    try:
        for kind in ("small",) if options.small_only else ("small", "large"):
            root = ensure_tree(trees, kind)
            bench_tree(kind, root, work, options.repeat, rows, extra)
            if kind == "small" and not options.skip_upload:
                from bench_upload import measure_upload

                patch = root / "patches" / "v1.0.0"
                size = sum(p.stat().st_size for p in patch.iterdir())
                three, one, cpu_one = measure_upload(patch, work / "upload", options.repeat, INV, run_isolated)
                upload = Row(f"upload {size / 1e6:.1f} MB patch: 3 hosts, --parallel 3", "1 host", 1.5)
                upload.ours, upload.theirs = three, one
                rows.append(upload)
                extra["upload floor"] = (statistics.median(cpu_one), statistics.median(one), os.cpu_count() or 1)
            shutil.rmtree(root / "patches", ignore_errors=True)

        startup = Row("inv start-up alone (inv --list)", "—", None, "info")
        for _ in range(options.repeat):
            startup.ours.append(run_isolated([*INV, "--list"])[0])
        rows.append(startup)

        status_root = make_status_root(work / "status")
        status = Row("patch-status, 50 patches + 50 backups", "—", 0.5)
        first = Row("patch-status, first run (no cache)", "—", None, "info")
        for _ in range(options.repeat):
            (status_root / ".patchflow" / "verify-cache.json").unlink(missing_ok=True)
            first.ours.append(run_isolated([*INV, "patch-status", "--root", str(status_root)])[0])
            status.ours.append(run_isolated([*INV, "patch-status", "--root", str(status_root)])[0])
        rows += [status, first]

        if not options.skip_db:
            from bench_db import measure_database

            def timed(action: Callable[[], Any]) -> float:
                settle()
                started = time.perf_counter()
                action()
                return time.perf_counter() - started

            result = measure_database(options.repeat, timed, rows=350_000)
            samples = result["samples"]
            dump = Row("database dump", "pg_dump -Fc", 1.2)
            dump.ours, dump.theirs = samples["ours_dump"], samples["pg_dump"]
            restore = Row("database restore (beside, swap)", "createdb + pg_restore", 1.2)
            restore.ours, restore.theirs = samples["ours_restore"], samples["pg_restore"]
            rows += [dump, restore]
            print(
                f"  database {result['database_bytes'] / 1e6:.0f} MB, dump {result['dump_bytes'] / 1e6:.0f} MB",
                flush=True,
            )
        if not options.skip_rehearse:
            from bench_rehearse import describe, measure_rehearsal

            result = measure_rehearsal(work / "rehearse", options.repeat)
            rehearse = Row("rehearsed migration, ~100 MB sample", "apply's migrate step", 2.0)
            rehearse.ours, rehearse.theirs = result["rehearsed"], result["applied"]
            rows.append(rehearse)
            extra["rehearsal"] = describe(result)
        if not options.skip_window:
            from bench_window import measure_window

            for size in (350_000, *([options.window_large_rows] if options.window_large_rows else [])):
                window = measure_window(options.repeat, INV, settle, size)
                samples = window["samples"]
                megabytes = window["database_bytes"] / 1e6
                stopped = Row(f"stopped window, no migration, {megabytes:.0f} MB db", "floor", None, margin=0.5)
                stopped.ours, stopped.theirs = samples["apply"], samples["floor"]
                dumped = Row("  its dump, before the stop (not in it)", "—", None, "info")
                dumped.ours = samples["dump"]
                back = Row("  its rollback's stopped window", "floor", None, "info")
                back.ours, back.theirs = samples["rollback"], samples["floor"]
                rows += [stopped, dumped, back]
                window = measure_window(options.repeat, INV, settle, size, migration=True, snapshot="auto")
                samples = window["samples"]
                megabytes = window["database_bytes"] / 1e6
                label = f"stopped window, a migration, snapshot, {megabytes:.0f} MB db"
                stopped = Row(label, "floor + its migrate step", None, margin=1.0)
                stopped.ours = samples["apply"]
                stopped.theirs = [f + m for f, m in zip(samples["floor"], samples["migrate"], strict=True)]
                copied = Row("  its snapshot step (in it)", "cp -r + sync of the db files", None, "info")
                copied.ours, copied.theirs = samples["snapshot"], samples["disk_copy"]
                after = Row("  its dump of the snapshot, after the commit (not in it)", "—", None, "info")
                after.ours = samples["dump_after"]
                back = Row("  its rollback's stopped window (the snapshot renamed back)", "its apply", None, "info")
                back.ours, back.theirs = samples["rollback"], samples["apply"]
                rows += [stopped, copied, after, back]
            window = measure_window(options.repeat, INV, settle, files=20_000)
            samples = window["samples"]
            grown = Row("stopped window, a release adding 20,000 files: rollback", "its apply", None, margin=0.25)
            grown.ours, grown.theirs = samples["rollback"], samples["apply"]
            rows.append(grown)
            window = measure_window(options.repeat, INV, settle, migration=True, snapshot="off")
            samples = window["samples"]
            megabytes = window["database_bytes"] / 1e6
            label = f"stopped window, a migration, dump inside, database_snapshot=off, {megabytes:.0f} MB db"
            stopped = Row(label, "floor", None, "info")
            stopped.ours, stopped.theirs = samples["apply"], samples["floor"]
            copied = Row("  its backup step (in it)", "—", None, "info")
            copied.ours = samples["backup"]
            rows += [stopped, copied]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print_table(rows)
    print()
    print("peak RSS (MiB): patchflow / baseline")
    for key, value in extra.items():
        if key.startswith(("create", "extract")):
            print(f"  {key:<16} {value[0] / 1024:7.1f} / {value[1] / 1024:6.1f}")
    if "upload floor" in extra:
        cpu, wall, cores = extra["upload floor"]
        print(
            f"upload floor: one host costs the bench's own processes {cpu:.2f} CPU-s in {wall:.2f} s (client, sshd "
            f"and the host's own checks, all on this machine; other jobs not counted); three hosts need about 3 x {cpu:.2f} CPU-s on {cores} cores: "
            f"at least {3 * cpu / cores:.2f} s = {3 * cpu / cores / wall:.2f}x the one-host time"
        )
    for key, value in extra.items():
        if key.startswith("delta"):
            print(
                f"{key}: one-file change: delta archive {value['delta archive']} B vs full archive "
                f"{value['full archive']} B ({100 * value['delta archive'] / value['full archive']:.4f}%); "
                f"delta folder {value['delta folder']} B vs full folder {value['full folder']} B "
                f"({100 * value['delta folder'] / value['full folder']:.3f}%, goal < 1%: "
                f"{'holds' if value['delta folder'] < 0.01 * value['full folder'] else 'NO'}; manifest "
                f"{value['manifest']} B); delta created in {value['seconds']:.2f} s"
            )
    if "rehearsal" in extra:
        print(extra["rehearsal"])
    load_end = os.getloadavg()
    print(f"load average at end {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
