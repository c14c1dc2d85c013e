"""The shell text deploy sends to servers (patchflow.commands.remote), run through a real ``sh -c`` /
``bash -c`` with hostile values: every value arrives as one unchanged argument, and nothing that a
value spells (``$(...)``, backticks, ``;``, quotes) runs. The programs they start are stand-ins that
record their argv (a Python script at a hostile path), so no venv, pip or patchflow runs here.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from patchflow.commands.remote import (
    NO_CHECKOUT,
    NO_PYTHON,
    RUN_ALIVE,
    RUN_GONE,
    apply_patch_args,
    facts_script,
    host_facts_args,
    init_command,
    launcher_script,
    patchflow_argv,
    probe_script,
    receive_patch_args,
    rollback_patch_args,
    run_state_script,
    task_command,
    venv_install_script,
    version_command,
)

SHELLS = ["sh", "bash"]
#: a name made of what breaks shell text: a space, both quotes, ``$``, a backtick, a newline
NASTY = "a b'c\"d$e`f\ng"


def hostile(canary: Path) -> list[str]:
    """Values that would run ``touch canary`` (or split, or expand) if they reached the shell unquoted."""
    return [
        "with space",
        "it's",
        'say "hi"',
        "$HOME",
        f"$(touch {canary})",
        f"`touch {canary}`",
        f"'; touch {canary}; '",
        f'"; touch {canary}; "',
        f"x; touch {canary}",
        "line\nbreak",
        "2.3.0\n--yes",
        "",
        "-n",
    ]


RECORDER = """\
import json, os, sys
out = os.environ["ARGV_OUT"]
with open(out, "a", encoding="utf-8") as handle:
    handle.write(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd()}) + "\\n")
if sys.argv[1:3] == ["-m", "venv"]:
    folder = os.path.join(sys.argv[3], "bin")
    os.makedirs(folder)
    target = os.path.join(folder, "python")
    with open(__file__, encoding="utf-8") as mine, open(target, "w", encoding="utf-8") as copy:
        copy.write(mine.read())
    os.chmod(target, 0o755)
if sys.argv[1:] == ["-m", "patchflow", "--version"]:
    print("patchflow 9.9.9")
sys.exit(int(os.environ.get("RECORDER_EXIT", "0")))
"""


@pytest.fixture
def place(tmp_path: Path) -> Iterator[Path]:
    """A folder whose own name is hostile (a space, quotes, ``$``, a backtick and a newline)."""
    folder = tmp_path / NASTY
    folder.mkdir()
    yield folder


def recorder(folder: Path, name: str = "py thon") -> Path:
    """An executable stand-in for Python at ``folder/name`` that records its argv and cwd."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / name
    script.write_text(f"#!{sys.executable}\n{RECORDER}", encoding="utf-8")
    script.chmod(0o755)
    return script


