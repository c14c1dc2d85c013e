"""The block of make targets ``init`` writes into a PrimeFlow checkout's Makefile.

The block travels with the Makefile in every patch, so it names no path of the machine that
wrote it. When make runs a target it finds patchflow itself: ``PATCHFLOW=/path/to/patchflow``
(make command line or environment), else ``.venv/bin/patchflow`` or ``.patchflow/venv/bin/patchflow``
(where ``setup-host`` installs it) in the Makefile's folder, else ``patchflow`` on ``PATH``; when
none is there the target fails with one line naming ``inv setup-host --host <this server>`` and
``pip install <patchflow wheel>``. It calls patchflow's own entry point (``patchflow <task> --root
<the Makefile's folder>``), never the checkout's ``tasks.py`` through ``inv``, so the targets work
with ``make -C`` and from any folder.

Make variables (``VERSION=``, ``YES=1``, ``HOST=``...) count only when given on the make command
line: a Makefile's own ``VERSION ?= $(shell cat VERSION)`` or an app's ``HOST=0.0.0.0`` in an
included and exported ``.env`` is no patch version or server (``DRY_RUN`` also counts from the
environment: ignoring ``DRY_RUN=1 make apply-patch ...`` would apply for real). A value reaches the
shell single-quoted and unexpanded (``$(value ...)``): ``VERSION='3.1.0; id'`` is one argument the
version parser refuses, never a command.
"""

from __future__ import annotations

import shlex

BLOCK_START = "# >>> patchflow: written by `patchflow init`; run it again to update this block >>>"
BLOCK_START_PREFIX = "# >>> patchflow"
BLOCK_END = "# <<< patchflow <<<"

