"""``init``: embed patchflow into an existing PrimeFlow checkout.

Writes, without destroying what is there:

* ``tasks.py`` importing patchflow's invoke collection (``inv --list`` then works in the checkout);
* ``noxfile.py`` importing patchflow's nox sessions;
* the Makefile targets as thin ``inv`` aliases, in a marked block (``# >>> patchflow`` ...
  ``# <<< patchflow``) added to the checkout's own Makefile; targets of the same name already
  there (old ``create-patch``, ``apply-patch``... calling bash scripts) are removed from it only
  with the operator's consent, and listed;
* ``[tool.patchflow]`` in ``pyproject.toml`` with the settings detected from the compose file
  (an existing section is kept as it is);
* ``.gitignore`` lines for ``patches/``, ``backups/`` and ``.patchflow/``.

Every file it changes is first copied to ``.patchflow/init-backup-<UTC stamp>/``. Running it twice
changes nothing the second time (:func:`plan_init` finds every file already as it would write it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from patchflow.errors import ConfigError
from patchflow.project import detect_settings, is_tool_home

BLOCK_START = "# >>> patchflow: written by `inv init`; settings in pyproject.toml [tool.patchflow] >>>"
BLOCK_END = "# <<< patchflow <<<"
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
PF_HOST = "".join(
    f"$(if $(filter command line,$(origin {var})), {flag} $({var}),)"
    for var, flag in (("HOST", "--host"), ("HOSTS", "--hosts"), ("ROLE", "--role"))
)
# (target, inv command line, help); $(PF_ARGS) carries the pass-through variables
TARGETS: tuple[tuple[str, str, str], ...] = (
    (
        "patch-status",
        "patch-status $(PF_ROOT) $(PF_HOST) $(if $(JSON),--json,)",
        "installed version, patches, backups, history (HOST= ROLE= over SSH)",
    ),
    ("create-patch", "create-patch $(PF_ROOT) $(PF_VERSION) $(PF_FORCE)", "build patches/vX.Y.Z/ (VERSION=x.y.z)"),
    ("verify-patch", "verify-patch $(PF_ROOT) $(PF_VERSION)", "check a patch's checksums and manifest (VERSION=)"),
    (
        "apply-patch",
        "apply-patch $(PF_ROOT) $(PF_VERSION) $(PF_YES) $(PF_DRY_RUN) $(PF_FORCE)",
        "apply a patch: backup, migrate, restart, health, automatic rollback (VERSION= YES=1)",
    ),
    (
        "rollback-patch",
        "rollback-patch $(PF_ROOT) $(PF_HOST) $(PF_VERSION) $(PF_YES) $(PF_FORCE)",
        "restore code, database and VERSION from before a patch (VERSION= YES=1; HOST= ROLE= over SSH)",
    ),
    (
        "deploy",
        "deploy $(PF_ROOT) $(PF_HOST) $(PF_VERSION) $(PF_YES)",
        "upload a patch over SSH and apply it there, rolling (HOST=/HOSTS=/ROLE= VERSION= YES=1)",
    ),
    ("prune-backups", "prune-backups $(PF_ROOT) $(PF_DRY_RUN)", "delete old backups (retention; DRY_RUN=1)"),
    ("preflight", "preflight $(PF_ROOT)", "pnpm lint/typecheck, prisma validate"),
    (
        "baseline-migrations",
        "baseline-migrations $(PF_ROOT) $(PF_YES)",
        "record the installed migrations in a database without history (YES=1)",
    ),
    ("up", "up $(PF_ROOT)", "start the stack"),
    ("down", "down $(PF_ROOT)", "stop the stack (volumes are kept)"),
    ("ps", "ps $(PF_ROOT)", "service states"),
    ("restart", "restart $(PF_ROOT) $(PF_SERVICE)", "restart services (SERVICE=api)"),
    ("logs", "logs $(PF_ROOT) $(PF_SERVICE) $(PF_TAIL) $(if $(FOLLOW),--follow,)", "service logs (SERVICE= TAIL=)"),
)
VARIABLES = (
    ("VERSION", "patch version, e.g. VERSION=2.3.0"),
    ("YES", "YES=1 confirms without a prompt (required without a terminal)"),
    ("DRY_RUN", "DRY_RUN=1 prints the plan and changes nothing"),
    ("FORCE", "FORCE=1 applies an installed version again / replaces a patch folder"),
    ("HOST", "HOST=prod-server (or HOSTS=a,b, ROLE=production) for deploy, patch-status, rollback-patch"),
    ("ROOT", "ROOT=path of another checkout"),
    ("SERVICE", "SERVICE=api for logs and restart"),
)


@dataclass
class FileChange:
    """One file init writes: ``action`` is create, update or unchanged; ``notes`` say what changes."""

    path: Path
    action: str
    content: str
    notes: list[str] = field(default_factory=list)


@dataclass
class InitPlan:
    """What init will do in ``root``: the files, the Makefile targets it replaces, the settings."""

    root: Path
    changes: list[FileChange]
    replaced_targets: list[str]
    settings: dict[str, Any]
    detection_notes: list[str]

    @property
    def needs_consent(self) -> bool:
        """True when existing work is replaced (Makefile targets, a foreign tasks.py/noxfile.py)."""
        return bool(self.replaced_targets) or any("replaces" in " ".join(c.notes) for c in self.changes)

    @property
    def changed(self) -> list[FileChange]:
        return [c for c in self.changes if c.action != "unchanged"]


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Cannot read {path}: {exc}.", "Fix the file (UTF-8, readable) and run init again.") from None


def makefile_block(inv: str, *, with_help: bool) -> str:
    """The Makefile block of patchflow's targets; ``inv`` is the invoke program to call."""
    lines = [
        BLOCK_START,
        f"PF_INV ?= {inv}",
        "PF_ROOT = $(if $(ROOT),--root $(ROOT),)",
        "PF_VERSION = $(if $(VERSION),--version $(VERSION),)",
        "PF_YES = $(if $(YES),--yes,)",
        "PF_DRY_RUN = $(if $(DRY_RUN),--dry-run,)",
        "PF_FORCE = $(if $(FORCE),--force,)",
        # only from the make command line: an app's HOST=0.0.0.0 in .env or the environment is not a server
        "PF_HOST = " + PF_HOST,
        "PF_SERVICE = $(if $(SERVICE),--service $(SERVICE),)",
        "PF_TAIL = $(if $(TAIL),--tail $(TAIL),)",
        "",
        ".PHONY: patch-help " + " ".join(name for name, _, _ in TARGETS) + (" help" if with_help else ""),
        "",
    ]
    if with_help:
        lines += ["help: patch-help ## list the commands", ""]
    lines += ["patch-help: ## patchflow's targets and variables", "\t@$(PF_INV) --list"]
    lines += [f"\t@echo '  {name:<9} {text}'" for name, text in VARIABLES]
    lines.append("")
    for name, command, text in TARGETS:
        lines += [f"{name}: ## {text}", f"\t@$(PF_INV) {command}", ""]
    lines.append(BLOCK_END)
    return "\n".join(lines) + "\n"


