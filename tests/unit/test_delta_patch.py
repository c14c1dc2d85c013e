"""Delta patches (create-patch --base) and the shallow vs deep verification, on real trees."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support.crafted import regenerate_sums

from patchflow.archive.extract import extract_archive
from patchflow.config import load_settings
from patchflow.delta import tree_sha256
from patchflow.errors import CreatePatchError, VerifyError
from patchflow.lifecycle.create import CreatedPatch, create_patch
from patchflow.manifest import Entry, load_rules, scan_tree
from patchflow.verify import verify_patch, verify_patch_folder
from patchflow.version import parse_version

NOW = datetime(2025, 1, 2, tzinfo=UTC)
PROTECTED = ("patches", "backups", ".patchflow")


def _module_text(seed: int) -> bytes:
    rng = random.Random(seed)
    return "".join(f"export const v{rng.randrange(10**6)} = {rng.randrange(10**9)};\n" for _ in range(300)).encode()


BASE = {
    "VERSION": b"1.0.0\n",
    "package.json": b'{"name": "primeflow"}\n',
    "src/index.js": b"console.log('1.0.0');\n",
    "src/gone.js": b"deleted in 1.1.0\n",
    "src/old/only.js": b"its folder goes too\n",
    "apps/api/server.js": b"require('http');\n" * 50,
    "scripts/start.sh": b"#!/bin/sh\n",
    **{f"src/lib/module{i}.js": _module_text(i) for i in range(200)},
}


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def create(root: Path, version: str, base: str | None = None, **kwargs: object) -> CreatedPatch:
    settings = load_settings(root, environ={})
    return create_patch(
        settings,
        parse_version(version),
        now=NOW,
        base=parse_version(base) if base else None,
        **kwargs,  # type: ignore[arg-type]
    )


def change_to_1_1_0(root: Path) -> None:
    (root / "VERSION").write_bytes(b"1.1.0\n")
    (root / "src/index.js").write_bytes(b"console.log('1.1.0');\n")
    (root / "src/gone.js").unlink()
    shutil.rmtree(root / "src/old")
    write_tree(root, {"src/new/feature.js": b"export const feature = true;\n"})
    os.chmod(root / "scripts/start.sh", 0o755)
    os.symlink("index.js", root / "src/current.js")


def tree_hash(entries: dict[str, Entry]) -> str:
    return hashlib.sha256(json.dumps([e.to_json() for _, e in sorted(entries.items())]).encode()).hexdigest()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = write_tree(tmp_path / "project", BASE)
    create(root, "1.0.0")
    change_to_1_1_0(root)
    return root


def test_delta_manifest_lists_only_the_changes_and_both_tree_hashes(project: Path) -> None:
    created = create(project, "1.1.0", base="1.0.0")
    manifest = json.loads((created.folder / "manifest.json").read_text(encoding="utf-8"))
    full = scan_tree(project, load_rules(project, (), PROTECTED))
    changed = ["VERSION", "scripts/start.sh", "src/current.js", "src/index.js", "src/new", "src/new/feature.js"]
    assert manifest["format"] == 2
    assert [f["path"] for f in manifest["files"]] == changed, "only what the archive holds"
    assert all(Entry.from_json(f) == full.entries[f["path"]] for f in manifest["files"])
    base_bytes = (project / "patches/v1.0.0/manifest.json").read_bytes()
    base_tree = {f["path"]: Entry.from_json(f) for f in json.loads(base_bytes)["files"]}
    assert manifest["delta"] == {
        "base_version": "1.0.0",
        "base_manifest_sha256": hashlib.sha256(base_bytes).hexdigest(),
        "base_tree_sha256": tree_sha256(base_tree.values()),
        "tree_sha256": tree_sha256(full.entries.values()),
    }
    assert manifest["file_count"] == len(full.files()) and manifest["total_bytes"] == full.total_bytes
    assert manifest["base_version"] == "1.0.0"
    assert manifest["deleted"] == ["src/gone.js", "src/old", "src/old/only.js"]
    listing = subprocess.run(
        ["tar", "-tzf", str(created.archive)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert sorted(name.rstrip("/") for name in listing) == changed
    assert created.base_version == parse_version("1.0.0") and created.members == 6
    readme = (created.folder / "README.md").read_text(encoding="utf-8")
    assert "delta patch" in readme and "## Files" not in readme and "- changed: 3" in readme
    assert not (created.folder / "schema.sql").exists() and "schema is unchanged" in readme
    assert subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=created.folder, capture_output=True).returncode == 0
    shallow = verify_patch(created.folder, parse_version("1.1.0"), deep=True)
    with pytest.raises(RuntimeError, match="must be expanded"):
        shallow.entries()


def _as_installed(tmp_path: Path, report_manifest: dict[str, object], name: str = "installed-manifest.json") -> Path:
    record = tmp_path / name
    record.write_text(json.dumps(report_manifest), encoding="utf-8")
    return record


def test_base_tree_plus_delta_members_equals_the_full_patch(project: Path, tmp_path: Path) -> None:
    delta = create(project, "1.1.0", base="1.0.0")
    full_root = tmp_path / "full"
    shutil.copytree(project, full_root, symlinks=True, ignore=shutil.ignore_patterns("patches"))
    full = create(full_root, "1.1.0")
    base_report = verify_patch(project / "patches/v1.0.0", parse_version("1.0.0"))
    delta_report = verify_patch(delta.folder, parse_version("1.1.0"), deep=True)
    full_report = verify_patch(full.folder, parse_version("1.1.0"), deep=True)
    delta_report.expand([tmp_path / "no-record.json", project / "patches/v1.0.0/manifest.json"])
    assert delta_report.entries() == full_report.entries()
    recorded = delta_report.tree_manifest()
    assert recorded["format"] == 1 and recorded["files"] == [
        e.to_json() for _, e in sorted(full_report.entries().items())
    ]
    assert recorded["applied_delta"]["members"] == sorted(delta_report.archive_entries())
    assert "delta" not in recorded, "a whole tree is a format-1 manifest"

    installed = tmp_path / "installed"  # the base version, as an install holds it
    extract_archive(project / "patches/v1.0.0/patch-v1.0.0.tar.gz", installed, base_report.entries())
    staged = tmp_path / "staged"
    extract_archive(delta.archive, staged, delta_report.archive_entries())
    for rel in sorted(delta_report.manifest["deleted"], key=lambda p: p.count("/"), reverse=True):
        path = installed / rel
        path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
    for rel in delta_report.archive_entries():
        source, target = staged / rel, installed / rel
        if source.is_dir() and not source.is_symlink():
            target.mkdir(exist_ok=True)
            os.chmod(target, source.stat().st_mode & 0o7777)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
    result = scan_tree(installed, load_rules(installed, (), PROTECTED))
    assert tree_hash(result.entries) == tree_hash(full_report.entries())
    assert tree_sha256(result.entries.values()) == delta_report.manifest["delta"]["tree_sha256"]

    full_size = full.archive.stat().st_size
    assert delta.archive.stat().st_size < full_size


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir())


def test_a_one_file_delta_is_under_one_percent_of_the_full_patch(tmp_path: Path) -> None:
    """The whole patch folder (archive, manifest, README, checksums, changelog), not only the archive."""
    root = write_tree(tmp_path / "project", BASE)
    create(root, "1.0.0")
    (root / "src/index.js").write_bytes(b"console.log('1.0.1');\n")
    (root / "VERSION").write_bytes(b"1.0.1\n")  # a release changes its VERSION too
    alone = tmp_path / "alone"
    shutil.copytree(root, alone, symlinks=True, ignore=shutil.ignore_patterns("patches"))
    delta = create(root, "1.0.1", base="1.0.0")
    full = create(alone, "1.0.1")
    assert delta.members == 2, "the one changed file and VERSION"
    assert delta.archive.stat().st_size < 0.01 * full.archive.stat().st_size
    assert _folder_bytes(delta.folder) < 0.01 * _folder_bytes(full.folder), (
        _folder_bytes(delta.folder),
        _folder_bytes(full.folder),
    )


def test_a_delta_on_a_delta_rebuilds_the_whole_chain(project: Path, tmp_path: Path) -> None:
    create(project, "1.1.0", base="1.0.0")
    (project / "VERSION").write_bytes(b"1.2.0\n")
    (project / "src/lib/module7.js").write_bytes(b"export const v = 7;\n")
    (project / "src/new/feature.js").unlink()
    second = create(project, "1.2.0", base="1.1.0")
    manifest = json.loads((second.folder / "manifest.json").read_text(encoding="utf-8"))
    assert [f["path"] for f in manifest["files"]] == ["VERSION", "src/lib/module7.js"]
    assert manifest["deleted"] == ["src/new/feature.js"]
    full = scan_tree(project, load_rules(project, (), PROTECTED))
    assert manifest["delta"]["tree_sha256"] == tree_sha256(full.entries.values())

    # an install that got 1.1.0 as a delta records the whole tree, so 1.2.0 applies on it
    first = verify_patch(project / "patches/v1.1.0", parse_version("1.1.0"))
    first.expand([project / "patches/v1.0.0/manifest.json"])
    record = _as_installed(tmp_path, first.tree_manifest())
    report = verify_patch(second.folder, parse_version("1.2.0"))
    report.expand([record])
    assert report.entries() == full.entries
    # a record already holding the new tree (an apply killed after its commit wrote it) is the tree
    again = verify_patch(second.folder, parse_version("1.2.0"))
    again.expand([_as_installed(tmp_path, report.tree_manifest(), "after.json")])
    assert again.entries() == full.entries


def test_a_delta_refuses_a_tree_that_is_not_its_base(project: Path, tmp_path: Path) -> None:
    delta = create(project, "1.1.0", base="1.0.0")
    base_manifest = json.loads((project / "patches/v1.0.0/manifest.json").read_text(encoding="utf-8"))
    other_build = dict(base_manifest)
    other_build["files"] = [f for f in base_manifest["files"] if f["path"] != "src/gone.js"]
    version = parse_version("1.1.0")
    for records, why in (
        ([], "has no record of its tree"),
        ([tmp_path / "missing.json"], "has no record of its tree"),
        ([_as_installed(tmp_path, other_build)], "holds 1.0.0 (tree sha256"),
        ([_as_installed(tmp_path, {"files": "not a list"}, "broken.json")], "broken.json cannot be read"),
    ):
        report = verify_patch(delta.folder, version)
        with pytest.raises(VerifyError, match="is not known to be that one") as caught:
            report.expand(records)
        assert why in caught.value.message and "Apply the full patch of 1.1.0" in caught.value.hint
        assert report.tree is None


def test_a_delta_whose_tree_hash_was_edited_refuses_to_rebuild(project: Path) -> None:
    """A consistent folder (checksums regenerated) whose manifest was edited: the shallow verify
    passes, the rebuild against the base refuses."""
    created = create(project, "1.1.0", base="1.0.0")
    manifest_path = created.folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["deleted"] = manifest["deleted"][1:]  # src/gone.js would stay on the install
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    regenerate_sums(created.folder)
    report = verify_patch(created.folder, parse_version("1.1.0"))
    with pytest.raises(VerifyError, match="does not rebuild its own tree"):
        report.expand([project / "patches/v1.0.0/manifest.json"])


def test_a_delta_that_deletes_what_its_base_does_not_have_refuses_to_rebuild(project: Path) -> None:
    """The tree hash cannot vouch for a delete of a path outside the base (the host's own file)."""
    created = create(project, "1.1.0", base="1.0.0")
    manifest_path = created.folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["deleted"].append("storage/user-upload.bin")
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    regenerate_sums(created.folder)
    report = verify_patch(created.folder, parse_version("1.1.0"))
    with pytest.raises(VerifyError, match=r"deletes paths its base does not have: storage/user-upload\.bin"):
        report.expand([project / "patches/v1.0.0/manifest.json"])
    (project / "VERSION").write_bytes(b"1.2.0\n")
    with pytest.raises(CreatePatchError, match=r"v1\.1\.0 does not fit 1\.0\.0: it deletes paths"):
        create(project, "1.2.0", base="1.1.0")


def test_a_missing_link_of_a_chain_is_named_with_the_chain(project: Path) -> None:
    create(project, "1.1.0", base="1.0.0")
    (project / "VERSION").write_bytes(b"1.2.0\n")
    create(project, "1.2.0", base="1.1.0")
    shutil.rmtree(project / "patches/v1.0.0")
    (project / "VERSION").write_bytes(b"1.3.0\n")
    with pytest.raises(CreatePatchError) as caught:
        create(project, "1.3.0", base="1.2.0")
    assert "v1.0.0 (reached through v1.2.0 -> v1.1.0 -> v1.0.0) cannot be used" in caught.value.message
    assert not (project / "patches/v1.3.0").exists()


def test_a_delta_on_another_build_of_its_base_is_not_created(project: Path, tmp_path: Path) -> None:
    create(project, "1.1.0", base="1.0.0")
    (project / "VERSION").write_bytes(b"1.0.0\n")
    (project / "src/index.js").write_bytes(b"console.log('another 1.0.0');\n")
    create(project, "1.0.0", force=True)  # 1.0.0 rebuilt: patches/v1.1.0 no longer fits it
    (project / "VERSION").write_bytes(b"1.2.0\n")
    with pytest.raises(CreatePatchError, match=r"is a delta on 1\.0\.0, but patches/v1\.0\.0 is another build"):
        create(project, "1.2.0", base="1.1.0")
    assert not (project / "patches/v1.2.0").exists()


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (lambda m: m["delta"].pop("tree_sha256"), "'delta' must hold"),
        (lambda m: m["delta"].update(base_tree_sha256="xyz"), "'delta' must hold"),
        (lambda m: m["deleted"].append(m["files"][0]["path"]), "both changed and deleted"),
        (lambda m: m["files"].append(dict(m["files"][0])), "listed twice"),
        (lambda m: m.update(format=3), "made by a newer patchflow"),
        (lambda m: m.update(format=1), "a delta patch has format 2"),
        (lambda m: m.pop("delta"), "a delta patch has format 2"),
    ],
    ids=["no-tree-hash", "bad-hash", "changed-and-deleted", "twice", "newer-format", "format-1-delta", "no-delta"],
)
def test_a_malformed_delta_manifest_is_corrupt(project: Path, edit: object, why: str) -> None:
    created = create(project, "1.1.0", base="1.0.0")
    manifest_path = created.folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    edit(manifest)  # type: ignore[operator]
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    regenerate_sums(created.folder)
    report = verify_patch_folder(created.folder, parse_version("1.1.0"))
    assert report.state == "corrupt" and "not a valid manifest" in report.problems[0], report.problems
    assert why in report.problems[0], report.problems


