"""preflight: the project's own checks (pnpm lint / typecheck / prisma validate), and patchflow's.

Each check runs where the project defines it: in the root and in every package of its pnpm
workspace (:mod:`patchflow.workspace`) whose ``package.json`` has the ``lint``/``typecheck``
script (``pnpm run <script>`` in that package's folder), and ``prisma validate`` in every package
holding ``prisma/schema.prisma``. A root script that hands the work to the packages itself
(``pnpm -r run lint``, ``pnpm --filter ... lint``) is not run again on top of them: each
package's script runs on its own, so a failure names its package. Every check prints one line:
ran (ok / failed), skipped and why (no package defines the script; the root only delegates), or
could not run: a check that applies but cannot run (no pnpm, no Prisma CLI in node_modules) is a
failure that names how to install what is missing, never skipped silently. patchflow's own lint
and typecheck (``nox -s lint typecheck``) run when patchflow is used from its source repository.

The migration lint (squawk) covers only migrations no patch of this checkout has shipped: those
listed by no ``patches/v*/manifest.json`` and not by the installed record, so a developer checkout
with long-applied migrations is not warned about them again.
"""

from __future__ import annotations

import json
import shlex
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from patchflow.errors import CommandError, PatchflowError
from patchflow.runner import Runner
from patchflow.workspace import Package, workspace_packages

PNPM_HINT = "install pnpm (npm install -g pnpm, or corepack enable pnpm)"
SCRIPTS = ("lint", "typecheck")
_RECURSIVE_FLAGS = frozenset({"-r", "--recursive", "--filter", "-F"})


@dataclass(frozen=True)
class Check:
    """One check: ``label``; ``args`` to run in ``cwd``; or, with ``args`` None, ``missing`` says
    what to install when it applies but cannot run, ``skipped`` why it does not run here."""

    label: str
    args: list[str] | None
    cwd: Path
    missing: str = ""
    skipped: str = ""


def delegates_to_packages(command: str) -> bool:
    """True when a root ``package.json`` script runs the workspace packages' scripts itself
    (``pnpm -r run lint``, ``pnpm --recursive typecheck``, ``pnpm --filter './apps/**' lint``)."""
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    if "pnpm" not in words:
        return False
    return any(w in _RECURSIVE_FLAGS or w.startswith(("--filter=", "-F=")) for w in words)


def _where(package: Package) -> str:
    return "" if package.rel == "." else f" in {package.rel}"


def _script_checks(script: str, packages: list[Package], pnpm: str | None) -> list[Check]:
    """The checks of one package.json ``script`` across the workspace (see the module docstring)."""
    root, members = packages[0], [p for p in packages[1:] if script in p.scripts]
    label = f"pnpm {script}"
    chosen: list[Package] = []
    checks: list[Check] = []
    if script in root.scripts:
        command = root.scripts[script]
        if members and delegates_to_packages(command):
            checks.append(
                Check(
                    label,
                    None,
                    root.folder,
                    skipped=f"the root's script ({command}) runs the packages' {script} scripts, run one by one here",
                )
            )
        else:
            chosen.append(root)
    chosen += members
    if not chosen and not checks:
        if len(packages) > 1:
            reason = f"no package of the workspace ({', '.join(p.rel for p in packages)}) has a {script} script"
        elif (root.folder / "package.json").is_file():
            reason = f"package.json has no {script} script"
        else:
            reason = "the project has no package.json"
        return [Check(label, None, root.folder, skipped=reason)]
    for package in chosen:
        name = f"{label}{_where(package)}"
        if pnpm is None:
            checks.append(Check(name, None, package.folder, f"pnpm is not installed: {PNPM_HINT}"))
        else:
            checks.append(Check(name, [pnpm, "run", script], package.folder))
    return checks


def _prisma_checks(root: Path, packages: list[Package]) -> list[Check]:
    """``prisma validate`` in every package holding ``prisma/schema.prisma``, with the Prisma CLI
    of its own or the root's ``node_modules/.bin``."""
    checks = []
    for package in packages:
        if not (package.folder / "prisma" / "schema.prisma").is_file():
            continue
        label = f"prisma validate{_where(package)}"
        found = [
            b for b in (package.folder / "node_modules/.bin/prisma", root / "node_modules/.bin/prisma") if b.exists()
        ]
        if not found:
            missing = "the Prisma CLI is not in node_modules: run `pnpm install` (prisma is a dev dependency)"
            checks.append(Check(label, None, package.folder, missing))
        else:
            checks.append(Check(label, [str(found[0]), "validate"], package.folder))
    return checks


def project_checks(root: Path, environ: Mapping[str, str]) -> list[Check]:
    """The checks of the project at ``root`` (``environ``'s PATH finds pnpm): for each of
    ``lint`` and ``typecheck`` the packages that define it (or one skipped check saying why
    none runs), then ``prisma validate`` where a schema is.

    Raises:
        PatchflowError: ``pnpm-workspace.yaml`` or a package.json cannot be read (named).
    """
    packages = workspace_packages(root)
    pnpm = shutil.which("pnpm", path=environ.get("PATH"))
    checks: list[Check] = []
    for script in SCRIPTS:
        checks += _script_checks(script, packages, pnpm)
    return checks + _prisma_checks(root, packages)


