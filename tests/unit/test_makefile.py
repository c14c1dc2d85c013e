"""patchflow.makefile reads a Makefile as GNU make does and patchflow.makefile_edit refuses the edits only make could
decide; init's Makefile plan (patchflow.init.plan_makefile) keeps everything else, replaces an
earlier block in place, and refuses a Makefile it cannot edit safely with nothing written. Each
behaviour is checked against real ``make`` where make has something to say."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from patchflow.init import apply_init, plan_init
from patchflow.make_block import BLOCK_END, BLOCK_START, makefile_block
from patchflow.makefile import RECIPE, MakefileError, parse_makefile, split_physical
from patchflow.makefile_edit import default_goal, remove_targets

VENV_BIN = Path(sys.executable).parent


def make_n(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "-n", "--no-print-directory", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
        env={**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"},
    )


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_physical_lines_keep_every_byte() -> None:
    text = "a:\r\n\techo 1\\\r\n\t 2\n# a\rb\nlast"
    lines = split_physical(text)
    assert "".join(p.text + p.eol for p in lines) == text
    assert [p.eol for p in lines] == ["\r\n", "\r\n", "\n", "\n", ""]
    assert lines[3].text == "# a\rb", "a CR inside a line is part of it (make splits at LF only)"


def test_recipe_lines_follow_make_across_comments_blank_lines_and_conditionals(tmp_path: Path) -> None:
    text = (
        "a:\n\techo 1\n# make comment\n\n\techo 2\nifdef X\n\techo 3\nendif\n"
        "V = 1\n\tW = 2\nb: ; echo b\n\techo b2\nc: V = 3\n\t\n"
    )
    mk = parse_makefile(text)
    recipes = {mk.physical[ln.first].text: ln.owners for ln in mk.lines if ln.kind == RECIPE}
    a, b = (mk.lines[i].rule for i in mk.rules[:2])
    assert recipes == {"\techo 1": {a}, "\techo 2": {a}, "\techo 3": {a}, "\techo b2": {b}}
    (tmp_path / "Makefile").write_text(text)
    assert make_n(tmp_path, "a", "X=1").stdout.split("\n")[:3] == ["echo 1", "echo 2", "echo 3"]
    assert make_n(tmp_path, "b").stdout == "echo b\necho b2\n"


def test_a_recipe_line_whose_rule_depends_on_a_conditional_is_not_guessed(tmp_path: Path) -> None:
    text = "ifdef X\napply-patch:\nelse\nbuild:\nendif\n\techo which rule is this\n"
    (tmp_path / "Makefile").write_text(text)
    assert make_n(tmp_path, "apply-patch", "X=1").stdout == "echo which rule is this\n"
    assert make_n(tmp_path, "build").stdout == "echo which rule is this\n"
    with pytest.raises(MakefileError, match=r"line 6:.*conditionals"):
        remove_targets(parse_makefile(text), {"apply-patch"})
    before = snapshot(tmp_path)
    with pytest.raises(MakefileError):
        plan_init(tmp_path)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("ifdef X\n.RECIPEPREFIX = >\nendif\n", "inside a conditional"),
        (".RECIPEPREFIX := $(P)\n", "needs make to expand"),
        (".RECIPEPREFIX != echo '>'\n", "runs a shell command"),
        ("define .RECIPEPREFIX\n>\nendef\n", "not supported"),
        ("ifdef X\na:\n", "no `endif`"),
        ("define X\nvalue\n", "no `endef`"),
        ("endif\n", "without a matching `if`"),
    ],
)
def test_makefiles_only_make_can_read_are_refused(text: str, match: str) -> None:
    with pytest.raises(MakefileError, match=match) as caught:
        parse_makefile(text)
    assert caught.value.hint


def test_recipe_prefix_follows_recipeprefix_assignments() -> None:
    mk = parse_makefile(".RECIPEPREFIX = >\na:\n>echo\n.RECIPEPREFIX += x\n.RECIPEPREFIX ?= y\n")
    assert mk.prefix == ">" and mk.prefix_line == 4
    assert parse_makefile(".RECIPEPREFIX = >\n.RECIPEPREFIX :=\n").prefix == "\t"
    unexpanded = parse_makefile("E =\n.RECIPEPREFIX = $(E)\n")
    assert unexpanded.prefix == "$", "make takes the first character of the value it stores, unexpanded for ="


def test_define_bodies_hold_no_rules_and_nested_defines_count() -> None:
    text = "define A\napply-patch:\n\techo text\n  define B\n  endef\nup:\nendef\nb:\n\techo b\n"
    mk = parse_makefile(text)
    assert set(mk.targets()) == {"b"}


def test_removing_a_target_specific_variable_never_gives_its_followers_to_the_recipe_above() -> None:
    mk = parse_makefile("build:\n\tnpm run build\nlogs: SERVICE = api\n\t\n\t# a comment for make\nnext:\n")
    out = remove_targets(mk, {"logs"}).text
    assert out == "build:\n\tnpm run build\nnext:\n", "the tab-only and tab-comment lines are no-ops: removed"
    mk = parse_makefile("build:\n\tnpm run build\nlogs: SERVICE = api\n\tFOO = 1\n")
    with pytest.raises(MakefileError, match="line 4: this line begins with the recipe prefix"):
        remove_targets(mk, {"logs"})


def test_default_goal_is_kept_only_when_make_decides_it_from_the_file() -> None:
    assert default_goal(parse_makefile(".PHONY: up\n%.o: %.c\nup:\nclean:\n")) == ("up", 2)
    assert default_goal(parse_makefile(".DEFAULT_GOAL := help\nup:\n")) is None
    assert default_goal(parse_makefile("include common.mk\nup:\n")) is None
    assert default_goal(parse_makefile("ifdef X\nup:\nendif\n")) is None
    assert default_goal(parse_makefile("$(T): ; echo\nup:\n")) is None
    assert remove_targets(parse_makefile("./bin/x: ; echo\nup:\n"), {"up"}).text == "./bin/x: ; echo\n"


def test_an_earlier_block_is_replaced_in_place_and_keeps_what_follows(tmp_path: Path) -> None:
    """A Makefile from the previous init (absolute inv path, pyproject marker) with the project's
    own rule after the block: the block is replaced where it is, the rule after it stays."""
    old_block = (
        "# >>> patchflow: written by `inv init`; settings in pyproject.toml [tool.patchflow] >>>\n"
        "PF_INV ?= /home/dev/primeflow/.venv/bin/inv\n.PHONY: patch-help apply-patch\n\n"
        "patch-help:\n\t@$(PF_INV) --list\n\napply-patch:\n\t@$(PF_INV) apply-patch\n# <<< patchflow <<<\n"
    )
    text = "build:\n\tnpm run build\n\n" + old_block + "\nlint:\n\teslint .\n"
    (tmp_path / "Makefile").write_text(text)
    plan = plan_init(tmp_path)
    assert plan.replaced_targets == [], "the old block's targets are patchflow's own"
    apply_init(plan, tmp_path / ".patchflow")
    new = (tmp_path / "Makefile").read_text()
    assert new.startswith("build:\n\tnpm run build\n\n" + BLOCK_START)
    assert new.endswith(BLOCK_END + "\n\nlint:\n\teslint .\n")
    assert "/home/dev" not in new and "PF_INV" not in new
    assert make_n(tmp_path, "lint").stdout == "eslint .\n"
    assert plan_init(tmp_path).changed == []


def test_a_block_without_its_end_is_refused(tmp_path: Path) -> None:
    (tmp_path / "Makefile").write_text("a:\n\techo\n" + BLOCK_START + "\nPF_X = 1\n")
    with pytest.raises(MakefileError, match="line 3: patchflow's block starts here but has no"):
        plan_init(tmp_path)


def test_an_included_file_defining_a_patchflow_target_is_refused(tmp_path: Path) -> None:
    (tmp_path / "make").mkdir()
    (tmp_path / "make" / "patch.mk").write_text("X = 1\n\napply-patch:\n\tbash old.sh\n")
    (tmp_path / "Makefile").write_text("include make/*.mk\nbuild:\n\tnpm run build\n")
    before = snapshot(tmp_path)
    with pytest.raises(MakefileError, match=r"apply-patch \(make/\*\.mk line 3\)") as caught:
        plan_init(tmp_path)
    assert "remove or rename" in caught.value.hint
    assert snapshot(tmp_path) == before


def test_an_included_help_is_the_projects_help(tmp_path: Path) -> None:
    (tmp_path / "help.mk").write_text("help:\n\t@echo project help\n")
    (tmp_path / "Makefile").write_text("-include help.mk\n")
    apply_init(plan_init(tmp_path), tmp_path / ".patchflow")
    assert "help: patch-help" not in (tmp_path / "Makefile").read_text()
    assert make_n(tmp_path, "help").stdout == "echo project help\n"


def test_targets_named_through_variables_are_noted(tmp_path: Path) -> None:
    (tmp_path / "Makefile").write_text("TARGETS = deploy\n$(TARGETS):\n\t./deploy.sh\n")
    plan = plan_init(tmp_path)
    assert any("line 2 names its targets through a variable" in note for note in plan.detection_notes)


def test_bytes_that_are_not_utf8_and_a_missing_final_newline_are_kept(tmp_path: Path) -> None:
    original = "# Versão em latin-1\nup:\n\techo up\nbuild:\n\techo build".encode("latin-1")
    (tmp_path / "Makefile").write_bytes(original)
    apply_init(plan_init(tmp_path), tmp_path / ".patchflow")
    new = (tmp_path / "Makefile").read_bytes()
    kept = b"# Vers\xe3o em latin-1\n.DEFAULT_GOAL := up\nbuild:\n\techo build\n\n"
    assert new.startswith(kept + BLOCK_START.encode()), "latin-1 bytes kept; the last line got its newline"
    assert make_n(tmp_path, "build").stdout == "echo build\n"


def test_the_block_names_no_path_of_the_machine_that_wrote_it(tmp_path: Path) -> None:
    block = makefile_block(with_help=True)
    for path in (sys.executable, str(VENV_BIN), str(Path.home()), str(Path.cwd())):
        assert path not in block
    shutil.copy2(Path(__file__).resolve().parents[2] / "examples/primeflow-checkout/Makefile", tmp_path / "Makefile")
    apply_init(plan_init(tmp_path), tmp_path / ".patchflow")
    assert str(VENV_BIN) not in (tmp_path / "Makefile").read_text()


def test_the_migration_targets_pass_their_variables(tmp_path: Path) -> None:
    (tmp_path / "Makefile").write_text(makefile_block(with_help=True) + "\n")
    rehearse = make_n(tmp_path, "rehearse", "VERSION=2.3.0").stdout
    assert " rehearse " in rehearse and "--version '2.3.0'" in rehearse, rehearse
    resolve = make_n(tmp_path, "resolve-migration", "NAME=20250101_init", "ROLLED_BACK=1").stdout
    assert "resolve-migration" in resolve and "--name '20250101_init' --rolled-back" in resolve, resolve
    assert "--applied" not in resolve
    apply = make_n(tmp_path, "apply-patch", "VERSION=2.3.0", "REHEARSE=1").stdout
    assert "--version '2.3.0'" in apply and "--rehearse" in apply, apply
    assert "--rehearse" not in make_n(tmp_path, "apply-patch", "VERSION=2.3.0").stdout
