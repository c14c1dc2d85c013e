"""The plan checks that read the release's own files: ``.env.example`` keys and the named services.

Before anything stops: the keys the release's ``.env.example`` adds are set on this host, and the
services the settings name exist (in its compose file(s), or as commands whose program exists
after the switch). Run by
:func:`patchflow.preconditions.check_before_stop`, which holds the other checks."""

from __future__ import annotations

import io
import os
import shlex
import shutil
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from patchflow.context import Context
    from patchflow.preconditions import Changes, Checks
    from patchflow.verify import VerifyReport

ENV_EXAMPLE = ".env.example"


# -- .env keys -------------------------------------------------------------------------------------


def env_keys(text: str) -> dict[str, str]:
    """``key -> example value`` of a ``.env`` file's text (python-dotenv's grammar; a key without
    ``=`` has the value "")."""
    from dotenv import dotenv_values

    return {k: v or "" for k, v in dotenv_values(stream=io.StringIO(text)).items()}


def _release_file(ctx: Context, report: VerifyReport, rel: str) -> bytes | None:
    """The bytes ``rel`` has in the patch's tree (from its archive, or the installed file a delta
    leaves as it is); None when the patch's tree has no such file."""
    entry = report.entries().get(rel)
    if entry is None or entry.type != "file":
        return None
    if rel in report.archive_entries():
        from patchflow.archive.reader import read_member_bytes

        return read_member_bytes(ctx.paths.archive(report.version), {rel}, limit=4 << 20).get(rel)
    try:
        return (ctx.paths.root / rel).read_bytes()
    except OSError:
        return None


def _compose_environment(texts: Iterable[bytes]) -> set[str]:
    """Keys set in the ``environment`` of any service of the compose files ``texts``."""
    keys: set[str] = set()
    for text in texts:
        model = compose_model(text) or {"services": {}}
        for service in model["services"].values():
            env = service.get("environment") if isinstance(service, dict) else None
            if isinstance(env, dict):
                keys |= {str(k) for k in env}
            elif isinstance(env, list):
                keys |= {str(item).split("=", 1)[0] for item in env}
    return keys


def check_env_keys(ctx: Context, report: VerifyReport, checks: Checks) -> None:
    """The **.env keys** check of :func:`patchflow.preconditions.check_before_stop`: keys the
    release's ``.env.example`` adds are set on this host (``env_example_check``), added to ``checks``."""
    settings = ctx.settings
    if settings.env_example_check == "off":
        return
    new = _release_file(ctx, report, ENV_EXAMPLE)
    if new is None:
        checks.lines.append(f"env keys: the release has no {ENV_EXAMPLE}: nothing to compare")
        return
    installed_path = ctx.paths.root / ENV_EXAMPLE
    try:
        before = env_keys(installed_path.read_text(encoding="utf-8")) if installed_path.is_file() else {}
    except (OSError, UnicodeDecodeError):
        before = {}
    wanted = env_keys(new.decode("utf-8", errors="replace"))
    added = [k for k in wanted if k not in before]
    where = "its keys" if not installed_path.is_file() else "the keys it adds"
    known = set(settings.dotenv) | set(settings.environ)
    if ctx.services.kind == "compose":
        known |= _compose_environment(_release_file(ctx, report, f) or b"" for f in settings.compose_files)
    missing = [k for k in added if k not in known]
    if not missing:
        checks.lines.append(f"env keys: {ENV_EXAMPLE}: {where} ({len(added)}) are set on this host")
        return
    empty = [k for k in missing if not wanted[k]]
    dotenv = ctx.paths.root / ".env"
    message = (
        f"The release's {ENV_EXAMPLE} {'holds' if not installed_path.is_file() else 'adds'} key(s) this host does "
        f"not set (in {dotenv} or the environment): {', '.join(missing)}. The new version would start without "
        "them after the stop."
    )
    hint = (
        f"Add them to {dotenv} (an empty value counts as set: `{missing[0]}=`)"
        + (f"; the example leaves {', '.join(empty)} empty, so the release may treat them as optional" if empty else "")
        + ', or set env_example_check = "warn" in .patchflow/host.toml (or PATCHFLOW_ENV_EXAMPLE_CHECK=warn) to '
        "apply anyway."
    )
    if settings.env_example_check == "warn":
        checks.lines.append(f"env keys: NOT set on this host: {', '.join(missing)} (env_example_check = warn)")
        checks.warnings.append(f"{message} Applying anyway (env_example_check = warn).")
        return
    checks.problems.append((message, hint))


# -- services --------------------------------------------------------------------------------------


def compose_model(text: bytes | str) -> dict[str, Any] | None:
    """A compose file's YAML as a mapping whose ``services`` is a mapping (empty when it has
    none); None when the text is not YAML or not a mapping (compose itself names the error when it
    reads the file, during staging, before anything stops)."""
    import yaml

    try:
        model = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        return None
    if not isinstance(model, dict):
        return None
    if not isinstance(model.get("services"), dict):
        model["services"] = {}
    return model


