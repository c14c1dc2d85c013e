"""``init`` as a careful editor (issue 18 fault 4), on a corpus of real-world shapes kept as data
files in tests/data/init_corpus/.

Makefiles: for each shape, GNU make itself reads the file before and after ``init`` (its ``make
-p`` data base, tests/support/makedb.py): every target init does not replace keeps its rules,
prerequisites, target-specific variables and recipe exactly; every variable keeps its value; the
replaced targets are patchflow's alone; ``make -n apply-patch VERSION=1.2.3 YES=1`` shows the
patchflow call; the file outside patchflow's block is the old one with only the replaced rules'
lines removed (line endings kept); a second ``init`` changes nothing. pyproject.toml: every shape
stays valid TOML with one ``[tool.patchflow]``, its comments and every other value kept.
Real ``make``, real files; nothing is mocked.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from support.makedb import read_database

from patchflow.init import OUR_TARGETS, apply_init, plan_init
from patchflow.make_block import BLOCK_END, BLOCK_START, BLOCK_VARIABLES

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "data" / "init_corpus"
PRIMEFLOW = REPO / "examples" / "primeflow-checkout"
VENV_BIN = Path(sys.executable).parent
MAKE_ENV = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
MAKEFILE_SHAPES = sorted(p.name for p in (CORPUS / "makefiles").iterdir() if p.is_dir())
PYPROJECT_SHAPES = sorted(p.stem for p in (CORPUS / "pyproject").glob("*.toml"))


def checkout_of(shape: str, dest: Path) -> Path:
    """A folder holding the shape's Makefile (and the files it includes); ``primeflow-checkout`` is
    the example's own Makefile with its VERSION and a .env made from .env.example."""
    if shape == "primeflow-checkout":
        dest.mkdir()
        for name in ("Makefile", "VERSION"):
            shutil.copy2(PRIMEFLOW / name, dest / name)
        shutil.copy2(PRIMEFLOW / ".env.example", dest / ".env")
    else:
        shutil.copytree(CORPUS / "makefiles" / shape, dest)
    return dest


