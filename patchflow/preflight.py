"""preflight: the project's own checks (pnpm lint / typecheck / prisma validate) where they exist."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rich.console import Console

from patchflow.errors import CommandError, PatchflowError
from patchflow.runner import Runner

Check = tuple[str, list[str] | None, Path]


def project_checks(root: Path) -> list[Check]:
    """Checks for the project at ``root``: ``(label, args or None when skipped, cwd)``.

    ``pnpm lint`` / ``pnpm typecheck`` run when package.json defines those scripts and pnpm is
    installed; ``pnpm prisma validate`` when the Prisma CLI is in node_modules. A check that
    cannot run is listed with ``None`` and a reason in its label.
    """
    checks: list[Check] = []
    package = root / "package.json"
    scripts: dict[str, str] = {}
    if package.is_file():
        try:
            scripts = json.loads(package.read_text(encoding="utf-8")).get("scripts", {}) or {}
        except (OSError, ValueError):
            checks.append(("package.json (unreadable or invalid JSON)", None, root))
    pnpm = shutil.which("pnpm")
    for script in ("lint", "typecheck"):
        if script not in scripts:
            checks.append((f"pnpm {script} (no '{script}' script in package.json)", None, root))
        elif pnpm is None:
            checks.append((f"pnpm {script} (pnpm is not installed)", None, root))
        else:
            checks.append((f"pnpm {script}", [pnpm, script], root))
    if (root / "prisma" / "schema.prisma").is_file():
        if (root / "node_modules" / ".bin" / "prisma").exists() and pnpm is not None:
            checks.append(("pnpm prisma validate", [pnpm, "prisma", "validate"], root))
        else:
            checks.append(("pnpm prisma validate (Prisma CLI not installed in node_modules)", None, root))
    return checks


def run_checks(checks: list[Check], console: Console, runner: Runner) -> None:
    """Run every check through ``runner`` (output to this terminal), print one line each, and
    raise if any failed.

    Raises:
        PatchflowError: one or more checks failed (names them).
    """
    failed = []
    for label, args, cwd in checks:
        if args is None:
            console.print(f"[dim]skip[/] {label}")
            continue
        console.print(f"[bold]run[/]  {label}")
        try:
            code = runner.attach(args, cwd=cwd)
        except CommandError as exc:
            code = exc.returncode
        if code != 0:
            failed.append(label)
            console.print(f"[red]fail[/] {label} (exit {code})")
        else:
            console.print(f"[green]ok[/]   {label}")
    if failed:
        raise PatchflowError(
            f"Preflight failed: {', '.join(failed)}.", "Fix these before creating or applying a patch."
        )
