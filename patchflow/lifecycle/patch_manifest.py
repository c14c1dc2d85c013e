"""The manifest.json of a new patch: its shape, its text, the base patch of a delta, the git source.

:class:`PatchManifest` is what create-patch writes (format 1: the whole tree in ``files``; format
2, a delta: only the archive's members, with ``delta`` naming the base and both trees' sha256; see
:mod:`patchflow.delta`). :func:`patch_tree` rebuilds the whole tree of an existing patch (through
its bases when it is a delta), each link verified.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from patchflow import __version__
from patchflow.archive.writer import ArchiveResult
from patchflow.config import Settings
from patchflow.delta import DELTA_FORMAT, FULL_FORMAT, manifest_entries, rebuild_tree, tree_sha256
from patchflow.errors import CreatePatchError, PatchflowError
from patchflow.manifest import Entry, Tree, TreeDiff
from patchflow.migrations import Migration, MigrationJson
from patchflow.paths import MANIFEST, ProjectPaths
from patchflow.version import PatchVersion, parse_version


class GitSource(TypedDict):
    """Where a patch was built from (``source`` in its manifest): the checkout's commit and whether
    it had changes not committed."""

    commit: str
    dirty: bool


class ArchiveInfo(TypedDict):
    """``archive`` in a manifest: the archive's file name, sha256 (hex) and size (bytes)."""

    name: str
    sha256: str
    size: int


class DeltaInfo(TypedDict):
    """``delta`` in the manifest of a delta patch (format 2)."""

    base_version: str
    base_manifest_sha256: str
    base_tree_sha256: str
    tree_sha256: str


class PatchManifest(TypedDict):
    """manifest.json as create-patch writes it (``files`` holds :class:`Entry` objects until it is
    written as JSON by :func:`manifest_chunks`)."""

    format: int
    version: str
    base_version: str | None
    created_at: str
    source: GitSource | None
    tool: dict[str, str]
    archive: ArchiveInfo
    exclude: list[str]
    file_count: int
    total_bytes: int
    files: list[Entry]
    deleted: list[str]
    migrations: list[MigrationJson]
    delta: NotRequired[DeltaInfo]
    checklist: NotRequired[dict[str, dict[str, Any]]]  # create-patch's release checklist (release_gate)


def git_commit(root: Path, ignore: tuple[str, ...] = ()) -> GitSource | None:
    """``{"commit": sha, "dirty": bool}`` of the git checkout at ``root``, or None if not a checkout.

    ``ignore``: root-relative folders left out of the dirty check (patchflow's own ``patches/``,
    ``backups/``, ``.patchflow/``, which create-patch itself writes to).
    """
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=False, timeout=30
        )
        if head.returncode != 0:
            return None
        excludes = [f":(exclude){folder}" for folder in ignore]
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", ".", *excludes],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def find_base(paths: ProjectPaths, version: PatchVersion) -> tuple[PatchVersion, dict[str, Entry]] | None:
    """The newest earlier patch in ``patches/`` whose whole tree can be read (for the summary of
    changes in a full patch's README and ``deleted``); not verified, None when there is none."""
    if not paths.patches.is_dir():
        return None
    candidates: list[PatchVersion] = []
    for child in paths.patches.iterdir():
        if not child.name.startswith("v") or not (child / MANIFEST).is_file():
            continue
        try:
            candidate = parse_version(child.name)
        except PatchflowError:
            continue
        if candidate < version:
            candidates.append(candidate)
    if not candidates:
        return None
    best = max(candidates)
    try:
        return best, patch_tree(paths, best, verify_key=None)[0]
    except CreatePatchError:
        return None


class GitRun:
    """:func:`git_commit` of ``root`` on a thread (it can take a while on a large checkout)."""

    def __init__(self, root: Path, ignore: tuple[str, ...]) -> None:
        self._value: GitSource | None = None
        self._thread = threading.Thread(target=self._run, args=(root, ignore), name="patchflow-git", daemon=True)
        self._thread.start()

    def _run(self, root: Path, ignore: tuple[str, ...]) -> None:
        self._value = git_commit(root, ignore)

    def result(self) -> GitSource | None:
        self._thread.join()
        return self._value


