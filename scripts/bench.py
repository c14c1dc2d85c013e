"""Benchmark (nox -s bench): create-patch and verify-patch against GNU tools on the same tree.

Results are ratios to a baseline measured in the same run, never absolute thresholds:
  create-patch  vs  tar -czf           (wall time, peak RSS of the process)
  verify-patch  vs  sha256sum + tar -tzf
Usage: python scripts/bench.py [--files N] [--mib M] [--repeat R]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
INV = [str(Path(sys.executable).parent / "inv"), "-r", str(REPO)]


def make_tree(root: Path, files: int, mib: int) -> None:
    rng = random.Random(42)
    per_file = max(1, mib * 1024 * 1024 // files)
    words = [f"token{i}" for i in range(500)]
    for index in range(files):
        folder = root / f"apps/mod{index % 40}/src/part{index % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        if index % 5 == 0:  # incompressible assets
            data = rng.randbytes(per_file)
        else:  # source-like text
            text = " ".join(rng.choice(words) for _ in range(per_file // 7))
            data = text.encode()[:per_file]
        (folder / f"file{index}.js").write_bytes(data)
    (root / "VERSION").write_text("1.0.0\n")


def run_isolated(args: list[str], cwd: Path | None = None) -> tuple[float, int]:
    """Run a measurement in a fresh Python child so RUSAGE_CHILDREN peaks do not mix."""
    code = (
        "import resource,subprocess,sys,time,json;"
        "s=time.perf_counter();"
        f"subprocess.run({args!r},cwd={str(cwd) if cwd else None!r},check=True,stdout=subprocess.DEVNULL,"
        "stderr=subprocess.DEVNULL,stdin=subprocess.DEVNULL);"
        "print(json.dumps([time.perf_counter()-s, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    import json

    seconds, rss = json.loads(out)
    return float(seconds), int(rss)


def best(runs: list[tuple[float, int]]) -> tuple[float, int]:
    return min(r[0] for r in runs), max(r[1] for r in runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="patchflow-bench-"))
    try:
        tree = work / "tree"
        make_tree(tree, options.files, options.mib)
        ours, tars, verify, gnu_verify = [], [], [], []
        for _ in range(options.repeat):
            shutil.rmtree(tree / "patches", ignore_errors=True)
            ours.append(run_isolated([*INV, "create-patch", "--root", str(tree), "--version", "1.0.0"]))
            tars.append(
                run_isolated(["tar", "-czf", str(work / "baseline.tar.gz"), "-C", str(tree), "--exclude=patches", "."])
            )
            verify.append(run_isolated([*INV, "verify-patch", "--root", str(tree), "--version", "1.0.0"]))
            folder = tree / "patches" / "v1.0.0"
            gnu_verify.append(
                run_isolated(["sh", "-c", "sha256sum -c SHA256SUMS && tar -tzf patch-v1.0.0.tar.gz"], folder)
            )
        (c_s, c_rss), (t_s, t_rss) = best(ours), best(tars)
        (v_s, v_rss), (g_s, g_rss) = best(verify), best(gnu_verify)
        ours_size = (tree / "patches" / "v1.0.0" / "patch-v1.0.0.tar.gz").stat().st_size
        tar_size = (work / "baseline.tar.gz").stat().st_size
        print(f"tree: {options.files} files, {options.mib} MiB; best of {options.repeat} runs")
        print(
            f"create-patch {c_s:7.2f} s {c_rss / 1024:7.1f} MiB | tar -czf {t_s:7.2f} s {t_rss / 1024:7.1f} MiB "
            f"| time x{c_s / t_s:.2f}  memory x{c_rss / max(t_rss, 1):.2f}  size x{ours_size / tar_size:.3f}"
        )
        print(
            f"verify-patch {v_s:7.2f} s {v_rss / 1024:7.1f} MiB | sha256sum+tar -t {g_s:7.2f} s {g_rss / 1024:7.1f} MiB "
            f"| time x{v_s / g_s:.2f}  memory x{v_rss / max(g_rss, 1):.2f}"
        )
        print(
            "(create-patch includes inv start-up, hashing every file twice and the manifest/README; "
            "memory includes the Python interpreter)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
        os.sync()
    return 0


if __name__ == "__main__":
    sys.exit(main())