def tool_checks() -> list[Check]:
    """patchflow's own ``nox -s lint typecheck`` when it runs from its source repository (the
    folder above the package holds its noxfile.py); none for an installed package."""
    import sys

    home = Path(__file__).resolve().parent.parent
    if not (home / "noxfile.py").is_file() or not (home / "pyproject.toml").is_file():
        return []
    return [Check("patchflow lint + typecheck", [sys.executable, "-m", "nox", "-s", "lint", "typecheck"], home)]


def shipped_migrations(patches: Path, installed_manifest: Path) -> tuple[set[str], list[str]]:
    """Names of the migrations some patch of this checkout already ships: those listed by every
    readable ``patches/v*/manifest.json`` and by the installed record; and where they were found
    (``v2.2.0``..., ``the installed record``). Unreadable manifests are left out."""
    names: set[str] = set()
    sources: list[str] = []
    manifests = sorted(patches.glob("v*/manifest.json")) if patches.is_dir() else []
    for path, label in [*((m, m.parent.name) for m in manifests), (installed_manifest, "the installed record")]:
        try:
            listed = json.loads(path.read_text(encoding="utf-8"))["migrations"]
            found = {str(m["name"]) for m in listed}
        except (OSError, ValueError, KeyError, TypeError):
            continue
        names |= found
        sources.append(label)
    return names, sources


@dataclass(frozen=True)
class MigrationLint:
    """What :func:`lint_new_migrations` did: the ``findings`` as lines, the migrations it
    ``linted`` (names) and how many of the tree's migrations it left out as ``shipped``."""

    findings: list[str]
    linted: list[str]
    shipped: int

    def summary(self, sources: list[str]) -> str:
        """One line: what was linted and what was left out (``sources``: where shipped ones were found)."""
        left_out = f"; {self.shipped} already shipped ({', '.join(sources)}) not linted" if self.shipped else ""
        return f"migration lint: {len(self.linted)} new migrations linted{left_out}"


def lint_new_migrations(root: Path, shipped: set[str], runner: Runner, environ: Mapping[str, str]) -> MigrationLint:
    """Lint, with squawk, the migrations of the tree at ``root`` whose names are not in
    ``shipped`` (:func:`shipped_migrations`: what the next patch would add). The findings are
    lines (a single line saying so when squawk is not installed and there is something to lint)."""
    from patchflow.lint import lint_sql
    from patchflow.migrations import find_migrations

    tree = find_migrations(root)
    new = [m for m in tree if m.name not in shipped]
    files = {m.name: (m.path, (root / m.path).read_bytes()) for m in new}
    findings = lint_sql(files, runner, environ)
    if findings is None:
        lines = ["squawk is not installed: migrations were not linted (pip install squawk-cli)"] if new else []
    else:
        lines = [f.describe() for f in findings]
    return MigrationLint(lines, [m.name for m in new], len(tree) - len(new))


#: What :func:`run_checks` reports of a check: ``run`` (starting), ``ok``, ``fail``, ``skip`` (with
#: the reason), ``cannot run`` (with what to install), ``none`` (no check applies) and ``summary``.
CheckOutcome = Literal["run", "ok", "fail", "skip", "cannot run", "none", "summary"]


def run_checks(
    checks: list[Check],
    runner: Runner,
    show: Callable[[CheckOutcome, str], None],
    failures: list[str] | None = None,
) -> None:
    """Run every check through ``runner`` (its output goes to this terminal), report each to
    ``show(outcome, text)`` (``run`` then ``ok``/``fail``; ``skip`` with the reason; ``cannot run``
    with what to install) and a ``summary``, and raise if any failed or could not run. Nothing is
    printed here: the task layer draws what ``show`` gets.

    Raises:
        PatchflowError: names the checks that failed and what to install for those that could not run.
    """
    failed: list[str] = list(failures or [])
    ran = skipped = blocked = failing = 0
    for check in checks:
        if check.args is None and check.skipped:
            skipped += 1
            show("skip", f"{check.label}: {check.skipped}")
            continue
        if check.args is None:
            blocked += 1
            failed.append(f"{check.label} ({check.missing})")
            show("cannot run", f"{check.label}: {check.missing}")
            continue
        ran += 1
        show("run", check.label)
        try:
            code = runner.attach(check.args, cwd=check.cwd)
        except CommandError as exc:
            code = exc.returncode
        if code != 0:
            failing += 1
            failed.append(f"{check.label} (exit {code})")
            show("fail", f"{check.label} (exit {code})")
        else:
            show("ok", check.label)
    if not ran and not blocked:
        show("none", "no checks apply (no lint/typecheck scripts, no prisma/schema.prisma)")
    show("summary", f"preflight: {ran} ran ({failing} failed), {skipped} skipped, {blocked} could not run")
    if failed:
        raise PatchflowError(
            f"Preflight failed: {'; '.join(failed)}.", "Fix these before creating or applying a patch."
        )