@dataclass(frozen=True)
class DeltaBase:
    """The base patch of a delta: its version, whole tree and the sha256 of its manifest bytes."""

    version: PatchVersion
    entries: dict[str, Entry]
    manifest_sha256: str


def patch_tree(
    paths: ProjectPaths, version: PatchVersion, *, verify_key: str | None, via: tuple[PatchVersion, ...] = ()
) -> tuple[dict[str, Entry], str]:
    """The whole tree of the patch ``patches/v<version>/`` and the sha256 of its manifest bytes. A
    delta patch's tree is rebuilt through its base (recursively; each base is older, so the chain
    ends) and checked against its ``tree_sha256``.

    Args:
        verify_key: verify every patch of the chain (checksums, signature with this key if not
            empty, manifest) before trusting it; None reads the manifests without verifying.
        via: the deltas through which ``version`` was reached (named in errors).

    Raises:
        CreatePatchError: a patch of the chain is missing, does not verify or its tree does not
            hash as its manifest says.
    """
    from patchflow.verify import verify_patch_folder

    folder = paths.patch_dir(version)
    hint = f"A delta is built against {folder}/{MANIFEST}: copy or rebuild that patch first; nothing was written."
    reached = f" (reached through {' -> '.join(v.tag for v in (*via, version))})" if via else ""
    if verify_key is not None:
        report = verify_patch_folder(folder, version, verify_key=verify_key)
        if not report.ok:
            raise CreatePatchError(
                f"The base patch {version.tag}{reached} cannot be used: it is {report.state} "
                f"({'; '.join(report.problems[:5])}).",
                hint,
            )
    try:
        data = (folder / MANIFEST).read_bytes()
        manifest = json.loads(data.decode("utf-8"))
        entries = manifest_entries(manifest)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CreatePatchError(f"The base patch {version.tag}{reached} cannot be read: {exc}.", hint) from None
    if verify_key is not None and manifest != report.manifest:  # changed since it was verified
        raise CreatePatchError(
            f"{folder / MANIFEST} changed while it was being read.", "Run create-patch again; nothing was written."
        )
    delta = manifest.get("delta")
    if isinstance(delta, dict):
        try:
            below = parse_version(str(delta.get("base_version")))
        except PatchflowError:
            raise CreatePatchError(f"The base patch {version.tag}{reached} names an invalid base.", hint) from None
        if not below < version:
            raise CreatePatchError(
                f"The base patch {version.tag}{reached} names a base that is not older: {below}.", hint
            )
        base_entries, _ = patch_tree(paths, below, verify_key=verify_key, via=(*via, version))
        if tree_sha256(base_entries.values()) != delta.get("base_tree_sha256"):
            raise CreatePatchError(
                f"The base patch {version.tag}{reached} is a delta on {below}, but patches/{below.tag} is "
                f"another build of {below}.",
                hint,
            )
        try:
            entries = rebuild_tree(base_entries, entries.values(), manifest.get("deleted", []))
        except ValueError as exc:
            raise CreatePatchError(
                f"The base patch {version.tag}{reached} does not fit {below}: {exc}.", hint
            ) from None
        if tree_sha256(entries.values()) != delta.get("tree_sha256"):
            raise CreatePatchError(f"The base patch {version.tag}{reached} does not rebuild its own tree.", hint)
    return entries, hashlib.sha256(data).hexdigest()


def load_base(paths: ProjectPaths, settings: Settings, base: PatchVersion, version: PatchVersion) -> DeltaBase:
    """Read and verify (checksums, signature, manifest) the base patch of a delta and rebuild its
    whole tree (through its own base when it is a delta too).

    Raises:
        CreatePatchError: the base is not older than ``version``, missing, or does not verify.
    """
    if not base < version:
        raise CreatePatchError(
            f"The base {base} of a delta patch must be older than {version}.",
            "Pass --base with the version the installs are on now; nothing was written.",
        )
    entries, manifest_sha256 = patch_tree(paths, base, verify_key=settings.verify_key)
    return DeltaBase(base, entries, manifest_sha256)


