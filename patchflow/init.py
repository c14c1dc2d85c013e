"""``init``: embed patchflow into an existing PrimeFlow checkout.

Writes, without destroying what is there:

* ``tasks.py`` importing patchflow's invoke collection (``inv --list`` then works in the checkout);
* ``noxfile.py`` importing patchflow's nox sessions;
* the Makefile targets (:mod:`patchflow.make_block`) in a marked block (``# >>> patchflow`` ...
  ``# <<< patchflow <<<``) of the checkout's own Makefile, edited by GNU make's grammar
  (:mod:`patchflow.makefile`): rules of the same name already there (old ``create-patch``,
  ``apply-patch``... calling bash scripts) are removed only with the operator's consent, and
  listed; every other byte stays, line endings included; the block's recipes use the recipe
  prefix in effect where it goes;
* settings (:mod:`patchflow.init_settings`): this host's into ``.patchflow/host.toml`` (mode
  0600), the release's into ``[tool.patchflow]`` of ``pyproject.toml``; keys already there are kept;
* ``.gitignore`` lines for ``patches/``, ``backups/`` and ``.patchflow/``.

Every file it changes is first copied to ``.patchflow/init-backup-<UTC stamp>/``; a file it edits
keeps its owner, group and mode. Running it twice changes nothing the second time
(:func:`plan_init` finds every file already as it would write it).
"""

from __future__ import annotations

import glob
import os
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from patchflow.errors import ConfigError
from patchflow.init_settings import parse_sets, plan_host_settings, plan_release_settings
from patchflow.make_block import BLOCK_END, BLOCK_START_PREFIX, TARGETS, makefile_block
from patchflow.makefile import COMMENT, INCLUDE, Makefile, MakefileError, parse_makefile
from patchflow.makefile_edit import remove_targets
from patchflow.project import DetectedSettings, detect_settings, is_tool_home
from patchflow.settings_files import HOST_SETTINGS_FILE, release_section

TASKS_PY = '''"""Tasks of this PrimeFlow checkout: patchflow's patch system (`inv --list`, `make patch-help`).

Add the project's own tasks below with `ns.add_task(...)`.
"""

from patchflow.cli import ns

__all__ = ["ns"]
'''
NOXFILE_PY = '''"""nox sessions of this PrimeFlow checkout: patchflow's (`nox --list`)."""

from patchflow.nox_sessions import *  # noqa: F403 - importing registers the sessions
'''
GITIGNORE_LINES = ("/patches/", "/backups/", "/.patchflow/")
OUR_TARGETS = frozenset({name for name, _, _, _ in TARGETS} | {"patch-help"})
#: Mode of the files init creates (the host settings file is 0600, its folder 0700).
NEW_FILE_MODE = 0o644


@dataclass
class FileChange:
    """One file init writes: ``action`` is create, update or unchanged; ``notes`` say what changes;
    ``mode`` is the mode of a file it creates."""

    path: Path
    action: str
    content: str
    notes: list[str] = field(default_factory=list)
    mode: int = NEW_FILE_MODE


@dataclass
class InitPlan:
    """What init will do in ``root``: the files, the Makefile targets it replaces, the settings."""

    root: Path
    changes: list[FileChange]
    replaced_targets: list[str]
    settings: DetectedSettings
    detection_notes: list[str]

    @property
    def needs_consent(self) -> bool:
        """True when existing work is replaced (Makefile targets, a foreign tasks.py/noxfile.py)."""
        return bool(self.replaced_targets) or any("replaces" in " ".join(c.notes) for c in self.changes)

    @property
    def changed(self) -> list[FileChange]:
        return [c for c in self.changes if c.action != "unchanged"]


