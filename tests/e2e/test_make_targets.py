"""The make targets init writes, run by real GNU make in a PrimeFlow-shaped checkout (issue 18
fault 2, issue 19 fault 5, issue 25 fault 6): they find patchflow on any machine (the checkout's
.venv, .patchflow/venv where setup-host installs it, PATH; PATCHFLOW= overrides; none: one line
naming setup-host and pip), take their variables only from the make command line and pass them
single-quoted, and patchflow's own exit code is named in its last line although make exits 2.

patchflow here is the real console script of this virtualenv, reached through symlinks where a
test needs it in a checkout's .venv or .patchflow/venv (a real venv there would only add a minute
of pip install to each test).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.services import refusing_port

from patchflow.errors import EXIT_CODES
from patchflow.init import apply_init, plan_init

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from primeflow_checkout import prepare_checkout

pytestmark = pytest.mark.e2e

PATCHFLOW = Path(sys.executable).parent / "patchflow"
BARE_PATH = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != PATCHFLOW.parent)


def make(
    cwd: Path, *args: str, path: str = BARE_PATH, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``make -s <args>`` in ``cwd`` with ``PATH`` = ``path`` (by default without this venv)."""
    return subprocess.run(
        ["make", "-s", "--no-print-directory", *args],
        cwd=cwd,
        env={**os.environ, "PATH": path, **(env or {})},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
        check=False,
    )


def on_path() -> str:
    return f"{PATCHFLOW.parent}{os.pathsep}{BARE_PATH}"


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    root = prepare_checkout(tmp_path / "primeflow", database_url=None, git=False)
    apply_init(plan_init(root), root / ".patchflow")
    return root


def link_patchflow(root: Path, venv: str) -> Path:
    link = root / venv / "bin" / "patchflow"
    link.parent.mkdir(parents=True)
    link.symlink_to(PATCHFLOW)
    return link


def test_patchflow_is_found_where_each_machine_has_it(checkout: Path, tmp_path: Path) -> None:
    assert (
        "patchflow"
        not in subprocess.run(
            ["sh", "-c", "command -v patchflow || true"], env={"PATH": BARE_PATH}, capture_output=True, text=True
        ).stdout
    )

    missing = make(checkout, "patch-status")
    assert missing.returncode == 2
    ours = [line for line in missing.stderr.splitlines() if not line.startswith("make:")]
    assert len(ours) == 1, missing.stderr
    assert "patchflow not found" in ours[0] and str(checkout) in ours[0]
    assert "inv setup-host --host <this server>" in ours[0] and "pip install <patchflow wheel>" in ours[0]
    assert "Error 127" in missing.stderr
    assert "patchflow: not found" in make(checkout, "patch-help").stdout, "patch-help still lists the commands"

    def chosen(*args: str, path: str = BARE_PATH) -> str:
        shown = make(checkout, "-n", "patch-status", *args, path=path)
        assert shown.returncode == 0, shown.stderr
        return shown.stdout.split("' patch-status ")[0].lstrip("'")

    assert chosen(path=on_path()) == str(PATCHFLOW), "patchflow on PATH"
    server = link_patchflow(checkout, ".patchflow/venv")
    assert chosen(path=on_path()) == str(server), "where setup-host installs it, before PATH"
    developer = link_patchflow(checkout, ".venv")
    assert chosen(path=on_path()) == str(developer), "the checkout's own .venv first"
    assert chosen(f"PATCHFLOW={PATCHFLOW}") == str(PATCHFLOW), "PATCHFLOW= overrides"

    done = make(checkout, "patch-status", "JSON=1")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["root"] == str(checkout)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    via_c = make(elsewhere, "-C", str(checkout), "patch-status", "JSON=1")
    assert via_c.returncode == 0 and json.loads(via_c.stdout)["root"] == str(checkout), "make -C acts on that checkout"
    via_f = make(elsewhere, "-f", str(checkout / "Makefile"), "patch-status", "JSON=1")
    assert via_f.returncode == 0 and json.loads(via_f.stdout)["root"] == str(checkout), "so does make -f"


