"""Issue 19, fault 4: apply and rollback run by an unprivileged local user.

An operator without root runs ``patchflow apply-patch`` / ``rollback-patch`` on an install it cannot
(fully) write or read. Each case ends, before anything stops, with one error paragraph naming
what cannot be written or read, by whom, owned by whom, and what to do; never a traceback, never
"No backup exists" for backups that exist but cannot be read; nothing changed, the services still
answer. The install's owner (the user itself) applies and rolls back normally, a read-only
``VERSION`` and a root-owned file in its tree included.

The user is created with ``useradd`` for the session (the tests need root for that and to hand it
an install: CI runs as root; elsewhere they are skipped). It runs patchflow as a real process
(``python -m patchflow``) with an interpreter it may execute: this venv's own, or, when that lives
below a folder it cannot enter (``/root``), the system's interpreter of the same version with this
venv's packages on ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import site
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.installs import REPO, Install, InstallTemplate, backup_names, health, history
from support.missing import missing_service
from support.services import PostgresCluster, shared_tempdir

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class User:
    """An unprivileged local user and the interpreter it runs patchflow with."""

    name: str
    uid: int
    gid: int
    python: str
    home: Path

    def run(self, *args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``python -m patchflow <args>`` as this user (no supplementary groups, no terminal)."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "PYTHONPATH": os.pathsep.join([str(REPO), *site.getsitepackages()]),
            "PYTHONDONTWRITEBYTECODE": "1",
            "no_proxy": os.environ.get("no_proxy", "127.0.0.1,localhost"),
        }
        return subprocess.run(
            [self.python, "-m", "patchflow", *args],
            user=self.uid,
            group=self.gid,
            extra_groups=[],
            env=env,
            cwd=cwd or self.home,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def _interpreter_for(uid: int, gid: int, home: Path) -> str | None:
    """An interpreter of this Python version that ``uid`` can execute with this venv's packages."""
    wanted = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [os.path.realpath(sys.executable), f"/usr/bin/python{wanted}", f"/usr/local/bin/python{wanted}"]
    probe = "import sys, invoke, psycopg, nacl, yaml; print('%d.%d' % sys.version_info[:2])"
    for candidate in dict.fromkeys(candidates):
        try:
            done = subprocess.run(
                [candidate, "-c", probe],
                user=uid,
                group=gid,
                extra_groups=[],
                env={"PYTHONPATH": os.pathsep.join([str(REPO), *site.getsitepackages()]), "HOME": str(home)},
                cwd=home,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except OSError:
            continue
        if done.returncode == 0 and done.stdout.strip() == wanted:
            return candidate
    return None


@pytest.fixture(scope="session")
def user() -> Iterator[User]:
    """A local user made for this session (removed after it)."""
    if os.geteuid() != 0:
        missing_service("needs root: the test creates a local user (useradd) and hands it an install; CI runs as root")
    name = f"pf{uuid.uuid4().hex[:10]}"
    subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
    )
    home = shared_tempdir("patchflow-user-")
    try:
        entry = pwd.getpwnam(name)
        os.chown(home, entry.pw_uid, entry.pw_gid)
        python = _interpreter_for(entry.pw_uid, entry.pw_gid, home)
        assert python is not None, (
            f"no Python {sys.version_info.major}.{sys.version_info.minor} that user {name} may execute (this venv's "
            f"is {os.path.realpath(sys.executable)}); install the system's python3 of that version"
        )
        yield User(name, entry.pw_uid, entry.pw_gid, python, home)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def shared_install(install_template: InstallTemplate, pg_cluster: PostgresCluster) -> Iterator[Install]:
    """A running 2.2.0 install (owned by root, as made) in a folder other users can reach."""
    base = shared_tempdir("patchflow-install-")
    running = install_template.new_install(base / "install")
    try:
        yield running
    finally:
        running.inv("down")
        rows = pg_cluster.psql("postgres", f"SELECT datname FROM pg_database WHERE datname LIKE '{running.dbname}%';\n")
        for name in rows.split():
            pg_cluster.drop_database(name)
        shutil.rmtree(base, ignore_errors=True)


