"""Shared fixtures that start real services (see DESIGN.md, "Testing against real things").

Under CI=true a service that cannot be started fails the test; elsewhere it is skipped.
Prepare a machine with ``scripts/ensure-system.sh --for test --venv <venv>``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
from support.missing import missing_service
from support.services import PostgresCluster, SshServer, docker_available, shared_tempdir
from support.tiers import SlowTier

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def pytest_configure(config: pytest.Config) -> None:
    """Every server the tests talk to listens on loopback: keep a proxy configured on the machine
    (``http_proxy``...) out of those requests, in this process and in the ``inv`` subprocesses."""
    for var in ("no_proxy", "NO_PROXY"):
        present = [h.strip() for h in os.environ.get(var, "").split(",") if h.strip()]
        os.environ[var] = ",".join([*present, *(h for h in LOOPBACK_HOSTS if h not in present)])
    # `make test` runs pytest inside make: the tests' own make calls must see a fresh make (as an
    # operator's shell does), not a sub-make ("make[1]: ...", the outer make's flags and variables)
    for var in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES", "MAKE_TERMOUT", "MAKE_TERMERR"):
        os.environ.pop(var, None)
    # the tests build their releases unsigned: the installs they apply to accept that on purpose (the
    # refusal without it, and signed patches, have their own tests: test_signatures, test_trust_boundaries)
    os.environ.setdefault("PATCHFLOW_ALLOW_UNSIGNED", "true")
    if not hasattr(config, "workerinput"):  # once, in the controller (not in each xdist worker)
        _compile_patchflow()
    config.pluginmanager.register(SlowTier(), "patchflow-slow-tier")


def _compile_patchflow() -> None:
    """Write patchflow's bytecode before the tests start thousands of ``inv`` processes: under
    ``PYTHONDONTWRITEBYTECODE`` (set in many containers) no import writes it, and each of those
    processes would compile the modules it imports from source (about 0.15 s of CPU for an
    apply's). ``compileall`` writes it whatever that variable says and skips up-to-date files."""
    import compileall

    compileall.compile_dir(Path(__file__).resolve().parents[1] / "patchflow", quiet=1)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep tests marked ``xdist_group`` on one worker under ``--dist loadgroup``. pytest-xdist
    3.8 tags their node ids (``...@group``) by assigning ``item._nodeid``, which pytest 9 no
    longer reads (the id lives in ``item._id``); do the same here so the scheduler sees the group."""
    if not getattr(config.option, "loadgroup", False):
        return
    from _pytest.nodeid import coerce_node_id

    for item in items:
        groups = sorted(
            {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")}
        )
        if groups and "@" not in item.nodeid:
            item._id = coerce_node_id(f"{item.nodeid}@{'_'.join(groups)}")  # type: ignore[attr-defined]
    # the scheduler hands out work in this order (under --no-loadscope-reorder, as `inv test` runs
    # it; xdist's default puts the biggest groups first): the long groups (each bound to one worker) first,
    # the many short unit and table tests last to fill the gaps, so no worker runs a long group
    # alone at the end (the same order on every worker: a stable sort)
    items.sort(key=_schedule_rank)


LONG_GROUPS = ("kill-matrix", "fleet", "two-machines", "compose")  # longest first (a prefix: kill-matrix-0, ...)


def _schedule_rank(item: pytest.Item) -> int:
    group = item.nodeid.rpartition("@")[2] if "@" in item.nodeid else ""
    for rank, prefix in enumerate(LONG_GROUPS):
        if group == prefix or group.startswith(f"{prefix}-"):
            return rank
    if item.nodeid.startswith(("tests/unit/", "tests/cases/")):
        return len(LONG_GROUPS) + 1
    return len(LONG_GROUPS)


def _missing(reason: str) -> NoReturn:
    """Fail under CI=true (services must be there), otherwise skip."""
    missing_service(reason)


def _service_base_dir(prefix: str) -> Path:
    # Not pytest's tmp_path (0700, and maybe below a 0700 checkout): as root the server runs as the
    # postgres user, who must reach this folder.
    try:
        return shared_tempdir(prefix)
    except RuntimeError as exc:
        _missing(str(exc))


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """A throwaway PostgreSQL cluster for the whole session (TCP + unix socket, trust auth)."""
    base = _service_base_dir("patchflow-pg-")
    try:
        cluster = PostgresCluster.start(base)
    except (RuntimeError, OSError) as exc:
        shutil.rmtree(base, ignore_errors=True)
        _missing(f"cannot start PostgreSQL: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_database(pg_cluster: PostgresCluster) -> Iterator[str]:
    """URL of a fresh, uniquely named database, dropped after the test (with the databases named
    after it: the snapshots an apply kept, those a restore displaced)."""
    name = f"pf_test_{uuid.uuid4().hex[:12]}"
    pg_cluster.create_database(name)
    try:
        yield pg_cluster.url(name)
    finally:
        rows = pg_cluster.psql("postgres", f"SELECT datname FROM pg_database WHERE datname LIKE '{name}%';\n")
        for other in rows.split():
            pg_cluster.drop_database(other)


@pytest.fixture(scope="session")
def ssh_server() -> Iterator[SshServer]:
    """A private sshd on 127.0.0.1 that accepts ``ssh_server.client_key`` for the current user."""
    base = _service_base_dir("patchflow-sshd-")
    try:
        server = SshServer.start(base)
    except (RuntimeError, OSError) as exc:
        shutil.rmtree(base, ignore_errors=True)
        _missing(f"cannot start sshd: {exc}")
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def require_docker() -> None:
    """Fail (CI=true) or skip unless the Docker Engine and Compose v2 work."""
    reason = docker_available()
    if reason is not None:
        _missing(reason)


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """Depend on this fixture in tests that need a Docker Engine with Compose v2."""
    require_docker()


@pytest.fixture(scope="session")
def install_template(pg_cluster: PostgresCluster, tmp_path_factory: pytest.TempPathFactory) -> object:
    """The sample install at 2.2.0 made once per session by patchflow itself, with its database
    as a template (see support.installs.InstallTemplate)."""
    from support.installs import InstallTemplate

    return InstallTemplate.build(tmp_path_factory.mktemp("template"), pg_cluster)


@pytest.fixture
def install(tmp_path: Path, pg_cluster: PostgresCluster, install_template: object) -> Iterator[object]:
    """A running sample install at 2.2.0 (real API/worker processes, migrated database): a copy
    of the session's template with its own database (``CREATE DATABASE ... TEMPLATE``) and port.
    Its services are stopped and its databases (also those a restore displaced) dropped after."""
    from support.installs import InstallTemplate

    assert isinstance(install_template, InstallTemplate)
    running = install_template.new_install(tmp_path / "install")
    try:
        yield running
    finally:
        running.down()
        rows = pg_cluster.psql("postgres", f"SELECT datname FROM pg_database WHERE datname LIKE '{running.dbname}%';\n")
        for name in rows.split():
            pg_cluster.drop_database(name)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the ``summary`` property tests record (the kill matrix's counts), also under xdist,
    which carries ``user_properties`` back from the workers."""
    lines = [
        str(value)
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", "") == "call"
        for key, value in getattr(report, "user_properties", [])
        if key == "summary"
    ]
    if lines:
        terminalreporter.section("recorded summaries")
        for line in lines:
            terminalreporter.write_line(line)
