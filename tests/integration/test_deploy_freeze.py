"""A deploy freeze (issue 23): ``inv lock --message`` makes every apply, rollback and deploy of the
install refuse, showing the message, who set it and when, until ``inv unlock``; ``patch-status``
shows it. Real install (sample, command services, real PostgreSQL)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.installs import Install, health

from patchflow.errors import PatchflowError
from patchflow.remote.gates import check_ready
from patchflow.remote.wire import HostFacts

pytestmark = pytest.mark.integration
MESSAGE = "DB maintenance until 14:00 - Ana"


def test_a_freeze_refuses_apply_and_rollback_with_its_message_until_unlocked(install: Install, tmp_path: Path) -> None:
    install.release(tmp_path, "2.3.0")
    refused = install.inv("lock")
    assert refused.returncode == 1 and "A freeze needs a message" in refused.stderr
    frozen = install.inv("lock", "--message", MESSAGE)
    assert frozen.returncode == 0, frozen.stdout + frozen.stderr
    tree = install.state()

    for args in (("apply-patch", "--version", "2.3.0", "--yes"), ("apply-patch", "--version", "2.3.0", "--dry-run")):
        done = install.inv(*args)
        assert done.returncode == 1, done.stdout + done.stderr
        flat = " ".join(done.stderr.split())
        assert f'This install is frozen: "{MESSAGE}" (set by ' in flat and "The apply is refused" in flat, flat
        assert "inv unlock" in flat
    assert install.state() == tree and health(install) == (200, "2.2.0")
    status = json.loads(install.inv("patch-status", "--json").stdout)
    assert status["freeze"]["message"] == MESSAGE and status["freeze"]["set_at"].endswith("Z")
    assert "FROZEN" in install.inv("patch-status").stdout

    assert install.inv("unlock").returncode == 0
    applied = install.inv("apply-patch", "--version", "2.3.0", "--yes")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert install.inv("lock", "--message", MESSAGE).returncode == 0
    rollback = install.inv("rollback-patch", "--version", "2.3.0", "--yes")
    assert rollback.returncode == 1 and "The rollback is refused" in " ".join(rollback.stderr.split())
    assert health(install) == (200, "2.3.0")
    lifted = install.inv("unlock")
    assert f'lifted "{MESSAGE}"' in " ".join(lifted.stdout.split())
    assert json.loads(install.inv("patch-status", "--json").stdout)["freeze"] is None


def test_a_deploy_refuses_a_frozen_host_before_it_uploads(install: Install) -> None:
    """The deploy's gate reads the freeze from the host's facts (its patch-status report)."""
    assert install.inv("lock", "--message", MESSAGE).returncode == 0
    facts = json.loads(install.inv("host-facts").stdout)
    with pytest.raises(PatchflowError) as refused:
        check_ready({"app1": HostFacts.from_json(facts)}, "operator@laptop", "2.3.0")
    text = refused.value.message
    assert f'app1: frozen: "{MESSAGE}"' in text and "Nothing was uploaded or changed there" in text, text