def run(shell: str, text: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``shell -c text`` with no stdin, as sshd hands a command to the login shell."""
    environ = {**os.environ, "ARGV_OUT": str(tmp_path / "argv.jsonl"), **env}
    return subprocess.run(
        [shell, "-c", text],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=environ,
        stdin=subprocess.DEVNULL,
    )


def calls(tmp_path: Path) -> list[dict[str, object]]:
    out = tmp_path / "argv.jsonl"
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("shell", SHELLS)
def test_a_task_runs_in_its_checkout_with_every_argument_unchanged(shell: str, place: Path, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    python = recorder(place / NASTY)
    args = ["apply-patch", "--root", str(place), *hostile(canary)]
    done = run(shell, task_command(str(place), str(python), args), tmp_path)
    assert done.returncode == 0, done.stderr
    assert calls(tmp_path) == [{"argv": ["-m", "patchflow", *args], "cwd": str(place)}]
    assert not canary.exists(), "a value ran as a command"


def test_the_version_check_is_one_argument_list() -> None:
    python = f"/opt/{NASTY}/python"
    assert shlex.split(version_command(python)) == [python, "-m", "patchflow", "--version"]
    assert patchflow_argv(python, ["x y"]) == [python, "-m", "patchflow", "x y"]


@pytest.mark.parametrize("shell", SHELLS)
def test_host_facts_runs_with_the_first_interpreter_that_exists(shell: str, place: Path, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    python = recorder(place / "venv $bin")
    args = ["host-facts", "--root", str(place), "--version", f"2.3.0$(touch {canary})", "--history", "5"]
    done = run(shell, facts_script(str(place), [str(tmp_path / "missing py"), str(python)], args), tmp_path)
    assert done.returncode == 0, done.stderr
    assert calls(tmp_path) == [{"argv": ["-m", "patchflow", *args], "cwd": str(place)}]
    assert not canary.exists()


@pytest.mark.parametrize("shell", SHELLS)
def test_host_facts_exits_with_its_codes_without_a_checkout_or_an_interpreter(
    shell: str, place: Path, tmp_path: Path
) -> None:
    canary = tmp_path / "canary"
    done = run(shell, facts_script(str(place / "gone"), ["python3"], ["host-facts"]), tmp_path)
    assert done.returncode == NO_CHECKOUT
    missing = [f"/nowhere/py`touch {canary}`", "/nowhere/it's"]
    done = run(shell, facts_script(str(place), missing, ["host-facts"]), tmp_path)
    assert done.returncode == NO_PYTHON
    tried = " ".join(shlex.quote(p) for p in missing)
    assert done.stderr.startswith(f"no interpreter found (tried {tried}) on PATH="), "the names, quoted, never run"
    assert calls(tmp_path) == [] and not canary.exists()


@pytest.mark.parametrize("shell", SHELLS)
def test_the_probe_reports_a_hostile_checkout_without_running_its_contents(
    shell: str, place: Path, tmp_path: Path
) -> None:
    canary = tmp_path / "canary"
    version = "2.3$(touch canary)`touch canary`;touch canary"  # under the 64 bytes read; run in place/
    (place / "VERSION").write_text(version, encoding="utf-8")
    python = recorder(place / "venv dir")
    done = run(shell, probe_script(str(place), [str(tmp_path / "no such py"), str(python)]), tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "checkout=yes" in lines and "git=no" in lines
    assert f"version_file={version}" in lines, "VERSION is printed, never run"
    assert f"\npatchflow={python} patchflow 9.9.9\n" in done.stdout, "the interpreter's path, unchanged"
    assert any(line.startswith("path=") for line in lines)
    assert not canary.exists() and not (place / "canary").exists()
    done = run(shell, probe_script(str(place / "gone"), ["python3"]), tmp_path)
    assert "checkout=no" in done.stdout.splitlines()


def wait_for(path: Path, seconds: float = 30.0) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists():
            return path.read_text(encoding="utf-8")
        time.sleep(0.05)
    raise AssertionError(f"{path} did not appear within {seconds} s")


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("code", [0, 3])
def test_the_detached_launcher_records_and_runs_the_task_as_given(
    shell: str, code: int, place: Path, tmp_path: Path
) -> None:
    canary = tmp_path / "canary"
    python = recorder(place / "bin")
    deploys, logs = place / f"deploys {NASTY}", place / "logs $x"
    run_id = "apply-2.3.0'$(touch canary)`touch canary`"  # a file name: no slash; run in place/
    record = {"id": run_id, "version": f'2.3.0"`touch {canary}`', "note": "a\nb $HOME"}
    argv = patchflow_argv(str(python), ["apply-patch", "--version", *hostile(canary)])
    files = {kind: deploys / f"{run_id}.{kind}" for kind in ("json", "pid", "exit")}
    log = logs / f"{run_id}.log"
    text = launcher_script(
        root=str(place),
        folders=[str(deploys), str(logs)],
        record_file=str(files["json"]),
        record_json=json.dumps(record),
        log=str(log),
        pid_file=str(files["pid"]),
        exit_file=str(files["exit"]),
        argv=argv,
    )
    done = run(shell, text, tmp_path, RECORDER_EXIT=str(code))
    assert done.returncode == 0, done.stderr
    [pid] = [line[4:] for line in done.stdout.splitlines() if line.startswith("pid=")]
    assert pid.isdigit()
    assert wait_for(files["exit"]).strip() == str(code), "the task's own exit code"
    assert json.loads(files["json"].read_text(encoding="utf-8")) == record
    assert files["pid"].read_text(encoding="utf-8").strip() == pid, "the wrapper's pid, the group it leads"
    assert calls(tmp_path) == [{"argv": argv[1:], "cwd": str(place)}]
    assert log.exists() and not canary.exists() and not (place / "canary").exists()
    assert sorted(p.name for p in deploys.iterdir()) == sorted(p.name for p in files.values()), "no .tmp left"


@pytest.mark.parametrize("shell", SHELLS)
def test_the_launcher_refuses_a_missing_checkout(shell: str, place: Path, tmp_path: Path) -> None:
    text = launcher_script(
        root=str(place / "gone"),
        folders=[str(place / "d")],
        record_file=str(place / "d" / "r.json"),
        record_json="{}",
        log=str(place / "r.log"),
        pid_file=str(place / "d" / "r.pid"),
        exit_file=str(place / "d" / "r.exit"),
        argv=["true"],
    )
    assert run(shell, text, tmp_path).returncode == NO_CHECKOUT
    assert not (place / "d").exists()


@pytest.mark.parametrize("shell", SHELLS)
def test_the_run_state_follows_the_process_group_named_by_a_hostile_pid_file(
    shell: str, place: Path, tmp_path: Path
) -> None:
    pid_file = place / f"run {NASTY}.pid"
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)  # leads its own group, as setsid does
    try:
        assert run(shell, run_state_script(str(pid_file), sleeper.pid), tmp_path).stdout.strip() == RUN_ALIVE
        assert run(shell, run_state_script(str(pid_file), None), tmp_path).stdout.strip() == RUN_GONE
        pid_file.write_text(f"{sleeper.pid}\n", encoding="utf-8")
        assert run(shell, run_state_script(str(pid_file), None), tmp_path).stdout.strip() == RUN_ALIVE
    finally:
        os.killpg(sleeper.pid, signal.SIGKILL)
        sleeper.wait()
    assert run(shell, run_state_script(str(pid_file), None), tmp_path).stdout.strip() == RUN_GONE


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("links", [False, True], ids=["index", "wheelhouse"])
def test_the_venv_install_gets_its_paths_unchanged(shell: str, links: bool, place: Path, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    python3 = recorder(place / "sys $bin")
    venv = place / f"venv `touch {canary}`"
    wheels = place / f"wheels '$(touch {canary})'"
    wheel = f"{wheels}/patchflow-1.0-py3-none-any.whl"
    text = venv_install_script(str(python3), str(venv), wheel, find_links=str(wheels) if links else None)
    done = run(shell, text, tmp_path)
    assert done.returncode == 0, done.stderr
    index = ["--no-index", "--find-links", str(wheels)] if links else []
    assert [c["argv"] for c in calls(tmp_path)] == [
        ["-m", "venv", str(venv)],
        ["-m", "pip", "install", "-q", "--disable-pip-version-check", *index, wheel],
    ]
    assert not canary.exists()


@pytest.mark.parametrize("shell", SHELLS)
def test_init_passes_the_hosts_own_settings_as_single_arguments(shell: str, place: Path, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    python = recorder(place / "py")
    settings = [("health_url", f"http://127.0.0.1/health?a=1&b=$(touch {canary})"), ("service_manager", "it's\nx")]
    done = run(shell, init_command(str(place), str(python), yes=True, settings=settings), tmp_path)
    assert done.returncode == 0, done.stderr
    assert calls(tmp_path) == [
        {
            "argv": [
                "-m", "patchflow", "init", "--root", str(place), "--yes",
                "--set", f"health_url=http://127.0.0.1/health?a=1&b=$(touch {canary})",
                "--set", "service_manager=it's\nx",
            ],
            "cwd": str(place),
        }
    ]  # fmt: skip
    assert not canary.exists()
    assert "--yes" not in init_command("/srv/p", "python3", yes=False, settings=[])


def test_the_task_invocations_carry_their_flags_in_order() -> None:
    root = "/srv/prime flow"
    assert host_facts_args(root, history=200) == ["host-facts", "--root", root, "--history", "200"]
    assert host_facts_args(root, history=5, version="2.3.0", health=True) == [
        "host-facts", "--root", root, "--history", "5", "--version", "2.3.0", "--health",
    ]  # fmt: skip
    assert receive_patch_args(root, "2.3.0", ".upload-v2.3.0-00ff") == [
        "receive-patch", "--root", root, "--version", "2.3.0", "--upload", ".upload-v2.3.0-00ff",
    ]  # fmt: skip
    assert apply_patch_args(root, "2.3.0") == ["apply-patch", "--root", root, "--version", "2.3.0", "--yes"]
    assert apply_patch_args(root, "2.3.0", force=True, allow_downgrade=True, break_lock=True)[-3:] == [
        "--force", "--allow-downgrade", "--break-lock",
    ]  # fmt: skip
    assert apply_patch_args(root, "2.3.0", watch=1800)[-2:] == ["--watch", "1800"]  # deploy --watch: each host's window
    assert rollback_patch_args(root, None) == ["rollback-patch", "--root", root, "--yes"]
    assert rollback_patch_args(
        root, "2.3.0", backup="pre-patch-v2.3.0_x", force=True, break_lock=True, restore_database=True
    ) == [
        "rollback-patch", "--root", root, "--yes", "--version", "2.3.0", "--backup", "pre-patch-v2.3.0_x",
        "--force", "--break-lock", "--restore-database",
    ]  # fmt: skip


@pytest.mark.parametrize("shell", SHELLS)
def test_a_hostile_version_backup_or_upload_name_reaches_the_task_as_one_argument(
    shell: str, place: Path, tmp_path: Path
) -> None:
    canary = tmp_path / "canary"
    python = recorder(place / "py")
    version, backup, upload = f"2.3.0$(touch {canary})", f"b'; touch {canary}; '\nx", f".upload-`touch {canary}`"
    invocations = [
        host_facts_args(str(place), history=3, version=version, health=True),
        receive_patch_args(str(place), version, upload),
        apply_patch_args(str(place), version, force=True),
        rollback_patch_args(str(place), version, backup=backup, restore_database=True),
    ]
    for args in invocations:
        assert run(shell, task_command(str(place), str(python), args), tmp_path).returncode == 0
    assert [c["argv"] for c in calls(tmp_path)] == [["-m", "patchflow", *args] for args in invocations]
    assert not canary.exists()