def test_a_delta_that_changes_a_migration_folder_mode_verifies(project: Path) -> None:
    write_tree(project, {"prisma/migrations/20250101000000_init/migration.sql": b"CREATE TABLE t (id int);\n"})
    (project / "VERSION").write_bytes(b"1.0.5\n")
    create(project, "1.0.5")
    os.chmod(project / "prisma/migrations/20250101000000_init", 0o700)
    (project / "VERSION").write_bytes(b"1.0.6\n")
    delta = create(project, "1.0.6", base="1.0.5")
    manifest = json.loads((delta.folder / "manifest.json").read_text(encoding="utf-8"))
    assert "prisma/migrations/20250101000000_init" in [f["path"] for f in manifest["files"]]
    assert "prisma/migrations/20250101000000_init/migration.sql" not in [f["path"] for f in manifest["files"]]
    assert verify_patch_folder(delta.folder, parse_version("1.0.6")).ok
    assert (delta.folder / "schema.sql").exists(), "a delta touching prisma/ carries the schema"


def test_delta_needs_a_verified_older_base(project: Path) -> None:
    with pytest.raises(CreatePatchError, match="must be older"):
        create(project, "1.1.0", base="1.2.0")
    with pytest.raises(CreatePatchError, match="cannot be used: it is incomplete"):
        create(project, "1.1.0", base="0.9.0")
    archive = project / "patches/v1.0.0/patch-v1.0.0.tar.gz"
    data = bytearray(archive.read_bytes())
    data[100] ^= 1
    archive.write_bytes(bytes(data))
    with pytest.raises(CreatePatchError, match="cannot be used: it is corrupt"):
        create(project, "1.1.0", base="1.0.0")
    assert not (project / "patches/v1.1.0").exists()
    assert sorted(p.name for p in (project / "patches").iterdir()) == ["v1.0.0"]


