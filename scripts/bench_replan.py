"""What deciding again under the lock costs an apply (issue 19, field failure R01).

An apply plans before its prompt and plans again once it holds the lock
(:meth:`patchflow.lifecycle.apply_prepare.PrepareSteps.decide_again`: installed version, patch folder stamp, version
checks, the plan with the tree scanned using the first scan's stats). This times, in one process,
the first plan (``make_plan`` step: cold, every file hashed unless the install's stats cache knows
it) and the plan again under the lock, ``--repeat`` times, on:

* ``--sample``: the bundled sample at 2.2.0 with its PostgreSQL database (a throwaway cluster from
  tests/support/services.py), planning 2.3.0 (database queries and squawk lint included);
* ``--files N``: a generated tree of about N patchable files (scripts/bench_tree.py's mix, plus an
  excluded node_modules/ and .git/), installed as 1.0.0 by patchflow itself (no services, no
  database), planning 1.1.0 (ten files changed).

Usage: python scripts/bench_replan.py [--sample] [--files 20000] [--repeat 5] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO))

from bench_tree import SPECS, TreeSpec, make_tree  # noqa: E402

INV = [str(Path(sys.executable).parent / "inv"), "-r", str(REPO)]


def inv(root: Path, *args: str, env: dict[str, str] | None = None) -> None:
    """Run ``inv <task> --root root <args>`` and fail loudly on a non-zero exit."""
    done = subprocess.run(
        [*INV, args[0], "--root", str(root), *args[1:]],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"inv {' '.join(args)} failed:\n{done.stdout}{done.stderr}")


def time_replan(root: Path, version: str, repeat: int) -> tuple[float, list[float]]:
    """``(first plan seconds, [plan-again seconds...])`` for applying ``version`` to ``root``."""
    from patchflow.config import load_settings
    from patchflow.context import Context
    from patchflow.lifecycle.apply import ApplyRun
    from patchflow.version import parse_version

    ctx = Context.create(load_settings(root))
    run = ApplyRun(ctx, parse_version(version))
    run.verify()
    began = time.perf_counter()
    run.make_plan()
    first = time.perf_counter() - began
    again = []
    for _ in range(repeat):
        began = time.perf_counter()
        run.decide_again(provisional=False, reasons=[])  # raises PlanChanged if anything differed
        again.append(time.perf_counter() - began)
    return first, again


def generated_install(work: Path, files: int) -> Path:
    """A tree of about ``files`` patchable files installed as 1.0.0, with patches/v1.1.0 beside."""
    small = SPECS["small"]
    scale = files / small.files
    SPECS["replan"] = TreeSpec(
        int(small.text * scale),
        3_000,
        int(small.json * scale),
        small.json_mean,
        int(small.assets * scale),
        6_000,
        small.big_text,
        small.big_binary,
        small.big_mean,
        small.node_modules,
        small.git_objects,
    )
    root = work / "install"
    make_tree(root, "replan")
    env = {"PATCHFLOW_SERVICE_MANAGER": "none", "PATCHFLOW_DATABASE_MODE": "none"}
    for key, value in env.items():
        os.environ[key] = value
    inv(root, "create-patch")
    inv(root, "apply-patch", "--version", "1.0.0", "--force", "--yes")
    source = work / "source"
    shutil.copytree(root, source, symlinks=True, ignore=shutil.ignore_patterns("patches", "backups", ".patchflow"))
    (source / "VERSION").write_text("1.1.0\n")
    changed = sorted((source / "docs").rglob("*.md"))[:10]
    for path in changed:
        path.write_text(path.read_text() + "\n// 1.1.0\n")
    inv(source, "create-patch")
    shutil.copytree(source / "patches" / "v1.1.0", root / "patches" / "v1.1.0")
    return root


def report(label: str, first: float, again: list[float]) -> None:
    print(
        f"{label}: first plan {first * 1000:.0f} ms; plan again under the lock: median "
        f"{statistics.median(again) * 1000:.0f} ms (min {min(again) * 1000:.0f}, max {max(again) * 1000:.0f}, "
        f"n={len(again)})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", action="store_true", help="time the bundled sample (starts PostgreSQL)")
    parser.add_argument("--files", type=int, default=0, help="time a generated tree of about this many files")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None)
    options = parser.parse_args()
    work = options.workdir or Path(tempfile.mkdtemp(prefix="patchflow-replan-"))
    try:
        if options.files:
            root = generated_install(work / f"tree-{options.files}", options.files)
            report(f"{options.files} files", *time_replan(root, "1.1.0", options.repeat))
        if options.sample:
            sys.path.insert(0, str(REPO / "tests"))
            from sample_workspace import copy_patch, make_release
            from support.installs import start_install  # type: ignore[import-not-found]
            from support.services import PostgresCluster, shared_tempdir  # type: ignore[import-not-found]

            base = shared_tempdir("patchflow-replan-pg-")
            cluster = PostgresCluster.start(base)
            try:
                cluster.create_database("replan")
                install = start_install(work / "sample", cluster, "replan")
                try:
                    source = make_release(install.root, work / "sample-2.3.0", "2.3.0")
                    inv(source, "create-patch")
                    copy_patch(source, install.root, "2.3.0")
                    report("sample", *time_replan(install.root, "2.3.0", options.repeat))
                finally:
                    inv(install.root, "down")
            finally:
                cluster.stop()
                shutil.rmtree(base, ignore_errors=True)
    finally:
        if options.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
