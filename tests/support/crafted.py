"""Hand-built patch folders (valid checksums, consistent manifest) for hostile-input tests."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from patchflow.archive.writer import build_archive
from patchflow.manifest import Entry, clean_mode


def craft_patch(
    patches: Path,
    version: str,
    files: dict[str, bytes],
    links: dict[str, str] | None = None,
    manifest_extra: dict[str, object] | None = None,
) -> Path:
    """Write ``patches/v<version>/`` holding exactly ``files`` and ``links`` (folders implied),
    with a manifest, checksum.md5 and SHA256SUMS that all agree. Returns the folder."""
    folder = patches / f"v{version}"
    source = patches / f".src-{version}"
    folder.mkdir(parents=True)
    entries: dict[str, Entry] = {}
    for rel, data in files.items():
        path = source / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        entries[rel] = Entry(rel, "file", mode=0o644, size=len(data), sha256=hashlib.sha256(data).hexdigest())
    for rel, target in (links or {}).items():
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, source / rel)
        entries[rel] = Entry(rel, "symlink", target=target)
    for rel in list(entries):
        parts = rel.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            parent = "/".join(parts[:depth])
            entries.setdefault(parent, Entry(parent, "dir", mode=clean_mode((source / parent).stat().st_mode)))
    archive = folder / f"patch-v{version}.tar.gz"
    build_archive(source, list(entries.values()), archive)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    manifest: dict[str, object] = {
        "format": 1,
        "version": version,
        "created_at": "2025-01-01T00:00:00Z",
        "archive": {"name": archive.name, "sha256": digest, "size": archive.stat().st_size},
        "exclude": [],
        "files": [e.to_json() for _, e in sorted(entries.items())],
        "deleted": [],
        "migrations": [],
    }
    manifest.update(manifest_extra or {})
    (folder / "manifest.json").write_text(json.dumps(manifest))
    regenerate_sums(folder)
    import shutil

    shutil.rmtree(source)
    return folder


def bare_install(root: Path, version: str = "1.0.0", files: dict[str, bytes] | None = None) -> Path:
    """A minimal install (no services, no database) at ``version`` with ``files``."""
    root.mkdir(parents=True)
    (root / "VERSION").write_text(f"{version}\n")
    (root / ".env").write_text("PATCHFLOW_SERVICE_MANAGER=none\nPATCHFLOW_DATABASE_MODE=none\nSECRET=keep-me\n")
    for rel, data in (files or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def regenerate_sums(folder: Path) -> None:
    """Rewrite ``checksum.md5`` and ``SHA256SUMS`` of a patch folder to match its files as they
    are now, the way create-patch writes them (what someone who edits a patch by hand, or a
    careless copy script, does: only the manifest and signature checks remain)."""

    def digest(name: str, algorithm: str) -> str:
        return hashlib.new(algorithm, (folder / name).read_bytes()).hexdigest()

    payload = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name not in ("checksum.md5", "SHA256SUMS"))
    (folder / "checksum.md5").write_text("".join(f"{digest(n, 'md5')}  {n}\n" for n in payload))
    covered = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != "SHA256SUMS")
    (folder / "SHA256SUMS").write_text("".join(f"{digest(n, 'sha256')}  {n}\n" for n in covered))
