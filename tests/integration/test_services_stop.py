"""Stop all services in parallel under one deadline (issue 22, fault 5): two command services that
ignore SIGTERM, as a stuck worker does. Before, the stop took ``stop_timeout`` once per service,
one after the other; now every service gets its SIGTERM at once and one deadline. Real processes."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.installs import wait_until

from patchflow.config import load_settings
from patchflow.context import Context

pytestmark = pytest.mark.integration

STUBBORN = """#!/bin/sh
# a service that ignores SIGTERM: notes when it came, then goes on until SIGKILL
trap 'date +%s.%N >> "$2/$1.term"' TERM
touch "$2/$1.ready"
while :; do sleep 0.05; done
"""


def test_services_that_ignore_sigterm_get_it_together_and_one_deadline(tmp_path: Path) -> None:
    root = tmp_path / "install"
    root.mkdir()
    script = tmp_path / "stubborn.sh"
    script.write_text(STUBBORN)
    notes = tmp_path / "notes"
    notes.mkdir()
    commands = ";".join(f"{name}=sh {script} {name} {notes}" for name in ("api", "worker"))
    (root / ".env").write_text(
        "PATCHFLOW_SERVICE_MANAGER=command\n"
        f"PATCHFLOW_COMMANDS={commands}\n"
        "PATCHFLOW_DATABASE_MODE=none\n"
        "PATCHFLOW_STOP_TIMEOUT=4\n"
    )
    services = Context.create(load_settings(root)).services
    services.start()
    wait_until(lambda: all((notes / f"{n}.ready").is_file() for n in ("api", "worker")), 30, "both services")
    services.stop()
    assert [s.state for s in services.status()] == ["stopped", "stopped"]
    times = [float((notes / f"{n}.term").read_text().split()[0]) for n in ("api", "worker")]
    # one after the other, the second SIGTERM would come stop_timeout (4 s) after the first
    assert abs(times[0] - times[1]) < 4.0, times
