"""The documents that cross the SSH boundary (patchflow.remote.wire), read and written by both sides:
what the server writes is what deploy reads, older servers' documents still read, and Fabric/Paramiko
stay in one module (the server side never loads them)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from patchflow.config import load_settings
from patchflow.paths import ProjectPaths
from patchflow.remote.serverside import _runs, deploys_dir, host_facts
from patchflow.remote.wire import HostFacts, HostFactsJSON, RunRecord, RunStatus, received

PACKAGE = Path(__file__).resolve().parents[2] / "patchflow"
RECORD = RunRecord(
    "apply-2.3.0-20250301T100000Z-abcdef",
    "apply",
    "2.3.0",
    "/srv/p/.patchflow/logs/x.log",
    "/srv/p/.patchflow/deploys/x.pid",
    "/srv/p/.patchflow/deploys/x.exit",
    "ops@laptop",
    "2025-03-01T10:00:00.000000Z",
    ("/srv/p/.patchflow/venv/bin/python", "-m", "patchflow", "apply-patch", "--version", "2.3.0"),
    launch_pid=4242,
    from_version="2.2.0",
)


def ssh_importers() -> dict[str, set[str]]:
    """Every module of patchflow/ that imports fabric or paramiko (any form), with what it imports."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if "fabric" not in text and "paramiko" not in text:
            continue  # cannot import them (a dynamic import would name them too)
        tree = ast.parse(text, filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in ("fabric", "paramiko"):
                    found.setdefault(str(path.relative_to(PACKAGE.parent)), set()).add(name.split(".")[0])
    return found


def test_only_the_session_module_imports_fabric_or_paramiko() -> None:
    assert ssh_importers() == {"patchflow/remote/session.py": {"fabric", "paramiko"}}


def test_the_server_side_and_the_wire_shapes_load_without_fabric() -> None:
    """host-facts and receive-patch run on every server: they must not pay for (or need) Fabric."""
    code = (
        "import sys, patchflow.remote.serverside, patchflow.remote.wire, patchflow.commands.remote; "
        "print(sorted(m for m in ('fabric', 'paramiko') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.strip() == "[]"


def test_a_run_record_is_written_and_read_back_the_same_without_its_launch_pid() -> None:
    written = RECORD.to_json()
    assert "launch_pid" not in written, "the launch pid is only known after the record is written"
    back = RunRecord.from_json(json.loads(json.dumps(written)))
    assert back == RunRecord(**{**RECORD.__dict__, "launch_pid": None})


def test_a_record_of_older_patchflow_reads_and_an_incomplete_one_is_refused() -> None:
    older = {k: v for k, v in RECORD.to_json().items() if k not in ("from_version", "argv")}
    read = RunRecord.from_json(older)
    assert (read.from_version, read.argv, read.id) == ("", (), RECORD.id)
    for key in ("id", "log", "pid_file", "exit_file"):
        with pytest.raises(ValueError, match=key):
            RunRecord.from_json({k: v for k, v in RECORD.to_json().items() if k != key})


def test_a_run_status_is_its_record_plus_state_exit_code_and_pid() -> None:
    status = RunStatus(RunRecord.from_json(RECORD.to_json()), "exited", 3, 977)
    data = status.to_json()
    assert list(data)[-3:] == ["state", "exit_code", "pid"]
    assert {k: data[k] for k in RECORD.to_json()} == RECORD.to_json()  # type: ignore[literal-required]
    assert RunStatus.from_json(json.loads(json.dumps(data))) == status


def older_document() -> dict[str, object]:
    """host-facts as a patchflow from before delta patches and journal facts printed it."""
    return {
        "format": 1,
        "patchflow_version": "0.9.0",
        "python": "/usr/bin/python3",
        "paths": {"root": "/srv/p", "patches": "/srv/p/patches", "state": "/srv/p/.patchflow",
                  "logs": "/srv/p/.patchflow/logs", "deploys": "/srv/p/.patchflow/deploys"},
        "settings": {"service_manager": "compose", "database_mode": "compose", "verify_key": False,
                     "health_url": []},
        "tools": [{"name": "docker compose", "purpose": "compose", "found": None}],
        "missing": ["docker compose (needed by compose)"],
        "status": {"installed_version": "2.2.0", "history": [], "lock": None, "interrupted": None},
        "health": None,
        "runs": [
            {k: v for k, v in RECORD.to_json().items() if k != "from_version"} | {"state": "running", "pid": 7},
            {"id": "broken", "state": "vanished"},
        ],
        "upload": None,
    }  # fmt: skip


def test_an_older_servers_facts_are_read_with_what_it_did_not_send_left_empty() -> None:
    facts = HostFacts.from_json(older_document())
    assert (facts.installed, facts.patchflow_version, facts.service_manager) == ("2.2.0", "0.9.0", "compose")
    assert facts.path("deploys") == "/srv/p/.patchflow/deploys" and facts.root == "/srv/p"
    assert not facts.reads_delta_bases and facts.installed_tree_sha256 is None and facts.journal is None
    [run] = facts.runs  # the record without its files' names is left out
    assert (run.record.id, run.state, run.pid, run.exit_code, run.record.from_version) == (
        RECORD.id,
        "running",
        7,
        None,
        "",
    )
    assert facts.missing == ["docker compose (needed by compose)"] and facts.tools[0]["found"] is None
    assert facts.task("receive-patch", "--upload", "x y") == (
        "cd -- /srv/p && /usr/bin/python3 -m patchflow receive-patch --upload 'x y'"
    )


@pytest.mark.parametrize("data", [[], "x", {"status": {}}, {"paths": {}, "status": None}, {"paths": [], "status": {}}])
def test_something_else_than_a_facts_document_is_refused(data: object) -> None:
    with pytest.raises(ValueError, match="not a host-facts document"):
        HostFacts.from_json(data)


@pytest.mark.parametrize(
    ("stdout", "answer"), [("placed\n", "placed"), ("note: x\nalready\n", "already"), ("", "placed")]
)
def test_receive_patch_answers_as_every_version_prints_it(stdout: str, answer: str) -> None:
    assert received(stdout) == answer


def test_the_server_reports_the_runs_deploy_recorded_and_skips_unreadable_records(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, environ={})
    paths = ProjectPaths.from_settings(settings)
    folder = deploys_dir(paths)
    folder.mkdir(parents=True)

    def record(name: str, started: str) -> RunRecord:
        return RunRecord(
            name, "apply", "2.3.0", str(folder / f"{name}.log"), str(folder / f"{name}.pid"),
            str(folder / f"{name}.exit"), "ops@laptop", started, ("python3", "-m", "patchflow"), from_version="2.2.0",
        )  # fmt: skip

    done, gone = record("done", "2025-03-01T10:00:00.000000Z"), record("gone", "2025-03-01T11:00:00.000000Z")
    for item in (done, gone):
        (folder / f"{item.id}.json").write_text(json.dumps(item.to_json()), encoding="utf-8")
    (folder / "done.exit").write_text("3\n", encoding="utf-8")
    (folder / "not-json.json").write_text("{", encoding="utf-8")
    (folder / "no-files.json").write_text(json.dumps({"id": "no-files"}), encoding="utf-8")
    runs = _runs(paths)
    assert [RunStatus.from_json(r) for r in runs] == [RunStatus(done, "exited", 3, None), RunStatus(gone, "vanished")]


def test_host_facts_sends_every_key_the_document_declares(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, environ={"PATH": "/usr/bin:/bin"})
    from patchflow.version import parse_version

    document = host_facts(settings, version=parse_version("2.3.0"))
    declared = HostFactsJSON.__required_keys__ | HostFactsJSON.__optional_keys__
    assert set(document) == declared
    facts = HostFacts.from_json(json.loads(json.dumps(document)))
    assert facts.reads_delta_bases and facts.root == str(tmp_path.resolve())
    assert facts.upload == {"final": None, "partial": {}}


def test_host_facts_reads_the_runs_before_the_lock_so_a_run_ending_between_them_is_seen_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that ends while the facts are gathered (its exit code written during the status read,
    which reads the lock) is reported running: deploy then attaches to it and reads its outcome,
    instead of seeing a held lock beside no run of its own and refusing the operator's own run."""
    import os

    import patchflow.status

    settings = load_settings(tmp_path, environ={"PATH": "/usr/bin:/bin"})
    paths = ProjectPaths.from_settings(settings)
    folder = deploys_dir(paths)
    folder.mkdir(parents=True)
    run = RunRecord(
        "ends", "apply", "2.3.0", str(folder / "ends.log"), str(folder / "ends.pid"), str(folder / "ends.exit"),
        "ops@laptop", "2025-03-01T10:00:00.000000Z", ("python3", "-m", "patchflow"), from_version="2.2.0",
    )  # fmt: skip
    (folder / "ends.json").write_text(json.dumps(run.to_json()), encoding="utf-8")
    (folder / "ends.pid").write_text(f"{os.getpid()}\n", encoding="utf-8")
    real = patchflow.status.collect_status

    def status_while_the_run_ends(*args: object, **kwargs: object) -> object:
        (folder / "ends.exit").write_text("0\n", encoding="utf-8")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(patchflow.status, "collect_status", status_while_the_run_ends)
    facts = HostFacts.from_json(json.loads(json.dumps(host_facts(settings))))
    assert [(r.record.id, r.state) for r in facts.runs] == [("ends", "running")]
    assert [(r.record.id, r.state) for r in HostFacts.from_json(host_facts(settings)).runs] == [("ends", "exited")]
