"""How the task layer shows a plan, and the question asked again when it changed under the lock.

Apply's plan: files by folder, migrations and their lint, services, space, the checks before the
stop, the stopped window's estimate. A patch that touches many files is summarised by folder
(``src/components/  312 changed, 4 added``) instead of listing its first files; the whole list
stays available (``apply-patch --dry-run --list-files``, and the operation log of a run). The line
functions are pure (no I/O), so the plan cases are table-tested.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

from rich.markup import escape

from patchflow.console import console

if TYPE_CHECKING:
    from patchflow.context import Context as CoreContext
    from patchflow.lifecycle.decisions import Change
    from patchflow.lifecycle.planning import Plan
    from patchflow.manifest import TreeDiff

FILE_LIST_LIMIT = 20  # up to this many paths the plan lists each; more are summarised by folder
FOLDER_DEPTH = 2  # src/components/ (one level up when that still gives too many folders)
TOP_LEVEL = "(top level)"


def print_plan(plan: Plan, ctx: CoreContext | None = None, *, list_files: bool = False) -> None:
    """Print ``plan`` (an apply's); with ``ctx``, also write every path to its operation log (once
    the run holds the lock) and estimate the stopped window from its history."""
    from patchflow.lifecycle.apply_dump import dump_place, undo_place
    from patchflow.lifecycle.journal import read_history
    from patchflow.rehearse import rehearsed_seconds
    from patchflow.stopped_window import estimate_window, human_seconds, plan_work, step_estimate
    from patchflow.units import human_bytes as hb

    d = plan.diff
    console.print(f"[bold]Plan[/] {plan.from_version or '(unknown)'} -> {plan.version}")
    if plan.delta:
        console.print(f"  patch          {plan.delta}", markup=False)
    console.print(f"  files added    {len(d.added):>6}  {hb(plan.bytes_of(d.added, 'new'))}")
    console.print(f"  files changed  {len(d.changed):>6}  {hb(plan.bytes_of(d.changed, 'new'))}")
    console.print(f"  files deleted  {len(d.deleted):>6}  {hb(plan.bytes_of(d.deleted, 'old'))}")
    for line in file_lines(plan, every=list_files):
        console.print(f"    {line}", markup=False)
    if ctx is not None and ctx.recorder is not None:  # every path in the operation log (once the run holds the lock)
        for line in full_listing(plan):
            ctx.recorder.write(line)
    for change in plan.settings_changes:
        console.print(f"  settings       {change.describe()}", markup=False)
    if plan.drift:
        console.print(
            f"  [yellow]drift[/]: {len(plan.drift)} files changed on this server since the last patch "
            "(replaced; kept in the backup): " + ", ".join(plan.drift[:10])
        )
    if plan.unowned:
        console.print(
            f"  [yellow]unowned[/]: {len(plan.unowned)} paths here belong to no patch and stay "
            "(--remove-unowned deletes them): " + ", ".join(plan.unowned[:10]),
            markup=True,
        )
    pending = plan.pending_migrations
    named = pending or []
    if not list_files and len(named) > 10:
        named = [*named[:10], f"... {len(named) - 10} more"]
    console.print(
        f"  migrations     {len(plan.migrations)} in patch, "
        f"{'unknown' if pending is None else len(pending)} pending"
        + (f": {', '.join(named)} (run by {plan.migration_runner})" if pending else "")
    )
    console.print(f"  database       {plan.database}", markup=False)
    place = dump_place(plan)
    if place:
        size = sum(need.bytes for need in plan.needs if need.label == "database dump")
        console.print(f"  database dump  {hb(size)}, taken {place}", markup=False)
        if ctx is not None and pending:
            step = "snapshot" if plan.snapshot else "backup"
            seconds = step_estimate(read_history(ctx.paths.history), plan_work(plan), step)
            what = "the snapshot" if plan.snapshot else "the dump (with the files, the backup step)"
            cost = f"about {human_seconds(seconds)}" if seconds is not None else "not timed yet on this install"
            console.print(f"  database copy  {what} in the stopped window: {cost}", markup=False)
    undo = undo_place(plan)
    if undo:
        console.print(f"  database undo  {undo}", markup=False)
    if pending:
        if plan.lint is None:
            console.print("  migration lint skipped (squawk is not installed, or migration_lint = off)")
        elif not plan.lint:
            console.print("  migration lint no heavy lock or table rewrite found (squawk)")
        findings = plan.lint or []
        shown = findings if list_files else findings[:LINT_SHOWN]
        for finding in shown:
            console.print(f"  [yellow]lock/rewrite[/]: {escape(finding.describe())}")
        if len(findings) > len(shown):
            console.print(
                f"  ... and {len(findings) - len(shown)} more lock/rewrite findings ({len(findings)} in all: "
                "apply-patch --dry-run --list-files lists them; a run lists them in its operation log)",
                markup=False,
            )
    console.print(f"  services       {', '.join(plan.services) or '(none)'} (stopped, replaced, started)")
    if plan.services_added or plan.services_removed:
        console.print(
            f"  compose        services added: {', '.join(plan.services_added) or 'none'}; removed (stopped and "
            f"removed, volumes kept; rollback brings them back): {', '.join(plan.services_removed) or 'none'}"
        )
    if plan.services:
        console.print(
            "  health proof   the reported version when /health has it; otherwise "
            + (plan.health_proof or "none available (only a healthy answer is required)")
        )
    for need in plan.needs:
        console.print(f"  space          {need.label}: {hb(need.bytes)} in {need.folder}", markup=False)
    for line in plan.checks:
        console.print(f"  before stop    {line}", markup=False)
    if ctx is not None:
        rehearsed = rehearsed_seconds(ctx.paths.state, plan.version, plan.pending_migrations or [])
        estimate = estimate_window(read_history(ctx.paths.history), plan_work(plan), rehearsed)
        console.print(f"  stopped window {estimate.describe()}", markup=False)
    for warning in plan.warnings:
        console.print(f"  [yellow]warning:[/] {warning}")


def ask_again(yes: bool, ctx: CoreContext | None = None, list_files: bool = False) -> Callable[[Change], None]:
    """What apply and rollback do when a decision taken before the lock came out differently under
    it (a :class:`patchflow.lifecycle.decisions.Change`): on a terminal without ``--yes``, show what changed
    (and the new plan) and ask again; with ``--yes`` or without a terminal, refuse with the reasons
    (:class:`patchflow.errors.PlanChanged`, exit 5), except a plan the operator knew was provisional
    (made before a recovery they agreed to), which goes on with ``--yes`` after listing the changes.

    Raises (from the callable):
        PlanChanged: the change cannot be confirmed here, or cannot be carried out at all.
        ConfirmationRefused: the operator said no (or Ctrl+C / end of input) at the new question.
    """
    from patchflow.console import confirm, stdin_is_terminal

    waited = "after this run made its plan" if yes else "while this run waited at its prompt"

    def ask(change: Change) -> None:
        if change.question and change.provisional and yes:
            for reason in change.reasons:
                console.print(f"  [yellow]plan after the recovery[/]: {escape(reason)}")
            return
        if not change.question or yes or not stdin_is_terminal():
            raise change.refusal(waited)
        console.print(f"[bold yellow]What the {change.what} would do changed {waited}:[/]")
        for reason in change.reasons:
            console.print(f"  - {reason}", markup=False)
        if change.plan is not None:
            print_plan(change.plan, ctx, list_files=list_files)
        confirm(change.question, yes=False)

    return ask


def _folder(path: str, depth: int) -> str:
    parts = path.split("/")[:-1][:depth]
    return "/".join(parts) + "/" if parts else TOP_LEVEL


def folder_lines(diff: TreeDiff, limit: int = FILE_LIST_LIMIT) -> list[str] | None:
    """One line per folder for a diff of more than ``limit`` paths (None: few enough to list each
    path). Folders are cut at :data:`FOLDER_DEPTH` levels (one level when that gives more than
    ``limit`` folders), the busiest first; past ``limit`` folders one line counts the rest.

    >>> from patchflow.manifest import TreeDiff
    >>> folder_lines(TreeDiff([f"src/a/{n}.js" for n in range(3)], [f"src/b/{n}.js" for n in range(30)], []))
    ['src/b/  30 changed', 'src/a/  3 added']
    """
    kinds = (("changed", diff.changed), ("added", diff.added), ("deleted", diff.deleted))
    if sum(len(paths) for _, paths in kinds) <= limit:
        return None
    for depth in (FOLDER_DEPTH, 1):
        groups: dict[str, Counter[str]] = {}
        for label, paths in kinds:
            for path in paths:
                groups.setdefault(_folder(path, depth), Counter())[label] += 1
        if len(groups) <= limit:
            break
    rows = sorted(groups.items(), key=lambda item: (-sum(item[1].values()), item[0]))
    shown, rest = rows[:limit], rows[limit:]
    width = max(len(folder) for folder, _ in shown)
    lines = [
        f"{folder:<{width}}  " + ", ".join(f"{counts[label]} {label}" for label, _ in kinds if counts[label])
        for folder, counts in shown
    ]
    if rest:
        lines.append(f"... {len(rest)} more folders ({sum(sum(c.values()) for _, c in rest)} paths)")
    return lines


LINT_SHOWN = 5  # lock/rewrite findings shown in the plan; the rest are counted (all: --list-files, the log)


def _pyproject_note(plan: Plan) -> str:
    changes = plan.settings_changes
    if changes:
        return f"  (holds patchflow's release settings: {len(changes)} changed, listed below)"
    return "  (patchflow's release settings unchanged)"


def file_lines(plan: Plan, *, every: bool = False) -> list[str]:
    """The plan's lines about its paths: each path (``A src/new.js``) when there are few or
    ``every``, else the summary by folder (:func:`folder_lines`) and a line on where the whole list
    is. ``pyproject.toml`` is always named, with what it means for patchflow's settings."""
    diff = plan.diff
    kinds = (("added", diff.added), ("changed", diff.changed), ("deleted", diff.deleted))
    summary = None if every else folder_lines(diff)
    if summary is None:
        return [
            f"{label[0].upper()} {path}{_pyproject_note(plan) if path == 'pyproject.toml' else ''}"
            for label, paths in kinds
            for path in paths
        ]
    total = sum(len(paths) for _, paths in kinds)
    lines = [
        f"{total} paths, by folder (each path: apply-patch --dry-run --list-files; a run lists them in its "
        "operation log):",
        *(f"  {line}" for line in summary),
    ]
    for label, paths in kinds:
        if "pyproject.toml" in paths:
            lines.append(f"{label[0].upper()} pyproject.toml{_pyproject_note(plan)}")
    return lines


def full_listing(plan: Plan) -> list[str]:
    """Every path and lint finding of the plan, one per line, for the operation log."""
    diff = plan.diff
    lines = [
        f"plan: {label[0].upper()} {path}"
        for label, paths in (("added", diff.added), ("changed", diff.changed), ("deleted", diff.deleted))
        for path in paths
    ]
    lines += [f"plan: lock/rewrite: {finding.describe()}" for finding in plan.lint or []]
    return lines
