"""`make demo`: patchflow embedded in a PrimeFlow-shaped checkout, the whole lifecycle through that
checkout's own `make` targets, against a real PostgreSQL and real node services.

1. a throwaway PostgreSQL cluster; a copy of examples/primeflow-checkout (an existing Makefile with
   its own targets and old bash patch scripts, flat migrations, `DATABASE_URL=...?schema=public`,
   a `/health` without a version, 0664 files) as the server's checkout at 3.0.0;
2. `patchflow init` in it (tasks.py, noxfile.py, Makefile targets, [tool.patchflow] from the compose
   file); this machine runs the services without docker, so `--set` writes the command manager,
   its commands and the health URL into the checkout's own .patchflow/host.toml;
3. 3.0.0 installed by patchflow itself (`make create-patch`, `make apply-patch ... FORCE=1 YES=1`);
4. the developer's release 3.1.0 (a new flat migration; added, changed, deleted files), its patch
   made and verified with `make create-patch` / `make verify-patch` in the release tree;
5. `make apply-patch VERSION=3.1.0 DRY_RUN=1`, then `YES=1`, `make patch-status`,
   `make rollback-patch VERSION=3.1.0 YES=1`: files and database byte-identical to 3.0.0;
6. remote deploy: a private sshd on 127.0.0.1 plays the server; from the developer's release tree
   (the inventory in its own .patchflow/host.toml) `inv setup-host --accept-new-host-key` (first contact: the
   host key is shown and remembered), `make deploy HOST=primeflow-server VERSION=3.1.0 YES=1`
   (upload checked on the server, the same apply-patch run there detached, its log streamed),
   `make patch-status HOST=primeflow-server`.

Everything it started is stopped at the end; the workspace stays in .demo/.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import tomlkit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "tests"))

from primeflow_checkout import make_checkout_release, prepare_checkout  # noqa: E402
from sample_workspace import free_port  # noqa: E402
from support.services import PostgresCluster, SshServer, shared_tempdir  # noqa: E402

INV = str(Path(sys.executable).parent / "inv")
PATCHFLOW = str(Path(sys.executable).parent / "patchflow")
OWN = ("patches", "backups", ".patchflow")
# the operator's shell with patchflow installed (an activated virtualenv): the checkout's make
# targets find `patchflow` on PATH (on a server, setup-host puts it in .patchflow/venv instead)
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def banner(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def run(args: list[str], cwd: Path, *, check: bool = True) -> int:
    """Run ``args`` in ``cwd`` as an operator would (no terminal on stdin), echoing the command."""
    print(f"$ (cd {cwd.name} && {' '.join(args)})", flush=True)
    code = subprocess.run(args, cwd=cwd, stdin=subprocess.DEVNULL, env=ENV, check=False).returncode
    if check and code != 0:
        raise SystemExit(f"demo: `{' '.join(args)}` failed with exit code {code}")
    return code


def tree_digest(root: Path) -> str:
    """sha256 over every path, type, mode and content under root (patchflow's own folders excluded)."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not (Path(dirpath) == root and d in OWN))
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
    base = shared_tempdir("patchflow-demo-pg-")
    banner("A throwaway PostgreSQL cluster")
    cluster = PostgresCluster.start(base)
    checkout: Path | None = None
    server: SshServer | None = None
    try:
        cluster.create_database("primeflow")
        url = cluster.url("primeflow")
        port = free_port()
        checkout = prepare_checkout(demo / "primeflow", database_url=url, port=port)
        health_url = f"http://127.0.0.1:{port}/health"
        print(f"checkout {checkout} (DATABASE_URL={url}?schema=public, API on port {port})")

        banner("Sign releases: a key pair on the developer's side, its verify key pinned on the server")
        signing_key = demo / "release-signing.key"
        print(f"$ (cd {demo.name} && patchflow create-signing-key --out {signing_key.name})", flush=True)
        made = subprocess.run(
            [PATCHFLOW, "create-signing-key", "--out", str(signing_key)],
            cwd=demo,
            env=ENV,
            capture_output=True,
            text=True,
        )
        print(made.stdout, end="", flush=True)
        if made.returncode != 0:
            raise SystemExit(f"demo: create-signing-key failed:\n{made.stderr}")
        public = next(line.split(": ", 1)[1] for line in made.stdout.splitlines() if line.startswith("verify key: "))
        ENV["PATCHFLOW_SIGNING_KEY"] = str(signing_key)  # create-patch signs SHA256SUMS with it

        banner("Embed patchflow in the checkout: patchflow init (its Makefile keeps its own targets)")
        host_settings = {
            "verify_key": public,  # an unsigned or differently signed patch is refused here
            "service_manager": "command",  # this demo machine runs the services without docker
            "commands": "api=node apps/api/server.js;worker=node apps/worker/index.js",
            "health_url": health_url,
            "database_mode": "url",
            "health_timeout": "20",
        }
        sets = [arg for key, value in host_settings.items() for arg in ("--set", f"{key}={value}")]
        run([PATCHFLOW, "init", "--root", str(checkout), "--yes", *sets], demo)
        print((checkout / ".patchflow" / "host.toml").read_text(encoding="utf-8"), end="")
        run(["make", "-s", "patch-help"], checkout)

        banner("Install 3.0.0 with patchflow itself (its migrations, its services)")
        run(["make", "-s", "create-patch"], checkout)
        run(["make", "-s", "apply-patch", "VERSION=3.0.0", "FORCE=1", "YES=1"], checkout)
        cluster.psql(
            "primeflow",
            """INSERT INTO "User" ("email", "name", "passwordHash", "role")
               VALUES ('customer@acme.test', 'Customer data', 'x', 'MEMBER')""",
        )
        print("health:", health(health_url))
        before_tree = tree_digest(checkout)
        before_db = full_dump(cluster, url)

        banner("Developer side: release 3.1.0 (a flat migration; added, changed and deleted files)")
        source = make_checkout_release(checkout, demo / "release-3.1.0", "3.1.0")
        run(["make", "-s", "create-patch"], source)
        run(["make", "-s", "verify-patch", "VERSION=3.1.0"], source)
        patch = checkout / "patches" / "v3.1.0"
        shutil.copytree(source / "patches" / "v3.1.0", patch)
        subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=patch, check=True)

        banner("On the server, from a subfolder of the checkout: dry run, then the apply")
        run(["make", "-s", "-C", "..", "apply-patch", "VERSION=3.1.0", "DRY_RUN=1"], checkout / "apps")
        run(["make", "-s", "apply-patch", "VERSION=3.1.0", "YES=1"], checkout)
        print("health:", health(health_url))
        users = cluster.psql("primeflow", 'SELECT count(*) FROM "User"').strip()
        print(f'rows in "User" after 3.1.0: {users}')
        run(["make", "-s", "patch-status"], checkout)

        banner("Roll back 3.1.0")
        run(["make", "-s", "rollback-patch", "VERSION=3.1.0", "YES=1"], checkout)
        print("health:", health(health_url))
        same_tree = before_tree == tree_digest(checkout)
        same_db = before_db == full_dump(cluster, url)
        print(f"files identical to 3.0.0:    {'yes' if same_tree else 'NO'}")
        print(f"database identical to 3.0.0: {'yes' if same_db else 'NO'}")
        run(["make", "-s", "patch-status"], checkout)
        if not (same_tree and same_db):
            return 1

        banner("Deploy over SSH: from the developer's release tree to the server (a local sshd)")
        server = SshServer.start(base)
        ssh = demo / "ssh"
        ssh.mkdir()
        (ssh / "config").write_text(
            f"Host primeflow-server\n  HostName {server.host}\n  Port {server.port}\n  User {server.user}\n"
            f"  IdentityFile {server.client_key}\n  IdentitiesOnly yes\n"
        )
        # the deploy inventory is the developer machine's own (its .patchflow/host.toml, never in a patch)
        inventory = tomlkit.document()
        server_entry = tomlkit.table()
        server_entry.update({"path": str(checkout), "role": "staging", "python": sys.executable})
        server_entry["python"].comment("where patchflow runs there (setup-host can install it)")
        inventory["hosts"] = tomlkit.table(is_super_table=True)
        inventory["hosts"]["primeflow-server"] = server_entry  # type: ignore[index]
        (source / ".patchflow").mkdir(exist_ok=True)
        (source / ".patchflow" / "host.toml").write_text(tomlkit.dumps(inventory), encoding="utf-8")
        (source / ".patchflow" / "host.toml").chmod(0o600)
        print((source / ".patchflow" / "host.toml").read_text(encoding="utf-8"), end="")
        with open(source / ".env", "a", encoding="utf-8") as handle:
            handle.write(f"PATCHFLOW_SSH_CONFIG={ssh / 'config'}\nPATCHFLOW_SSH_KNOWN_HOSTS={ssh / 'known_hosts'}\n")
        shutil.rmtree(patch)  # the server has not got the patch: deploy uploads it
        print(f"server: {server.user}@{server.host}:{server.port}, checkout {checkout} (at 3.0.0)")
        run([INV, "setup-host", "--host", "primeflow-server", "--accept-new-host-key"], source)
        run(["make", "-s", "deploy", "HOST=primeflow-server", "VERSION=3.1.0", "YES=1"], source)
        run(["make", "-s", "patch-status", "HOST=primeflow-server"], source)
        print("health:", health(health_url))
        installed = (checkout / "VERSION").read_text().strip()
        print(f"the server runs {installed}")
        if installed != "3.1.0":
            return 1
        banner(f"Done. The checkout is in {checkout}")
        return 0
    finally:
        if checkout is not None:
            subprocess.run([INV, "down", "--root", str(checkout)], stdin=subprocess.DEVNULL, check=False)
        if server is not None:
            server.stop()
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
