"""The shell text deploy sends to servers: pure builders from typed values to a command line or script.

Each function returns the text that :meth:`patchflow.remote.session.HostSession.run` hands to the
deploy user's shell there (OpenSSH runs it with ``sh -c``-like semantics of that shell); nothing here
runs anything. Every value from outside (a path, an interpreter, a version, a run id, a host
setting) is quoted with :func:`shlex.quote` / :func:`shlex.join`, so it reaches the program as one
unchanged argument whatever it holds (spaces, quotes, ``$``, backticks, newlines); the only
unquoted words are this module's own. ``tests/unit/test_remote_commands.py`` runs them through a
real ``sh -c``.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

#: exit code of :func:`facts_script` when the checkout folder is missing
NO_CHECKOUT = 90
#: exit code of :func:`facts_script` when none of the interpreters exists
NO_PYTHON = 91
#: what :func:`run_state_script` prints for a run that is alive, or gone
RUN_ALIVE = "run=alive"
RUN_GONE = "run=gone"

_PY_VERSION = "import sys; print('%d.%d.%d' % sys.version_info[:3])"


def patchflow_argv(python: str, args: Sequence[str]) -> list[str]:
    """``python -m patchflow ARGS`` as an argument list."""
    return [python, "-m", "patchflow", *args]


def host_facts_args(root: str, *, history: int, version: str | None = None, health: bool = False) -> list[str]:
    """``host-facts`` of the checkout ``root``: ``history`` records, what uploads of ``version`` left,
    a quick health probe with ``health``."""
    args = ["host-facts", "--root", root, "--history", str(history)]
    if version is not None:
        args += ["--version", version]
    return [*args, "--health"] if health else args


def receive_patch_args(root: str, version: str, upload: str) -> list[str]:
    """``receive-patch``: check the upload folder ``patches/<upload>`` there and place it as ``version``."""
    return ["receive-patch", "--root", root, "--version", version, "--upload", upload]


def apply_patch_args(
    root: str,
    version: str,
    *,
    force: bool = False,
    allow_downgrade: bool = False,
    break_lock: bool = False,
    others_stopped: bool = False,
    database_backup_on: str = "",
    watch: float = 0.0,
) -> list[str]:
    """``apply-patch --yes`` of ``version`` in the checkout ``root`` (deploy's detached run); in a
    group window ``--others-stopped`` and, on the hosts after the first, ``--database-backup-on``;
    ``--watch`` seconds when ``watch`` (the host's watch window, part of its apply: the rollout
    goes on to the next host only once it passed)."""
    flags = (
        ("--force", force),
        ("--allow-downgrade", allow_downgrade),
        ("--break-lock", break_lock),
        ("--others-stopped", others_stopped),
    )
    args = ["apply-patch", "--root", root, "--version", version, "--yes", *(flag for flag, on in flags if on)]
    if watch > 0:
        args += ["--watch", f"{watch:g}"]
    return [*args, "--database-backup-on", database_backup_on] if database_backup_on else args


def rollback_patch_args(
    root: str,
    version: str | None,
    *,
    backup: str | None = None,
    force: bool = False,
    break_lock: bool = False,
    restore_database: bool = False,
    others_stopped: bool = False,
) -> list[str]:
    """``rollback-patch --yes`` in the checkout ``root``: of ``version`` (None: the installed one),
    from ``backup`` when given (a remote rollback's detached run)."""
    args = ["rollback-patch", "--root", root, "--yes"]
    if version:
        args += ["--version", version]
    if backup:
        args += ["--backup", backup]
    flags = (
        ("--force", force),
        ("--break-lock", break_lock),
        ("--restore-database", restore_database),
        ("--others-stopped", others_stopped),
    )
    return [*args, *(flag for flag, on in flags if on)]


def task_command(root: str, python: str, args: Sequence[str]) -> str:
    """The command line running ``python -m patchflow ARGS`` in the checkout ``root`` there."""
    return f"cd -- {shlex.quote(root)} && " + shlex.join(patchflow_argv(python, args))


def version_command(python: str) -> str:
    """``python -m patchflow --version`` (setup-host's check after an install)."""
    return shlex.join(patchflow_argv(python, ["--version"]))


def facts_script(path: str, pythons: Sequence[str], args: Sequence[str]) -> str:
    """A script running ``python -m patchflow ARGS`` in the checkout ``path`` with the first of
    ``pythons`` that exists there; it exits :data:`NO_CHECKOUT` without the folder and
    :data:`NO_PYTHON` (with a line on stderr naming them and ``$PATH``) without an interpreter."""
    q = shlex.quote
    tried = " ".join(q(p) for p in pythons)
    return "\n".join(
        [
            f"cd -- {q(path)} 2>/dev/null || exit {NO_CHECKOUT}",
            f"for py in {tried}; do",
            '  if command -v "$py" >/dev/null 2>&1; then exec "$py" -m patchflow ' + shlex.join(args) + "; fi",
            "done",
            # the names go in as printf's argument: inside "..." a quoted name would be expanded
            f"printf 'no interpreter found (tried %s) on PATH=%s\\n' {q(tried)} \"$PATH\" >&2",
            f"exit {NO_PYTHON}",
        ]
    )


def probe_script(path: str, pythons: Sequence[str]) -> str:
    """A script printing ``key=value`` lines about the host for setup-host: ``checkout`` (yes/no),
    ``version_file`` (the checkout's VERSION, 64 bytes at most), ``git`` (short HEAD or no),
    ``python3`` (path and version), ``patchflow`` (the first of ``pythons`` running it, and its
    version), ``compose``, ``node`` and ``path`` (the non-interactive ``$PATH``)."""
    q = shlex.quote
    where = q(path)
    tried = " ".join(q(p) for p in pythons)
    return "\n".join(
        [
            f"if cd -- {where} 2>/dev/null; then echo checkout=yes; else echo checkout=no; fi",
            f'[ -f {where}/VERSION ] && echo "version_file=$(head -c 64 {where}/VERSION)"',
            f"if git -C {where} rev-parse --is-inside-work-tree >/dev/null 2>&1; then "
            f'echo "git=$(git -C {where} rev-parse --short HEAD 2>/dev/null)"; else echo git=no; fi',
            f'if command -v python3 >/dev/null 2>&1; then echo "python3=$(command -v python3) '
            f'$(python3 -c {q(_PY_VERSION)} 2>/dev/null)"; fi',
            f"for py in {tried}; do",
            '  if command -v "$py" >/dev/null 2>&1 && out=$("$py" -m patchflow --version 2>/dev/null); then',
            '    echo "patchflow=$py $out"; break',
            "  fi",
            "done",
            'if out=$(docker compose version 2>/dev/null); then echo "compose=$out" | head -n 1; fi',
            'if out=$(node --version 2>/dev/null); then echo "node=$out"; fi',
            'echo "path=$PATH"',
        ]
    )


def wrapper_script(pid_file: str, exit_file: str, argv: Sequence[str]) -> str:
    """The shell a detached run lives in: it writes its pid to ``pid_file``, runs ``argv``, then
    writes the exit code to ``exit_file`` (each through a ``.tmp`` file renamed into place) and exits
    with it."""
    q = shlex.quote
    return "\n".join(
        [
            f"echo $$ > {q(pid_file)}.tmp && mv -f -- {q(pid_file)}.tmp {q(pid_file)}",
            shlex.join(argv),
            "code=$?",
            f"echo $code > {q(exit_file)}.tmp && mv -f -- {q(exit_file)}.tmp {q(exit_file)}",
            "exit $code",
        ]
    )


def launcher_script(
    *,
    root: str,
    folders: Sequence[str],
    record_file: str,
    record_json: str,
    log: str,
    pid_file: str,
    exit_file: str,
    argv: Sequence[str],
) -> str:
    """The script that starts ``argv`` detached in the checkout ``root``: creates ``folders``,
    writes ``record_json`` to ``record_file`` (through a ``.tmp`` file), then starts
    :func:`wrapper_script` with ``setsid nohup sh -c`` (its own session and process group, no
    terminal, stdin from ``/dev/null``, output to ``log``) and prints ``pid=<its pid>``. Exits
    :data:`NO_CHECKOUT` without the checkout, 1 when a folder or the record cannot be written."""
    q = shlex.quote
    inner = wrapper_script(pid_file, exit_file, argv)
    return "\n".join(
        [
            f"cd -- {q(root)} || exit {NO_CHECKOUT}",
            "mkdir -p -- " + " ".join(q(folder) for folder in folders) + " || exit 1",
            f"printf '%s\\n' {q(record_json)} > {q(record_file)}.tmp || exit 1",
            f"mv -f -- {q(record_file)}.tmp {q(record_file)} || exit 1",
            f"setsid nohup sh -c {q(inner)} > {q(log)} 2>&1 < /dev/null &",
            'echo "pid=$!"',
        ]
    )


def run_state_script(pid_file: str, fallback_pid: int | None) -> str:
    """A script printing :data:`RUN_ALIVE` while a process of the run's process group (or the
    wrapper itself) lives, else :data:`RUN_GONE`; the group is the pid in ``pid_file``, or
    ``fallback_pid`` (the launch's ``$!``) before the wrapper wrote it."""
    q = shlex.quote
    fallback = str(fallback_pid) if fallback_pid else ""
    return (
        f"pid=$(cat -- {q(pid_file)} 2>/dev/null) || pid={q(fallback)}\n"
        'if [ -n "$pid" ] && { kill -s 0 -- "-$pid" 2>/dev/null || kill -s 0 "$pid" 2>/dev/null; }; '
        f"then echo {RUN_ALIVE}; else echo {RUN_GONE}; fi"
    )


def venv_install_script(python3: str, venv_dir: str, wheel: str, *, find_links: str | None = None) -> str:
    """``python3 -m venv VENV_DIR && VENV_DIR/bin/python -m pip install WHEEL`` (quiet); with
    ``find_links`` (a folder of wheels there) pip uses no index, only that folder."""
    q = shlex.quote
    index = f"--no-index --find-links {q(find_links)} " if find_links else ""
    return (
        f"{q(python3)} -m venv {q(venv_dir)} && "
        f"{q(venv_dir + '/bin/python')} -m pip install -q --disable-pip-version-check {index}{q(wheel)}"
    )


def init_command(path: str, python: str, *, yes: bool, settings: Sequence[tuple[str, str]]) -> str:
    """``init`` in the checkout ``path`` there; ``settings`` (the inventory entry's own host
    settings, ``(name, value)``) become ``--set name=value`` for the host's ``.patchflow/host.toml``."""
    args = ["init", "--root", path, *(["--yes"] if yes else [])]
    args += [arg for name, value in settings for arg in ("--set", f"{name}={value}")]
    return task_command(path, python, args)
