"""create-patch on small trees built in tmp_path: folder contents, checksums, determinism,
modes (C04), links (C06), locales (C07) and the error paths (nothing left on disk)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from support.services import shared_tempdir

import patchflow
from patchflow.config import load_settings
from patchflow.errors import CreatePatchError
from patchflow.lifecycle.create import CreatedPatch, create_patch
from patchflow.version import parse_version

REPO = Path(patchflow.__file__).resolve().parents[1]
NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
CHANGELOG = """# Changelog

## [1.4.0] - 2025-01-02

- Audit log.

### Fixed

- Login.

## [1.3.0] - 2024-12-01

- Older things.
"""
MIGRATIONS = {
    "prisma/migrations/20250101000000_init/migration.sql": 'CREATE TABLE "User" (id int);\n',
    "prisma/migrations/20250201000000_nickname.sql": 'ALTER TABLE "User" ADD COLUMN nickname text;\n',
    "prisma/migrations/20250301000000_audit/migration.sql": 'CREATE TABLE "AuditLog" (id int);\n',
}
FILES = {
    "VERSION": "1.4.0\n",
    "PATCH_CHANGELOG.md": CHANGELOG,
    "package.json": '{"name": "primeflow"}\n',
    "src/index.js": "console.log('1.4.0');\n",
    "apps/api/server.js": "require('http');\n",
    "prisma/schema.prisma": "model User { id Int @id }\n",
    **MIGRATIONS,
    # never packed
    ".env": "DATABASE_URL=postgresql://app:secret@db/app\n",
    "node_modules/left-pad/index.js": "module.exports = 1;\n",
    "backups/pre-patch-v1.3.0_20250101T000000Z_abcdef/database.dump": "old dump",
    "logs/api.log": "noise\n",
}
PACKED = {p for p in FILES if not p.startswith(("node_modules/", "backups/", "logs/")) and p != ".env"}


def make_tree(root: Path, files: dict[str, str] = FILES) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def create(root: Path, **kwargs: object) -> CreatedPatch:
    return create_patch(load_settings(root, environ={}), now=NOW, **kwargs)  # type: ignore[arg-type]


def members(archive: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(archive, encoding="utf-8") as tar:
        return {m.name: m for m in tar.getmembers()}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "project")


def test_folder_holds_every_file(tree: Path) -> None:
    created = create(tree)
    folder = tree / "patches" / "v1.4.0"
    assert created.folder == folder
    assert sorted(p.name for p in folder.iterdir()) == [
        "CHANGELOG.md",
        "README.md",
        "SHA256SUMS",
        "checksum.md5",
        "manifest.json",
        "patch-v1.4.0.tar.gz",
        "schema.sql",
    ]
    assert created.archive_sha256 == hashlib.sha256(created.archive.read_bytes()).hexdigest()
    assert created.file_count == len(PACKED)
    assert [m.name for m in created.migrations] == [
        "20250101000000_init",
        "20250201000000_nickname",
        "20250301000000_audit",
    ]
    assert any(".env" in w for w in created.warnings)
    assert not list((tree / "patches").glob(".*")), "no temporary folder is left behind"


def test_manifest_fields(tree: Path) -> None:
    created = create(tree)
    manifest = json.loads((created.folder / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["version"] == "1.4.0"
    assert manifest["created_at"] == "2025-01-02T03:04:05Z"
    assert manifest["tool"] == {"name": "patchflow", "version": patchflow.__version__}
    assert manifest["archive"] == {
        "name": "patch-v1.4.0.tar.gz",
        "sha256": created.archive_sha256,
        "size": created.archive_size,
    }
    files = {f["path"]: f for f in manifest["files"] if f["type"] == "file"}
    assert set(files) == PACKED
    index = files["src/index.js"]
    content = (tree / "src/index.js").read_bytes()
    assert index == {
        "path": "src/index.js",
        "type": "file",
        "size": len(content),
        "sha256": hashlib.sha256(content).hexdigest(),
        "mode": "0644",
    }
    assert [m["name"] for m in manifest["migrations"]] == [m.name for m in created.migrations]
    first = manifest["migrations"][0]
    assert first["path"] == "prisma/migrations/20250101000000_init/migration.sql"
    assert first["sha256"] == hashlib.sha256(MIGRATIONS[first["path"]].encode()).hexdigest()


def test_archive_members_equal_the_manifest(tree: Path) -> None:
    created = create(tree)
    manifest = json.loads((created.folder / "manifest.json").read_text(encoding="utf-8"))
    found = members(created.archive)
    assert set(found) == {f["path"] for f in manifest["files"]}
    for info in found.values():
        assert (info.uid, info.gid, info.uname, info.gname, info.mtime) == (0, 0, "", "", 0)


def test_checksum_files_pass_md5sum_and_sha256sum(tree: Path) -> None:
    folder = create(tree).folder
    md5 = subprocess.run(["md5sum", "-c", "checksum.md5"], cwd=folder, capture_output=True, text=True)
    sha = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=folder, capture_output=True, text=True)
    assert md5.returncode == 0, md5.stdout + md5.stderr
    assert sha.returncode == 0, sha.stdout + sha.stderr
    assert "patch-v1.4.0.tar.gz: OK" in md5.stdout
    checked = {line.rsplit(": ", 1)[0] for line in sha.stdout.splitlines() if line.endswith(": OK")}
    assert checked == {p.name for p in folder.iterdir()} - {"SHA256SUMS"}


def test_changelog_is_the_section_of_the_version(tree: Path) -> None:
    text = (create(tree).folder / "CHANGELOG.md").read_text(encoding="utf-8")
    assert text.startswith("## [1.4.0] - 2025-01-02")
    assert "### Fixed" in text
    assert "- Login." in text
    assert "1.3.0" not in text


def test_changelog_without_a_section_says_so_instead_of_copying_the_file(tree: Path) -> None:
    (tree / "VERSION").write_text("1.5.0\n", encoding="utf-8")
    created = create(tree, version=parse_version("1.5.0"))
    text = (created.folder / "CHANGELOG.md").read_text(encoding="utf-8")
    assert text.startswith("# v1.5.0\n") and "has no section for 1.5.0" in text
    assert CHANGELOG not in text
    assert "has no section for 1.5.0" in (created.folder / "README.md").read_text(encoding="utf-8")


def test_changelog_placeholder_without_a_file(tree: Path) -> None:
    (tree / "PATCH_CHANGELOG.md").unlink()
    text = (create(tree).folder / "CHANGELOG.md").read_text(encoding="utf-8")
    assert text == "# v1.4.0\n\nNo changelog was provided.\n"


def test_schema_sql_holds_folder_and_flat_migrations_in_order(tree: Path) -> None:
    sql = (create(tree).folder / "schema.sql").read_text(encoding="utf-8")
    positions = [sql.index(text.strip()) for text in MIGRATIONS.values()]
    assert positions == sorted(positions)
    assert "-- Migration: 20250201000000_nickname (prisma/migrations/20250201000000_nickname.sql)" in sql


def test_readme_names_version_checksums_and_files(tree: Path) -> None:
    created = create(tree)
    readme = (created.folder / "README.md").read_text(encoding="utf-8")
    assert readme.startswith("# PrimeFlow patch v1.4.0")
    assert created.archive_sha256 in readme
    assert "`src/index.js`" in readme
    assert "`20250301000000_audit`" in readme
    assert ".env" not in readme.replace(".env.example", "")


def test_version_file_is_never_written(tree: Path) -> None:
    version_file = tree / "VERSION"
    os.utime(version_file, (1_000_000_000, 1_000_000_000))
    before = version_file.stat()
    create(tree)
    after = version_file.stat()
    assert version_file.read_text(encoding="utf-8") == "1.4.0\n"
    assert (after.st_mtime_ns, after.st_ino, after.st_size) == (before.st_mtime_ns, before.st_ino, before.st_size)
    assert (tree / "patches" / "v1.4.0").is_dir()


def test_a_migration_folder_without_migration_sql_is_refused(tree: Path) -> None:
    typo = tree / "prisma" / "migrations" / "20250301_audit"
    typo.mkdir(parents=True)
    (typo / "migrations.sql").write_text("CREATE TABLE audit (id int);\n", encoding="utf-8")
    with pytest.raises(CreatePatchError) as caught:
        create(tree)
    assert "prisma/migrations/20250301_audit/ has no migration.sql" in caught.value.message
    assert "migrations.sql" in caught.value.message
    assert not (tree / "patches").exists() or not list((tree / "patches").iterdir())


def test_rebuild_with_force_gives_identical_archive(tree: Path) -> None:
    first = create(tree)
    first_bytes = first.archive.read_bytes()
    (first.folder / "stray.txt").write_text("old folder", encoding="utf-8")
    second = create(tree, force=True)
    assert second.archive.read_bytes() == first_bytes
    assert not (second.folder / "stray.txt").exists(), "--force replaces the whole folder"
    assert sorted(p.name for p in (tree / "patches").iterdir()) == ["v1.4.0"]


def test_source_date_epoch_makes_the_whole_patch_folder_reproducible(tmp_path: Path) -> None:
    """SOURCE_DATE_EPOCH reaches create-patch through the settings: two builds of the same tree
    at different times give byte-identical patch folders, created_at included."""
    folders = []
    for name in ("first", "second"):
        root = make_tree(tmp_path / name)
        created = create_patch(load_settings(root, environ={"SOURCE_DATE_EPOCH": "1736000000"}))
        folders.append(created.folder)
    first, second = ({p.name: p.read_bytes() for p in folder.iterdir()} for folder in folders)
    assert first == second
    manifest = json.loads(first["manifest.json"])
    assert manifest["created_at"] == "2025-01-04T14:13:20Z"
    without = create_patch(load_settings(make_tree(tmp_path / "third"), environ={}))
    assert json.loads((without.folder / "manifest.json").read_bytes())["created_at"] != manifest["created_at"]


def test_copies_with_other_mtimes_and_owners_give_identical_archives(tmp_path: Path) -> None:
    one = make_tree(tmp_path / "one")
    two = tmp_path / "two"
    shutil.copytree(one, two, symlinks=True)
    for number, path in enumerate(sorted(two.rglob("*"))):
        os.utime(path, (1_500_000_000 + number * 977, 1_600_000_000 + number * 131), follow_symlinks=False)
        os.chown(path, 65534, 65534, follow_symlinks=False)
    assert (two / "src/index.js").stat().st_mtime != (one / "src/index.js").stat().st_mtime
    a = create(one)
    b = create(two)
    assert a.archive.read_bytes() == b.archive.read_bytes()
    assert a.archive_sha256 == b.archive_sha256


def test_modes_are_kept_and_unsafe_bits_dropped_c04(tree: Path) -> None:
    scripts = {"scripts/start.sh": 0o755, "docker/entrypoint.sh": 0o755, "config/private.json": 0o600}
    unsafe = {"bin/setuid-tool": (0o4755, 0o755), "bin/setgid-tool": (0o2750, 0o750), "public/open.txt": (0o666, 0o644)}
    for rel, mode in {**scripts, **{k: v[0] for k, v in unsafe.items()}}.items():
        path = tree / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"#!/bin/sh\necho {rel}\n", encoding="utf-8")
        os.chmod(path, mode)
    (tree / "shared").mkdir(mode=0o777)
    os.chmod(tree / "shared", 0o1777)

    created = create(tree)
    manifest = {f["path"]: f for f in json.loads((created.folder / "manifest.json").read_text())["files"]}
    found = members(created.archive)
    expected = {**scripts, **{k: v[1] for k, v in unsafe.items()}, "shared": 0o755}
    for rel, mode in expected.items():
        assert manifest[rel]["mode"] == f"{mode:04o}", rel
        assert stat.S_IMODE(found[rel].mode) == mode, rel
    for info in found.values():
        assert info.mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | stat.S_IWOTH) == 0 or info.issym(), info.name


def test_links_inside_the_tree_c06(tree: Path) -> None:
    (tree / "public/assets/v2").mkdir(parents=True)
    (tree / "public/assets/v2/app.css").write_text("body{}\n", encoding="utf-8")
    os.symlink("assets/v2", tree / "public/current")
    (tree / "docs").mkdir()
    os.symlink("missing.md", tree / "docs/latest.md")

    created = create(tree)
    found = members(created.archive)
    assert found["public/current"].issym()
    assert found["public/current"].linkname == "assets/v2"
    assert found["docs/latest.md"].issym()
    assert found["docs/latest.md"].linkname == "missing.md"
    assert not any(name.startswith("public/current/") for name in found), "the link is not followed"
    assert any("docs/latest.md" in w and "dangling" in w for w in created.warnings)
    manifest = {f["path"]: f for f in json.loads((created.folder / "manifest.json").read_text())["files"]}
    assert manifest["public/current"] == {"path": "public/current", "type": "symlink", "target": "assets/v2"}


@pytest.mark.parametrize(
    ("link", "target"),
    [("vendor/shared", "/opt/shared-lib"), ("vendor/escape", "../../outside"), ("vendor/up", "..")],
)
def test_links_leaving_the_tree_are_refused_c06(tree: Path, link: str, target: str) -> None:
    (tree / "vendor").mkdir()
    os.symlink(target, tree / link)
    with pytest.raises(CreatePatchError) as caught:
        create(tree)
    assert link in caught.value.message
    assert repr(target) in caught.value.message
    assert "outside the project" in caught.value.message
    assert "nothing was written" in caught.value.hint
    assert not (tree / "patches").exists()


def test_excluded_outside_link_is_fine(tree: Path) -> None:
    (tree / "vendor").mkdir()
    os.symlink("/opt/shared-lib", tree / "vendor/shared")
    (tree / ".patchignore").write_text("vendor/shared\n", encoding="utf-8")
    assert "vendor/shared" not in members(create(tree).archive)


UNICODE_NAMES = ["public/fonts/Ünïcødé-ß.woff2", "docs/説明.md", "notes/ok-✓.txt"]


def _inv_create(root: Path, env: list[str], *extra: str) -> subprocess.CompletedProcess[str]:
    inv = Path(sys.executable).parent / "inv"
    command = ["env", "-i", f"PATH={os.environ['PATH']}", *env, str(inv), "-r", str(REPO), "create-patch"]
    return subprocess.run([*command, "--root", str(root), *extra], capture_output=True, text=True, timeout=120)


def test_unicode_names_under_c_and_utf8_locales_c07(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "project", {"VERSION": "1.4.0\n", **{n: f"{n}\n" for n in UNICODE_NAMES}})
    digests = []
    for env in (["LC_ALL=C"], ["LC_ALL=C.UTF-8", "LANG=C.UTF-8"]):
        proc = _inv_create(root, env, "--force")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
        folder = root / "patches" / "v1.4.0"
        archive = folder / "patch-v1.4.0.tar.gz"
        digests.append(hashlib.sha256(archive.read_bytes()).hexdigest())
        check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=folder, capture_output=True)
        assert check.returncode == 0, check.stdout
        with tarfile.open(archive, encoding="utf-8", errors="strict") as tar:
            names = {m.name.encode("utf-8") for m in tar.getmembers()}
        for name in UNICODE_NAMES:
            assert name.encode("utf-8") in names
        manifest = json.loads((folder / "manifest.json").read_bytes().decode("utf-8"))
        assert set(UNICODE_NAMES) <= {f["path"] for f in manifest["files"]}
        readme = (folder / "README.md").read_bytes().decode("utf-8")
        assert all(f"`{n}`" in readme for n in UNICODE_NAMES)
    assert digests[0] == digests[1]


def test_existing_folder_without_force(tree: Path) -> None:
    created = create(tree)
    before = {p.name: p.read_bytes() for p in created.folder.iterdir()}
    (tree / "src/index.js").write_text("console.log('changed');\n", encoding="utf-8")
    with pytest.raises(CreatePatchError) as caught:
        create(tree)
    assert str(created.folder) in caught.value.message
    assert "already exists" in caught.value.message
    assert "--force" in caught.value.hint
    assert {p.name: p.read_bytes() for p in created.folder.iterdir()} == before
    assert sorted(p.name for p in (tree / "patches").iterdir()) == ["v1.4.0"]


def test_fifo_in_the_tree_is_refused(tree: Path) -> None:
    os.mkfifo(tree / "src/events.pipe")
    with pytest.raises(CreatePatchError) as caught:
        create(tree)
    assert "src/events.pipe" in caught.value.message
    assert "special file (device, FIFO or socket)" in caught.value.message
    assert not (tree / "patches").exists()


#: The unprivileged identity the tests pack as when they run as root (numeric: no user of that
#: name needs to exist; 65534 is "nobody"/"nogroup" on Debian).
UNPRIVILEGED_IDS = (65534, 65534)


@pytest.fixture
def packing_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder for a tree that an unprivileged process packs. Not root: ``tmp_path`` (the packer is
    this user). Root: a fresh 0755 folder the packer can reach, wherever the checkout and pytest's
    0700 ``tmp_path`` live."""
    if os.geteuid() != 0:
        yield tmp_path
        return
    base = shared_tempdir("patchflow-unprivileged-")
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def create_unprivileged(root: Path, probe: Path) -> dict[str, Any]:
    """Run ``create_patch`` on ``root`` in a forked child without root's powers: as root the child
    drops to :data:`UNPRIVILEGED_IDS` (no supplementary groups), otherwise it keeps this user. The
    child needs no import (patchflow is loaded already), so where the checkout lives does not
    matter. Returns what the child saw: ``uid``, whether ``probe`` was readable to it, ``outcome``
    ("created", "refused" or "crashed"), ``message`` and ``hint``."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        result: dict[str, Any] = {"outcome": "crashed", "message": "", "hint": ""}
        try:
            os.close(read_end)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(UNPRIVILEGED_IDS[1])
                os.setuid(UNPRIVILEGED_IDS[0])
            os.environ["HOME"] = "/nonexistent"
            result["uid"] = os.geteuid()
            result["probe_readable"] = os.access(probe, os.R_OK)
            try:
                create_patch(load_settings(root, environ={}))
                result["outcome"] = "created"
            except CreatePatchError as exc:
                result.update(outcome="refused", message=exc.message, hint=exc.hint)
        except BaseException as exc:
            result["message"] = f"{type(exc).__name__}: {exc}"
        finally:
            try:
                with os.fdopen(write_end, "w", encoding="utf-8") as out:
                    json.dump(result, out)
            finally:
                os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, encoding="utf-8") as answer:
        data = answer.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"packing child died: status {status}"
    return dict(json.loads(data))


@pytest.mark.parametrize(("rel", "kind"), [("config/secret.json", "file"), ("private", "dir")])
def test_unreadable_entry_is_refused_for_a_non_root_user(packing_dir: Path, rel: str, kind: str) -> None:
    root = make_tree(packing_dir / "project", {"VERSION": "1.4.0\n", "src/index.js": "x\n"})
    blocked = root / rel
    if kind == "file":
        blocked.parent.mkdir()
        blocked.write_text("{}", encoding="utf-8")
    else:
        blocked.mkdir()
        (blocked / "inner.txt").write_text("x", encoding="utf-8")
    if os.geteuid() == 0:
        for path in [root, *root.rglob("*")]:
            os.chown(path, *UNPRIVILEGED_IDS)  # the packer owns its tree (whatever the umask)...
        os.chown(blocked, 0, 0)  # ...but not this entry
    blocked.chmod(0o000 if kind == "dir" or os.geteuid() != 0 else 0o600)

    seen = create_unprivileged(root, blocked)
    assert seen["outcome"] == "refused", seen
    assert seen["uid"] != 0 and seen["probe_readable"] is False, "the packer must not be able to read the entry"
    message = f"{seen['message']}\n{seen['hint']}"
    assert rel in message
    assert ("cannot read" if kind == "file" else "cannot list directory") in message
    assert "Permission denied" in message or "permission denied" in message
    assert "nothing was written" in message
    assert not (root / "patches").exists()

    # the same packer packs the tree once the entry is readable: the refusal was about that entry
    blocked.chmod(0o755 if kind == "dir" else 0o644)
    again = create_unprivileged(root, blocked)
    assert again["outcome"] == "created", again
    assert (root / "patches" / "v1.4.0" / "manifest.json").is_file()


STEP_LINE = r"(?P<name>[a-z]+) done in \d+\.\d s"
CREATE_STEP_NAMES = ["check", "scan", "pack", "write", "publish"]


def _step_lines(lines: list[str], indent: str = "") -> list[str]:
    """The step lines of ``lines`` checked in pairs (``-> name`` then ``   name done in N s``);
    returns the names in order."""
    import re

    names = []
    for first, second in zip(lines[0::2], lines[1::2], strict=True):
        assert first.startswith(f"{indent}-> "), first
        name = first.removeprefix(f"{indent}-> ")
        done = re.fullmatch(f"{indent}   {STEP_LINE}", second)
        assert done is not None and done["name"] == name, (first, second)
        names.append(name)
    return names


def test_create_patch_logs_each_step_like_apply(tree: Path) -> None:
    """create-patch is a step list run by the lifecycle's runner: one line as each step starts
    and one with its duration when it is done, in the order of CREATE_STEPS."""
    from patchflow.lifecycle.create import CREATE_STEPS

    lines: list[str] = []
    create(tree, log=lines.append)
    assert _step_lines(lines) == [s.name for s in CREATE_STEPS] == CREATE_STEP_NAMES


def test_a_failed_step_is_the_last_line_and_nothing_is_left(tree: Path) -> None:
    """The step that fails gets its ``->`` line and no ``done`` line; no step runs after it."""
    lines: list[str] = []
    (tree / "patches" / "v1.4.0").mkdir(parents=True)
    with pytest.raises(CreatePatchError, match="already exists"):
        create(tree, log=lines.append)
    assert lines == ["-> check"]
    assert sorted(p.name for p in (tree / "patches").iterdir()) == ["v1.4.0"]


def test_inv_create_patch_prints_the_step_lines(tree: Path) -> None:
    proc = _inv_create(tree, [], "--version", "1.4.0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout.splitlines()
    steps = [line for line in out if line.startswith(("  -> ", "     "))]
    assert _step_lines(steps, indent="  ") == CREATE_STEP_NAMES
    assert out.index(steps[-1]) < next(i for i, line in enumerate(out) if line.startswith("created patch v1.4.0"))


GITHUB_TOKEN = "ghp_1234567890abcdefghijklmnopqrstuvwxyz12"
NPM_TOKEN = "npm_abcdefghijklmnopqrstuvwxyz0123456789"
PRIVATE_KEY = "-----BEGIN PRIVATE KEY-----\\nMIIE\\n"


def test_secret_files_are_never_packed_and_secrets_inside_packed_files_are_named(tmp_path: Path) -> None:
    """Issue 25, fault 4: ``.pgpass``, ``.aws/credentials``, ``*.p8``, ``*.keystore``, ``.htpasswd`` are
    left out; a token inside a file the app needs (``config/production.json``, a service-account
    JSON, an ``.npmrc`` with an ``_authToken``) is packed but named in a warning with its line."""
    secrets = {
        ".pgpass": "db:5432:app:app:secret\n",
        ".aws/credentials": "[default]\naws_access_key_id = AKIAIOSFODNN7EXAMPLE\n",
        "keys/AuthKey_ABC123.p8": "-----BEGIN PRIVATE KEY-----\nMIGT\n-----END PRIVATE KEY-----\n",
        "android/release.keystore": "binary",
        "public/.htpasswd": "admin:$apr1$x$y\n",
        "config/production.json": '{\n  "name": "primeflow",\n  "githubToken": "' + GITHUB_TOKEN + '"\n}\n',
        "config/gcp-service-account.json": '{"type": "service_account", "private_key": "' + PRIVATE_KEY + '"}\n',
        ".npmrc": "auto-install-peers=true\n//registry.npmjs.org/:_authToken=" + NPM_TOKEN + "\n",
        "pnpm-lock.yaml": "lockfileVersion: '9.0'\n",
    }
    root = make_tree(tmp_path / "project", {**FILES, **secrets})
    created = create(root)
    with tarfile.open(created.archive) as archive:
        packed = {m.name.removeprefix("./") for m in archive.getmembers() if m.isfile()}
    for left_out in (
        ".pgpass",
        ".aws/credentials",
        "keys/AuthKey_ABC123.p8",
        "android/release.keystore",
        "public/.htpasswd",
    ):
        assert left_out not in packed, left_out
    assert {"config/production.json", ".npmrc", "config/gcp-service-account.json"} <= packed
    text = " ".join(created.warnings)
    assert "secrets inside files the patch carries" in text, created.warnings
    for finding in (
        ".npmrc:2 (NPM tokens)",
        "config/production.json:3 (GitHub Token)",
        "config/gcp-service-account.json:1 (Private Key)",
    ):
        assert finding in text, text
    assert "src/index.js" not in text and "pnpm-lock.yaml" not in text


def test_the_release_checklist_is_recorded_in_the_manifest_and_refuses_by_setting(tmp_path: Path) -> None:
    """Issue 23: PATCH_SYSTEM.md's "before creating a patch" (changelog section, one SemVer step from
    the newest patch, committed tree, preflight passed on it), each item recorded with its evidence;
    ``release_checks = refuse`` stops create-patch before it writes anything."""
    root = make_tree(tmp_path / "project")
    older = root / "patches" / "v1.3.0"
    older.mkdir(parents=True)
    (older / "manifest.json").write_text("{}")
    created = create(root)
    checklist = json.loads((created.folder / "manifest.json").read_text())["checklist"]
    assert checklist["changelog"]["ok"] is True and checklist["version"] == {"ok": True, "detail": "1.3.0 -> 1.4.0"}
    assert checklist["committed"]["ok"] is None and "not a git checkout" in checklist["committed"]["detail"]
    assert checklist["preflight"]["ok"] is False
    assert "release checklist: preflight: inv preflight has not passed on this checkout" in created.warnings

    (root / "VERSION").write_text("1.6.0\n")
    settings = load_settings(root, environ={"PATCHFLOW_RELEASE_CHECKS": "refuse"})
    with pytest.raises(CreatePatchError) as refused:
        create_patch(settings, now=NOW)
    text = refused.value.message
    assert "version: 1.4.0 -> 1.6.0 skips a version" in text and "changelog:" in text and "Nothing was written" in text
    assert not (root / "patches" / "v1.6.0").exists()