def test_shallow_verify_does_not_open_the_archive_deep_does(project: Path) -> None:
    """A consistent folder whose archive is not even gzip: checksums and manifest agree, so the
    shallow check passes; the deep check (and extraction) refuses it."""
    created = create(project, "1.1.0")
    created.archive.write_bytes(os.urandom(4096))
    manifest_path = created.folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["archive"]["sha256"] = hashlib.sha256(created.archive.read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    regenerate_sums(created.folder)
    version = parse_version("1.1.0")
    shallow = verify_patch(created.folder, version)
    assert shallow.ok and not shallow.deep
    with pytest.raises(VerifyError, match="not a gzip file"):
        verify_patch(created.folder, version, deep=True)


def test_shallow_verify_still_covers_every_file(project: Path) -> None:
    created = create(project, "1.1.0")
    version = parse_version("1.1.0")
    for name in ("README.md", "schema.sql", "CHANGELOG.md", "manifest.json", "checksum.md5"):
        path = created.folder / name
        original = path.read_bytes()
        path.write_bytes(original + b" ")
        report = verify_patch_folder(created.folder, version)
        assert not report.ok and any(name in problem for problem in report.problems), name
        path.write_bytes(original)
    assert verify_patch_folder(created.folder, version).ok


def test_the_git_commit_is_recorded_while_packing(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "project", {"VERSION": b"1.0.0\n", "src/a.js": b"a\n"})
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "init"]):
        subprocess.run(["git", "-C", str(root), *args], check=True, env=env, capture_output=True)
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    created = create(root, "1.0.0")
    manifest = json.loads((created.folder / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["source"] == {"commit": head, "dirty": False}, "patchflow's own patches/ is not a change"
    assert list(manifest)[:5] == ["format", "version", "base_version", "created_at", "source"]
    (root / "src/a.js").write_bytes(b"changed\n")
    (root / "VERSION").write_bytes(b"1.0.1\n")
    again = create(root, "1.0.1")
    assert json.loads((again.folder / "manifest.json").read_text(encoding="utf-8"))["source"]["dirty"] is True


def test_a_signed_delta_needs_every_link_of_its_chain_signed(tmp_path: Path) -> None:
    """With a verify key, the base of a delta is trusted only when its signature checks, at every
    link of a chain; the delta itself is signed like a full patch."""
    from patchflow.signing import generate_key

    key_file = tmp_path / "signing.key"
    verify_key = generate_key(key_file)
    root = write_tree(tmp_path / "project", BASE)
    environ = {"PATCHFLOW_SIGNING_KEY": str(key_file), "PATCHFLOW_VERIFY_KEY": verify_key}

    def signed(version: str, base: str | None = None) -> CreatedPatch:
        (root / "VERSION").write_bytes(f"{version}\n".encode())
        settings = load_settings(root, environ=environ)
        return create_patch(settings, parse_version(version), now=NOW, base=parse_version(base) if base else None)

    signed("1.0.0")
    (root / "src/index.js").write_bytes(b"console.log('1.1.0');\n")
    delta = signed("1.1.0", base="1.0.0")
    assert (delta.folder / "SHA256SUMS.sig").is_file()
    assert verify_patch(delta.folder, parse_version("1.1.0"), verify_key=verify_key).ok
    (root / "patches/v1.0.0/SHA256SUMS.sig").unlink()  # the chain's full patch loses its signature
    (root / "src/index.js").write_bytes(b"console.log('1.2.0');\n")
    with pytest.raises(CreatePatchError, match=r"v1\.0\.0 \(reached through v1\.1\.0 -> v1\.0\.0\) cannot be used"):
        signed("1.2.0", base="1.1.0")
    assert not (root / "patches/v1.2.0").exists()
