"""The deploy inventory and host selection, and how a remote run's outcome is judged (pure parts of
patchflow.remote; the real thing runs against sshd in tests/integration/test_remote.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from patchflow.config import HostEntry, load_settings
from patchflow.errors import ConfigError, RemoteError
from patchflow.remote.gates import check_delta_bases
from patchflow.remote.hosts import resolve_targets
from patchflow.remote.outcome import FleetReport, HostResult, RunOutcome, judge_run, remote_recovery
from patchflow.remote.transfer import LocalPatch
from patchflow.remote.wire import HostFacts, RunRecord
from patchflow.version import parse_version

INVENTORY = """
[tool.patchflow]
remote_path = "/srv/primeflow"

[tool.patchflow.hosts.web1]
host = "deploy@10.0.0.5:2222"
role = "staging"

[tool.patchflow.hosts.web2]
host = "prod-a"
path = "/opt/primeflow/"
role = "production"
python = "/opt/py/bin/python"

[tool.patchflow.hosts.web3]
role = "production"
"""


def settings_with(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Any:
    (tmp_path / "pyproject.toml").write_text(text)
    return load_settings(tmp_path, environ=environ or {})


def test_the_inventory_is_a_table_of_tables_in_order(tmp_path: Path) -> None:
    settings = settings_with(tmp_path, INVENTORY)
    assert settings.hosts == (
        HostEntry("web1", "deploy@10.0.0.5:2222", "", "staging", ""),
        HostEntry("web2", "prod-a", "/opt/primeflow", "production", "/opt/py/bin/python"),
        HostEntry("web3", "web3", "", "production", ""),
    )
    assert settings.source("hosts") == "pyproject.toml"


def test_the_inventory_from_the_environment_is_json(tmp_path: Path) -> None:
    settings = settings_with(tmp_path, "", {"PATCHFLOW_HOSTS": '{"box": {"host": "root@box", "path": "/srv/x"}}'})
    assert settings.hosts == (HostEntry("box", "root@box", "/srv/x", "", ""),)


@pytest.mark.parametrize(
    ("table", "fault"),
    [
        ('[tool.patchflow.hosts.web1]\nhost = "a b"\n', "without spaces"),
        ('[tool.patchflow.hosts.web1]\nhost = "-oProxyCommand=x"\n', "without spaces"),
        ('[tool.patchflow.hosts.web1]\npath = "relative/dir"\n', "absolute path"),
        ("[tool.patchflow.hosts.web1]\nport = 22\n", "unknown key(s) port"),
        ('[tool.patchflow.hosts."web 1"]\nhost = "x"\n', "may hold only"),
        ("[tool.patchflow]\nhosts = 3\n", "table of hosts"),
    ],
)
def test_a_bad_inventory_names_the_file_and_the_fault(tmp_path: Path, table: str, fault: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_with(tmp_path, table)
    assert fault in caught.value.message and "pyproject.toml" in caught.value.message


def test_hosts_are_chosen_by_name_list_or_role(tmp_path: Path) -> None:
    settings = settings_with(tmp_path, INVENTORY)
    [web2] = resolve_targets(settings, host="web2")
    assert (web2.host, web2.path, web2.role, web2.python) == (
        "prod-a",
        "/opt/primeflow",
        "production",
        "/opt/py/bin/python",
    )
    assert web2.python_candidates() == ["/opt/py/bin/python"]
    assert [t.name for t in resolve_targets(settings, role="production")] == ["web2", "web3"]
    assert [t.name for t in resolve_targets(settings, hosts="web3, web1,web3")] == ["web3", "web1"]
    [adhoc] = resolve_targets(settings, host="admin@db.internal:2200")
    assert (adhoc.host, adhoc.path, adhoc.role) == ("admin@db.internal:2200", "/srv/primeflow", "")
    assert adhoc.python_candidates() == ["/srv/primeflow/.patchflow/venv/bin/python", "python3"]


def test_without_remote_path_a_host_gets_this_checkouts_path(tmp_path: Path) -> None:
    settings = settings_with(tmp_path, "[tool.patchflow.hosts.web1]\n")
    [web1] = resolve_targets(settings, host="web1")
    assert web1.path == str(tmp_path.resolve())


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({}, "exactly one of"),
        ({"host": "web1", "role": "production"}, "--host and --role"),
        ({"role": "qa"}, "No host of the inventory has the role 'qa'"),
        ({"hosts": " , "}, "No host named"),
        ({"host": "-oProxyCommand=evil"}, "is not a host name"),
    ],
)
def test_host_selection_errors(tmp_path: Path, flags: dict[str, str], message: str) -> None:
    settings = settings_with(tmp_path, INVENTORY)
    with pytest.raises(RemoteError, match=message) as caught:
        resolve_targets(settings, **flags)
    assert caught.value.exit_code == 1


RECORD = RunRecord("apply-2.3.0-x", "apply", "2.3.0", "l", "p", "e", "root@ops", "2025-03-01T10:00:00.000000Z")


def facts(installed: str, history: list[dict[str, Any]], interrupted: dict[str, Any] | None = None) -> HostFacts:
    status = {"installed_version": installed, "history": history, "interrupted": interrupted, "lock": None}
    return HostFacts.from_json({"paths": {}, "status": status})


def apply_record(result: str, started: str = "2025-03-01T10:00:01.000000Z") -> dict[str, Any]:
    return {"action": "apply", "from_version": "2.2.0", "to_version": "2.3.0", "started_at": started, "result": result}


@pytest.mark.parametrize(
    ("outcome", "after", "result", "code"),
    [
        (RunOutcome("exited", 0), facts("2.3.0", [apply_record("success")]), "updated", 0),
        (RunOutcome("exited", 2), facts("2.2.0", [apply_record("rolled_back")]), "failed, rolled back", 2),
        (RunOutcome("exited", 2), facts("2.2.0", [apply_record("failed")]), "failed", 2),
        (RunOutcome("exited", 3), facts("2.2.0", []), "locked", 3),
        (RunOutcome("exited", 4), facts("?", [apply_record("rollback_failed")]), "rollback incomplete", 4),
        # an older record (before this run started) is not this run's
        (RunOutcome("exited", 0), facts("2.3.0", [apply_record("success", "2025-02-01T00:00:00.000000Z")]), "ok", 0),
        # no exit code and no process: the server's history, else its journal, else unknown
        (RunOutcome("vanished"), facts("2.3.0", [apply_record("success")]), "updated", 0),
        (
            RunOutcome("vanished"),
            facts("2.2.0", [], {"action": "apply", "version": "2.3.0", "step": "switch"}),
            "interrupted",
            4,
        ),
        # killed before it changed anything: the version before it is still installed, no record
        (RunOutcome("vanished"), facts("2.2.0", []), "interrupted", 2),
        (RunOutcome("vanished"), facts("2.4.0", []), "unknown", 6),
        (RunOutcome("unknown", detail="host stopped answering"), None, "unknown", 6),
        (RunOutcome("running", detail="still running"), None, "running", 6),
    ],
)
def test_a_runs_outcome_is_read_from_the_server(
    outcome: RunOutcome, after: HostFacts | None, result: str, code: int
) -> None:
    judged = HostResult("web1", before="2.2.0")
    judge_run(judged, RECORD, outcome, "", after)
    assert (judged.result, judged.exit_code) == (result, code)
    if outcome.state in ("unknown", "running"):
        assert "--attach --host web1" in judged.detail


def died(
    installed: str,
    history: list[dict[str, Any]],
    *,
    journal: dict[str, Any] | None = None,
    lock: str | None = None,
    recovery: list[str] | None = None,
) -> HostFacts:
    """The facts of a host after a run died there: ``journal`` (host-facts' summary; its presence
    means status has an interrupted run), ``lock`` its state, ``recovery`` the args patch-status names."""
    interrupted = None
    if journal is not None:
        interrupted = {"action": journal.get("action", "apply"), "version": "2.3.0", "step": "switch"}
        interrupted.update(phase=journal.get("phase", "forward"), step_state="done")
    status = {
        "installed_version": installed,
        "history": history,
        "interrupted": interrupted,
        "lock": {"state": lock, "pid": 41, "action": "apply", "version": "2.3.0", "user": "u", "host": "h"}
        if lock
        else None,
        "recovery": {"command": "inv " + " ".join(recovery), "args": recovery, "does": "it recovers"}
        if recovery
        else None,
    }
    return HostFacts.from_json({"paths": {}, "status": status, "journal": journal})


ROLLBACK_RECOVERY = ["rollback-patch", "--version", "2.3.0", "--break-lock", "--yes"]
FINISH_RECOVERY = ["apply-patch", "--version", "2.3.0", "--break-lock", "--yes"]


@pytest.mark.parametrize("outcome", [RunOutcome("exited", 137), RunOutcome("vanished")], ids=["sigkill", "vanished"])
@pytest.mark.parametrize(
    ("after", "result", "code", "recovery"),
    [
        # left mid-way: its journal, not committed
        (
            died("2.3.0", [], journal={"committed": False, "services": "stopped"}, lock="stale",
                 recovery=ROLLBACK_RECOVERY),
            "interrupted", 4, "inv rollback-patch --host web1 --version 2.3.0 --break-lock --yes",
        ),
        # committed: the new version is installed and was proven healthy; the clean-up is named
        (
            died("2.3.0", [apply_record("success")], journal={"committed": True, "services": "started"},
                 lock="stale", recovery=FINISH_RECOVERY),
            "updated", 0, "inv deploy --host web1 --version 2.3.0 --break-lock --yes",
        ),
        # killed after its own automatic rollback had completed
        (died("2.2.0", [apply_record("rolled_back")]), "failed, rolled back", 2, ""),
        # killed before it changed anything, its lock left: the old version kept, the lock named
        (
            died("2.2.0", [], lock="stale", recovery=["apply-patch", "--version", "2.2.0", "--break-lock", "--yes"]),
            "interrupted", 2, "inv deploy --host web1 --version 2.3.0 --break-lock --yes",
        ),
        # a live process holds the lock now: nothing can be told yet
        (died("2.3.0", [], journal={"committed": False}, lock="held"), "unknown", 6, ""),
        # a version nobody recorded
        (died("2.4.0", []), "unknown", 6, ""),
    ],
)  # fmt: skip
def test_a_run_that_died_is_judged_by_what_it_left_never_by_its_signal(
    outcome: RunOutcome, after: HostFacts, result: str, code: int, recovery: str
) -> None:
    judged = HostResult("web1", before="2.2.0")
    judge_run(judged, RECORD, outcome, "", after)
    assert (judged.result, judged.exit_code, judged.recovery) == (result, code, recovery), judged.detail
    assert "137" not in judged.detail and ("SIGKILL" in judged.detail) == (outcome.state == "exited")


@pytest.mark.parametrize(
    ("advice", "command", "does"),
    [
        (None, "", ""),
        ({"command": None, "args": [], "does": "a run is active: wait"}, "", "a run is active: wait"),
        (
            {"command": "inv rollback-patch ...", "args": ROLLBACK_RECOVERY, "does": "undoes it"},
            "inv rollback-patch --host 'web 1' --version 2.3.0 --break-lock --yes",
            "undoes it",
        ),
        (
            {"command": "inv apply-patch ...", "args": ["apply-patch", "--version", "2.3.0", "--yes"], "does": "x"},
            "inv deploy --host 'web 1' --version 2.3.0 --yes",
            "x",
        ),
        (
            {"command": "inv apply-patch ...", "args": ["apply-patch", "--version", "2.2.0", "--break-lock", "--yes"],
             "does": "takes over the stale lock"},
            "inv deploy --host 'web 1' --version 2.3.0 --break-lock --yes",
            "takes over what the killed run left (takes over the stale lock), then applies 2.3.0 there",
        ),
        (
            {"command": "inv baseline-migrations --yes", "args": ["baseline-migrations", "--yes"], "does": "y"},
            "",
            "on web 1, in its checkout: inv baseline-migrations --yes (y)",
        ),
    ],
)  # fmt: skip
def test_the_recovery_a_host_computes_is_given_in_the_operators_form(
    advice: dict[str, Any] | None, command: str, does: str
) -> None:
    assert remote_recovery("web 1", advice, "2.3.0") == (command, does)


def test_a_fleet_exits_with_its_first_failing_hosts_code() -> None:
    report = FleetReport("deploy", "2.3.0", [HostResult("a", result="updated"), HostResult("b", result="skipped")])
    assert report.exit_code == 0
    report.results += [HostResult("c", result="unknown", exit_code=6), HostResult("d", result="failed", exit_code=2)]
    assert report.exit_code == 6


def test_a_delta_is_refused_for_a_fleet_with_a_host_off_its_base_tree(tmp_path: Path) -> None:
    base_tree = "a" * 64
    delta = LocalPatch(parse_version("2.3.1"), tmp_path, {}, "0" * 64, delta_base="2.3.0", base_tree_sha256=base_tree)

    def host(installed: str | None, tree: str | None) -> HostFacts:
        status = {"installed_version": installed, "history": [], "interrupted": None, "lock": None}
        return HostFacts.from_json({"paths": {}, "status": status, "installed_tree_sha256": tree})

    check_delta_bases(delta, [("web1", host("2.3.0", base_tree)), ("web2", host("2.3.0", base_tree))])
    with pytest.raises(RemoteError, match=r"delta built on 2\.3\.0") as caught:
        check_delta_bases(
            delta,
            [
                ("web1", host("2.3.0", base_tree)),
                ("web2", host("2.2.0", base_tree)),
                ("web3", host(None, None)),
                ("web4", host("2.3.0", "b" * 64)),
                ("web5", host("2.3.0", None)),  # no record there
                (
                    "web6",
                    HostFacts.from_json(
                        {"paths": {}, "status": {"installed_version": "2.3.0"}, "patchflow_version": "0.0.9"}
                    ),
                ),
            ],
        )
    message = caught.value.message
    assert "web2 (2.2.0), web3 (version unknown), web4 (2.3.0, but another build of it)" in message
    assert "web5 (2.3.0, but no record of its tree)" in message and "web1" not in message
    assert "web6 (2.3.0, but patchflow 0.0.9 there cannot read delta patches)" in message
    assert "Nothing was sent" in caught.value.hint and "create-patch without --base" in caught.value.hint
    full = LocalPatch(parse_version("2.3.1"), tmp_path, {}, "0" * 64)
    check_delta_bases(full, [("web2", host("2.2.0", None)), ("web3", host(None, None))])