def _hand_over(install: Install, user: User) -> None:
    """Make ``user`` the owner of the whole install and run its services as that user."""
    assert install.inv("down").returncode == 0
    for path in [install.root, *install.root.rglob("*")]:
        os.lchown(path, user.uid, user.gid)
    started = user.run("up", "--root", str(install.root))
    assert started.returncode == 0, started.stdout + started.stderr
    assert health(install) == (200, "2.2.0")


def _snapshot(install: Install) -> dict[str, object]:
    return {
        "tree": install.state(),
        "dump": install.pg_dump(),
        "backups": backup_names(install),
        "api": json.loads((install.root / ".patchflow/run/api.pid").read_text())["pid"],
        "history": len(history(install)),
    }


def _assert_untouched(install: Install, before: dict[str, object], version: str = "2.2.0") -> None:
    assert health(install) == (200, version)
    assert json.loads((install.root / ".patchflow/run/api.pid").read_text())["pid"] == before["api"]
    assert install.state() == before["tree"]
    assert install.pg_dump() == before["dump"]
    assert backup_names(install) == before["backups"]
    assert len(history(install)) == before["history"]
    assert not (install.root / ".patchflow/journal.json").exists()


def _one_paragraph(done: subprocess.CompletedProcess[str], user: User) -> str:
    """The refusal: exit 1, one error line and its hint, no traceback, refused before the stop."""
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "Traceback" not in out and 'File "' not in out, out
    assert "-> stop" not in done.stdout
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("error:") and all(not line.startswith("error:") for line in lines[1:]), out
    err = " ".join(done.stderr.split())
    assert f"{user.name} (uid {user.uid})" in err, "the error names who cannot"
    return err


def test_an_install_the_user_cannot_write_refuses_apply_and_rollback_in_one_paragraph(
    shared_install: Install, user: User, tmp_path: Path
) -> None:
    install = shared_install
    install.release(tmp_path, "2.3.0")
    before = _snapshot(install)
    err = _one_paragraph(user.run("apply-patch", "--root", str(install.root), "--version", "2.3.0", "--yes"), user)
    # patchflow's state folder is root's alone (0700, issue 25): the first thing the user cannot do is read it
    assert f"cannot read the host settings {install.root}/.patchflow/host.toml" in err
    assert ".patchflow is owned by root, mode 0700" in err
    assert "Run patchflow as the user who owns the install" in err
    _assert_untouched(install, before)

    applied = install.inv("apply-patch", "--version", "2.3.0", "--yes")  # root applies it
    assert applied.returncode == 0, applied.stdout + applied.stderr
    older = before["backups"]
    before = _snapshot(install)
    (name,) = set(backup_names(install)) - set(older)  # type: ignore[arg-type]
    err = _one_paragraph(user.run("rollback-patch", "--root", str(install.root), "--version", "2.3.0", "--yes"), user)
    assert "No backup" not in err and name not in err
    assert f"cannot read the host settings {install.root}/.patchflow/host.toml" in err  # the state is root's alone
    assert "Run patchflow as the user who owns the install" in err
    _assert_untouched(install, before, "2.3.0")


@pytest.mark.parametrize("part", ["state folder", "unreadable file", "unreadable host file", "root-owned folder"])
def test_a_part_of_the_users_install_it_cannot_write_or_read_is_named(
    shared_install: Install, user: User, tmp_path: Path, part: str
) -> None:
    install = shared_install
    install.release(tmp_path, "2.3.0")
    _hand_over(install, user)
    if part == "unreadable host file":  # where the release adds a file: the scan cannot read it
        (install.root / "apps/api/routes/audit.js").write_text("// a host's own file\n")
    target, mode, expected = {
        "state folder": (".patchflow", 0o755, ".patchflow (owned by root, mode 0755; the journal, lock and staging"),
        "unreadable file": ("src/main.js", 0o600, "cannot read src/main.js (owned by root, mode 0600;"),
        "unreadable host file": (
            "apps/api/routes/audit.js",
            0o600,
            "cannot read apps/api/routes/audit.js (owned by root, mode 0600; the patch writes it, and it could not "
            "be backed up)",
        ),
        "root-owned folder": (
            "apps/api/routes",
            0o755,
            "cannot write in apps/api/routes (owned by root, mode 0755; apps/api/routes/audit.js is added)",
        ),
    }[part]
    os.lchown(install.root / target, 0, 0)
    os.chmod(install.root / target, mode)
    before = _snapshot(install)
    for flags in (("--dry-run",), ("--yes",)):
        err = _one_paragraph(user.run("apply-patch", "--root", str(install.root), "--version", "2.3.0", *flags), user)
        assert expected in err, err
    _assert_untouched(install, before)


