"""patchflow's own repository: its tasks are patchflow's collection plus the demo and the tests.

In a PrimeFlow checkout ``tasks.py`` is only ``from patchflow.cli import ns`` (``inv init``
writes it). Here the default project is never this repository: pass ``--root`` to act on a
checkout. Run ``inv --list`` for the commands.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from invoke import Context, Exit, task

sys.path.insert(0, str(Path(__file__).resolve().parent))

from patchflow.tasks import ns

TOOL_ROOT = Path(__file__).resolve().parent


@task(auto_shortflags=False, help={"compose": "run the demo on the example's docker compose stack"})
def demo(c: Context, compose: bool = False) -> None:
    """Run the whole patch lifecycle on the bundled examples (make demo)."""
    script = "demo_compose.py" if compose else "demo.py"
    c.run(
        f"{TOOL_ROOT}/scripts/ensure-system.sh --for {'test' if compose else 'demo'} --venv {TOOL_ROOT}/.venv",
        pty=False,
    )
    result = c.run(f"{sys.executable} {TOOL_ROOT}/scripts/{script}", warn=True, pty=False)
    if result is None or result.exited != 0:
        raise Exit("demo failed", code=1)


@task(
    auto_shortflags=False,
    help={
        "pytest_args": "extra arguments for pytest (e.g. '-k apply -x')",
        "slow": "run the slow tier instead (tests/slow_tier.txt: further variants; CI runs both)",
    },
)
def test(c: Context, pytest_args: str = "", slow: bool = False) -> None:
    """Install and start what the tests need, then run the unit and integration tests (make test);
    with --slow the slow tier (make test-slow)."""
    c.run(f"{TOOL_ROOT}/scripts/ensure-system.sh --for test --venv {TOOL_ROOT}/.venv", pty=False)
    # three workers on a 2-core machine: the tests wait on services (PostgreSQL, node, docker, sshd)
    # for about a third of their time (about 0.7 of a core each); tests sharing a compose stack stay
    # on one worker. --no-loadscope-reorder: hand out work in the order tests/conftest.py sorts it
    # (the long groups first, one per worker, the short tests after to fill the gaps), not biggest
    # group first (which queues the kill matrix's slices behind each other on one worker)
    workers = os.environ.get("TEST_WORKERS", "3")
    tier = "-m 'slow and not stress' " if slow else ""
    result = c.run(
        f"cd {TOOL_ROOT} && {sys.executable} -m pytest -n {workers} --dist loadgroup --no-loadscope-reorder "
        f"{tier}{pytest_args}",
        warn=True,
        pty=False,
    )
    if result is None or result.exited != 0:
        raise Exit("tests failed", code=result.exited if result else 1)


ns.add_task(demo)
ns.add_task(test)
