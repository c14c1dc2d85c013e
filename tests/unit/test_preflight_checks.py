"""Which checks preflight plans in a pnpm workspace (tests/e2e/test_preflight.py runs them with a
real pnpm): where each script is defined, a root script that delegates to the packages, and the
migrations some patch already ships; and what run_checks reports (with `true` and `false`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from patchflow.preflight import delegates_to_packages, project_checks, shipped_migrations


@pytest.mark.parametrize(
    ("command", "delegates"),
    [
        ("pnpm -r run lint", True),
        ("pnpm --recursive typecheck", True),
        ("pnpm --filter './apps/**' lint", True),
        ("pnpm --filter=@primeflow/api typecheck", True),
        ("pnpm -F api lint", True),
        ('pnpm -r run "lint', True),  # unbalanced quote: still read word by word
        ("node scripts/lint.js", False),
        ("eslint -r .", False),  # not pnpm
        ("pnpm run lint:root", False),
        ("tsc -b && pnpm lint", False),
    ],
)
def test_a_root_script_delegates_when_pnpm_runs_the_packages(command: str, delegates: bool) -> None:
    assert delegates_to_packages(command) is delegates


def _package(folder: Path, scripts: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "package.json").write_text(json.dumps({"name": folder.name, "scripts": scripts}))


def test_checks_follow_the_workspace(tmp_path: Path) -> None:
    pnpm = tmp_path / "bin" / "pnpm"
    pnpm.parent.mkdir()
    pnpm.write_text("#!/bin/sh\n")
    pnpm.chmod(0o755)
    _package(tmp_path, {"lint": "pnpm -r run lint"})
    _package(tmp_path / "apps/api", {"lint": "eslint .", "typecheck": "tsc --noEmit"})
    _package(tmp_path / "apps/web", {"lint": "eslint ."})
    _package(tmp_path / "tools/gen", {"typecheck": "tsc"})  # not in the workspace
    (tmp_path / "pnpm-workspace.yaml").write_text("packages:\n  - apps/*\n")
    checks = project_checks(tmp_path, {"PATH": str(pnpm.parent)})
    table = [(c.label, c.args, c.cwd.relative_to(tmp_path).as_posix(), bool(c.skipped)) for c in checks]
    assert table == [
        ("pnpm lint", None, ".", True),
        ("pnpm lint in apps/api", [str(pnpm), "run", "lint"], "apps/api", False),
        ("pnpm lint in apps/web", [str(pnpm), "run", "lint"], "apps/web", False),
        ("pnpm typecheck in apps/api", [str(pnpm), "run", "typecheck"], "apps/api", False),
    ]


def test_shipped_migrations_come_from_every_patch_and_the_installed_record(tmp_path: Path) -> None:
    patches = tmp_path / "patches"
    for version, names in (("v1.0.0", ["001_init"]), ("v1.1.0", ["001_init", "002_more"])):
        (patches / version).mkdir(parents=True)
        (patches / version / "manifest.json").write_text(json.dumps({"migrations": [{"name": n} for n in names]}))
    (patches / "v1.2.0").mkdir()
    (patches / "v1.2.0" / "manifest.json").write_text("{ half written")  # unreadable: left out
    installed = tmp_path / ".patchflow" / "installed-manifest.json"
    installed.parent.mkdir()
    installed.write_text(json.dumps({"migrations": [{"name": "000_baseline"}]}))
    names, sources = shipped_migrations(patches, installed)
    assert names == {"000_baseline", "001_init", "002_more"}
    assert sources == ["v1.0.0", "v1.1.0", "the installed record"]
    assert shipped_migrations(tmp_path / "none", tmp_path / "none.json") == (set(), [])


def test_run_checks_reports_each_outcome_to_show_and_prints_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The core reports (outcome, text) to the task layer's ``show``; real processes (``true``,
    ``false``) run through the real runner; a failed check and one that cannot run are both named
    in the error, with the failures passed in."""
    from patchflow.errors import PatchflowError
    from patchflow.preflight import Check, run_checks
    from patchflow.runner import LocalRunner

    checks = [
        Check("passes", ["true"], tmp_path),
        Check("fails", ["false"], tmp_path),
        Check("lint", None, tmp_path, skipped="no lint script"),
        Check("prisma validate", None, tmp_path, missing="install the Prisma CLI"),
    ]
    seen: list[tuple[str, str]] = []
    with pytest.raises(PatchflowError) as raised:
        run_checks(checks, LocalRunner(), lambda outcome, text: seen.append((outcome, text)), ["migration lint (2)"])
    assert seen == [
        ("run", "passes"),
        ("ok", "passes"),
        ("run", "fails"),
        ("fail", "fails (exit 1)"),
        ("skip", "lint: no lint script"),
        ("cannot run", "prisma validate: install the Prisma CLI"),
        ("summary", "preflight: 2 ran (1 failed), 1 skipped, 1 could not run"),
    ]
    assert raised.value.message == (
        "Preflight failed: migration lint (2); fails (exit 1); prisma validate (install the Prisma CLI)."
    )
    assert capsys.readouterr() == ("", ""), "nothing printed by the core"


def test_run_checks_with_nothing_to_run_says_so_and_passes(tmp_path: Path) -> None:
    from patchflow.preflight import Check, run_checks
    from patchflow.runner import LocalRunner

    seen: list[tuple[str, str]] = []
    run_checks([Check("lint", None, tmp_path, skipped="no script")], LocalRunner(), lambda o, t: seen.append((o, t)))
    assert [o for o, _ in seen] == ["skip", "none", "summary"]