def read_text(path: Path) -> str | None:
    """The text of ``path`` exactly as stored (no newline translation; bytes that are not UTF-8
    kept as surrogates so they are written back unchanged); None when it does not exist.

    Raises:
        ConfigError: the file cannot be read.
    """
    try:
        return path.read_bytes().decode("utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"Cannot read {path}: {exc.strerror}.", "Make it readable and run init again.") from None


def _block_range(mk: Makefile) -> range | None:
    """The logical lines of patchflow's block in ``mk`` (an earlier init's), None when it has none.

    Raises:
        MakefileError: the block's start has no end.
    """
    start = next(
        (i for i, ln in enumerate(mk.lines) if ln.kind == COMMENT and ln.text.startswith(BLOCK_START_PREFIX)), None
    )
    if start is None:
        return None
    ends = [i for i, ln in enumerate(mk.lines) if i > start and ln.kind == COMMENT and ln.text.strip() == BLOCK_END]
    end = ends[0] if ends else None
    if end is None:
        raise MakefileError(
            f"Makefile line {mk.lines[start].first + 1}: patchflow's block starts here but has no `{BLOCK_END}` line.",
            "Remove the rest of the old block by hand (the backup of an earlier init has the file as it was), "
            "then run init again.",
        )
    return range(start, end + 1)


def _included_targets(root: Path, mk: Makefile, skip: range | None) -> tuple[dict[str, str], list[str]]:
    """Targets of patchflow's (and ``help``) defined in files the Makefile includes: name ->
    ``file line N``; and notes on included files that could not be read."""
    found: dict[str, str] = {}
    notes: list[str] = []
    for index, line in enumerate(mk.lines):
        if line.kind != INCLUDE or (skip is not None and index in skip):
            continue
        for name in line.names:
            if "$" in name:
                notes.append(f"Makefile line {line.first + 1} includes {name}: only make knows that file's targets")
                continue
            paths = sorted(glob.glob(str(root / name))) if any(c in name for c in "*?[") else [str(root / name)]
            for path in map(Path, paths):
                text = read_text(path) if path.is_file() else None
                if text is None:
                    continue
                try:
                    included = parse_makefile(text)
                except MakefileError as exc:
                    notes.append(f"{name} (included) could not be read as a Makefile: {exc.message}")
                    continue
                for target, where in included.targets().items():
                    if target in OUR_TARGETS | {"help"}:
                        found.setdefault(target, f"{name} line {included.line_number(where[0])}")
    return found, notes


def plan_makefile(root: Path, current: str | None) -> tuple[FileChange, list[str], list[str]]:
    """The Makefile change: ``(change, replaced targets, notes)``.

    Raises:
        MakefileError: the Makefile cannot be edited safely (see :func:`patchflow.makefile_edit.remove_targets`),
            or a file it includes defines one of patchflow's targets.
    """
    path = root / "Makefile"
    if current is None:
        return FileChange(path, "create", makefile_block(with_help=True), ["adds patchflow's targets"]), [], []
    mk = parse_makefile(current)
    block = _block_range(mk)
    theirs = {name for name, where in mk.targets().items() if block is None or any(i not in block for i in where)}
    included, notes = _included_targets(root, mk, block)
    clash = {name: where for name, where in included.items() if name in OUR_TARGETS}
    if clash:
        listed = ", ".join(f"{name} ({where})" for name, where in sorted(clash.items()))
        raise MakefileError(
            f"A file the Makefile includes defines patchflow's targets: {listed}.",
            "init edits only the Makefile: remove or rename those rules in the included file, then run init again.",
        )
    for index in mk.dynamic_rules():
        if block is None or index not in block:
            notes.append(
                f"Makefile line {mk.line_number(index)} names its targets through a variable: if they include one "
                "of patchflow's, make warns and uses the later recipe"
            )
    replaced = sorted(theirs & OUR_TARGETS)
    with_help = "help" not in theirs and "help" not in included
    removal = remove_targets(mk, set(replaced), keep=block)
    edited = parse_makefile(removal.text) if replaced else mk
    eol = mk.eol()
    if block is not None:
        at = _block_range(edited)
        assert at is not None  # the block is kept by remove_targets
        first, last = edited.lines[at.start].first, edited.lines[at.stop - 1].last
        prefix = edited.lines[at.start].prefix
        lines = edited.physical
        new = makefile_block(prefix=prefix, eol=eol, with_help=with_help)
        before = "".join(p.text + p.eol for p in lines[:first])
        after = "".join(p.text + p.eol for p in lines[last + 1 :])
        if lines[last].eol == "" and after == "":
            new = new[: -len(eol)]  # the file ended without a newline after the block: keep it so
        text = before + new + after
    else:
        text = removal.text
        if text and not text.endswith("\n"):
            text += eol
        if text and not text.endswith(("\n\n", "\r\n\r\n")):
            text += eol
        prefix = edited.prefix
        text += makefile_block(prefix=prefix, eol=eol, with_help=with_help)
    if text == current:
        return FileChange(path, "unchanged", current), [], notes
    change_notes = [f"replaces the targets {', '.join(replaced)}"] if replaced else []
    change_notes += removal.changes
    if prefix != "\t":
        change_notes.append(f"its recipes start with the recipe prefix in effect there, {prefix!r} (.RECIPEPREFIX)")
    change_notes.append("updates patchflow's targets" if block is not None else "adds patchflow's targets")
    return FileChange(path, "update", text, change_notes), replaced, notes


def plan_init(root: Path, *, sets: Sequence[str] = ()) -> InitPlan:
    """Work out what init would write into the checkout at ``root`` (nothing is written).
    ``sets`` are ``KEY=VALUE`` host settings (``init --set``).

    Raises:
        ConfigError: ``root`` is not a folder, is patchflow's own repository, a file cannot be
            read, a ``--set`` is invalid, ``pyproject.toml`` or the host file is not valid TOML,
            or the Makefile cannot be edited safely (MakefileError, naming the line).
    """
    if not root.is_dir():
        raise ConfigError(f"{root} is not a folder.", "Pass --root PATH of a PrimeFlow checkout.")
    if is_tool_home(root):
        raise ConfigError(
            f"{root} is patchflow's own repository, not a PrimeFlow checkout.", "Pass --root PATH of a checkout."
        )
    host_values = parse_sets(sets)
    detected = detect_settings(root)
    changes: list[FileChange] = []
    notes = list(detected.notes)

    for name, wanted, marker in (
        ("tasks.py", TASKS_PY, "patchflow.cli"),
        ("noxfile.py", NOXFILE_PY, "patchflow.nox"),
    ):
        path = root / name
        current = read_text(path)
        if current is None:
            changes.append(FileChange(path, "create", wanted))
        elif marker in current:
            changes.append(FileChange(path, "unchanged", current))
        else:
            changes.append(FileChange(path, "update", wanted, [f"replaces the checkout's own {name} (backed up)"]))

    makefile, replaced, make_notes = plan_makefile(root, read_text(root / "Makefile"))
    changes.append(makefile)
    notes += make_notes

    pyproject = root / "pyproject.toml"
    current = read_text(pyproject)
    release = release_section(current, str(pyproject)) if current is not None else {}
    edit = plan_release_settings(current, detected.settings, str(pyproject))
    if edit.text is None:
        if current is not None:  # a missing one stays missing when there is nothing to write
            changes.append(FileChange(pyproject, "unchanged", current))
    else:
        changes.append(FileChange(pyproject, "create" if current is None else "update", edit.text, edit.notes))

    host_file = root / HOST_SETTINGS_FILE
    current = read_text(host_file)
    host_edit = plan_host_settings(current, detected.settings, release, host_values)
    if host_edit.text is None:
        if current is not None:
            changes.append(FileChange(host_file, "unchanged", current))
    else:
        action = "create" if current is None else "update"
        changes.append(FileChange(host_file, action, host_edit.text, host_edit.notes, mode=0o600))

    gitignore = root / ".gitignore"
    current = read_text(gitignore) or ""
    present = {line.strip() for line in current.splitlines()}
    missing = [line for line in GITIGNORE_LINES if line not in present and line.strip("/") + "/" not in present]
    if missing:
        eol = "\r\n" if current.count("\r\n") * 2 > current.count("\n") else "\n"
        text = current
        if text and not text.endswith("\n"):
            text += eol
        text += (eol if text.strip() else "") + "# patchflow" + eol + eol.join(missing) + eol
        changes.append(FileChange(gitignore, "update" if current else "create", text, [f"adds {', '.join(missing)}"]))
    else:
        changes.append(FileChange(gitignore, "unchanged", current))
    return InitPlan(root, changes, replaced, detected.settings, notes)


def _owner_of(folder: Path) -> tuple[int, int] | None:
    """The owner and group new files in ``folder`` get: its own, when patchflow runs as root and
    they differ (a root ``init`` in a deploy user's checkout leaves no root-owned files); else None."""
    if os.geteuid() != 0:
        return None
    st = folder.stat()
    return (st.st_uid, st.st_gid) if (st.st_uid, st.st_gid) != (0, 0) else None


def _make_dir(path: Path, owner: tuple[int, int] | None) -> None:
    """Create ``path`` (and missing parents) with mode 0700 whatever the umask, owned like the checkout."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for folder in reversed(missing):
        folder.mkdir(mode=0o700)
        os.chmod(folder, 0o700)
        if owner is not None:
            os.chown(folder, *owner)


def write_keeping_owner(path: Path, content: str, *, new_mode: int, owner: tuple[int, int] | None) -> None:
    """Write ``content`` (surrogate-escaped bytes kept) to ``path`` by rename; an existing file keeps
    its owner, group and mode (written in place when its owner cannot be given to a new file, so
    a non-root user editing another user's file does not take it over); a new file gets ``new_mode``
    and ``owner``.

    Raises:
        OSError: the file cannot be written.
    """
    data = content.encode("utf-8", errors="surrogateescape")
    try:
        st: os.stat_result | None = path.stat()
    except FileNotFoundError:
        st = None
    tmp = path.with_name(f".{path.name}.patchflow-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if st is None:
            os.chmod(tmp, new_mode)
            if owner is not None:
                os.chown(tmp, *owner)
        else:
            os.chmod(tmp, stat.S_IMODE(st.st_mode))
            if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                try:
                    os.chown(tmp, st.st_uid, st.st_gid)
                except PermissionError:
                    tmp.unlink()
                    with open(path, "r+b") as handle:  # keep the file (and its owner); it is backed up
                        handle.write(data)
                        handle.truncate()
                    return
        os.replace(tmp, path)
    except BaseException:  # any exit, an interrupt too: no temporary file is left beside it; re-raised
        tmp.unlink(missing_ok=True)
        raise


def apply_init(plan: InitPlan, state_dir: Path) -> Path | None:
    """Write the changes of ``plan``; every file replaced is first copied to
    ``<state_dir>/init-backup-<UTC stamp>/`` (0700). Returns that folder (None when nothing existed).

    Raises:
        ConfigError: a file cannot be written (the message names it).
    """
    backup_dir: Path | None = None
    owner = _owner_of(plan.root)
    for change in plan.changed:
        try:
            if change.path.exists():
                if backup_dir is None:
                    backup_dir = state_dir / f"init-backup-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
                    _make_dir(backup_dir, owner)
                kept = backup_dir / change.path.name
                shutil.copy2(change.path, kept)
                if owner is not None:
                    os.chown(kept, *owner)
            if not change.path.parent.exists():
                _make_dir(change.path.parent, owner)
            write_keeping_owner(change.path, change.content, new_mode=change.mode, owner=owner)
        except OSError as exc:
            raise ConfigError(f"Cannot write {change.path}: {exc}.", "Check permissions; run init again.") from None
    return backup_dir