def manifest_chunks(manifest: Mapping[str, object]) -> Iterator[str]:
    """``manifest`` as JSON text, in pieces: indented keys, and one compact entry per line in
    ``files`` (the same JSON as an indented dump, about half its size, written without holding it
    all in memory). ``files`` may hold :class:`Entry` objects or their JSON dicts."""
    keys = list(manifest)
    yield "{\n"
    for index, key in enumerate(keys):
        value = manifest[key]
        comma = "," if index < len(keys) - 1 else ""
        if key == "files" and isinstance(value, list) and value:
            yield f"  {json.dumps(key)}: [\n"
            last = len(value) - 1
            for number, item in enumerate(value):
                data = item.to_json() if isinstance(item, Entry) else item
                yield "    " + json.dumps(data, ensure_ascii=False) + (",\n" if number < last else "\n")
            yield f"  ]{comma}\n"
        else:
            text = json.dumps(value.to_json() if isinstance(value, Entry) else value, indent=2, ensure_ascii=False)
            yield f"  {json.dumps(key)}: {text.replace(chr(10), chr(10) + '  ')}{comma}\n"
    yield "}\n"


def manifest_text(manifest: Mapping[str, object]) -> str:
    """``manifest`` as JSON text (see :func:`manifest_chunks`)."""
    return "".join(manifest_chunks(manifest))


def buffered(pieces: Iterable[str], size: int = 1 << 20) -> Iterator[str]:
    """Join small pieces into chunks of about ``size`` characters."""
    batch: list[str] = []
    length = 0
    for piece in pieces:
        batch.append(piece)
        length += len(piece)
        if length >= size:
            yield "".join(batch)
            batch, length = [], 0
    if batch:
        yield "".join(batch)


def created_at(now: datetime | None, source_date_epoch: str) -> datetime:
    """A patch's creation time: ``now``; else the ``source_date_epoch`` setting (seconds since the
    epoch, ``SOURCE_DATE_EPOCH``) if set; else the clock (UTC)."""
    if now is not None:
        return now
    return datetime.fromtimestamp(int(source_date_epoch), UTC) if source_date_epoch else datetime.now(UTC)


def build_manifest(
    paths: ProjectPaths,
    version: PatchVersion,
    tree: Tree,
    patterns: tuple[str, ...],
    migrations: list[Migration],
    result: ArchiveResult,
    delta_base: DeltaBase | None,
    summary: tuple[PatchVersion, TreeDiff] | None,
    created: datetime,
) -> PatchManifest:
    """The manifest.json data; ``base_version``/``deleted`` describe ``summary``: the delta's base,
    or for a full patch the newest earlier patch in ``patches/``. A full patch lists the whole
    ``tree`` in ``files``; a delta (format 2) only the archive's members (:mod:`patchflow.delta`)."""
    base_version = str(summary[0]) if summary else None
    deleted = summary[1].deleted if summary else []
    manifest: PatchManifest = {
        "format": FULL_FORMAT,
        "version": str(version),
        "base_version": base_version,
        "created_at": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": None,  # filled in by create_patch (git ran while the tree was packed)
        "tool": {"name": "patchflow", "version": __version__},
        "archive": {"name": f"patch-{version.tag}.tar.gz", "sha256": result.sha256, "size": result.size},
        "exclude": list(patterns),
        "file_count": len(tree.files()),
        "total_bytes": tree.total_bytes,
        "files": tree.sorted(),  # Entry objects, turned into JSON as the manifest is written
        "deleted": deleted,
        "migrations": [m.to_json() for m in migrations],
    }
    if delta_base is not None:
        manifest["format"] = DELTA_FORMAT
        manifest["files"] = sorted(result.entries, key=lambda e: e.path)  # exactly the archive's members
        manifest["delta"] = {
            "base_version": str(delta_base.version),
            "base_manifest_sha256": delta_base.manifest_sha256,
            "base_tree_sha256": tree_sha256(delta_base.entries.values()),
            "tree_sha256": tree_sha256(tree.entries.values()),
        }
    return manifest
