"""Migrations you can see before they lock production: the pending migrations are linted with
squawk (``squawk-cli``, a maintained PostgreSQL migration linter) before anything stops.

Every statement squawk flags for a heavy lock or a table rewrite (changing a column's type, a
normal ``CREATE INDEX``, a volatile default, a constraint validated at once...) is shown with the
migration's file and line and, when the plan can read it, the size of the tables the statement
names. The ``migration_lint`` setting decides: ``warn`` (default: shown in the plan), ``refuse``
(the apply stops before anything changes), ``off``. Style rules that say nothing about locks
(``prefer-robust-stmts``, timeouts, ``prefer-bigint``...) are left out; ``require-lock-timeout``
only when the builtin runner sets ``lock_timeout`` (:mod:`patchflow.migration_locks`).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from patchflow.commands import postgres as pg
from patchflow.errors import CommandError, DatabaseError
from patchflow.runner import Runner

STYLE_RULES = (
    "prefer-robust-stmts",
    "require-statement-timeout",
    "require-lock-timeout",
    "prefer-bigint-over-int",
    "prefer-bigint-over-smallint",
    "prefer-identity",
    "prefer-timestamptz",
    "ban-char-field",
    "prefer-text-field",
)
_TABLE = re.compile(
    r'\b(?:TABLE|ON|INTO|REFERENCES)\s+(?:ONLY\s+)?(?:IF\s+EXISTS\s+)?((?:"[^"]+"|\w+)(?:\.(?:"[^"]+"|\w+))?)', re.I
)


@dataclass(frozen=True)
class Finding:
    """One statement squawk flags: the migration, its file and 1-based line, the rule and its
    message, and the tables the statement names with their size in bytes (when known)."""

    migration: str
    path: str
    line: int
    rule: str
    message: str
    tables: dict[str, int | None] = field(default_factory=dict)

    def describe(self) -> str:
        sizes = ", ".join(f"{t}: {_size(s)}" for t, s in self.tables.items())
        return f"{self.path} line {self.line}: {self.rule}: {self.message}" + (f" ({sizes})" if sizes else "")


def _size(value: int | None) -> str:
    if value is None:
        return "size unknown"
    from patchflow.units import human_bytes

    return human_bytes(value)


def squawk_program(environ: Mapping[str, str]) -> str | None:
    """The squawk executable: on PATH, or beside the Python running patchflow (its virtualenv)."""
    found = shutil.which("squawk", path=environ.get("PATH"))
    if found:
        return found
    beside = Path(sys.executable).parent / "squawk"
    return str(beside) if beside.exists() else None


def lint_sql(
    files: Mapping[str, tuple[str, bytes]],
    runner: Runner,
    environ: Mapping[str, str],
    database: object = None,
    *,
    lock_timeout_set: bool = True,
) -> list[Finding] | None:
    """Lint migration SQL: ``files`` maps each migration's name to ``(path in the tree, SQL bytes)``.
    Returns the findings (None when squawk is not installed); ``database`` (a
    :class:`~patchflow.database.Database`) adds table sizes. ``lock_timeout_set``: the runner sets
    ``lock_timeout`` itself (patchflow's builtin runner); otherwise squawk's
    ``require-lock-timeout`` is kept (a migration run by another command waits without limit
    unless it sets one).

    Raises:
        CommandError: squawk failed for another reason than finding problems.
    """
    program = squawk_program(environ)
    if program is None or not files:
        return None if program is None else []
    findings: list[Finding] = []
    excluded = [r for r in STYLE_RULES if lock_timeout_set or r != "require-lock-timeout"]
    with tempfile.TemporaryDirectory(prefix="patchflow-lint-") as work:
        by_file: dict[str, tuple[str, str, list[str]]] = {}
        for index, (name, (path, sql)) in enumerate(sorted(files.items())):
            target = Path(work) / f"{index:04d}.sql"
            target.write_bytes(sql)
            by_file[str(target)] = (name, path, sql.decode("utf-8", "replace").splitlines())
        result = runner.run(
            [program, "--reporter", "json", *(f"--exclude={rule}" for rule in excluded), *by_file],
            check=False,
            timeout=120,
            what="squawk",
        )
        try:
            reported = json.loads(result.stdout or "[]")
        except ValueError:
            raise CommandError(f"squawk failed: {result.output[-500:]}", "", returncode=result.returncode) from None
        for item in reported if isinstance(reported, list) else []:
            name, path, lines = by_file.get(str(item.get("file")), ("?", "?", []))
            line = int(item.get("line", 0))
            text = lines[line] if 0 <= line < len(lines) else ""
            tables: dict[str, int | None] = {m.group(1): None for m in _TABLE.finditer(text)}
            findings.append(Finding(name, path, line + 1, str(item.get("rule_name")), str(item.get("message")), tables))
    if database is not None:
        _add_sizes(findings, database)
    return findings


def _add_sizes(findings: list[Finding], database: object) -> None:
    names = sorted({t for f in findings for t in f.tables})
    if not names:
        return
    sizes: dict[str, int | None] = {}
    for name in names:
        try:
            rows = database.query(  # type: ignore[attr-defined]
                f"SELECT pg_total_relation_size(to_regclass({pg.quote_literal(name)}))"
            )
            sizes[name] = int(rows[0][0]) if rows and rows[0][0].isdigit() else None
        except DatabaseError:
            sizes[name] = None
    for finding in findings:
        for table in finding.tables:
            finding.tables[table] = sizes.get(table)