def test_values_reach_patchflow_single_quoted_and_unexpanded(checkout: Path) -> None:
    hostile = "3.1.0; touch pwned"
    shown = make(checkout, "-n", "apply-patch", f"VERSION={hostile}", "YES=1", "DRY_RUN=1", path=on_path())
    assert f"--version '{hostile}' --yes --dry-run" in shown.stdout, "one command: DRY_RUN=1 is never dropped"
    for value in (hostile, "3.1.0`touch pwned`", "x'; touch pwned; echo '", "3.1.0$$(touch pwned)"):
        done = make(checkout, "apply-patch", f"VERSION={value}", "YES=1", "DRY_RUN=1", path=on_path())
        assert done.returncode == 2, done.stdout + done.stderr
        assert "Invalid --version" in done.stderr and "patchflow: exit 1 " in done.stderr, done.stderr
        assert not (checkout / "pwned").exists(), value
    literal = make(checkout, "-n", "patch-status", "ROLE=$(MAKEFILE_LIST)", path=on_path())
    assert "--role '$(MAKEFILE_LIST)'" in literal.stdout, "make references in a value are not expanded"


def test_variables_count_only_on_the_make_command_line(checkout: Path) -> None:
    assert "VERSION ?= $(shell cat VERSION" in (checkout / "Makefile").read_text()
    assert "HOST=0.0.0.0" in (checkout / ".env").read_text(), "included and exported by the Makefile"
    for env in ({}, {"VERSION": "3.0.0"}):
        refused = make(checkout, "apply-patch", "YES=1", path=on_path(), env=env)
        assert refused.returncode == 2, refused.stdout
        ours = [line for line in refused.stderr.splitlines() if not line.startswith("make:")]
        assert ours == [
            "make apply-patch: give the version on the make command line, e.g. make apply-patch VERSION=x.y.z "
            "(VERSION from the Makefile, the VERSION file or the environment does not count)"
        ]
        assert "nothing to do" not in refused.stdout
    create = make(checkout, "-n", "create-patch", path=on_path())
    assert create.stdout.rstrip().endswith(f"create-patch --root '{checkout}'"), "create-patch reads VERSION itself"
    rollback = make(checkout, "-n", "rollback-patch", "YES=1", path=on_path())
    assert rollback.stdout.rstrip().endswith(f"rollback-patch --root '{checkout}' --yes"), "the installed version"
    status = make(checkout, "-n", "patch-status", "SERVICE=api", path=on_path(), env={"YES": "1", "ROLE": "x"})
    assert status.stdout.rstrip().endswith(f"patch-status --root '{checkout}'"), "HOST from .env, YES from env: no"
    dry = make(checkout, "-n", "prune-backups", path=on_path(), env={"DRY_RUN": "1"})
    assert dry.stdout.rstrip().endswith("--dry-run"), "DRY_RUN=1 from the environment is never ignored"
    made = make(checkout, "create-patch", path=on_path())
    assert made.returncode == 0, made.stderr
    assert (checkout / "patches" / "v3.0.0" / "manifest.json").is_file()


def test_patchflows_exit_code_is_named_through_make(checkout: Path) -> None:
    bad = make(checkout, "verify-patch", "VERSION=9.9.9", path=on_path())
    assert bad.returncode == 2, "make's own exit code for any failing recipe"
    lines = bad.stderr.splitlines()
    assert lines[-2] == f"patchflow: exit 1 ({EXIT_CODES[1]})"
    assert lines[-1].startswith("make: *** [") and lines[-1].endswith("verify-patch] Error 1")
    with refusing_port() as port:
        remote = make(checkout, "patch-status", f"HOST=nobody@127.0.0.1:{port}", path=on_path())
    assert remote.returncode == 2
    lines = remote.stderr.splitlines()
    assert lines[-2] == f"patchflow: exit 6 ({EXIT_CODES[6]})" and lines[-1].endswith("patch-status] Error 6")