def compose_services(ctx: Context, report: VerifyReport) -> tuple[set[str], set[str] | None]:
    """``(installed, release)``: the services the compose file(s) define now and in the patch's
    tree (read from the archive, or the installed file a delta leaves; no docker needed).
    ``release`` is None when the patch's tree has none of the compose files, or one is not a YAML
    mapping or uses ``include`` (its services cannot be told without compose); ``installed`` is
    then what can be read."""
    installed: set[str] = set()
    release: set[str] | None = set()
    found = False
    for name in ctx.settings.compose_files:
        path = ctx.paths.root / name
        if path.is_file():
            model = compose_model(path.read_bytes())
            installed |= set(model["services"]) if model is not None else set()
        data = _release_file(ctx, report, name)
        if data is not None and release is not None:
            model = compose_model(data)
            if model is None or "include" in model:
                release = None
                continue
            found = True
            release |= set(model["services"])
    return installed, release if found else None


def _app_services_after(ctx: Context, plan: Changes) -> tuple[tuple[str, ...], bool]:
    """``app_services`` after the switch (the release's pyproject may change it) and whether it is
    set explicitly (not the default)."""
    settings = ctx.settings
    for change in plan.settings_changes:
        if change.name == "app_services" and not change.kept_by:
            return tuple(v.strip() for v in change.after.split(",") if v.strip()), bool(change.release_after)
    return tuple(settings.app_services), settings.source("app_services") != "default"


def check_service_names(ctx: Context, plan: Changes, report: VerifyReport, checks: Checks) -> None:
    """The **services** check of :func:`patchflow.preconditions.check_before_stop`: the services the
    settings name exist in the compose file(s), or have a command whose program exists; added to ``checks``."""
    settings = ctx.settings
    if ctx.services.kind == "command":
        _commands(ctx, plan, checks)
        return
    if ctx.services.kind != "compose":
        return
    files = ", ".join(settings.compose_files)
    installed, release = compose_services(ctx, report)
    app, app_explicit = _app_services_after(ctx, plan)
    target = release if release is not None else installed
    problems = []
    if app_explicit:
        missing = [s for s in app if s not in target]
        if missing:
            problems.append(
                f"app_services names {', '.join(missing)}, which the release's {files} does not define (services: "
                f"{', '.join(sorted(target)) or 'none'})"
            )
    elif app and not any(s in target for s in app):
        problems.append(
            f"none of app_services ({', '.join(app)}, the default) is a service of the release's {files} (services: "
            f"{', '.join(sorted(target)) or 'none'}): nothing would be stopped or started"
        )
    data_explicit = settings.source("data_services") != "default"
    needed = {s: "data_services" for s in settings.data_services if data_explicit}
    if settings.database_mode == "compose":
        needed[settings.database_service] = "database_service"
    for name, setting in needed.items():
        sides = (("installed", installed), ("release's", release))
        lacking = [label for label, have in sides if have is not None and name not in have]
        if lacking:
            problems.append(f"{setting} names {name}, which the {' and the '.join(lacking)} {files} does not define")
    if problems:
        checks.problems.append(
            (
                f"Services named by the settings do not exist: {'; '.join(problems)}.",
                "Fix the names in the settings (app_services and data_services in [tool.patchflow] of pyproject.toml, "
                "database_service in .patchflow/host.toml) or the compose file.",
            )
        )
        return
    checks.lines.append(f"services: {', '.join(a for a in app if a in target)} are services of {files}")


def _commands(ctx: Context, plan: Changes, checks: Checks) -> None:
    settings = ctx.settings
    commands = dict(settings.commands)
    problems = []
    # the release's app_services (pyproject.toml) name compose services; this host's own value names
    # the services it expects the commands to run
    if settings.source("app_services") not in ("default", "pyproject.toml"):
        unknown = [s for s in settings.app_services if s not in commands]
        if unknown:
            problems.append(
                f"app_services names {', '.join(unknown)}, which has no command (commands: {', '.join(commands)})"
            )
    deleted = set(plan.diff.deleted)
    path = {**settings.dotenv, **settings.environ}.get("PATH")
    for name, command in commands.items():
        try:
            args = shlex.split(command)
        except ValueError as exc:
            problems.append(f"the command of {name} ({command!r}) cannot be parsed: {exc}")
            continue
        if not args:
            problems.append(f"{name} has an empty command")
            continue
        program = args[0]
        if os.path.isabs(program):
            if not os.access(program, os.X_OK):
                problems.append(f"the program of {name} ({program}) does not exist or cannot be run")
        elif "/" in program:
            if not _in_tree_after(ctx, plan, os.path.normpath(program)):
                problems.append(f"the program of {name} ({program}) does not exist after the switch")
        elif shutil.which(program, path=path) is None:
            problems.append(f"the program of {name} ({program}) is not on PATH")
        gone = [a for a in args[1:] if os.path.normpath(a) in deleted]
        if gone:
            problems.append(f"the release deletes {', '.join(gone)}, which the command of {name} runs")
    if problems:
        checks.problems.append(
            (
                f"Services named by the settings cannot be started: {'; '.join(problems)}.",
                "Fix the commands setting (name=command;...) in .patchflow/host.toml or .env (PATCHFLOW_COMMANDS).",
            )
        )
        return
    checks.lines.append(f"services: {', '.join(commands)}: each has a command whose program exists")


def _in_tree_after(ctx: Context, plan: Changes, rel: str) -> bool:
    """True when ``rel`` (relative to the root) exists after the switch: the patch has it, or the
    tree has it now and the patch does not delete it."""
    if rel in plan.new_entries:
        return True
    return os.path.lexists(ctx.paths.root / rel) and rel not in plan.diff.deleted
