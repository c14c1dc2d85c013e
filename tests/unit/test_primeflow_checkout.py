"""The real-PrimeFlow-shaped example (examples/primeflow-checkout) and scripts/primeflow_checkout.py,
checked without services: the files' shapes that patchflow has to cope with, ``.env`` writing,
modes and the release changes. The running api, migrations on PostgreSQL and the compose stack are
in tests/integration/test_primeflow_checkout_example.py."""

from __future__ import annotations

import json
import re
import stat
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from primeflow_checkout import (  # noqa: E402
    CHECKOUT,
    EXTRAS,
    GROUP_WRITABLE,
    HOST_FILES,
    MIGRATIONS,
    prepare_checkout,
    release_notes,
    with_prisma_schema,
)

VERSION_HEADING = re.compile(r"^## Versão (\d+\.\d+\.\d+) - (.+)$", re.MULTILINE)


def env_lines(root: Path) -> dict[str, str]:
    """The ``KEY=value`` lines of ``root/.env`` (comments and blank lines skipped)."""
    pairs = {}
    for line in (root / ".env").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key] = value
    return pairs


def test_example_is_shaped_like_the_real_repository() -> None:
    assert (CHECKOUT / "VERSION").read_text() == "3.0.0\n"
    for rel in (
        "apps/api/server.js",
        "apps/worker/index.js",
        "src/index.html",
        "src/main.js",
        "src/styles.css",
        "packages/shared/index.js",
        "pnpm-workspace.yaml",
        "pnpm-lock.yaml",
        "Makefile",
        "docker/docker-compose.yml",
        "docker/docker-compose.local.yml",
        ".env.example",
        "prisma/schema.prisma",
    ):
        assert (CHECKOUT / rel).is_file(), rel
    flat = sorted(p.name for p in (CHECKOUT / "prisma" / "migrations").iterdir())
    assert flat == list(MIGRATIONS), "flat NNN_name.sql files only: no Prisma folders, no migration_lock.toml"
    assert not (CHECKOUT / ".env").exists(), "no real .env is committed"
    assert not list(CHECKOUT.rglob("tasks.py")) and not (CHECKOUT / "pyproject.toml").exists()
    project_files = [p for p in CHECKOUT.rglob("*") if p.is_file() and p != CHECKOUT / "README.md"]
    assert not [p for p in project_files if "PATCHFLOW" in p.read_text(errors="replace")]
    assert (EXTRAS / "005_auth_schema.sql").is_file()
    assert not (CHECKOUT / "prisma/migrations/005_auth_schema.sql").exists()


def test_package_scripts_are_plain_node_scripts() -> None:
    scripts = json.loads((CHECKOUT / "package.json").read_text())["scripts"]
    assert set(scripts) >= {"lint", "typecheck", "build", "dev", "start"}
    for name, command in scripts.items():
        match = re.fullmatch(r"node (scripts/[\w.-]+\.js)", command)
        assert match, f"{name}: {command!r}"
        assert (CHECKOUT / match.group(1)).is_file(), command


def test_env_example_uses_prismas_schema_parameter_and_port_4000() -> None:
    text = (CHECKOUT / ".env.example").read_text()
    assert "DATABASE_URL=postgresql://primeflow:primeflow@localhost:5432/primeflow?schema=public\n" in text
    assert "PORT=4000\n" in text and "JWT_SECRET=change-me\n" in text and "REDIS_URL=" in text


def test_changelog_roadmap_headings_are_not_version_sections() -> None:
    text = (CHECKOUT / "CHANGELOG.md").read_text(encoding="utf-8")
    sections = VERSION_HEADING.findall(text)
    assert [v for v, _ in sections] == ["3.0.0", "2.7.0", "2.6.1", "2.6.0", "2.0.0", "1.0.0"]
    assert sections[0] == ("3.0.0", "Fluxos paralelos")
    # a parser that matches any heading naming the version finds two for 3.0.0 and one for 3.1.0,
    # whose only "section" is a roadmap line inside 2.7.0
    naive = re.findall(r"^#+ .*?v?(\d+\.\d+\.\d+)", text, re.MULTILINE)
    assert naive.count("3.0.0") == 2 and naive.count("3.1.0") == 1
    start = text.index("## Versão 2.7.0")
    end = text.index("## Versão 2.6.1")
    assert start < text.index("#### v3.0.0 - Planejado") < text.index("#### v3.1.0 - Futuro") < end


def test_compose_files_name_every_container() -> None:
    production = (CHECKOUT / "docker/docker-compose.yml").read_text()
    for service in ("postgres", "redis", "api", "worker", "frontend"):
        assert f"container_name: primeflow-{service}\n" in production, service
    assert '- "4000:4000"' in production and '- "3000:80"' in production
    assert "wget -qO- http://localhost:4000/health" in production
    assert "DATABASE_URL=postgresql://primeflow:primeflow@postgres:5432/primeflow?schema=public" in production
    local = (CHECKOUT / "docker/docker-compose.local.yml").read_text()
    for service in ("postgres", "api", "worker", "frontend"):
        assert f"container_name: ${{CONTAINER_PREFIX:-primeflow}}-{service}\n" in local, service
    assert '- "${API_PORT:-4000}:4000"' in local
    assert "FROM patchflow-local/busybox:latest" in (CHECKOUT / "docker/Dockerfile.local").read_text()
    assert "FROM node:20-alpine" in (CHECKOUT / "docker/Dockerfile.api").read_text()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://postgres@127.0.0.1:5433/db", "postgresql://postgres@127.0.0.1:5433/db?schema=public"),
        ("postgresql://u@h/db?sslmode=disable", "postgresql://u@h/db?sslmode=disable"),
        ("postgresql://u@h/db?schema=app", "postgresql://u@h/db?schema=app"),
    ],
)
def test_database_url_gets_prismas_schema_only_without_a_query(given: str, expected: str) -> None:
    assert with_prisma_schema(given) == expected


