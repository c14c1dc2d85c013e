"""preflight: the project's own checks (pnpm lint / typecheck / prisma validate), and patchflow's.

A check that applies to the project (a ``lint``/``typecheck`` script in package.json, a
``prisma/schema.prisma``) but cannot run (no pnpm, no Prisma CLI in node_modules) is a failure that
names how to install what is missing; it is never skipped silently. patchflow's own lint and
typecheck (``nox -s lint typecheck``) run when patchflow is used from its source repository.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from patchflow.errors import CommandError, PatchflowError
from patchflow.runner import Runner

PNPM_HINT = "install pnpm (npm install -g pnpm, or corepack enable pnpm)"


@dataclass(frozen=True)
class Check:
    """One check: ``label``; ``args`` to run in ``cwd``, or None with ``missing`` saying what to
    install when it applies but cannot run."""

    label: str
    args: list[str] | None
    cwd: Path
    missing: str = ""


def project_checks(root: Path, environ: Mapping[str, str]) -> list[Check]:
    """The checks that apply to the project at ``root`` (``environ``'s PATH finds the tools).

    Raises:
        PatchflowError: package.json exists but is not valid JSON (named).
    """
    checks: list[Check] = []
    package = root / "package.json"
    scripts: dict[str, str] = {}
    if package.is_file():
        try:
            data = json.loads(package.read_text(encoding="utf-8"))
            scripts = data.get("scripts", {}) or {} if isinstance(data, dict) else {}
        except (OSError, ValueError) as exc:
            raise PatchflowError(f"{package} is not valid JSON: {exc}.", "Fix package.json.") from None
    pnpm = shutil.which("pnpm", path=environ.get("PATH"))
    for script in ("lint", "typecheck"):
        if script not in scripts:
            continue
        if pnpm is None:
            checks.append(Check(f"pnpm {script}", None, root, f"pnpm is not installed: {PNPM_HINT}"))
        else:
            checks.append(Check(f"pnpm {script}", [pnpm, script], root))
    if (root / "prisma" / "schema.prisma").is_file():
        if not (root / "node_modules" / ".bin" / "prisma").exists():
            checks.append(
                Check(
                    "prisma validate",
                    None,
                    root,
                    "the Prisma CLI is not in node_modules: run `pnpm install` (prisma is a dev dependency)",
                )
            )
        elif pnpm is None:
            checks.append(Check("prisma validate", None, root, f"pnpm is not installed: {PNPM_HINT}"))
        else:
            checks.append(Check("prisma validate", [pnpm, "prisma", "validate"], root))
    return checks


def tool_checks() -> list[Check]:
    """patchflow's own ``nox -s lint typecheck`` when it runs from its source repository (the
    folder above the package holds its noxfile.py); none for an installed package."""
    import sys

    home = Path(__file__).resolve().parent.parent
    if not (home / "noxfile.py").is_file() or not (home / "pyproject.toml").is_file():
        return []
    return [Check("patchflow lint + typecheck", [sys.executable, "-m", "nox", "-s", "lint", "typecheck"], home)]


def lint_new_migrations(root: Path, installed_manifest: Path, runner: Runner, environ: Mapping[str, str]) -> list[str]:
    """Lint, with squawk, the migrations of the tree at ``root`` that the installed manifest does
    not list (what the next patch would run); returns the findings as lines (an empty list when
    there are none; a single line saying so when squawk is not installed)."""
    from patchflow.lint import lint_sql
    from patchflow.migrations import find_migrations

    try:
        installed = {m.get("name") for m in json.loads(installed_manifest.read_text(encoding="utf-8"))["migrations"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        installed = set()
    new = [m for m in find_migrations(root) if m.name not in installed]
    files = {m.name: (m.path, (root / m.path).read_bytes()) for m in new}
    findings = lint_sql(files, runner, environ)
    if findings is None:
        return ["squawk is not installed: migrations were not linted (pip install squawk-cli)"] if new else []
    return [f.describe() for f in findings]


def run_checks(checks: list[Check], console: Console, runner: Runner, failures: list[str] | None = None) -> None:
    """Run every check through ``runner`` (output to this terminal), print one line each, and
    raise if any failed or could not run.

    Raises:
        PatchflowError: names the checks that failed and what to install for those that could not run.
    """
    failed: list[str] = list(failures or [])
    if not checks:
        console.print("no checks apply (no lint/typecheck scripts, no prisma/schema.prisma)")
    for check in checks:
        if check.args is None:
            failed.append(f"{check.label} ({check.missing})")
            console.print(f"[red]cannot run[/] {check.label}: {check.missing}")
            continue
        console.print(f"[bold]run[/]  {check.label}")
        try:
            code = runner.attach(check.args, cwd=check.cwd)
        except CommandError as exc:
            code = exc.returncode
        if code != 0:
            failed.append(f"{check.label} (exit {code})")
            console.print(f"[red]fail[/] {check.label} (exit {code})")
        else:
            console.print(f"[green]ok[/]   {check.label}")
    if failed:
        raise PatchflowError(
            f"Preflight failed: {'; '.join(failed)}.", "Fix these before creating or applying a patch."
        )
