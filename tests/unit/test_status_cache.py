"""patch-status' verification cache and recorded backup sizes; scan_tree's ``known`` cache;
one-read multi-digest hashing. Real files, no mocks."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from patchflow.backup import Backup
from patchflow.config import load_settings
from patchflow.digests import PARALLEL_DIGEST_MIN, file_digests
from patchflow.lifecycle.create import create_patch
from patchflow.manifest import load_rules, scan_tree
from patchflow.state_files import seal, unsealed
from patchflow.status import backup_size, collect_status
from patchflow.version import parse_version

PROTECTED = ("patches", "backups", ".patchflow")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "src").mkdir(parents=True)
    (root / "VERSION").write_text("1.0.0\n", encoding="utf-8")
    (root / "src/index.js").write_text("console.log(1);\n" * 100, encoding="utf-8")
    settings = load_settings(root, environ={})
    for version in ("1.0.0", "1.1.0"):
        (root / "VERSION").write_text(f"{version}\n", encoding="utf-8")
        create_patch(settings, parse_version(version), now=datetime(2025, 1, 2, tzinfo=UTC))
    return root


def status(root: Path, **kwargs: object) -> dict[str, dict[str, object]]:
    data = collect_status(load_settings(root, environ={}), **kwargs)  # type: ignore[arg-type]
    return {p["version"]: p for p in data["patches"]}


def test_status_caches_results_and_notices_a_changed_archive(project: Path) -> None:
    first = status(project)
    assert {v: p["state"] for v, p in first.items()} == {"1.0.0": "ok", "1.1.0": "ok"}
    cache_file = project / ".patchflow" / "verify-cache.json"
    cache = json.loads(cache_file.read_text(encoding="utf-8"))
    assert set(cache["patches"]) == {"v1.0.0", "v1.1.0"}

    # a cached result is used as long as the folder's files are unchanged (size, mtime, ctime, inode)
    cache["patches"]["v1.0.0"]["problems"] = ["from the cache"]
    cache_file.write_text(json.dumps(cache), encoding="utf-8")  # edited, not sealed: never trusted
    assert status(project)["1.0.0"]["problems"] == [], "a cache that fails its seal is verified again"
    cache = json.loads(cache_file.read_text(encoding="utf-8"))
    cache["patches"]["v1.0.0"]["problems"] = ["from the cache"]
    cache_file.write_text(json.dumps(seal(unsealed(cache))), encoding="utf-8")
    assert status(project)["1.0.0"]["problems"] == ["from the cache"]

    # same size, same inode, new content: the key changes and the patch is verified again
    archive = project / "patches/v1.0.0/patch-v1.0.0.tar.gz"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    with open(archive, "r+b") as handle:
        handle.write(bytes(data))
    again = status(project)["1.0.0"]
    assert again["state"] == "corrupt"
    assert any("checksum mismatch" in p for p in again["problems"])  # type: ignore[union-attr]
    data[len(data) // 2] ^= 0xFF
    with open(archive, "r+b") as handle:
        handle.write(bytes(data))
    assert status(project)["1.0.0"]["state"] == "ok"


def test_status_verify_runs_the_deep_check(project: Path) -> None:
    shallow = status(project)["1.1.0"]
    assert shallow["verified"] == "checksums"
    deep = status(project, verify_archives=True)["1.1.0"]
    assert deep["state"] == "ok" and deep["verified"] == "deep"
    assert status(project)["1.1.0"]["verified"] == "deep", "a deep result serves later shallow requests"


def test_a_removed_patch_leaves_the_cache(project: Path) -> None:
    status(project)
    import shutil

    shutil.rmtree(project / "patches/v1.0.0")
    assert set(status(project)) == {"1.1.0"}
    cache = json.loads((project / ".patchflow/verify-cache.json").read_text(encoding="utf-8"))
    assert set(cache["patches"]) == {"v1.1.0"}


def test_a_damaged_cache_file_is_ignored(project: Path) -> None:
    (project / ".patchflow").mkdir()
    (project / ".patchflow/verify-cache.json").write_text('{"format": 1, "patches": [', encoding="utf-8")
    assert {p["state"] for p in status(project).values()} == {"ok"}


def test_backup_size_uses_recorded_sizes_and_falls_back_to_a_walk(tmp_path: Path) -> None:
    folder = tmp_path / "pre-patch-v1.1.0_x"
    (folder / "files").mkdir(parents=True)
    (folder / "files/a.js").write_bytes(b"x" * 1000)
    (folder / "database.dump").write_bytes(b"d" * 5000)
    recorded = Backup(folder, {"files_bytes": 1000, "database": {"file": "database.dump", "size": 5000}})
    assert backup_size(recorded) == 6000
    (folder / "outputs/node_modules").mkdir(parents=True)
    (folder / "outputs/node_modules/x.js").write_bytes(b"n" * 300)
    assert backup_size(recorded) == 6300
    old_style = Backup(folder, {"database": None})
    assert backup_size(old_style) == old_style.size_bytes() == 6300


def test_scan_tree_reuses_known_hashes_when_size_and_mtime_match(tmp_path: Path) -> None:
    (tmp_path / "a.js").write_bytes(b"aaaa")
    (tmp_path / "b.js").write_bytes(b"bbbb")
    rules = load_rules(tmp_path, (), PROTECTED)
    first = scan_tree(tmp_path, rules)
    assert first.stats["a.js"] == (4, (tmp_path / "a.js").stat().st_mtime_ns)
    fake = "f" * 64
    known = {rel: (*first.stats[rel], fake) for rel in ("a.js", "b.js")}
    os.utime(tmp_path / "b.js", ns=(1_000_000_000, 1_000_000_000))  # same size, other mtime
    hashed: list[int] = []
    second = scan_tree(tmp_path, rules, known=known, on_bytes=hashed.append)
    assert second.entries["a.js"].sha256 == fake, "size and mtime match: the known hash is reused"
    assert second.entries["b.js"].sha256 == hashlib.sha256(b"bbbb").hexdigest()
    assert hashed == [4], "only b.js was read"
    (tmp_path / "a.js").write_bytes(b"aaaaa")  # another size
    assert scan_tree(tmp_path, rules, known=known).entries["a.js"].sha256 == hashlib.sha256(b"aaaaa").hexdigest()


@pytest.mark.parametrize("size", [0, 1000, PARALLEL_DIGEST_MIN - 1, PARALLEL_DIGEST_MIN + 3 * 1024 * 1024 + 5])
def test_file_digests_in_one_read(tmp_path: Path, size: int) -> None:
    path = tmp_path / "blob"
    data = os.urandom(size)
    path.write_bytes(data)
    seen: list[int] = []
    digests, length = file_digests(path, ("sha256", "md5"), on_bytes=seen.append)
    assert length == size == sum(seen)
    assert digests == {"sha256": hashlib.sha256(data).hexdigest(), "md5": hashlib.md5(data).hexdigest()}


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["tmp/", "*.bak", "build", "foo?", "cache-*", "*.min.js"],
        ["docs/*", "/root-only", "a/**/b", "tmp/", "*.bak", "src/**/*.snap", "**/secret-dir"],
    ],
)
def test_fast_name_globs_decide_like_pathspec(extra: list[str]) -> None:
    """The one-regex path for plain name globs gives exactly pathspec's answers (a negation that
    matches nothing turns the fast path off, so the reference is pathspec alone)."""
    import random

    from patchflow.manifest import DEFAULT_EXCLUDES, ExcludeRules

    fast = ExcludeRules([*DEFAULT_EXCLUDES, *extra], PROTECTED)
    reference = ExcludeRules([*DEFAULT_EXCLUDES, *extra, "!never-matches-anything"], PROTECTED)
    names = [
        "src", "node_modules", "dist", "a.log", "logs", "tmp", "x.js", ".git", "coverage", "build", "keep.md",
        "docs", "foo", "fooX", "x.bak", "a", "b", "cache-1", "app.min.js", "root-only", "secret-dir", "x.snap",
        ".next", "prisma", "migrations", "uploads", ".DS_Store", "dist.txt", "my.log.txt",
    ]  # fmt: skip
    rng = random.Random(3)
    for _ in range(3000):
        rel = "/".join(rng.choice(names) for _ in range(rng.randint(1, 5)))
        is_dir = rng.random() < 0.4
        assert fast.excluded(rel, is_dir) == reference.excluded(rel, is_dir), (rel, is_dir)
