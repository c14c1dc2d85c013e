"""Trust boundaries (issue 25): a root process runs nobody else's code, and patchflow's own files are
no other user's to read, rename, forge or redirect, whatever the umask.

* A checkout whose ``tasks.py``, ``.env`` or ``Makefile`` another user owns (or every user may write)
  is refused by ``python -m patchflow`` run as root, before anything is read from it: the swapped
  ``tasks.py`` never runs, the ``.env``'s install command never runs. Listed in
  ``PATCHFLOW_SAFE_DIRECTORIES`` it is accepted (the operator's decision, outside the checkout).
* Under umask 000 an apply leaves the state folder, ``backups/`` and the logs 0700, nothing
  group- or world-writable, and the unprivileged user ``nobody`` can read none of it; a state
  folder made loose before is closed; a log or history planted as a link is refused, not followed.

Real install (sample, command services, real PostgreSQL), run as root (CI runs as root; the
unprivileged side is ``nobody`` through setpriv).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from support.installs import INV, Install, health, wait_trash_deleted
from support.missing import missing_service

pytestmark = pytest.mark.integration

NOBODY = 65534


def _root_only() -> None:
    if os.geteuid() != 0:
        missing_service("ownership checks need root to hand files to another user (CI runs as root)")


def _patchflow(install: Install, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m patchflow <task> --root <install> args`` (the entry point README gives root)."""
    return subprocess.run(
        [sys.executable, "-m", "patchflow", args[0], "--root", str(install.root), *args[1:]],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize("controlled", ["tasks.py", ".env", "Makefile", "world-writable .env"])
def test_root_refuses_a_checkout_another_user_controls_and_runs_none_of_it(
    install: Install, tmp_path: Path, controlled: str
) -> None:
    _root_only()
    marker = tmp_path / "ran-as-root"
    install.release(tmp_path, "2.3.0")
    if controlled == "tasks.py":
        with open(install.root / "tasks.py", "a") as handle:
            handle.write(f"\nopen({str(marker)!r}, 'w').write('pwned')\n")
    else:
        with open(install.root / ".env", "a") as handle:  # a command patchflow would run as root
            handle.write(f"PATCHFLOW_INSTALL_COMMAND=touch {marker}\n")
    name = controlled.removeprefix("world-writable ")
    if not (install.root / name).exists():
        (install.root / name).write_text("demo:\n\ttrue\n")
    if controlled.startswith("world-writable"):
        os.chmod(install.root / name, 0o666)
    else:
        os.chown(install.root / name, NOBODY, NOBODY)
    tree = install.state()

    for args in (("patch-status",), ("apply-patch", "--version", "2.3.0", "--yes")):
        done = _patchflow(install, *args)
        assert done.returncode == 1, done.stdout + done.stderr
        flat = " ".join(done.stderr.split())
        why = "writable by every user" if controlled.startswith("world") else "owned by nobody"
        assert f"Refusing to act on {install.root} as root" in flat and f"{name}: {why}" in flat, flat
        assert "/etc/patchflow/safe-directories" in flat and "Traceback" not in flat
    assert not marker.exists(), "nothing of the checkout ran"
    assert install.state() == tree and health(install) == (200, "2.2.0")

    trusted = _patchflow(install, "patch-status", env={"PATCHFLOW_SAFE_DIRECTORIES": f"/nowhere:{install.root}"})
    assert trusted.returncode == 0, trusted.stdout + trusted.stderr
    assert not marker.exists(), "python -m patchflow never imports the checkout's tasks.py"


def test_under_umask_000_nothing_of_patchflow_is_open_to_other_users(install: Install, tmp_path: Path) -> None:
    _root_only()
    install.release(tmp_path, "2.3.0")
    state = install.root / ".patchflow"
    os.chmod(state, 0o777)  # made under a loose umask before
    done = subprocess.run(
        [*INV, "apply-patch", "--root", str(install.root), "--version", "2.3.0", "--yes"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        umask=0,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    wait_trash_deleted(install.root)  # the detached deleter of the staging copy is done before the walk
    for folder in (state, install.root / "backups", state / "logs"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    loose = [
        str(path)
        for top in (state, install.root / "backups")
        for path in top.rglob("*")
        if not path.is_symlink() and path.lstat().st_mode & 0o022
    ]
    assert loose == [], f"group- or world-writable: {loose[:10]}"
    history = state / "history.jsonl"
    as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    for target in (history, install.root / "backups"):
        peek = subprocess.run([*as_nobody, "ls", "-l", str(target)], capture_output=True, text=True, check=False)
        assert peek.returncode != 0 and "Permission denied" in peek.stderr, (target, peek.stdout, peek.stderr)


@pytest.mark.parametrize("planted", ["logs/patchflow.log", "history.jsonl", "apply.lock"])
def test_a_state_file_planted_as_a_link_is_refused_not_followed(install: Install, tmp_path: Path, planted: str) -> None:
    _root_only()
    victim = tmp_path / "root-only.txt"
    victim.write_text("root's\n")
    path = install.root / ".patchflow" / planted
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    os.symlink(victim, path)
    install.release(tmp_path, "2.3.0")
    done = install.inv("apply-patch", "--version", "2.3.0", "--yes")
    assert done.returncode == 1, done.stdout + done.stderr
    flat = " ".join(done.stderr.split())
    assert f"{path} is a link (to {victim})" in flat and "Nothing was changed" in flat, flat
    assert victim.read_text() == "root's\n"
    assert health(install) == (200, "2.2.0")


# -- secrets ------------------------------------------------------------------------------------------------------


def _everything_written(install: Install) -> str:
    """Every file patchflow wrote in the install's state and backup records (logs, history,
    journal, run logs, backup.json), as one text."""
    texts = []
    for top in (install.root / ".patchflow", install.root / "backups"):
        for path in top.rglob("*"):
            if path.is_file() and not path.is_symlink() and path.suffix in (".log", ".jsonl", ".json", ""):
                texts.append(path.read_text(errors="replace"))
    return "\n".join(texts)


def test_no_password_reaches_a_screen_a_log_or_a_file_and_no_patchflow_setting_reaches_the_app(
    install: Install, tmp_path: Path
) -> None:
    """A hostile password (``@ : / % ? # & =`` in it), given in the URL's userinfo and as a
    ``password=`` parameter, and a superuser admin URL: none of them is printed by the plan, the
    apply, an error or patch-status, or written to the logs, the history or a backup record; the
    app's processes get no ``PATCHFLOW_*`` variable. A password with a bad ``%`` escape, which libpq
    repeats in its error, is masked there too."""
    from urllib.parse import quote

    secret = f"Pw@:/?#&=x{os.getpid()}"
    role = f"pf_secret_{os.getpid()}"
    install.cluster.add_password_role(role, secret)
    port = install.cluster.port
    url = f"postgresql://{role}:{quote(secret, safe='')}@127.0.0.1:{port}/{install.dbname}"
    admin = f"postgresql://{role}@127.0.0.1:{port}/{install.dbname}?sslmode=disable&password={quote(secret, safe='')}"
    install.release(tmp_path, "2.3.0")
    with open(install.root / ".env", "a") as handle:
        handle.write(f"DATABASE_URL={url}\nPATCHFLOW_DATABASE_ADMIN_URL={admin}\n")
    outputs = []
    for args in (
        ("apply-patch", "--version", "2.3.0", "--dry-run"),
        ("apply-patch", "--version", "2.3.0", "--yes"),
        ("patch-status",),
        ("patch-status", "--json"),
    ):
        done = install.inv(*args)
        assert done.returncode == 0, done.stdout + done.stderr
        outputs.append(done.stdout + done.stderr)
    broken = install.inv(
        "apply-patch", "--version", "2.3.0", "--dry-run", env={"DATABASE_URL": url.replace("Pw%40", "Pw%zz")}
    )
    assert broken.returncode != 0
    outputs.append(broken.stdout + broken.stderr)
    assert 'invalid percent-encoded token: "***"' in broken.stderr, broken.stderr
    written = "\n".join(outputs) + _everything_written(install)
    for form in (secret, quote(secret, safe=""), "Pw%zz"):
        assert form not in written, f"{form!r} was shown or written"
    assert "***" in "\n".join(outputs)

    api = json.loads((install.root / ".patchflow" / "run" / "api.pid").read_text())["pid"]
    environ = Path(f"/proc/{api}/environ").read_bytes().split(b"\0")
    own = sorted(v.split(b"=")[0].decode() for v in environ if v.startswith(b"PATCHFLOW_"))
    assert own == [], f"the app's environment holds patchflow's settings: {own}"
    assert any(v.startswith(b"DATABASE_URL=") for v in environ), "the app keeps its own .env"


# -- unsigned patches -----------------------------------------------------------------------------------------------


def test_an_unsigned_patch_on_a_host_without_a_verify_key_is_refused_unless_accepted_on_purpose(
    install: Install, tmp_path: Path
) -> None:
    """Issue 25, fault 4: with no verify key (the default) an unsigned patch used to apply without
    a word. Now it is refused (nothing changed) unless the host accepts unsigned patches
    (``allow_unsigned``) or the operator says so for one apply (``--allow-unsigned``); the plan of
    an accepted one says it loudly."""
    install.release(tmp_path, "2.3.0")
    strict = {"PATCHFLOW_ALLOW_UNSIGNED": "false"}  # the environment wins over the install's .env
    tree = install.state()
    done = install.inv("apply-patch", "--version", "2.3.0", "--yes", env=strict)
    assert done.returncode == 1, done.stdout + done.stderr
    flat = " ".join(done.stderr.split())
    assert "Patch v2.3.0 is checked against nobody's signature: this host has no verify_key" in flat, flat
    assert "allow_unsigned = true" in flat and "create-signing-key" in flat and "Nothing was changed" in flat
    assert install.state() == tree and health(install) == (200, "2.2.0")

    done = install.inv("apply-patch", "--version", "2.3.0", "--yes", "--allow-unsigned", env=strict)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "!! UNSIGNED: v2.3.0 matches its own checksums, but no signature says who built it" in done.stdout
    assert health(install) == (200, "2.3.0")
