"""`make demo`: the whole patch lifecycle on the bundled example, against real processes.

Starts a throwaway PostgreSQL cluster and the sample API/worker at 2.2.0 with data, builds a
2.3.0 release (new migration; added, changed and deleted files), creates and verifies the patch,
applies it (health check, stopped window), shows status, rolls back, and proves that files and
database are back to 2.2.0 byte for byte. Everything it started is stopped at the end; the
workspace stays in .demo/ for inspection.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "tests"))

from sample_workspace import copy_patch, make_release, prepare_workspace  # noqa: E402
from support.services import PostgresCluster  # noqa: E402

INV = [str(Path(sys.executable).parent / "inv"), "-r", str(REPO)]


def banner(text: str) -> None:
    print(f"\n\033[1;36m==> {text}\033[0m", flush=True)


def inv(*args: str, check: bool = True) -> int:
    print("$ inv " + " ".join(args), flush=True)
    code = subprocess.run([*INV, *args], stdin=subprocess.DEVNULL, check=False).returncode
    if check and code != 0:
        raise SystemExit(f"demo: `inv {' '.join(args)}` failed with exit code {code}")
    return code


def tree_digest(root: Path) -> str:
    """sha256 over every path, type, mode and content under root (patchflow's own folders excluded)."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("patches", "backups", ".patchflow"))
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            st = path.lstat()
            digest.update(f"{path.relative_to(root)}|{st.st_mode:o}|".encode())
            if path.is_symlink():
                digest.update(os.readlink(path).encode())
            elif path.is_file():
                digest.update(path.read_bytes())
    return digest.hexdigest()


def full_dump(cluster: PostgresCluster, url: str) -> bytes:
    """A plain pg_dump of the whole database (schema, data, owners) with a fixed restrict key."""
    return subprocess.run(
        [str(cluster.bin("pg_dump")), "--restrict-key=patchflowdemo", "--dbname", url], capture_output=True, check=True
    ).stdout


def health(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return f"HTTP {response.status} {response.read().decode()}"
    except Exception as exc:
        return f"no answer ({exc})"


def main() -> int:
    demo = REPO / ".demo"
    if demo.exists():
        shutil.rmtree(demo)
    demo.mkdir()
    base = Path(tempfile.mkdtemp(prefix="patchflow-demo-pg-"))
    os.chmod(base, 0o755)
    banner("Starting a throwaway PostgreSQL cluster")
    cluster = PostgresCluster.start(base)
    install: Path | None = None
    try:
        cluster.create_database("primeflow")
        url = cluster.url("primeflow")
        install = prepare_workspace(demo / "install", database_url=url)
        env_text = (install / ".env").read_text()
        health_url = next(
            line.split("=", 1)[1] for line in env_text.splitlines() if line.startswith("PATCHFLOW_HEALTH_URL")
        )
        root = ["--root", str(install)]

        banner("Installing PrimeFlow 2.2.0 (patch 2.2.0: migrations + start)")
        inv("create-patch", *root)
        inv("apply-patch", *root, "--version", "2.2.0", "--force", "--yes")
        cluster.psql(
            "primeflow",
            """INSERT INTO "User" ("email","name","role","updatedAt")
                                     VALUES ('customer@acme.test','Customer data','MEMBER',CURRENT_TIMESTAMP)""",
        )
        print("health:", health(health_url))
        before_tree = tree_digest(install)
        before_db = full_dump(cluster, url)

        banner("Developer side: release 2.3.0 (new migration, added/changed/deleted files)")
        source = make_release(install, demo / "source-2.3.0", "2.3.0")
        inv("create-patch", "--root", str(source))
        inv("verify-patch", "--root", str(source), "--version", "2.3.0")
        patch_dir = copy_patch(source, install, "2.3.0")
        print(f"patch folder: {patch_dir}")
        subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=patch_dir, check=True)

        banner("Dry run of the apply")
        inv("apply-patch", *root, "--version", "2.3.0", "--dry-run")
        banner("Applying 2.3.0")
        inv("apply-patch", *root, "--version", "2.3.0", "--yes")
        print("health:", health(health_url))
        users = cluster.psql("primeflow", 'SELECT count(*) FROM "User"').strip()
        print(f'rows in "User" after 2.3.0: {users}')
        inv("patch-status", *root)

        banner("Rolling back 2.3.0")
        inv("rollback-patch", *root, "--version", "2.3.0", "--yes")
        print("health:", health(health_url))
        after_tree = tree_digest(install)
        after_db = full_dump(cluster, url)
        same_tree = before_tree == after_tree
        same_db = before_db == after_db
        print(f"files identical to 2.2.0:    {'yes' if same_tree else 'NO'}")
        print(f"database identical to 2.2.0: {'yes' if same_db else 'NO'}")
        inv("patch-status", *root)
        if not (same_tree and same_db):
            return 1
        banner(f"Done. The workspace is in {demo} (patch: {patch_dir})")
        return 0
    finally:
        if install is not None:
            subprocess.run(
                [*INV, "down", "--root", str(install)], stdin=subprocess.DEVNULL, check=False, capture_output=True
            )
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
