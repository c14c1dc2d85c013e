"""The set-up tasks: init and preflight.

init writes tasks.py, noxfile.py, the Makefile targets and the settings of a checkout; preflight
runs the project's lint, typecheck, prisma validate and migration lint, and patchflow's own."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from invoke.context import Context
from rich.markup import escape

from patchflow.console import console
from patchflow.tasks.edge import ROOT_HELP, command, settings_for

if TYPE_CHECKING:
    from patchflow.preflight import CheckOutcome


@command(help={"root": ROOT_HELP, "skip_tool": "do not run patchflow's own lint and typecheck"})
def preflight(c: Context, root: str | None = None, skip_tool: bool = False) -> None:
    """Run pnpm lint / typecheck in the root and every workspace package that has them, prisma
    validate, squawk on migrations no patch has shipped yet, and patchflow's own checks."""
    from patchflow.paths import ProjectPaths
    from patchflow.preflight import lint_new_migrations, project_checks, run_checks, shipped_migrations, tool_checks
    from patchflow.runner import LocalRunner

    settings = settings_for(c, root)
    runner = LocalRunner(base_env=settings.environ)
    checks = project_checks(settings.root, settings.environ)
    if not skip_tool:
        checks += tool_checks()
    failures = []
    if settings.migration_lint != "off":
        paths = ProjectPaths.from_settings(settings)
        shipped, sources = shipped_migrations(paths.patches, paths.installed_manifest)
        lint = lint_new_migrations(settings.root, shipped, runner, settings.environ)
        console.print(lint.summary(sources), markup=False)
        findings = lint.findings
        for line in findings:
            console.print(f"[yellow]lock/rewrite[/] {line}", markup=True)
        if findings and settings.migration_lint == "refuse":
            failures.append(f"migration lint ({len(findings)} findings; migration_lint = refuse)")
    run_checks(checks, runner, _show_check, failures)
    from patchflow.lifecycle.patch_manifest import git_commit
    from patchflow.release_gate import record_preflight_pass

    paths = ProjectPaths.from_settings(settings)
    source = git_commit(settings.root, paths.excluded_roots())
    record_preflight_pass(paths.state, dict(source) if source else None)  # create-patch's checklist reads it


#: How preflight's check lines are drawn: outcome -> (label printed before the text, its style).
CHECK_STYLES: dict[str, tuple[str, str]] = {
    "skip": ("skip", "dim"),
    "cannot run": ("cannot run", "red"),
    "run": ("run ", "bold"),
    "fail": ("fail", "red"),
    "ok": ("ok  ", "green"),
}


def _show_check(outcome: CheckOutcome, text: str) -> None:
    """One line of preflight: ``ok   pnpm lint`` (the label coloured), or the text alone."""
    if outcome in CHECK_STYLES:
        label, style = CHECK_STYLES[outcome]
        console.print(f"[{style}]{escape(label)}[/] {escape(text)}")
    else:
        console.print(text, markup=False, highlight=False)


@command(
    help={
        "root": "the PrimeFlow checkout to set up (default: the current folder)",
        "yes": "replace existing Makefile targets / tasks.py of the same name without asking (they are backed up)",
        "dry_run": "show what would be written and change nothing",
        "set": "KEY=VALUE: a setting of this host, written into .patchflow/host.toml (repeatable)",
    },
    iterable=["set_"],
)
def init(
    c: Context, root: str | None = None, yes: bool = False, dry_run: bool = False, set_: list[str] | None = None
) -> None:
    """Set up patchflow in a PrimeFlow checkout: tasks.py, noxfile.py, Makefile targets, settings."""
    from patchflow.console import confirm
    from patchflow.init import apply_init, plan_init
    from patchflow.settings_files import HOST_SETTINGS_FILE

    checkout = Path(root or os.getcwd()).resolve()
    plan = plan_init(checkout, sets=set_ or [])
    console.print(f"[bold]patchflow init[/] {checkout}")
    for note in plan.detection_notes:
        console.print(f"  note: {note}", markup=False)
    for change in plan.changes:
        name = str(change.path.relative_to(checkout))
        console.print(f"  {change.action:<9} {name}", markup=False)
        for detail in change.notes:
            console.print(f"            {detail}", markup=False)
    if not plan.changed:
        console.print("[green]nothing to change[/]: the checkout is already set up")
        return
    if dry_run:
        console.print("[bold]dry run[/]: nothing was written")
        return
    if plan.needs_consent:
        what = f"the Makefile targets {', '.join(plan.replaced_targets)}" if plan.replaced_targets else "existing files"
        confirm(f"Replace {what} (the old files are backed up)?", yes=yes)
    backup = apply_init(plan, checkout / ".patchflow")
    if backup is not None:
        console.print(f"  previous files backed up in {backup}")
    console.print("[green]done[/]. Next:")
    console.print("  make patch-help                      # the commands and variables", markup=False)
    console.print(
        f"  check {HOST_SETTINGS_FILE} (this host's settings; patchflow init --set KEY=VALUE) and "
        "pyproject.toml [tool.patchflow] (the release's)",
        markup=False,
    )
    console.print("  make create-patch                    # build patches/v$(cat VERSION)/", markup=False)
    console.print("  make apply-patch VERSION=x.y.z YES=1 # on a server holding that patch", markup=False)
    _offer_signing(checkout)


def _offer_signing(checkout: Path) -> None:
    """The next step when this checkout neither signs nor checks signatures: a host refuses an
    unsigned patch unless it accepts them on purpose (``allow_unsigned``)."""
    from patchflow.config import load_settings
    from patchflow.errors import PatchflowError

    try:
        settings = load_settings(checkout)
    except PatchflowError:
        return
    if settings.signing_key or settings.verify_key or settings.allow_unsigned:
        return
    for line in (
        "  sign your releases (a server refuses unsigned patches unless allow_unsigned = true there):",
        "    patchflow create-signing-key --out ~/.config/patchflow/release.key   # on this machine; keep it secret",
        "    patchflow init --set signing_key=~/.config/patchflow/release.key     # create-patch signs with it",
        "    verify_key = <the printed key> in each server's inventory settings   # setup-host pins it there",
    ):
        console.print(line, markup=False)
