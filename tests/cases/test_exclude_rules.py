"""Which project paths a patch keeps or drops (defaults, secrets, .patchignore, Prisma migrations)."""

from __future__ import annotations

from pathlib import Path

import pytest

from patchflow.manifest import DEFAULT_EXCLUDES, ExcludeRules, load_rules, scan_tree

PROTECTED = ("patches", "backups", ".patchflow")
KEEP, DROP = "keep", "drop"

# (path, is_dir, expected) with the built-in rules only
DEFAULT_CASES = [
    ("src/index.js", False, KEEP),
    ("apps/api/server.js", False, KEEP),
    ("node_modules", True, DROP),
    ("node_modules/react/index.js", False, DROP),
    ("apps/api/node_modules", True, DROP),
    ("packages/ui/node_modules/x/y/z.js", False, DROP),
    (".git", True, DROP),
    (".git/config", False, DROP),
    ("dist", True, DROP),
    ("apps/web/dist", True, DROP),
    ("uploads", True, DROP),
    ("coverage", True, DROP),
    ("patches", True, DROP),
    ("patches/v2.3.0/patch-v2.3.0.tar.gz", False, DROP),
    ("backups", True, DROP),
    ("backups/pre-patch-v2.3.0_x/database.dump", False, DROP),
    (".patchflow", True, DROP),
    (".patchflow/history.jsonl", False, DROP),
    ("src/patches/fix.js", False, KEEP),
    ("server.log", False, DROP),
    ("logs/api/error.log", False, DROP),
    ("docs/changelog.md", False, KEEP),
    (".env", False, DROP),
    ("apps/api/.env", False, DROP),
    (".env.production", False, DROP),
    (".env.local", False, DROP),
    (".env.example", False, KEEP),
    ("apps/api/.env.example", False, KEEP),
    ("certs/server.pem", False, DROP),
    ("certs/server.key", False, DROP),
    ("certs/client.p12", False, DROP),
    ("id_rsa", False, DROP),
    ("deploy/id_rsa", False, DROP),
    ("deploy/id_ed25519", False, DROP),
    ("deploy/id_ed25519.pub", False, KEEP),
    ("prisma", True, KEEP),
    ("prisma/schema.prisma", False, KEEP),
    ("prisma/migrations", True, KEEP),
    ("prisma/migrations/20250101000000_init", True, KEEP),
    ("prisma/migrations/20250101000000_init/migration.sql", False, KEEP),
    ("prisma/migrations/migration_lock.toml", False, KEEP),
    ("VERSION", False, KEEP),
]


@pytest.mark.parametrize(("path", "is_dir", "expected"), DEFAULT_CASES)
def test_default_rules(path: str, is_dir: bool, expected: str) -> None:
    rules = ExcludeRules(DEFAULT_EXCLUDES, PROTECTED)
    assert rules.excluded(path, is_dir=is_dir) == (expected == DROP)


PATCHIGNORE = """\
# project specific
docs/*
!docs/keep.md
*.sql
prisma/migrations/
!.env
!*.pem
tmp/
"""

# (path, is_dir, expected) with the .patchignore above
PATCHIGNORE_CASES = [
    ("docs/internal.md", False, DROP),
    ("docs/keep.md", False, KEEP),
    ("tmp", True, DROP),
    ("seed/data.sql", False, DROP),
    # migrations are always part of a patch, whatever .patchignore says
    ("prisma/migrations", True, KEEP),
    ("prisma/migrations/20250101000000_init", True, KEEP),
    ("prisma/migrations/20250101000000_init/migration.sql", False, KEEP),
    ("prisma/migrations/20250202_flat.sql", False, KEEP),
    # secrets cannot be re-included by a negation
    (".env", False, DROP),
    ("certs/server.pem", False, DROP),
    ("node_modules", True, DROP),
    ("src/index.js", False, KEEP),
]


@pytest.mark.parametrize(("path", "is_dir", "expected"), PATCHIGNORE_CASES)
def test_patchignore_rules(tmp_path: Path, path: str, is_dir: bool, expected: str) -> None:
    (tmp_path / ".patchignore").write_text(PATCHIGNORE, encoding="utf-8")
    rules = load_rules(tmp_path, extra=(), protected=PROTECTED)
    assert rules.excluded(path, is_dir=is_dir) == (expected == DROP)


@pytest.mark.parametrize(
    ("extra", "path", "expected"),
    [
        (("*.bak",), "src/old.js.bak", DROP),
        (("*.bak",), "src/old.js", KEEP),
        (("apps/legacy/",), "apps/legacy/index.js", DROP),
        (("!node_modules/",), "node_modules/x.js", DROP),  # never patched (NEVER_PATCHED), whatever the rules
        (("!.git/",), "apps/api/.git/hooks/post-merge", DROP),
    ],
)
def test_exclude_setting_patterns(tmp_path: Path, extra: tuple[str, ...], path: str, expected: str) -> None:
    rules = load_rules(tmp_path, extra=extra, protected=PROTECTED)
    assert rules.excluded(path, is_dir=False) == (expected == DROP)


@pytest.mark.parametrize("protected_dir", ["build/patches", "var/backups"])
def test_configured_patchflow_folders_are_protected(protected_dir: str) -> None:
    rules = ExcludeRules(DEFAULT_EXCLUDES, (protected_dir + "/",))
    assert rules.excluded(protected_dir, is_dir=True)
    assert rules.excluded(protected_dir + "/v1/x.tar.gz", is_dir=False)
    assert not rules.excluded(protected_dir.split("/")[0] + "/other.txt", is_dir=False)


def test_scan_tree_applies_the_rules(tmp_path: Path) -> None:
    files = [
        "src/index.js",
        "node_modules/a/index.js",
        "apps/api/node_modules/b.js",
        ".env",
        ".env.production",
        ".env.example",
        "deploy/id_ed25519",
        "deploy/id_ed25519.pub",
        "api.log",
        "patches/v1.0.0/manifest.json",
        "prisma/migrations/20250101_init/migration.sql",
    ]
    for rel in files:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rel, encoding="utf-8")
    (tmp_path / ".patchignore").write_text("prisma/migrations/\n!.env\n", encoding="utf-8")
    tree = scan_tree(tmp_path, load_rules(tmp_path, (), PROTECTED))
    kept = {e.path for e in tree.files()}
    assert kept == {
        ".patchignore",
        "src/index.js",
        ".env.example",
        "deploy/id_ed25519.pub",
        "prisma/migrations/20250101_init/migration.sql",
    }
    assert sorted(tree.excluded_secrets) == [".env", ".env.production", "deploy/id_ed25519"]