def test_the_owner_applies_and_rolls_back_with_a_read_only_version_and_a_root_file(
    shared_install: Install, user: User, tmp_path: Path
) -> None:
    """The user owns the install: it applies and rolls back. VERSION read-only keeps its mode; a
    file root owns (readable) is replaced with a warning that its owner cannot come back."""
    install = shared_install
    install.release(tmp_path, "2.3.0")
    _hand_over(install, user)
    os.chmod(install.root / "VERSION", 0o444)
    os.lchown(install.root / "src/main.js", 0, 0)
    tree = install.state()
    dump = install.pg_dump()
    applied = user.run("apply-patch", "--root", str(install.root), "--version", "2.3.0", "--yes")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    flat = " ".join(applied.stdout.split())
    assert f"access: {user.name} (uid {user.uid}) can write what the apply writes" in flat
    assert "belong to another user (src/main.js)" in flat and "a rollback cannot give them back" in flat
    assert health(install) == (200, "2.3.0")
    assert (install.root / "VERSION").stat().st_mode & 0o777 == 0o444

    rolled = user.run("rollback-patch", "--root", str(install.root), "--version", "2.3.0", "--yes")
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert health(install) == (200, "2.2.0")
    assert install.state() == tree, "content and modes are back exactly"
    assert install.pg_dump() == dump


def test_a_backup_the_user_cannot_read_is_named_not_missing(
    shared_install: Install, user: User, tmp_path: Path
) -> None:
    install = shared_install
    install.release(tmp_path, "2.3.0")
    _hand_over(install, user)
    older = backup_names(install)
    applied = user.run("apply-patch", "--root", str(install.root), "--version", "2.3.0", "--yes")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    (name,) = set(backup_names(install)) - set(older)
    folder = install.root / "backups" / name
    os.lchown(folder, 0, 0)
    os.chmod(folder, 0o700)
    before = _snapshot(install)
    for extra in ((), ("--backup", name)):
        done = user.run("rollback-patch", "--root", str(install.root), "--version", "2.3.0", "--yes", *extra)
        err = _one_paragraph(done, user)
        assert "No backup" not in err and "does not exist" not in err
        assert f"cannot read them: {name} (owned by root, mode 0700)" in err
        assert "Run rollback-patch as root (who owns them)" in err and f"chown -R {user.name}" in err
    _assert_untouched(install, before, "2.3.0")

    # a backup it can read, whose files it cannot: named before anything stops
    os.lchown(folder, user.uid, user.gid)
    saved = folder / "files" / "src" / "main.js"
    os.lchown(saved, 0, 0)
    os.chmod(saved, 0o600)
    done = user.run("rollback-patch", "--root", str(install.root), "--version", "2.3.0", "--yes")
    err = _one_paragraph(done, user)
    assert f"cannot read backups/{name}/files/src/main.js (owned by root, mode 0600; restores src/main.js)" in err
    _assert_untouched(install, before, "2.3.0")


def test_other_commands_on_an_install_the_user_cannot_write_never_end_in_a_traceback(
    shared_install: Install, user: User
) -> None:
    install = shared_install
    before = _snapshot(install)
    for args in (
        ("patch-status",),
        ("patch-status", "--json"),
        ("prune-backups", "--keep-days", "0", "--keep-last", "0"),
        ("down",),
        ("create-patch", "--force"),
        ("init", "--yes"),
        ("baseline-migrations", "--yes"),
    ):
        done = user.run(args[0], "--root", str(install.root), *args[1:])
        out = done.stdout + done.stderr
        assert "Traceback" not in out, (args, out)
    _assert_untouched(install, before)
