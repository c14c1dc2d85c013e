"""Helpers to run patchflow against real PrimeFlow installs built from the bundled sample.

An :class:`Install` is a workspace (see ``scripts/sample_workspace.py``) at 2.2.0 with its
database migrated and its API/worker running as real processes; ``inv`` runs tasks as a
subprocess exactly as an operator would (no terminal on stdin).

Set-up is shared (:class:`InstallTemplate`, one per test session): the 2.2.0 install is made once
by patchflow itself (create-patch, then apply-patch of 2.2.0 on a template database); each test
gets a copy of that tree and a database made with ``CREATE DATABASE ... TEMPLATE``, then starts
its services. Release patches (2.3.0 and its variants) are built once per session and copied into
each install that uses them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from sample_workspace import copy_patch, free_port, make_release, prepare_workspace  # noqa: E402

INV = [str(Path(sys.executable).parent / "inv"), "-r", str(REPO)]
OWN_FOLDERS = ("patches", "backups", ".patchflow")


def run_inv(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``inv <args>`` with stdin closed; returns the completed process (text output)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [*INV, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )


def wait_for_trash_deleters(root: Path, deadline_s: float = 60.0) -> None:
    """Poll until no ``.patchflow/trash-*`` folder of ``root`` is held by a live deleter; raises
    AssertionError after ``deadline_s`` seconds."""
    from patchflow.trash import being_deleted

    end = time.monotonic() + deadline_s
    while any(being_deleted(folder) for folder in (root / ".patchflow").glob("trash-*")):
        assert time.monotonic() < end, f"a trash deleter under {root} still runs after {deadline_s} s"
        time.sleep(0.05)


def tree_state(root: Path, skip: tuple[str, ...] = OWN_FOLDERS) -> dict[str, tuple[str, int, str]]:
    """Every path under ``root`` -> (type, permission bits, sha256 or link target); patchflow's own
    folders (``skip``) at the top level are left out.

    The detached deleter an earlier command started (:mod:`patchflow.trash`) is waited for first
    (polled, 60 s deadline): it is that command's work finishing, not a change by the next one."""
    wait_for_trash_deleters(root)
    state: dict[str, tuple[str, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        if rel_dir == Path("."):
            dirnames[:] = [d for d in dirnames if d not in skip]
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(rel_dir / name) if rel_dir != Path(".") else name
            st = path.lstat()
            if path.is_symlink():
                state[rel] = ("symlink", 0, os.readlink(path))
            elif path.is_dir():
                state[rel] = ("dir", st.st_mode & 0o7777, "")
            else:
                state[rel] = ("file", st.st_mode & 0o7777, hashlib.sha256(path.read_bytes()).hexdigest())
    return state


def get(url: str, timeout: float = 5) -> tuple[int, str]:
    """``(status, body)`` of a GET; status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


@dataclass
class Install:
    """A running sample install. ``cluster`` is the tests' PostgresCluster, ``dbname`` its database."""

    root: Path
    cluster: Any
    dbname: str
    url: str
    port: int

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"

    def inv(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run a task with ``--root`` set to this install."""
        return run_inv(args[0], "--root", str(self.root), *args[1:], env=env, timeout=timeout)

    def pg_dump(self) -> str:
        """A full plain dump (schema + data, owners, privileges) with a fixed restrict key."""
        return subprocess.run(
            [str(self.cluster.bin("pg_dump")), "--restrict-key=patchflowtest", "--dbname", self.url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    def sql(self, statement: str) -> str:
        return str(self.cluster.psql(self.dbname, statement)).strip()

    def state(self) -> dict[str, tuple[str, int, str]]:
        return tree_state(self.root)

    template: InstallTemplate | None = None

    def release(self, workdir: Path, version: str = "2.3.0", **changes: Any) -> Path:
        """Copy the patch of release ``version`` (``make_release`` with ``changes``: ``migration=``,
        ``health_status=``) into this install; built once per session by the template when this
        install came from one, else built from this install in ``workdir``."""
        target = self.root / "patches" / f"v{version}"
        if target.exists():
            shutil.rmtree(target)
        if self.template is not None:
            built = self.template.release_patch(version, **changes)
            shutil.copytree(built, target)
            return target
        source = make_release(self.root, workdir / f"source-{version}", version, **changes)
        done = run_inv("create-patch", "--root", str(source))
        assert done.returncode == 0, done.stderr + done.stdout
        return copy_patch(source, self.root, version)

    def down(self) -> None:
        """Test clean-up: stop the install's services as ``inv down`` does (the core's
        ``services.down`` on this checkout's settings), in this process: no ``inv`` process to start
        (about 0.3 s of CPU) after every test. When patchflow refuses (a test left settings it
        cannot read, or a service that will not stop), ``inv down`` runs instead, whose failure
        is ignored as before."""
        stop_here(self.root, lambda: self.inv("down"))

    def stop_services(self) -> None:
        """Stop the install's services (test clean-up)."""
        done = self.inv("down")
        assert done.returncode == 0, done.stderr + done.stdout


START_SERVICES = """import sys
from patchflow.config import load_settings
from patchflow.context import Context
Context.create(load_settings(sys.argv[1]), log=print).services.up()
"""


def start_services(root: Path) -> None:
    """Test set-up: start the services of the checkout at ``root`` as ``inv up`` does (the core's
    ``services.up`` on its settings), in a short Python process without invoke and the task layer
    (about 0.12 s of CPU less than ``inv up``, for every install a test starts). A process of its
    own, as ``inv`` is: the services it starts are no children of the long-lived pytest worker.
    Raises AssertionError (with the output) when it fails. It does not wait for the server to
    answer: :func:`wait_answers` does, on the port the test gave it."""
    done = subprocess.run(
        [sys.executable, "-c", START_SERVICES, str(root)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr + done.stdout


def wait_answers(url: str, deadline_s: float = 60) -> None:
    """Poll until ``url`` answers at all (any HTTP status: a test may start an unhealthy version),
    so no test reads a server still binding its port; AssertionError after ``deadline_s`` s."""
    wait_until(lambda: get(url, timeout=2)[0] != 0, deadline_s, f"{url} to answer after the services started")


def stop_here(root: Path, fallback: Any) -> None:
    """Stop the services of the checkout at ``root`` in this process (see :meth:`Install.down`);
    ``fallback()`` runs when patchflow raises a :class:`~patchflow.errors.PatchflowError`."""
    from patchflow.config import load_settings
    from patchflow.context import Context
    from patchflow.errors import PatchflowError

    try:
        Context.create(load_settings(root), log=lambda line: None).services.down()
    except PatchflowError:
        fallback()


def rewrite_dotenv(root: Path, values: dict[str, str]) -> None:
    """Set ``values`` in ``root/.env`` (replacing existing keys, appending new ones)."""
    path = root / ".env"
    lines = path.read_text().splitlines() if path.is_file() else []
    out = [line for line in lines if line.split("=", 1)[0] not in values]
    out += [f"{key}={value}" for key, value in values.items()]
    path.write_text("\n".join(out) + "\n")


@dataclass
class InstallTemplate:
    """A sample install at 2.2.0 made once per session, and its database as a template.

    :meth:`new_install` copies it (tree, ``.patchflow`` state, backups) and its database; the
    release patches of :meth:`release_patch` are built once and cached."""

    folder: Path
    root: Path
    cluster: Any
    dbname: str
    _releases: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def build(cls, folder: Path, cluster: Any) -> InstallTemplate:
        """Make the template with patchflow itself: create-patch and apply-patch of 2.2.0 on a new
        database (migrations run, services start), then stop the services."""
        dbname = f"pf_template_{uuid.uuid4().hex[:10]}"
        cluster.create_database(dbname)
        root = prepare_workspace(folder / "install", database_url=cluster.url(dbname))
        template = cls(folder, root, cluster, dbname)
        for args in (("create-patch",), ("apply-patch", "--version", "2.2.0", "--force", "--yes"), ("down",)):
            # its first apply snapshots the new database: dropped at once, every install copies the state
            done = run_inv(args[0], "--root", str(root), *args[1:], env={"PATCHFLOW_SNAPSHOT_KEEP_HOURS": "0"})
            assert done.returncode == 0, done.stderr + done.stdout
        wait_trash_deleted(root)  # every install copies this tree
        template.keep_expected_schema()
        return template

    def keep_expected_schema(self) -> None:
        """Keep in the template's state what its recorded migrations produce, as the first plan of
        each install would (:func:`patchflow.schema_drift.expected_catalog`): every install copies
        the tree and the database, so their plans read it instead of each building a scratch
        database (tests/integration/test_schema_drift.py builds them)."""
        from patchflow.config import load_settings
        from patchflow.context import Context
        from patchflow.migrations import MigrationHistory, find_migrations
        from patchflow.schema_drift import applied_migrations, expected_catalog

        ctx = Context.create(load_settings(self.root))
        assert ctx.database is not None
        migrations, unknown = applied_migrations(MigrationHistory(ctx.database), find_migrations(self.root))
        assert migrations and not unknown, (migrations, unknown)
        expected_catalog(ctx, migrations)

    def new_install(self, dest: Path, extra_env: dict[str, str] | None = None, *, start: bool = True) -> Install:
        """A running copy of the template in ``dest`` with its own database, port and services."""
        shutil.copytree(self.root, dest, symlinks=True)
        dbname = f"pf_test_{uuid.uuid4().hex[:12]}"
        self.cluster.psql("postgres", f'CREATE DATABASE "{dbname}" TEMPLATE "{self.dbname}";\n')
        port = free_port()
        url = self.cluster.url(dbname)
        rewrite_dotenv(
            dest,
            {
                "PORT": str(port),
                "DATABASE_URL": url,
                "PATCHFLOW_HEALTH_URL": f"http://127.0.0.1:{port}/health",
                "PATCHFLOW_ALLOW_UNSIGNED": "true",  # a host reached over SSH does not get the tests' environment
                **(extra_env or {}),
            },
        )
        install = Install(dest, self.cluster, dbname, url, port, template=self)
        if start:
            start_services(dest)
            wait_answers(f"http://127.0.0.1:{port}/health")
        return install

    def release_patch(self, version: str = "2.3.0", **changes: Any) -> Path:
        """The patch folder of release ``version`` made by ``make_release(**changes)`` from the
        template (built on first use, then reused)."""
        key = json.dumps([version, changes], sort_keys=True)
        if key not in self._releases:
            work = self.folder / "releases" / hashlib.sha256(key.encode()).hexdigest()[:12]
            source = make_release(self.root, work / "source", version, **changes)
            done = run_inv("create-patch", "--root", str(source))
            assert done.returncode == 0, done.stderr + done.stdout
            self._releases[key] = source / "patches" / f"v{version}"
        return self._releases[key]


def start_install(folder: Path, cluster: Any, dbname: str, extra_env: dict[str, str] | None = None) -> Install:
    """Create a sample install in ``folder`` at 2.2.0 from scratch, migrate its database and start
    it (``create-patch`` + ``apply-patch --force`` of 2.2.0 on itself, as the demo does). Tests
    use the shared :class:`InstallTemplate` instead; this is for set-ups that differ from it."""
    url = cluster.url(dbname)
    root = prepare_workspace(folder, database_url=url, extra_env=extra_env)
    port = int(
        next(line.split("=", 1)[1] for line in (root / ".env").read_text().splitlines() if line.startswith("PORT="))
    )
    install = Install(root, cluster, dbname, url, port)
    for args in (("create-patch",), ("apply-patch", "--version", "2.2.0", "--force", "--yes")):
        done = install.inv(*args)
        assert done.returncode == 0, done.stderr + done.stdout
    return install


# -- helpers for the field-failure and bad-input tests ---------------------------------------


def build_release(
    install: Install,
    workdir: Path,
    version: str,
    *,
    edit: Any = None,
    sample_changes: bool = True,
    **changes: Any,
) -> Path:
    """Like :meth:`Install.release`, with an ``edit(source)`` callback run before create-patch.

    ``sample_changes=False`` copies the install unchanged (only ``VERSION`` and ``edit``) instead
    of applying ``make_release``'s changes. An existing ``patches/v<version>`` of the install is
    replaced. Returns the patch folder in the install."""
    import shutil

    source = workdir / f"source-{version}"
    if sample_changes:
        make_release(install.root, source, version, **changes)
    else:
        shutil.copytree(install.root, source, symlinks=True, ignore=shutil.ignore_patterns(*OWN_FOLDERS))
        (source / "VERSION").write_text(f"{version}\n")
    if edit is not None:
        edit(source)
    done = run_inv("create-patch", "--root", str(source))
    assert done.returncode == 0, done.stderr + done.stdout
    target = install.root / "patches" / f"v{version}"
    if target.exists():
        shutil.rmtree(target)
    return copy_patch(source, install.root, version)


def status_json(install: Install, env: dict[str, str] | None = None) -> dict[str, Any]:
    """What ``inv patch-status --json`` of the install prints, parsed: the same report
    (:func:`patchflow.status.collect_status` of the install's settings, with this process's
    environment and ``env`` on top), made in this process through a JSON round trip. An ``inv``
    process costs about half a second of CPU to start, and the crash tests read the status after
    every kill; the command line itself is tested in tests/e2e (``patch-status --json``)."""
    import json

    from patchflow.config import load_settings
    from patchflow.status import collect_status

    settings = load_settings(install.root, environ={**os.environ, **(env or {})})
    data: dict[str, Any] = json.loads(json.dumps(collect_status(settings, history_limit=10), ensure_ascii=False))
    return data


def cli_status_json(install: Install, env: dict[str, str] | None = None) -> dict[str, Any]:
    """``inv patch-status --json`` of the install run as a command (no terminal), parsed."""
    import json

    done = install.inv("patch-status", "--json", env=env)
    assert done.returncode == 0, done.stderr + done.stdout
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def history(install: Install) -> list[dict[str, Any]]:
    """Every record of ``.patchflow/history.jsonl``, oldest first."""
    import json

    path = install.root / ".patchflow" / "history.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def backup_names(install: Install) -> list[str]:
    """Names of the folders under ``backups/`` (sorted)."""
    folder = install.root / "backups"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def set_dotenv(install: Install, key: str, value: str) -> str | None:
    """Set ``key=value`` in the install's ``.env``; returns the previous value (None if absent)."""
    path = install.root / ".env"
    lines = path.read_text().splitlines()
    previous = None
    out = []
    for line in lines:
        if line.startswith(f"{key}="):
            previous = line.split("=", 1)[1]
            continue
        out.append(line)
    out.append(f"{key}={value}")
    path.write_text("\n".join(out) + "\n")
    return previous


def health(install: Install) -> tuple[int, str | None]:
    """``(HTTP status, reported version)`` of the install's /health (status 0: no answer)."""
    import json

    status, body = get(install.health_url)
    try:
        version = json.loads(body).get("version") if status else None
    except ValueError:
        version = None
    return status, version


def wait_trash_deleted(root: Path, timeout: float = 60) -> None:
    """Wait until the detached deleter of the last committed apply (patchflow.trash) has removed
    the ``trash-*`` folders of ``root``'s state folder (it runs after the command returned)."""
    state = root / ".patchflow"
    wait_until(lambda: not list(state.glob("trash-*")), timeout, f"the trash of {state} to be deleted")


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate()`` until it returns a truthy value (returned) or fail after ``timeout`` s."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc)."""
    from support.services import children_by_parent

    return children_by_parent().get(pid, [])


def process_cmdline(pid: int) -> list[str]:
    """The argv of ``pid`` ([] when it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def inv_popen(install: Install, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``inv <task> --root <install> <args>`` in its own session (stdin closed, output piped)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.Popen(
        [*INV, args[0], "--root", str(install.root), *args[1:]],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        start_new_session=True,
    )
