"""A PrimeFlow-shaped checkout (scripts/primeflow_checkout.py) installed by patchflow and running.

:func:`installed_checkout` makes the checkout at 3.0.0 with ``inv init``, configures this machine's
way of running it (command manager, the api and worker as real node processes, the real
``?schema=public`` URL of a test database) and installs it with ``make apply-patch``; releases are
built from it with :func:`checkout_release` the way a developer would (``make create-patch``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.installs import (
    REPO,
    rewrite_dotenv,
    run_inv,
    start_services,
    stop_here,
    wait_answers,
    wait_trash_deleted,
)

sys.path.insert(0, str(REPO / "scripts"))
from primeflow_checkout import make_checkout_release, prepare_checkout, with_prisma_schema
from sample_workspace import free_port


def make_in(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``make -s <args>`` in ``cwd`` (no terminal) as an operator whose shell has patchflow on PATH
    (an activated virtualenv); the targets find it there when make runs."""
    bindir = Path(sys.executable).parent
    return subprocess.run(
        ["make", "-s", *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"},
    )


def _install(root: Path, health_url: str) -> None:
    """``inv init`` the checkout, set this machine's way of running it in ``.env``, install 3.0.0."""
    assert run_inv("init", "--root", str(root), "--yes").returncode == 0
    with open(root / ".env", "a") as handle:
        handle.write(
            "PATCHFLOW_SERVICE_MANAGER=command\n"
            "PATCHFLOW_COMMANDS=api=node apps/api/server.js;worker=node apps/worker/index.js\n"
            f"PATCHFLOW_HEALTH_URL={health_url}\nPATCHFLOW_DATABASE_MODE=url\nPATCHFLOW_HEALTH_TIMEOUT=6\n"
        )
    for args in (("create-patch",), ("apply-patch", "VERSION=3.0.0", "FORCE=1", "YES=1")):
        done = make_in(root, *args)
        assert done.returncode == 0, done.stdout + done.stderr


@contextmanager
def installed_checkout(folder: Path, cluster: Any) -> Iterator[tuple[Path, str]]:
    """The checkout at 3.0.0 in ``folder/primeflow`` installed by patchflow (command manager, flat
    migrations, a database of ``cluster``) with its services running; yields ``(root, health_url)``.
    Its services are stopped and its database dropped afterwards. Tests that only need it running
    use :class:`CheckoutTemplate` (made once per session)."""
    dbname = f"pf_checkout_{os.urandom(4).hex()}"
    cluster.create_database(dbname)
    port = free_port()
    root = prepare_checkout(folder / "primeflow", database_url=cluster.url(dbname), port=port)
    try:
        health_url = f"http://127.0.0.1:{port}/health"
        _install(root, health_url)
        yield root, health_url
    finally:
        stop_here(root, lambda: run_inv("down", "--root", str(root)))
        cluster.drop_database(dbname)


@dataclass
class CheckoutTemplate:
    """The installed checkout of :func:`installed_checkout` made once per session (services
    stopped), its database a template: :meth:`running` copies both and starts the copy."""

    root: Path
    cluster: Any
    dbname: str

    @classmethod
    def build(cls, folder: Path, cluster: Any) -> CheckoutTemplate:
        dbname = f"pf_checkout_template_{os.urandom(4).hex()}"
        cluster.create_database(dbname)
        port = free_port()
        root = prepare_checkout(folder / "primeflow", database_url=cluster.url(dbname), port=port)
        _install(root, f"http://127.0.0.1:{port}/health")
        done = run_inv("down", "--root", str(root))
        assert done.returncode == 0, done.stdout + done.stderr
        wait_trash_deleted(root)  # every copy starts from this tree
        return cls(root, cluster, dbname)

    @contextmanager
    def running(self, folder: Path) -> Iterator[tuple[Path, str]]:
        """A running copy in ``folder/primeflow`` with its own database (``CREATE DATABASE ...
        TEMPLATE``) and port; yields ``(root, health_url)``. Its services are stopped and its
        databases (also those a restore displaced) dropped afterwards."""
        root = folder / "primeflow"
        shutil.copytree(self.root, root, symlinks=True)
        dbname = f"pf_checkout_{os.urandom(4).hex()}"
        self.cluster.psql("postgres", f'CREATE DATABASE "{dbname}" TEMPLATE "{self.dbname}";\n')
        port = free_port()
        health_url = f"http://127.0.0.1:{port}/health"
        rewrite_dotenv(
            root,
            {
                "PORT": str(port),
                "DATABASE_URL": with_prisma_schema(self.cluster.url(dbname)),
                "PATCHFLOW_HEALTH_URL": health_url,
                "PATCHFLOW_ALLOW_UNSIGNED": "true",  # a checkout reached over SSH does not get the tests' environment
            },
        )
        try:
            start_services(root)
            wait_answers(health_url)
            yield root, health_url
        finally:
            stop_here(root, lambda: run_inv("down", "--root", str(root)))
            rows = self.cluster.psql("postgres", f"SELECT datname FROM pg_database WHERE datname LIKE '{dbname}%';\n")
            for name in rows.split():
                self.cluster.drop_database(name)


def checkout_release(
    root: Path, workdir: Path, version: str, *, edit: Callable[[Path], None] | None = None, **changes: Any
) -> Path:
    """Build release ``version`` of the checkout ``root`` (:func:`make_checkout_release` with
    ``changes``, then ``edit(source)``) with ``make create-patch`` and copy its patch folder into
    ``root/patches``; returns that folder."""
    source = make_checkout_release(root, workdir / f"release-{version}", version, **changes)
    if edit is not None:
        edit(source)
    done = make_in(source, "create-patch")
    assert done.returncode == 0, done.stdout + done.stderr
    target = root / "patches" / f"v{version}"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source / "patches" / f"v{version}", target)
    return target