# (target, patchflow task, arguments after --root, help text)
TARGETS: tuple[tuple[str, str, str, str], ...] = (
    (
        "patch-status",
        "patch-status",
        "$(PF_HOSTS)$(call PF_FLAG,JSON,--json)",
        "installed version, patches, backups, history (JSON=1; HOST= ROLE= over SSH)",
    ),
    (
        "create-patch",
        "create-patch",
        "$(call PF_OPT,VERSION,--version)$(call PF_FLAG,FORCE,--force)",
        "build patches/vX.Y.Z/ (VERSION=x.y.z; default: the VERSION file)",
    ),
    (
        "verify-patch",
        "verify-patch",
        "$(call PF_OPT,VERSION,--version)",
        "check a patch's checksums, signature and manifest (VERSION=x.y.z)",
    ),
    (
        "apply-patch",
        "apply-patch",
        "$(call PF_OPT,VERSION,--version)$(call PF_FLAG,YES,--yes)$(PF_DRY_RUN)$(call PF_FLAG,FORCE,--force)"
        "$(call PF_FLAG,REHEARSE,--rehearse)",
        "apply a patch: backup, migrate, restart, health check, automatic rollback (VERSION=x.y.z YES=1 REHEARSE=1)",
    ),
    (
        "rollback-patch",
        "rollback-patch",
        "$(PF_HOSTS)$(call PF_OPT,VERSION,--version)$(call PF_FLAG,YES,--yes)$(call PF_FLAG,FORCE,--force)",
        "restore code, database and VERSION from before a patch (VERSION=, default the installed one; YES=1)",
    ),
    (
        "deploy",
        "deploy",
        "$(PF_HOSTS)$(call PF_OPT,VERSION,--version)$(call PF_FLAG,YES,--yes)",
        "upload a patch over SSH and apply it there, one host at a time (HOST=/HOSTS=/ROLE= VERSION= YES=1)",
    ),
    ("prune-backups", "prune-backups", "$(PF_DRY_RUN)", "delete old backups (retention; DRY_RUN=1)"),
    ("preflight", "preflight", "", "pnpm lint / typecheck, prisma validate, migration lint"),
    (
        "baseline-migrations",
        "baseline-migrations",
        "$(call PF_FLAG,YES,--yes)",
        "record the installed migrations in a database without history (YES=1)",
    ),
    (
        "rehearse",
        "rehearse",
        "$(call PF_OPT,VERSION,--version)",
        "run a patch's pending migrations on a copy of the database, timed; services keep running (VERSION=x.y.z)",
    ),
    (
        "resolve-migration",
        "resolve-migration",
        "$(call PF_OPT,NAME,--name)$(call PF_FLAG,APPLIED,--applied)$(call PF_FLAG,ROLLED_BACK,--rolled-back)",
        "resolve a failed migration as prisma migrate resolve does (NAME= APPLIED=1 or ROLLED_BACK=1)",
    ),
    ("up", "up", "", "start the stack"),
    ("down", "down", "", "stop the stack (volumes are kept)"),
    ("ps", "ps", "", "service states"),
    ("restart", "restart", "$(call PF_OPT,SERVICE,--service)", "restart services (SERVICE=api)"),
    (
        "logs",
        "logs",
        "$(call PF_OPT,SERVICE,--service)$(call PF_OPT,TAIL,--tail)$(call PF_FLAG,FOLLOW,--follow)",
        "service logs (SERVICE= TAIL=100 FOLLOW=1)",
    ),
)
#: Targets whose task needs VERSION: without it on the command line they fail with one line.
NEEDS_VERSION = ("apply-patch",)
VARIABLES = (
    ("VERSION", "patch version, e.g. VERSION=2.3.0"),
    ("YES", "YES=1 confirms without a prompt (required without a terminal)"),
    ("DRY_RUN", "DRY_RUN=1 prints the plan and changes nothing"),
    ("FORCE", "FORCE=1 applies an installed version again / replaces a patch folder"),
    ("HOST", "HOST=web1 (or HOSTS=a,b or ROLE=production): deploy, patch-status, rollback-patch over SSH"),
    ("JSON", "JSON=1 machine-readable patch-status"),
    ("REHEARSE", "REHEARSE=1 rehearses the migrations on a copy of the database before apply-patch plans"),
    ("NAME", "NAME=<migration folder> for resolve-migration, with APPLIED=1 or ROLLED_BACK=1"),
    ("SERVICE", "SERVICE=api for logs and restart (TAIL=100 FOLLOW=1 for logs)"),
    ("ROOT", "ROOT=path of another checkout (default: this Makefile's folder)"),
    ("PATCHFLOW", "PATCHFLOW=/path/to/patchflow (default: .venv, .patchflow/venv, then PATH)"),
)
#: The names of every make variable the block defines (all unexported: a Makefile's bare
#: ``export`` would otherwise run the search for patchflow before every recipe of the project).
BLOCK_VARIABLES = (
    "PF_MAKEFILE",
    "PF_HERE",
    "PF_Q",
    "PF_SET",
    "PF_OPT",
    "PF_FLAG",
    "PF_DRY_RUN",
    "PF_HOSTS",
    "PF_ROOT",
    "PF_FIND",
    "PF_BIN",
    "PF_MISSING",
    "PF_EXEC",
    "PF_RUN",
    "PF_NO_VERSION",
)