_RULE = re.compile(r"^([A-Za-z0-9_.%/-][^:=#\s]*(?:\s+[^:=#\s]+)*)\s*::?(?!=)")


def _targets_of(text: str) -> set[str]:
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith(("\t", "#", " ")) or line.startswith("."):
            continue
        match = _RULE.match(line)
        if match:
            names.update(match.group(1).split())
    return names


def _strip_block(text: str) -> str:
    """``text`` without patchflow's block (what an earlier init wrote)."""
    start = text.find(BLOCK_START)
    if start < 0:
        return text
    end = text.find(BLOCK_END, start)
    end = len(text) if end < 0 else end + len(BLOCK_END)
    before, after = text[:start].rstrip("\n"), text[end:].lstrip("\n")
    return "\n".join(part for part in (before, after) if part) + "\n" if before or after else ""


def _remove_rules(text: str, names: set[str]) -> str:
    """``text`` without the rules of ``names`` (rule line and its recipe lines); a rule naming
    several targets keeps the others."""
    out: list[str] = []
    skipping = False
    for line in text.splitlines():
        if skipping:
            if line.startswith("\t"):
                continue  # a recipe line of the removed rule
            skipping = False
        match = _RULE.match(line) if not line.startswith(("\t", "#", " ", ".")) else None
        if match:
            targets = match.group(1).split()
            hit = [t for t in targets if t in names]
            if hit:
                kept = [t for t in targets if t not in names]
                if not kept:
                    skipping = True
                    continue
                line = line.replace(match.group(1), " ".join(kept), 1)
        out.append(line)
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def _toml_value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def pyproject_section(settings: dict[str, Any]) -> str:
    """The ``[tool.patchflow]`` section text for ``settings`` (TOML)."""
    lines = [
        "[tool.patchflow]",
        "# detected by `inv init` from the compose file; see patchflow's README for all settings",
    ]
    lines += [f"{key} = {_toml_value(value)}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def plan_init(root: Path, *, inv: str) -> InitPlan:
    """Work out what init would write into the checkout at ``root`` (nothing is written).

    Raises:
        ConfigError: ``root`` is not a folder, is patchflow's own repository, or a file cannot be read.
    """
    if not root.is_dir():
        raise ConfigError(f"{root} is not a folder.", "Pass --root PATH of a PrimeFlow checkout.")
    if is_tool_home(root):
        raise ConfigError(
            f"{root} is patchflow's own repository, not a PrimeFlow checkout.", "Pass --root PATH of a checkout."
        )
    detected = detect_settings(root)
    changes: list[FileChange] = []

    for name, wanted, marker in (
        ("tasks.py", TASKS_PY, "patchflow.cli"),
        ("noxfile.py", NOXFILE_PY, "patchflow.nox"),
    ):
        path = root / name
        current = _read(path)
        if current is None:
            changes.append(FileChange(path, "create", wanted))
        elif marker in current:
            changes.append(FileChange(path, "unchanged", current))
        else:
            changes.append(FileChange(path, "update", wanted, [f"replaces the checkout's own {name} (backed up)"]))

    makefile = root / "Makefile"
    current = _read(makefile)
    base = _strip_block(current) if current is not None else ""
    ours = {name for name, _, _ in TARGETS} | {"patch-help"}
    theirs = _targets_of(base)
    replaced = sorted(theirs & ours)
    with_help = "help" not in theirs
    if replaced:
        base = _remove_rules(base, set(replaced))
    block = makefile_block(inv, with_help=with_help)
    new_makefile = (base.rstrip("\n") + "\n\n" + block) if base.strip() else block
    if current is None:
        changes.append(FileChange(makefile, "create", new_makefile))
    elif current == new_makefile:
        changes.append(FileChange(makefile, "unchanged", current))
    else:
        notes = [f"replaces the targets {', '.join(replaced)}"] if replaced else []
        changes.append(FileChange(makefile, "update", new_makefile, [*notes, "adds patchflow's targets"]))

    pyproject = root / "pyproject.toml"
    current = _read(pyproject)
    section = pyproject_section(detected.settings)
    if current is None:
        changes.append(FileChange(pyproject, "create", section))
    elif re.search(r"^\[tool\.patchflow\]", current, re.MULTILINE):
        changes.append(FileChange(pyproject, "unchanged", current, ["keeps the existing [tool.patchflow]"]))
    else:
        changes.append(
            FileChange(pyproject, "update", current.rstrip("\n") + "\n\n" + section, ["adds [tool.patchflow]"])
        )

    gitignore = root / ".gitignore"
    current = _read(gitignore) or ""
    present = {line.strip() for line in current.splitlines()}
    missing = [line for line in GITIGNORE_LINES if line not in present and line.strip("/") + "/" not in present]
    if missing:
        text = current.rstrip("\n") + ("\n\n" if current.strip() else "") + "# patchflow\n" + "\n".join(missing) + "\n"
        changes.append(FileChange(gitignore, "update" if current else "create", text, [f"adds {', '.join(missing)}"]))
    else:
        changes.append(FileChange(gitignore, "unchanged", current))
    return InitPlan(root, changes, replaced, detected.settings, detected.notes)


def apply_init(plan: InitPlan, state_dir: Path) -> Path | None:
    """Write the changes of ``plan``; every file replaced is first copied to
    ``<state_dir>/init-backup-<UTC stamp>/``. Returns that folder (None when nothing existed).

    Raises:
        ConfigError: a file cannot be written (the message names it).
    """
    backup_dir: Path | None = None
    for change in plan.changed:
        try:
            if change.path.exists():
                if backup_dir is None:
                    backup_dir = state_dir / f"init-backup-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
                    backup_dir.mkdir(parents=True, exist_ok=True)
                shutil.copy2(change.path, backup_dir / change.path.name)
            tmp = change.path.with_name(f".{change.path.name}.patchflow-tmp")
            tmp.write_text(change.content, encoding="utf-8")
            if change.path.exists():
                shutil.copymode(change.path, tmp)
            os.replace(tmp, change.path)
        except OSError as exc:
            raise ConfigError(f"Cannot write {change.path}: {exc}.", "Check permissions; run init again.") from None
    return backup_dir
