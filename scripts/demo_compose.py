"""`make demo-compose`: the whole patch lifecycle on the bundled example's docker compose stack.

Like ``scripts/demo.py``, but the install runs as a compose project from
``docker/docker-compose.local.yml`` (api and worker images built locally, PostgreSQL in a
container with the named volume ``pgdata``; no registry needed): patchflow uses its compose
service manager and runs pg_dump/pg_restore/psql inside the postgres service. It brings the
stack up, installs 2.2.0, applies 2.3.0 (images built before the stop, stopped window printed),
rolls back, and proves that files, database and the ``pgdata`` volume are back as they were.
Every container, volume and image of the demo project is removed at the end; the workspace stays
in .demo-compose/ for inspection.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "tests"))

from demo import PATCHFLOW, banner, health, tree_digest  # noqa: E402
from sample_workspace import copy_patch, make_release  # noqa: E402
from support.compose import ComposeInstall  # noqa: E402
from support.services import docker_available  # noqa: E402


def inv(*args: str, check: bool = True) -> int:
    """Run a patchflow task (``patchflow <args>``) with no terminal on stdin, echoing it."""
    print("$ patchflow " + " ".join(args), flush=True)
    code = subprocess.run([PATCHFLOW, *args], stdin=subprocess.DEVNULL, check=False).returncode
    if check and code != 0:
        raise SystemExit(f"demo-compose: `patchflow {' '.join(args)}` failed with exit code {code}")
    return code


def main() -> int:
    reason = docker_available()
    if reason is not None:
        print(f"demo-compose: {reason}", file=sys.stderr)
        return 1
    demo = REPO / ".demo-compose"
    if demo.exists():
        subprocess.run(["rm", "-rf", str(demo)], check=True)
    demo.mkdir()
    project = f"primeflow-demo-{uuid.uuid4().hex[:6]}"
    install = ComposeInstall.create(demo / "install", project)
    root = ["--root", str(install.root)]
    try:
        banner(f"Starting the compose stack (project {project}, api on port {install.port})")
        print("$ " + " ".join([*install.compose_args(), "config", "--services"]))
        print(install.compose("config", "--services"), end="")
        inv("up", *root)
        inv("ps", *root)

        banner("Installing PrimeFlow 2.2.0 (patch 2.2.0: migrations inside the postgres container)")
        inv("create-patch", *root)
        inv("apply-patch", *root, "--version", "2.2.0", "--force", "--yes")
        install.psql(
            'INSERT INTO "User" ("email", "name", "role", "updatedAt") '
            "VALUES ('customer@acme.test', 'Customer data', 'MEMBER', CURRENT_TIMESTAMP)"
        )
        print("health:", health(install.health_url))
        before_tree = tree_digest(install.root)
        before_db = install.pg_dump()
        volume_created = install.volume_created()
        containers = install.container_ids()
        print(f"volume {install.volume} created at {volume_created}")

        banner("Developer side: release 2.3.0 (new migration, added/changed/deleted files)")
        source = make_release(install.root, demo / "source-2.3.0", "2.3.0")
        inv("create-patch", "--root", str(source))
        inv("verify-patch", "--root", str(source), "--version", "2.3.0")
        patch_dir = copy_patch(source, install.root, "2.3.0")
        subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=patch_dir, check=True)

        banner("Dry run of the apply")
        inv("apply-patch", *root, "--version", "2.3.0", "--dry-run")
        banner("Applying 2.3.0 (images built in staging before api/worker stop; postgres keeps running)")
        inv("apply-patch", *root, "--version", "2.3.0", "--yes")
        print("health:", health(install.health_url))
        after = install.container_ids()
        for service in ("api", "worker", "postgres"):
            same = after.get(service) == containers.get(service)
            print(f"container {service:<8} {'kept' if same else 'replaced'} ({after.get(service, '?')[:12]})")
        users = install.psql('SELECT count(*) FROM "User"')
        print(f'rows in "User" after 2.3.0: {users}')
        inv("ps", *root)
        inv("logs", *root, "--service", "api", "--tail", "3")
        inv("patch-status", *root)

        banner("Rolling back 2.3.0 (database restored inside the container)")
        inv("rollback-patch", *root, "--version", "2.3.0", "--yes")
        print("health:", health(install.health_url))
        same_tree = tree_digest(install.root) == before_tree
        same_db = install.pg_dump() == before_db
        same_volume = install.volume_created() == volume_created
        print(f"files identical to 2.2.0:    {'yes' if same_tree else 'NO'}")
        print(f"database identical to 2.2.0: {'yes' if same_db else 'NO'}")
        print(f"pgdata volume never recreated: {'yes' if same_volume else 'NO'}")
        inv("patch-status", *root)
        if not (same_tree and same_db and same_volume):
            return 1
        banner(f"Done. The workspace is in {demo} (the demo's containers, volume and images are removed)")
        return 0
    finally:
        install.remove()


if __name__ == "__main__":
    sys.exit(main())