def make(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=root,
        env=MAKE_ENV,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


def outside_block(text: str) -> str:
    """``text`` without patchflow's block (and the blank line init puts before it)."""
    start = text.index(BLOCK_START)
    end = text.index(BLOCK_END, start) + len(BLOCK_END)
    end += 2 if text.startswith("\r\n", end) else 1 if text.startswith("\n", end) else 0
    before = text[:start]
    for sep in ("\r\n\r\n", "\n\n"):
        if before.endswith(sep):
            before = before[: -len(sep) // 2]
            break
    return before + text[end:]


def _tokens(line: str) -> list[str]:
    return re.findall(r"[^\s:]+|:+", line)


def assert_only_replaced_lines_changed(original: str, after: str, replaced: set[str]) -> None:
    """Outside the block, ``after`` is ``original`` with lines removed; a changed line only lost
    names of replaced targets (line ending kept); an added line is a ``.DEFAULT_GOAL`` naming one."""
    old = original.splitlines(keepends=True)
    new = []
    for line in outside_block(after).splitlines(keepends=True):
        goal = re.fullmatch(r"\.DEFAULT_GOAL := (\S+)\r?\n", line)
        if not (goal and goal.group(1) in replaced):  # init adds that line where the default goal's rule was
            new.append(line)
    matcher = difflib.SequenceMatcher(a=old, b=new, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op in ("equal", "delete"):
            continue
        assert op == "replace", f"init added {new[j1:j2]}"
        candidates = iter(old[i1:i2])
        for line in new[j1:j2]:
            assert any(
                [t for t in _tokens(source) if t not in replaced] == _tokens(line)
                and line.endswith("\r\n") == source.endswith("\r\n")
                for source in candidates
            ), f"{line!r} is not a line of {old[i1:i2]} without replaced target names"


@pytest.mark.parametrize("shape", [*MAKEFILE_SHAPES, "primeflow-checkout"])
def test_make_reads_every_kept_target_the_same_after_init(tmp_path: Path, shape: str) -> None:
    root = checkout_of(shape, tmp_path / "checkout")
    original = (root / "Makefile").read_bytes().decode()
    others = {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != "Makefile"}
    before = read_database(root, env=MAKE_ENV)

    plan = plan_init(root)
    apply_init(plan, root / ".patchflow")
    replaced = set(plan.replaced_targets)
    after_text = (root / "Makefile").read_bytes().decode()
    after = read_database(root, env=MAKE_ENV)

    assert replaced == OUR_TARGETS & set(before.targets), "every old rule of a patchflow target is replaced"
    prerequisites_of_replaced = {
        word for name in replaced for e in before.targets[name] for word in e.rule.split(":", 1)[1].split()
    }
    for name, entries in before.targets.items():
        if name in replaced or name in (".PHONY", "help"):
            continue
        if not any(e.target for e in entries) and name in prerequisites_of_replaced and name not in after.targets:
            continue  # a file make knew only as a prerequisite of a replaced rule
        assert after.targets.get(name) == entries, f"{shape}: make reads {name} differently after init"
    if ".PHONY" in before.targets:
        phony_before = set(before.targets[".PHONY"][0].rule.split()[1:])
        assert phony_before <= set(after.targets[".PHONY"][0].rule.split()[1:]), "phony targets stay phony"
    if "help" in before.targets:
        assert after.targets["help"] == before.targets["help"], "the project's own help is kept"
    else:
        assert after.targets["help"][0].rule == "help: patch-help"
    for name in OUR_TARGETS:
        entries = after.targets[name]
        assert len(entries) == 1 and entries[0].variables == (), f"{name}: patchflow's rule alone\n{entries}"
        recipe = "\n".join(entries[0].recipe)
        assert ("PF_RUN" in recipe) or name == "patch-help", recipe
    for name, value in before.variables.items():
        assert after.variables.get(name) == value, f"{shape}: variable {name} changed"
    assert set(after.variables) - set(before.variables) <= set(BLOCK_VARIABLES)
    assert after.implicit == before.implicit and after.pattern_variables == before.pattern_variables

    assert_only_replaced_lines_changed(original, after_text, replaced)
    if "\r\n" in original:
        assert after_text.count("\n") == after_text.count("\r\n"), "CRLF stays CRLF, the block's lines too"
    for path, content in others.items():
        assert path.read_bytes() == content, f"{path.name} is not init's to change"

    shown = make(root, "-n", "apply-patch", "VERSION=1.2.3", "YES=1")
    assert shown.returncode == 0, shown.stderr
    assert f"'{VENV_BIN / 'patchflow'}' apply-patch --root '{root}' --version '1.2.3' --yes" in shown.stdout
    listed = make(root, "patch-help")
    assert listed.returncode == 0 and "apply-patch" in listed.stdout and str(VENV_BIN / "patchflow") in listed.stdout

    again = plan_init(root)
    assert [c.path.name for c in again.changed] == [], "a second init changes nothing"


def test_the_old_recipe_no_longer_joins_the_next_target(tmp_path: Path) -> None:
    """The field failure itself: after init, ``make -n build-images`` runs docker, never the old
    bash apply script whose recipe went on across a comment and a blank line."""
    root = checkout_of("recipe-comments", tmp_path / "checkout")
    apply_init(plan_init(root), root / ".patchflow")
    shown = make(root, "-n", "build-images")
    assert shown.stdout.strip() == "docker compose build"
    assert "apply-patch.sh" not in (root / "Makefile").read_text()


def test_block_recipes_use_the_recipe_prefix_in_effect(tmp_path: Path) -> None:
    root = checkout_of("recipeprefix", tmp_path / "checkout")
    apply_init(plan_init(root), root / ".patchflow")
    text = (root / "Makefile").read_text()
    block = text[text.index(BLOCK_START) :]
    assert "\n>@$(call PF_RUN,up," in block and "\n\t@" not in block
    restored = checkout_of("recipeprefix-restored", tmp_path / "restored")
    apply_init(plan_init(restored), restored / ".patchflow")
    assert "\n\t@$(call PF_RUN,deploy," in (restored / "Makefile").read_text()


def test_the_default_goal_stays_what_it_was(tmp_path: Path) -> None:
    root = checkout_of("default-goal", tmp_path / "checkout")
    assert make(root, "-n").stdout.strip() == "docker compose up -d"
    plan = plan_init(root)
    assert any(".DEFAULT_GOAL := up" in note for c in plan.changes for note in c.notes)
    apply_init(plan, root / ".patchflow")
    shown = make(root, "-n").stdout
    assert shown.startswith(f"'{VENV_BIN / 'patchflow'}' up --root "), "make with no target still means up"


# -- pyproject.toml ---------------------------------------------------------------------------


def with_compose(root: Path) -> Path:
    (root / "docker").mkdir(parents=True)
    shutil.copy2(PRIMEFLOW / "docker" / "docker-compose.yml", root / "docker" / "docker-compose.yml")
    return root


DETECTED_RELEASE = {
    "compose_files": ["docker/docker-compose.yml"],
    "app_services": ["api", "worker", "frontend"],
    "data_services": ["postgres", "redis"],
}


def comment_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("#")]


@pytest.mark.parametrize("shape", ["none", *PYPROJECT_SHAPES])
def test_pyproject_edits_keep_valid_toml_one_table_and_everything_else(tmp_path: Path, shape: str) -> None:
    root = with_compose(tmp_path / "checkout")
    original = None if shape == "none" else (CORPUS / "pyproject" / f"{shape}.toml").read_bytes().decode()
    if original is not None:
        (root / "pyproject.toml").write_bytes(original.encode())
    old = tomllib.loads(original or "")

    plan = plan_init(root)
    apply_init(plan, root / ".patchflow")
    text = (root / "pyproject.toml").read_bytes().decode()
    new = tomllib.loads(text)  # valid TOML (a second [tool.patchflow] header would fail here)
    assert len(re.findall(r"^\s*\[tool\.patchflow\]", text, re.MULTILINE)) <= 1

    section = new["tool"]["patchflow"]
    old_section = old.get("tool", {}).get("patchflow", {})
    for key, value in old_section.items():
        assert section[key] == value, f"{key} kept"
    for key, value in DETECTED_RELEASE.items():
        assert section[key] == old_section.get(key, value), f"{key}: added when missing, kept when there"
    host_keys = {"database_mode", "database_service", "database_name", "database_user", "health_url"}
    assert not (host_keys & (set(section) - set(old_section))), "host settings never go into pyproject.toml"
    stripped = {**new, "tool": {**new["tool"], "patchflow": {k: v for k, v in section.items() if k in old_section}}}
    if not old_section and "patchflow" not in old.get("tool", {}):
        del stripped["tool"]["patchflow"]
        if not stripped["tool"]:
            del stripped["tool"]
    assert stripped == old, "every other value is kept"
    assert set(comment_lines(original or "")) <= set(comment_lines(text)), "comments are kept"
    if original is not None and "\r\n" in original:
        assert text.count("\n") == text.count("\r\n"), "CRLF stays CRLF"

    assert [c.path.name for c in plan_init(root).changed] == [], "a second init changes nothing"


def test_host_settings_of_an_older_init_are_copied_to_the_host_file(tmp_path: Path) -> None:
    """An older init wrote host settings into pyproject.toml: init copies the ones the host file
    lacks there and says so; after a patch replaces pyproject.toml this host keeps its values."""
    from patchflow.config import load_settings
    from patchflow.settings_files import HOST_SETTINGS_FILE

    root = with_compose(tmp_path / "checkout")
    shutil.copy2(CORPUS / "pyproject" / "older-init.toml", root / "pyproject.toml")
    host_file = root / HOST_SETTINGS_FILE
    host_file.parent.mkdir()
    host_file.write_text('health_url = ["http://127.0.0.1:9999/health"]  # this host\'s own\n')
    plan = plan_init(root)
    change = next(c for c in plan.changes if c.path == host_file)
    assert any(note.startswith("copies from pyproject.toml") and "database_mode" in note for note in change.notes)
    apply_init(plan, root / ".patchflow")
    host = tomllib.loads(host_file.read_text())
    assert host["health_url"] == ["http://127.0.0.1:9999/health"], "the host file's own value is kept"
    assert host["database_mode"] == "compose" and host["database_user"] == "primeflow"
    assert "# this host's own" in host_file.read_text()

    # a developer's release replaces pyproject.toml without those keys: the host keeps them
    (root / "pyproject.toml").write_text('[tool.patchflow]\napp_services = ["api"]\ndatabase_mode = "url"\n')
    settings = load_settings(root, environ={})
    assert settings.database_mode == "compose" and settings.source("database_mode") == HOST_SETTINGS_FILE
    assert settings.database_name == "primeflow"