def test_prepare_checkout_writes_env_from_the_example_without_patchflow_settings(tmp_path: Path) -> None:
    root = prepare_checkout(
        tmp_path / "primeflow", database_url="postgresql://postgres@127.0.0.1:5999/pf", port=4321, git=False
    )
    env = env_lines(root)
    assert env["PORT"] == "4321"
    assert env["DATABASE_URL"] == "postgresql://postgres@127.0.0.1:5999/pf?schema=public"
    assert env["JWT_SECRET"] == "change-me" and env["HOST"] == "0.0.0.0"
    assert not [key for key in env if key.startswith("PATCHFLOW")]
    text = (root / ".env").read_text()
    assert text.startswith("# PrimeFlow"), "the example's comments stay"
    assert text.index("PORT=4321") < text.index("DATABASE_URL="), "replaced in place, not appended"
    assert not (root / ".git").exists()


def test_prepare_checkout_keeps_the_examples_url_and_adds_extra_env(tmp_path: Path) -> None:
    root = prepare_checkout(
        tmp_path / "primeflow",
        database_url=None,
        git=False,
        extra_env={"PATCHFLOW_SERVICE_MANAGER": "command", "JWT_SECRET": "x"},
    )
    env = env_lines(root)
    assert env["DATABASE_URL"] == "postgresql://primeflow:primeflow@localhost:5432/primeflow?schema=public"
    assert env["PATCHFLOW_SERVICE_MANAGER"] == "command" and env["JWT_SECRET"] == "x"
    assert 1024 <= int(env["PORT"]) <= 65535


def test_prepare_checkout_modes_and_host_files(tmp_path: Path) -> None:
    root = prepare_checkout(tmp_path / "primeflow", database_url=None, git=False)
    for rel in GROUP_WRITABLE:
        assert stat.S_IMODE((root / rel).stat().st_mode) == 0o664, rel
    for rel in ("scripts/patch/apply-patch.sh", "scripts/db/migrate.sh", "docker/postgres-entrypoint.sh"):
        assert stat.S_IMODE((root / rel).stat().st_mode) == 0o755, rel
    for rel, content in HOST_FILES.items():
        assert (root / rel).read_bytes() == content, rel
    link = root / "apps/api/node_modules/@primeflow/shared"
    assert link.is_symlink() and link.resolve() == (root / "packages/shared").resolve()


def test_release_notes_are_a_version_section() -> None:
    notes = release_notes("3.1.0")
    assert VERSION_HEADING.findall(notes) == [("3.1.0", "Auditoria")]
    assert notes.endswith("\n")


@pytest.mark.parametrize(
    ("version", "first_line", "lines"),
    [("3.0.0", "## Versão 3.0.0 - Fluxos paralelos", 16), ("2.7.0", "## Versão 2.7.0 - Relatórios", 20)],
)
def test_patchflow_takes_the_section_at_the_level_used_for_versions(version: str, first_line: str, lines: int) -> None:
    from patchflow.lifecycle.patch_docs import changelog_section
    from patchflow.version import parse_version

    section = changelog_section((CHECKOUT / "CHANGELOG.md").read_text(encoding="utf-8"), parse_version(version))
    assert section is not None and section.splitlines()[0] == first_line
    assert section.count("\n") == lines
    assert "#### v3.1.0" not in section or version == "2.7.0"


def test_a_version_named_only_in_a_roadmap_has_no_section(tmp_path: Path) -> None:
    from patchflow.lifecycle.patch_docs import changelog_section, changelog_text
    from patchflow.version import parse_version

    path = CHECKOUT / "CHANGELOG.md"
    assert changelog_section(path.read_text(encoding="utf-8"), parse_version("3.1.0")) is None
    text, note = changelog_text(path, parse_version("3.1.0"))
    assert "has no section for 3.1.0" in text and "3.0.0, 2.7.0" in note
    assert "Fluxos paralelos" not in text, "never the whole file"


@pytest.mark.parametrize(
    "heading",
    ["## 3.2.0", "## [3.2.0] - 2025-06-01", "## v3.2.0", "## Versão 3.2.0 - Título", "# 3.2.0", "## Version 3.2.0"],
)
def test_the_heading_styles_of_real_changelogs(heading: str) -> None:
    from patchflow.lifecycle.patch_docs import changelog_section
    from patchflow.version import parse_version

    text = f"# Changelog\n\n{heading}\n\n- new\n\n## 3.1.0\n\n- old\n"
    if heading.startswith("# 3.2.0"):
        text = f"{heading}\n\n- new\n\n# 3.1.0\n\n- old\n"
    section = changelog_section(text, parse_version("3.2.0"))
    assert section == f"{heading}\n\n- new\n"
