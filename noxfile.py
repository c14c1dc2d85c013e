"""nox sessions: tests, slow, lint (ruff), typecheck (mypy strict on patchflow/), preflight, bench, stress
(the long random-instant crash probes)."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True
PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite (unit, cases, integration, e2e); extra args go to pytest."""
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def stress(session: nox.Session) -> None:
    """The crash tests make test leaves out to stay under 8 minutes (marked ``stress``; ~4 min
    with 2 workers): the long random-instant probes (``PROBE_TRIALS`` and ``PROBE_SEED`` change
    their trials and seed, default 6 each), the kill matrix's slices 2 to 6 (make test runs
    slice 0, make test-slow slice 1), the rest of the step-boundary kills, and signal
    repetitions (SIGTERM/SIGHUP where the same boundary already has SIGINT/SIGTERM: one handler).
    More kill-matrix trials: ``KILL_MATRIX_TRIALS=48 nox -s tests -- tests/integration/test_kill_matrix.py``."""
    session.install("-e", ".[dev]")
    session.run("pytest", "-m", "stress", "-n", "2", *session.posargs)


@nox.session(python=PYTHON)
def slow(session: nox.Session) -> None:
    """The slow tier (tests/slow_tier.txt, marked ``slow``): further variants of behaviours the
    ``tests`` session covers once, left out of it to keep make test within 8 minutes; CI runs both."""
    session.install("-e", ".[dev]")
    session.run("pytest", "-m", "slow and not stress", "-n", "3", "--dist", "loadgroup", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check on the package, tasks, tests and scripts."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", "patchflow", "tasks.py", "noxfile.py", "tests", "scripts")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on patchflow/."""
    session.install("-e", ".[dev]")
    session.run("mypy", "patchflow")


@nox.session(python=PYTHON)
def preflight(session: nox.Session) -> None:
    """lint + typecheck in one session (what `inv preflight` runs for the tool itself)."""
    session.install("-e", ".[dev]")
    session.run("ruff", "check", "patchflow", "tasks.py", "noxfile.py", "tests", "scripts")
    session.run("mypy", "patchflow")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmark patchflow against tar/sha256sum/pg_dump on generated trees (ratios, medians, one run).

    Options after --: --small-only, --repeat N, --keep DIR (reuse the generated trees), --workdir DIR,
    --skip-db, --skip-upload, --skip-rehearse, --skip-window, --window-large-rows N (the stopped-window rows
    also with a database of N rows: 3500000 is about 1 GB). The database row starts a throwaway PostgreSQL
    cluster (Debian's postgresql binaries); the upload row (one patch to three hosts with --parallel 3, as a
    ratio to one host) three private sshd on 127.0.0.1 (Debian's openssh-server); the rehearsal row (inv
    rehearse against the apply's migrate step, within 2x both ways) the sample with node and a ~100 MB
    database; the stopped-window rows (an apply without migrations against the floor: the same services
    stopped, started and healthy; with a migration against the floor plus its migrate step; a rollback of
    a release adding 20,000 files against its apply) a sample install with a ~100 MB database in another
    throwaway cluster.
    """
    session.install("-e", ".[dev]")
    session.run("python", "scripts/bench.py", *session.posargs)
