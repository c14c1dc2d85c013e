"""A Makefile as GNU make itself reads it: the data base ``make -p`` prints (``-n``: nothing runs).

``make -p -n -r --eval='.pf-db-probe: ;' .pf-db-probe`` reads the Makefile (running its
``$(shell ...)`` assignments, its includes), defines a probe goal that has nothing to do, and
prints what it read: every variable with its value (``# Variables``), every target with its
prerequisites, its target-specific variables and its recipe exactly as make stored it (``# Files``;
a ``::`` target once per rule), the pattern rules (``# Implicit Rules``). :func:`read_database`
parses that print into comparable data, without the comment lines (which carry line numbers and
times). GNU make 4.3's format: sections start with ``# Variables``, ``# Files``...; an entry of
``# Files`` is a paragraph; its recipe follows ``#  recipe to execute (...)``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

PROBE = ".pf-db-probe"


@dataclass
class Entry:
    """One rule of a target: its rule line (``name: prerequisites``), the target-specific variable
    lines before it, and its recipe lines as make stored them."""

    rule: str
    variables: tuple[str, ...]
    recipe: tuple[str, ...]
    target: bool = True  # False: "# Not a target:" (a file named only as a prerequisite, the makefile)


@dataclass
class Database:
    """What make read: ``targets`` name -> its entries (several for ``::``), ``variables`` name ->
    its printed definition, ``implicit`` the pattern rules' paragraphs, and the raw print."""

    targets: dict[str, list[Entry]] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)
    implicit: list[tuple[str, ...]] = field(default_factory=list)
    pattern_variables: list[str] = field(default_factory=list)
    raw: str = ""


def _sections(text: str) -> dict[str, list[str]]:
    names = ("# Variables", "# Pattern-specific Variable Values", "# Directories", "# Implicit Rules", "# Files")
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.split("\n"):
        if line in names:
            current = sections.setdefault(line, [])
            continue
        if line.startswith(("# files hash-table stats", "# Finished Make data base")):
            current = None
            continue
        if current is not None:
            current.append(line)
    return sections


def _paragraphs(lines: list[str]) -> list[list[str]]:
    out: list[list[str]] = [[]]
    for line in lines:
        if line == "":
            if out[-1]:
                out.append([])
        else:
            out[-1].append(line)
    return [p for p in out if p]


def _variables(lines: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line or line.startswith("#"):
            i += 1
            continue
        if line.startswith("define "):
            name = line.split()[1]
            body = [line]
            i += 1
            while i < len(lines) and lines[i] != "endef":
                body.append(lines[i])
                i += 1
            found[name] = "\n".join([*body, "endef"])
            i += 1
            continue
        name = line.split(" ", 1)[0]
        found[name] = line
        i += 1
    return found


def read_database(folder: Path, *, env: dict[str, str] | None = None) -> Database:
    """Run make in ``folder`` and parse its data base.

    Raises:
        AssertionError: make could not read the Makefile (its error is in the message).
    """
    make = shutil.which("make")
    assert make, "GNU make is required"
    done = subprocess.run(
        [make, "-p", "-n", "-r", f"--eval={PROBE}: ;", PROBE],
        cwd=folder,
        env=env or dict(os.environ),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"make -p failed in {folder}:\n{done.stderr}"
    sections = _sections(done.stdout)
    db = Database(raw=done.stdout)
    db.variables = _variables(sections.get("# Variables", []))
    db.pattern_variables = [
        ln for ln in sections.get("# Pattern-specific Variable Values", []) if ln and not ln.startswith("#")
    ]
    for paragraph in _paragraphs(sections.get("# Implicit Rules", [])):
        kept = tuple(ln for ln in paragraph if not ln.startswith("#"))
        if kept:
            db.implicit.append(kept)
    for paragraph in _paragraphs(sections.get("# Files", [])):
        marker = next((i for i, ln in enumerate(paragraph) if ln.startswith("#  recipe to execute")), len(paragraph))
        # ".RECIPEPREFIX = x" before a rule is printed when the prefix differs from the one printed
        # last (an artefact of the printing order); each recipe line is printed with its own prefix
        head = [ln for ln in paragraph[:marker] if not ln.startswith(("#", ".RECIPEPREFIX = "))]
        if not head:
            continue
        rule = head[-1]
        name = rule.split(":", 1)[0]
        if name == PROBE:
            continue
        variables = tuple(head[:-1])
        target = "# Not a target:" not in paragraph
        db.targets.setdefault(name, []).append(Entry(rule, variables, tuple(paragraph[marker + 1 :]), target))
    return db