_DEFINITIONS: tuple[str, ...] = (
    "# patchflow's targets (make patch-help). Each runs patchflow found when make runs:",
    "# PATCHFLOW=/path/to/patchflow, else .venv/bin/patchflow or .patchflow/venv/bin/patchflow next to",
    "# this Makefile, else patchflow on PATH. Their variables count only on the make command line",
    "# (DRY_RUN=1 also from the environment) and reach the shell single-quoted, never expanded.",
    "PF_MAKEFILE := $(lastword $(filter %/Makefile Makefile,$(MAKEFILE_LIST)))",
    "PF_HERE := $(if $(filter Makefile ./Makefile,$(PF_MAKEFILE)),$(CURDIR),"
    "$(patsubst %/,%,$(dir $(abspath $(PF_MAKEFILE)))))",
    r"PF_Q = '$(subst ','\'',$(1))'",
    "PF_SET = $(and $(filter command line,$(origin $(1))),$(value $(1)))",
    "PF_OPT = $(if $(call PF_SET,$(1)), $(2) $(call PF_Q,$(value $(1))))",
    "PF_FLAG = $(if $(call PF_SET,$(1)), $(2))",
    "PF_DRY_RUN = $(if $(and $(filter command line environment%,$(origin DRY_RUN)),$(value DRY_RUN)), --dry-run)",
    "PF_HOSTS = $(call PF_OPT,HOST,--host)$(call PF_OPT,HOSTS,--hosts)$(call PF_OPT,ROLE,--role)",
    "PF_ROOT = $(if $(call PF_SET,ROOT),$(value ROOT),$(PF_HERE))",
    "PF_FIND = $(if $(shell [ -x $(call PF_Q,$(PF_HERE)/$(1)) ] && echo y),$(PF_HERE)/$(1))",
    "PF_BIN = $(or $(if $(filter command line environment%,$(origin PATCHFLOW)),$(value PATCHFLOW)),"
    "$(call PF_FIND,.venv/bin/patchflow),$(call PF_FIND,.patchflow/venv/bin/patchflow),"
    "$(shell command -v patchflow 2>/dev/null))",
    "PF_MISSING = echo 'patchflow not found (no PATCHFLOW=, no .venv/bin/patchflow or .patchflow/venv/bin/patchflow "
    "in '$(call PF_Q,$(PF_HERE))', none on PATH): install it with inv setup-host --host <this server> from the "
    r"operator'\''s checkout, or here with pip install <patchflow wheel>' >&2; exit 127",
    "PF_EXEC = $(if $(1),$(call PF_Q,$(1)) $(2),$(PF_MISSING))",
    "PF_RUN = $(call PF_EXEC,$(PF_BIN),$(1) --root $(call PF_Q,$(PF_ROOT))$(2))",
    "PF_NO_VERSION = echo 'make $@: give the version on the make command line, e.g. make $@ VERSION=x.y.z "
    "(VERSION from the Makefile, the VERSION file or the environment does not count)' >&2; exit 1",
)


def makefile_block(*, prefix: str = "\t", eol: str = "\n", with_help: bool) -> str:
    """The Makefile block of patchflow's targets, its recipe lines starting with ``prefix`` (the
    recipe prefix in effect where it goes, ``.RECIPEPREFIX``) and its lines ending with ``eol``
    (the Makefile's own). ``with_help`` adds ``help: patch-help`` (when the Makefile has no help).
    """
    names = ["patch-help", *(name for name, _, _, _ in TARGETS)] + (["help"] if with_help else [])
    lines = [BLOCK_START, *_DEFINITIONS]
    lines += ["unexport " + " ".join(BLOCK_VARIABLES), "", ".PHONY: " + " ".join(names), ""]
    if with_help:
        lines += ["help: patch-help ## list the commands", ""]
    width = max(len(name) for name, _, _, _ in TARGETS)
    shown = ["patchflow's targets (make TARGET VARIABLE=value ...):"]
    shown += [f"  {name:<{width}}  {text}" for name, _, _, text in TARGETS]
    shown.append("variables (only from the make command line; DRY_RUN=1 also from the environment):")
    shown += [f"  {name:<9}  {text}" for name, text in VARIABLES]
    # one command (continued lines): .ONESHELL or not, it prints the same
    lines += ["patch-help: ## patchflow's targets and variables", prefix + "@printf '%s\\n' \\"]
    lines += [f"{prefix}  {shlex.quote(text).replace('$', '$$')} \\" for text in shown]
    lines.append(prefix + "  'patchflow: '$(call PF_Q,$(or $(PF_BIN),not found))'; all its tasks: patchflow --list'")
    lines.append("")
    for name, task, args, text in TARGETS:
        run = f"$(call PF_RUN,{task},{args})"
        if name in NEEDS_VERSION:
            run = f"$(if $(call PF_SET,VERSION),{run},$(PF_NO_VERSION))"
        lines += [f"{name}: ## {text}", f"{prefix}@{run}", ""]
    lines.append(BLOCK_END)
    return eol.join(lines) + eol
