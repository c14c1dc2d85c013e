"""The slow tier: the tests tests/slow_tier.txt lists are marked ``slow``, which ``make test``
leaves out (pyproject's ``-m``) and ``make test-slow`` runs (CI runs both, .ci/run).

Why a list and not decorators: the tier is one decision about the whole suite's time budget (make
test within 8 minutes on a 2-core machine), read and changed in one place beside the durations
that justify it; a test's own file says what it checks, not which tier it runs in.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SLOW_TIER = Path(__file__).resolve().parents[1] / "slow_tier.txt"


def slow_tier_entries(path: Path = SLOW_TIER) -> list[str]:
    """The entries of the list (``path::test`` or ``path::test[id]``), one per line; blank lines and
    lines starting with ``#`` are left out (a ``#`` inside an entry is part of a parameter id)."""
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def in_entry(nodeid: str, entry: str) -> bool:
    """True when the test ``nodeid`` is ``entry``, or one of its parameters when ``entry`` names no id."""
    return nodeid == entry or ("[" not in entry and nodeid.partition("[")[0] == entry)


class SlowTier:
    """A pytest plugin marking the listed tests ``slow`` before ``-m`` deselects by marker."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        """Mark the listed tests. An entry naming a test of a collected file that does not exist
        stops the run: a renamed test must not leave the tier silently.

        Raises:
            pytest.UsageError: a stale entry.
        """
        entries = slow_tier_entries()
        matched: set[str] = set()
        for item in items:
            for entry in entries:
                if in_entry(item.nodeid, entry):
                    item.add_marker(pytest.mark.slow)
                    matched.add(entry)
                    break
        files = {item.nodeid.partition("::")[0] for item in items}
        selecting = (
            bool(config.getoption("keyword"))
            or bool(config.getoption("lf", False))
            or any("::" in arg for arg in config.args)  # single tests named: their files are not whole
        )
        stale = [e for e in entries if e not in matched and e.partition("::")[0] in files]
        if stale and not selecting:
            raise pytest.UsageError(
                "tests/slow_tier.txt names tests that do not exist (renamed or removed?): " + ", ".join(stale)
            )
