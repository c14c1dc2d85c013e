"""The server side of deploy: what ``host-facts`` reports and how ``receive-patch`` checks and places an upload.

Two tasks run in the server's PrimeFlow checkout (see :mod:`patchflow.tasks.on_server`), their
documents typed in :mod:`patchflow.remote.wire`:

* ``host-facts`` (:func:`host_facts`) prints one JSON document: patchflow's version and Python,
  the checkout's folders, the patch-status data (:func:`patchflow.status.collect_status`), a
  quick health probe, the tools the apply will need **in this same non-interactive environment**
  (field failure C22: ``docker compose`` for the compose manager, ``node`` for a command manager
  that runs node, the install/build/migrate commands, ``pg_dump``...), the detached runs that
  deploy started (running, exited with a code, or vanished), and for one version what an upload
  already left there (the final ``patches/vX`` folder, partial ``.upload-*`` folders with the
  size and SHA-256 of every file, for resuming), and what the journal of an unfinished apply or
  rollback says about the install (:func:`journal_facts`: how far it got, whether it committed,
  whether the services are stopped), so that deploy reports a run that died as it left the install;
* ``receive-patch`` (:func:`receive_upload`) checks an uploaded folder where it landed
  (``patches/.upload-vX-<id>/``: SHA256SUMS, signature with a verify key, manifest) and only
  then renames it to ``patches/vX`` (C08 (f): a partial or corrupt upload is never used). A
  folder that does not verify is reported as :class:`NotVerified` (``receive-patch`` prints
  :data:`NOT_VERIFIED` on its stdout first), so that deploy never takes another failure, or a lost
  connection, for a patch that does not verify.

Nothing here imports Fabric: these run on the server.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from patchflow.commands import split_command
from patchflow.config import Settings
from patchflow.errors import PatchflowError, VerifyError
from patchflow.files import remove_tree
from patchflow.lifecycle.journal import Journal, utc_now
from patchflow.lock import _user, pid_alive
from patchflow.paths import SHA256SUMS, ProjectPaths
from patchflow.remote.wire import (
    FACTS_FORMAT,
    UPLOAD_PREFIX,
    DatabaseFactsJSON,
    HealthAnswerJSON,
    HealthJSON,
    HostFactsJSON,
    JournalFactsJSON,
    Received,
    RunRecord,
    RunStatus,
    RunStatusJSON,
    ToolJSON,
    UploadFinalJSON,
    UploadStateJSON,
)
from patchflow.shared_database import read_group_window
from patchflow.version import PatchVersion

RUN_LIMIT = 20
START_GRACE_SECONDS = 30.0
#: Programs the detached run itself needs (see patchflow.remote.runs): session, no hang-up, a shell.
LAUNCHER_TOOLS = ("sh", "setsid", "nohup")


class NotVerified(VerifyError):
    """The uploaded folder does not verify (checksums, signature, manifest): it is not put in place."""


def deploys_dir(paths: ProjectPaths) -> Path:
    """Where deploy records its detached runs (``<id>.json``, ``.pid``, ``.exit``)."""
    return paths.state / "deploys"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _which(program: str, path: str | None) -> str | None:
    if "/" in program:
        return program if os.access(program, os.X_OK) else None
    return shutil.which(program, path=path)


def required_tools(settings: Settings, paths: ProjectPaths) -> list[ToolJSON]:
    """The programs an apply of this checkout will run, each looked up on this process's PATH (the
    environment deploy's detached apply inherits): ``{"name", "purpose", "found"}``; ``found`` is the
    path or detail, None when missing."""
    from patchflow.migrations import find_migrations, migrate_command
    from patchflow.pg_target import find_pg_bindir

    path = settings.environ.get("PATH")
    wanted: list[tuple[str, str]] = [(tool, "deploy's detached run") for tool in LAUNCHER_TOOLS]
    if settings.service_manager == "command":
        for name, command in settings.commands:
            words = split_command(command)
            if words:
                wanted.append((words[0], f"service {name} ({command})"))
    for label, command in (("install_command", settings.install_command), ("build_command", settings.build_command)):
        words = split_command(command) if command.strip() else []
        if words:
            wanted.append((words[0], f"{label} ({command})"))
    try:
        migrate = migrate_command(settings, paths.root, find_migrations(paths.root))
    except (PatchflowError, OSError):
        migrate = "builtin"
    if migrate != "builtin":
        words = split_command(migrate)
        if words:
            wanted.append((words[0], f"migrations ({migrate})"))
    tools: list[ToolJSON] = []
    seen: set[tuple[str, str]] = set()
    for program, purpose in wanted:
        if (program, purpose) in seen:
            continue
        seen.add((program, purpose))
        tools.append({"name": program, "purpose": purpose, "found": _which(program, path)})
    if settings.database_mode == "url" and settings.database_url:
        bindir = find_pg_bindir(settings.pg_bindir, path)
        for program in ("pg_dump", "pg_restore", "psql"):
            found = bindir / program if bindir is not None else None
            ok = found is not None and os.access(found, os.X_OK)
            tools.append(
                {"name": program, "purpose": "database backup and restore", "found": str(found) if ok else None}
            )
    if settings.service_manager == "compose" or settings.database_mode == "compose":
        tools.append(
            {"name": "docker compose", "purpose": "compose services and database", "found": _compose_version(settings)}
        )
    return tools


def _compose_version(settings: Settings) -> str | None:
    """``docker compose version`` run here (20 s at most); its first line, None when it fails."""
    try:
        done = subprocess.run(
            ["docker", "compose", "version"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
            stdin=subprocess.DEVNULL,
            env=dict(settings.environ),
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0] if done.returncode == 0 and lines else None


def _health(settings: Settings, installed: str | None) -> HealthJSON:
    """One quick probe of every health URL (2 s each): healthy means 2xx, a healthy status and the
    installed version when the body reports one."""
    from patchflow.health import judge, probe

    answers: list[HealthAnswerJSON] = []
    healthy = True
    for url in settings.health_url:
        answer = probe(
            url,
            settings.health_version_field,
            timeout=2.0,
            status_field=settings.health_status_field,
            follow_redirects=settings.health_follow_redirects,
        )
        why = judge(
            answer,
            expect_version=installed,
            version_field=settings.health_version_field,
            healthy_statuses=settings.health_status_ok,
        )
        healthy = healthy and why is None
        answers.append({"url": url, "status": answer.status, "version": answer.version, "problem": why})
    detail = "; ".join(f"{a['url']}: {a['problem'] or 'ok'}" for a in answers)
    return {"healthy": healthy and bool(answers), "answers": answers, "detail": detail or "no health URL"}


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None


def _age_seconds(stamp: str) -> float:
    """Seconds since the UTC time ``stamp`` (``2025-01-01T14:30:22.123456Z``); infinite when unreadable."""
    from datetime import UTC, datetime

    try:
        then = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        return float("inf")
    return (datetime.now(UTC) - then).total_seconds()


def group_alive(group: int) -> bool:
    """True when a process of process group ``group`` exists (a detached run's wrapper leads its own
    session and group, so its task lives on in that group if only the wrapper was killed)."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _runs(paths: ProjectPaths) -> list[RunStatusJSON]:
    """The last detached runs deploy recorded here, oldest first, each with its ``state``:
    ``exited`` (``exit_code``), ``running`` (its pid alive), ``starting`` (launched less than
    :data:`START_GRACE_SECONDS` ago, no pid file yet) or ``vanished`` (no exit code, no process).
    A record that cannot be read (not JSON, or without its files' names) is left out."""
    import json

    folder = deploys_dir(paths)
    if not folder.is_dir():
        return []
    records: list[RunRecord] = []
    for item in folder.glob("*.json"):
        try:
            data = json.loads(item.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                records.append(RunRecord.from_json(data))
        except (OSError, ValueError):
            continue
    records.sort(key=lambda r: (r.started_at, r.id))
    out = []
    for record in records[-RUN_LIMIT:]:
        code = _read_int(paths.root / record.exit_file)
        pid = _read_int(paths.root / record.pid_file)
        if code is not None:
            state = "exited"
        elif pid is not None and (pid_alive(pid) or group_alive(pid)):
            state = "running"  # the wrapper, or a process of its group (the task) if only the wrapper died
        elif pid is None and _age_seconds(record.started_at) < START_GRACE_SECONDS:
            state = "starting"  # launched a moment ago; its shell writes the pid file first
        else:
            state = "vanished"
        out.append(RunStatus(record, state, code, pid).to_json())
    return out


def _upload_state(paths: ProjectPaths, version: PatchVersion) -> UploadStateJSON:
    """What earlier uploads of ``version`` left: the final folder (its SHA256SUMS digest) and the
    partial folders (every file's size and SHA-256)."""
    final = paths.patch_dir(version)
    final_state: UploadFinalJSON | None = None
    if final.is_dir():
        sums = final / SHA256SUMS
        final_state = {"sums_sha256": _file_sha256(sums) if sums.is_file() else None}
    partial: dict[str, dict[str, tuple[int, str]]] = {}
    prefix = f"{UPLOAD_PREFIX}{version.tag}-"
    if paths.patches.is_dir():
        for folder in paths.patches.iterdir():
            if not folder.name.startswith(prefix) or not folder.is_dir() or folder.is_symlink():
                continue
            files: dict[str, tuple[int, str]] = {}
            for item in folder.iterdir():
                if item.is_file() and not item.is_symlink():
                    files[item.name] = (item.stat().st_size, _file_sha256(item))
            partial[folder.name] = files
    return {"final": final_state, "partial": partial}


def journal_facts(paths: ProjectPaths) -> JournalFactsJSON | None:
    """What the journal of an unfinished apply or rollback (``.patchflow/journal.json``) says about
    the install, for deploy to report a run that died (killed, out of memory, the host restarted)
    as it left the install.

    Returns:
        None when there is no journal; ``{"damaged": why}`` when it cannot be read; else
        ``{"action", "version", "from_version", "phase", "reached"`` (the run's own steps started,
        in order: an apply's going forward, a rollback's), ``"committed"`` (an apply that reached
        its commit: its recovery finishes it), ``"services"``: ``untouched`` (never stopped: the
        version the run started from still runs), ``stopped``, ``started`` (the run started the
        services of the version it was going to, not proven healthy yet) or ``restarted`` (an
        apply's automatic rollback started the old version again)``}``.
    """
    try:
        journal = Journal.load(paths.journal)
    except PatchflowError as exc:
        return {"damaged": exc.message}
    if journal is None:
        return None
    # a rollback journals its own steps in the rolling_back phase; an apply goes forward, then (when
    # it fails) journals its undos in that phase
    going = "rolling_back" if journal.action == "rollback" else "forward"
    reached = list(dict.fromkeys(str(s.get("name")) for s in journal.steps if s.get("phase", "forward") == going))
    if not journal.reached("stop", going):
        services = "untouched"
    elif journal.action == "apply" and journal.phase == "rolling_back":
        services = "restarted" if journal.done("start-old", "rolling_back") else "stopped"
    elif journal.done("start", going):
        services = "started"
    else:
        services = "stopped"
    return {
        "action": journal.action,
        "version": journal.version,
        "from_version": journal.from_version,
        "phase": journal.phase,
        "reached": reached,
        "committed": journal.action == "apply" and journal.phase == "forward" and journal.reached("commit"),
        "services": services,
    }


def host_facts(
    settings: Settings, *, version: PatchVersion | None = None, health: bool = False, history: int = 200
) -> HostFactsJSON:
    """Everything deploy needs to know about this checkout (see the module docstring), JSON-ready.

    Args:
        settings: the checkout's settings (as the apply will load them).
        version: also report what uploads of this version left (``upload``).
        health: probe the health URLs once (``health``; None otherwise).
        history: number of history records in ``status``.

    Returns:
        Keys ``format``, ``patchflow_version``, ``python``, ``host``, ``user``, ``now`` (UTC),
        ``paths`` (root, patches, state, logs, deploys: absolute), ``settings`` (service_manager,
        database_mode, verify_key: bool, health_url), ``tools`` and ``missing`` (see
        :func:`required_tools`), ``status`` (collect_status), ``health``, ``runs``, ``upload``,
        ``installed_tree_sha256`` (with ``version``: :func:`installed_tree_sha256`), ``journal``
        (:func:`journal_facts`).
    """
    from patchflow import __version__
    from patchflow.status import collect_status

    paths = ProjectPaths.from_settings(settings)
    # the runs are read before the lock (in the status): a run that ends between the two reads is then
    # seen running beside a free lock (deploy attaches and reads its exit code), never ended beside its
    # lock still held (deploy would refuse the operator's own run as someone else's)
    runs = _runs(paths)
    status = collect_status(settings, history_limit=history)
    tools = required_tools(settings, paths)
    return {
        "format": FACTS_FORMAT,
        "patchflow_version": __version__,
        "python": sys.executable,
        "host": socket.gethostname(),
        "user": _user(),
        "now": utc_now(),
        "paths": {
            "root": str(paths.root),
            "patches": str(paths.patches),
            "state": str(paths.state),
            "logs": str(paths.logs),
            "deploys": str(deploys_dir(paths)),
        },
        "settings": {
            "service_manager": settings.service_manager,
            "database_mode": settings.database_mode,
            "verify_key": bool(settings.verify_key.strip()),
            "health_url": list(settings.health_url),
        },
        "tools": tools,
        "missing": [f"{t['name']} (needed by {t['purpose']})" for t in tools if not t["found"]],
        "status": status,
        "health": _health(settings, status["installed_version"]) if health else None,
        "runs": runs,
        "upload": _upload_state(paths, version) if version is not None else None,
        "installed_tree_sha256": installed_tree_sha256(paths) if version is not None else None,
        "journal": journal_facts(paths),
        "database": database_facts(settings),
        "group_window": read_group_window(paths),
    }


def database_facts(settings: Settings) -> DatabaseFactsJSON | None:
    """Which database this checkout uses and the migrations applied there (deploy groups hosts
    by ``identity``: :mod:`patchflow.shared_database`); None without a database. A database that
    cannot be reached gives ``identity`` "" and the reason in ``error`` (never raises)."""
    from patchflow.context import Context
    from patchflow.migrations import MigrationHistory
    from patchflow.shared_database import database_identity

    try:
        database = Context.create(settings).database
        if database is None:
            return None
        identity = database_identity(database)
        rows = MigrationHistory(database).rows()
    except PatchflowError as exc:
        return {"identity": "", "applied": [], "error": exc.message}
    applied = [r["name"] for r in rows if r["finished"] and not r["rolled_back"]]
    return {"identity": identity, "applied": applied, "error": ""}


def installed_tree_sha256(paths: ProjectPaths) -> str | None:
    """:func:`patchflow.delta.tree_sha256` of the install's record of its tree
    (``.patchflow/installed-manifest.json``), None when there is no readable record. Deploy compares
    it with a delta patch's ``base_tree_sha256`` before sending anything."""
    import json

    from patchflow.delta import manifest_entries, tree_sha256

    try:
        data = json.loads(paths.installed_manifest.read_text(encoding="utf-8"))
        return tree_sha256(manifest_entries(data).values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def receive_upload(settings: Settings, version: PatchVersion, name: str) -> Received:
    """Check the uploaded folder ``patches/<name>`` and rename it to ``patches/vX``.

    The folder is verified as apply would verify it (every line of ``checksum.md5`` and
    ``SHA256SUMS``, SHA256SUMS covering every file, the signature when a verify key is set, the
    manifest naming this version and archive) before the rename; other partial uploads of the same
    version are removed after it.

    Returns:
        ``placed`` (renamed into place) or ``already`` (``patches/vX`` was there with the same
        SHA256SUMS; the upload folder is removed).

    The fault hook (:mod:`patchflow.faults`) point ``receive-check`` (e.g. ``receive-check=SIGSTOP``) is
    reached before the check (tests hold the check there to cut the connection during it).

    Raises:
        NotVerified: the folder does not verify (it stays, and the next upload resumes or replaces
            its files).
        VerifyError: the name is not an upload folder of ``version``, the folder is missing, or a
            different ``patches/vX`` is already there.
    """
    from patchflow.verify import verify_patch

    if not re.fullmatch(re.escape(UPLOAD_PREFIX + version.tag) + r"-[0-9a-f]{16}", name):
        raise VerifyError(
            f"{name!r} is not an upload folder of {version.tag}.", "deploy names it; nothing was changed."
        )
    paths = ProjectPaths.from_settings(settings)
    upload = paths.patches / name
    final = paths.patch_dir(version)
    if not upload.is_dir() or upload.is_symlink():
        raise VerifyError(f"No uploaded folder {upload}.", "Run the deploy again to upload the patch.")
    settings.faults.checkpoint("receive-check")
    try:
        verify_patch(upload, version, verify_key=settings.verify_key)
    except VerifyError as exc:
        raise NotVerified(exc.message, exc.hint) from None
    outcome: Received = "placed"
    try:
        os.rename(upload, final)
    except OSError:
        if not final.is_dir():
            raise
        outcome = "already"
    if outcome == "already":
        theirs, ours = final / SHA256SUMS, upload / SHA256SUMS
        if not theirs.is_file() or _file_sha256(theirs) != _file_sha256(ours):
            raise VerifyError(
                f"{final} already exists on this host with different content than the patch uploaded.",
                f"Keep patch versions unique: build a new version, or move {final} away on the host and deploy again.",
            )
        remove_tree(upload)
    fd = os.open(paths.patches, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    for stale in paths.patches.glob(f"{UPLOAD_PREFIX}{version.tag}-*"):
        if stale.is_dir() and not stale.is_symlink():
            remove_tree(stale)
    return outcome
