"""create-patch: pack a project tree into ``patches/vX.Y.Z/`` (archive, checksums, manifest, docs).

The folder is built under a temporary name beside its final place and renamed into place only
when complete, so a failure leaves nothing behind and a reader never sees half a patch.
``VERSION`` is read, never written.

One pass: the tree is walked once (sizes, modes, links), every file is read once while it is
packed (its sha256 comes from that read), the archive is hashed (sha256 and md5) while it is
written, and ``manifest.json`` is written after the archive from those digests; the checksum
files are computed from the digests and the bytes written, never by reading files again.

**Delta patches** (``base=``): only the entries added or changed since the base patch's tree are
packed, and the manifest (format 2) lists only those, the deleted paths and the sha256 of the
base's and the new whole tree (see :mod:`patchflow.delta`), so a one-file delta is a few
kilobytes whatever the size of the tree. Its README lists the changes, not the tree; its
``schema.sql`` is written only when it changes migrations. The base may itself be a delta: its
tree is rebuilt through its own base, each link verified.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from patchflow import __version__
from patchflow.archive import ArchiveResult, build_archive
from patchflow.config import Settings
from patchflow.delta import DELTA_FORMAT, FULL_FORMAT, manifest_entries, rebuild_tree, tree_sha256
from patchflow.errors import CreatePatchError, PatchflowError
from patchflow.manifest import Entry, Tree, TreeDiff, diff_trees, load_rules, scan_tree
from patchflow.migrations import Migration, combined_sql, find_migrations, migration_problems
from patchflow.paths import MANIFEST, MD5SUMS, SHA256SUMS, ProjectPaths
from patchflow.version import PatchVersion, parse_version, read_version_file

ProgressFactory = Callable[[str, int], Callable[[int], None]]


@dataclass
class CreatedPatch:
    """The result of create-patch: the folder, the archive's sha256 and size (bytes), counts;
    ``base_version`` is set for a delta patch, whose archive holds ``members`` entries."""

    version: PatchVersion
    folder: Path
    archive: Path
    archive_sha256: str
    archive_size: int
    file_count: int
    total_bytes: int
    migrations: list[Migration]
    warnings: list[str] = field(default_factory=list)
    base_version: PatchVersion | None = None
    members: int = 0  # entries packed in the archive (all of them for a full patch)


def git_commit(root: Path, ignore: tuple[str, ...] = ()) -> dict[str, Any] | None:
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


_VERSION_HEADING = re.compile(
    r"^(?P<hashes>#{1,6})[ \t]+\[?(?:(?:vers[ãa]o|version|release)[ \t]+)?\[?v?"
    r"(?P<version>\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?)\]?(?=$|[\s\]:(—–-])",
    re.IGNORECASE,
)


def version_headings(text: str) -> list[tuple[int, int, str]]:
    """``(line index, heading level, version)`` of every heading that names a version:
    ``## 3.0.0``, ``## [3.0.0] - 2025-01-01``, ``## v3.0.0``, ``## Versão 3.0.0 - Título``, ``# 3.0.0``..."""
    found = []
    for index, line in enumerate(text.splitlines()):
        match = _VERSION_HEADING.match(line)
        if match:
            found.append((index, len(match["hashes"]), match["version"]))
    return found


def changelog_section(text: str, version: PatchVersion) -> str | None:
    """The section of a changelog for ``version`` (heading included), or None when there is none.

    Only headings at the level the file uses for versions count: the shallowest level at which a
    version heading appears (a roadmap list ``#### v3.1.0 - Futuro`` inside the 2.7.0 section is
    not the 3.1.0 section). The section ends at the next heading of that level or higher.
    """
    headings = version_headings(text)
    if not headings:
        return None
    level = min(h[1] for h in headings)
    lines = text.splitlines()
    for index, found_level, name in headings:
        if found_level != level or name != str(version):
            continue
        end = len(lines)
        for later in range(index + 1, len(lines)):
            stripped = lines[later].lstrip()
            hashes = len(stripped) - len(stripped.lstrip("#"))
            if stripped.startswith("#") and 0 < hashes <= level and stripped[hashes : hashes + 1] in (" ", "\t"):
                end = later
                break
        return "\n".join(lines[index:end]).strip() + "\n"
    return None


def changelog_text(path: Path, version: PatchVersion) -> tuple[str, str]:
    """``(CHANGELOG.md of the patch, a note for its README)`` from the project's changelog at ``path``:
    the version's section; when the file has none, a text saying so (never the whole file)."""
    if not path.is_file():
        return f"# {version.tag}\n\nNo changelog was provided.\n", "The project has no changelog."
    text = path.read_text(encoding="utf-8", errors="replace")
    section = changelog_section(text, version)
    if section is not None:
        return section, ""
    known = ", ".join(h[2] for h in version_headings(text)[:8]) or "none"
    note = f"{path.name} has no section for {version} (versions found: {known})."
    return f"# {version.tag}\n\n{note}\n", note


def _schema_sql(root: Path, migrations: list[Migration]) -> str:
    prisma = root / "node_modules" / ".bin" / "prisma"
    schema = root / "prisma" / "schema.prisma"
    if prisma.exists() and schema.exists():
        try:
            proc = subprocess.run(
                [str(prisma), "migrate", "diff", "--from-empty", "--to-schema-datamodel", str(schema), "--script"],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            if proc.returncode == 0 and proc.stdout.strip():
                return "-- schema.sql: prisma migrate diff --from-empty (generated by patchflow)\n" + proc.stdout
        except (OSError, subprocess.TimeoutExpired):
            pass
    return combined_sql(root, migrations)


def _find_base(paths: ProjectPaths, version: PatchVersion) -> tuple[PatchVersion, dict[str, Entry]] | None:
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


def _readme(
    version: PatchVersion,
    tree: Tree,
    archive_name: str,
    sha256: str,
    md5: str,
    migrations: list[Migration],
    changes: dict[str, list[str]] | None,
    *,
    delta: bool = False,
) -> str:
    """The patch folder's README.md: what it holds, its checksums, how to apply it, the changes
    since ``changes``' base and, for a full patch, the files (a delta lists only its changes)."""
    files = tree.files()
    lines = [
        f"# PrimeFlow patch {version.tag}",
        "",
        f"This folder holds patch {version} of PrimeFlow: {len(files)} files "
        f"({tree.total_bytes} bytes) packed in `{archive_name}`, and {len(migrations)} database migrations.",
        "",
        "## Checksums",
        "",
        f"- SHA-256 `{sha256}`",
        f"- MD5 `{md5}`",
        "",
        "Check them with `sha256sum -c SHA256SUMS` and `md5sum -c checksum.md5` in this folder,",
        f"or `inv verify-patch --version {version}` from the project root.",
        "",
        "## Apply and roll back",
        "",
        "```",
        f"make apply-patch VERSION={version}      # or: inv apply-patch --version {version}",
        f"make rollback-patch VERSION={version}   # restores code, database and VERSION",
        "```",
        "",
        "Apply verifies the checksums, backs up code and database, switches the files, runs the",
        "migrations, restarts the services, checks health, and rolls back by itself on failure.",
        "",
    ]
    if changes is not None:
        lines += ["## Changes since the previous patch", ""]
        for label in ("added", "changed", "deleted"):
            lines.append(f"- {label}: {len(changes[label])}")
            lines += [f"  - `{p}`" for p in changes[label][:50]]
            if len(changes[label]) > 50:
                lines.append(f"  - ... and {len(changes[label]) - 50} more (see manifest.json)")
        lines.append("")
    if migrations:
        lines += ["## Migrations", ""] + [f"- `{m.name}`" for m in migrations] + [""]
    if delta:
        return "\n".join(lines) + "\n"
    lines += ["## Files", ""] + [f"- `{e.path}` ({e.size} bytes, mode {e.mode:04o})" for e in files[:500]]
    if len(files) > 500:
        lines.append(f"- ... and {len(files) - 500} more (see manifest.json)")
    return "\n".join(lines) + "\n"


def _discard(work: Path, made_dir: Path | None) -> None:
    shutil.rmtree(work, ignore_errors=True)
    if made_dir is not None:
        try:
            made_dir.rmdir()
        except OSError:
            pass


class _Git:
    """:func:`git_commit` of ``root`` on a thread (it can take a while on a large checkout)."""

    def __init__(self, root: Path, ignore: tuple[str, ...]) -> None:
        self._value: dict[str, Any] | None = None
        self._thread = threading.Thread(target=self._run, args=(root, ignore), name="patchflow-git", daemon=True)
        self._thread.start()

    def _run(self, root: Path, ignore: tuple[str, ...]) -> None:
        self._value = git_commit(root, ignore)

    def result(self) -> dict[str, Any] | None:
        self._thread.join()
        return self._value


@dataclass(frozen=True)
class _Base:
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


def _load_base(paths: ProjectPaths, settings: Settings, base: PatchVersion, version: PatchVersion) -> _Base:
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
    return _Base(base, entries, manifest_sha256)


def manifest_chunks(manifest: dict[str, Any]) -> Iterator[str]:
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


def manifest_text(manifest: dict[str, Any]) -> str:
    """``manifest`` as JSON text (see :func:`manifest_chunks`)."""
    return "".join(manifest_chunks(manifest))


def _buffered(pieces: Iterable[str], size: int = 1 << 20) -> Iterator[str]:
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


def _created_at(now: datetime | None) -> datetime:
    if now is not None:
        return now
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    return datetime.fromtimestamp(int(epoch), UTC) if epoch.isdigit() else datetime.now(UTC)


def _check_version_file(paths: ProjectPaths, version: PatchVersion) -> None:
    """A patch never carries a ``VERSION`` naming another version (the install gets its bytes).

    Raises:
        CreatePatchError: ``VERSION`` exists and does not name ``version``.
    """
    if not paths.version_file.exists():
        return
    try:
        found = read_version_file(paths.version_file)
    except PatchflowError as exc:
        raise CreatePatchError(
            f"The tree's VERSION file cannot be read as a version: {exc.message}",
            f"Write {version} in it (the patch carries it); nothing was written.",
        ) from None
    if found != version:
        raise CreatePatchError(
            f"The tree's VERSION says {found}, but the patch is {version}: the install would get a VERSION "
            "naming another version.",
            f"Write {version} into VERSION (or run create-patch without --version); nothing was written.",
        )


def create_patch(
    settings: Settings,
    version: PatchVersion | None = None,
    *,
    force: bool = False,
    progress: ProgressFactory | None = None,
    now: datetime | None = None,
    base: PatchVersion | None = None,
) -> CreatedPatch:
    """Build ``patches/vX.Y.Z/`` from the project tree at ``settings.root``.

    Args:
        settings: resolved settings (root, exclude patterns, folders, signing key).
        version: the patch version; default: the ``VERSION`` file (which is never modified).
        force: replace an existing patch folder of that version.
        progress: ``progress(label, total_bytes)`` returns a callback fed with bytes done.
        now: creation time (UTC); default ``SOURCE_DATE_EPOCH`` if set, else the clock.
        base: build a delta patch against this version: ``patches/v<base>/`` must exist and
            verify; only entries added or changed since its manifest are packed (see the
            module docstring for the manifest's ``delta`` key).

    Returns:
        A :class:`CreatedPatch`.

    Raises:
        VersionError: no version given and ``VERSION`` missing or invalid.
        CreatePatchError: the folder exists (without ``force``), a link leaves the tree, a file is
            unreadable, the folder cannot be written, or the delta's base is missing, not older
            or does not verify. Nothing is left on disk in that case.
        ArchiveError: a file changed while it was being packed (nothing is left on disk).
    """
    paths = ProjectPaths.from_settings(settings)
    root = paths.root
    if version is None:
        version = read_version_file(paths.version_file)
    else:
        _check_version_file(paths, version)
    problems = migration_problems(root)
    if problems:
        raise CreatePatchError(
            f"Migration folders without a migration.sql: {'; '.join(problems)}.",
            "Rename the file to migration.sql (Prisma's layout) or remove the folder; nothing was written.",
        )
    final = paths.patch_dir(version)
    if final.exists() and not force:
        raise CreatePatchError(
            f"Patch folder {final} already exists.",
            "Pass --force to rebuild it, or choose another --version.",
        )
    delta_base = _load_base(paths, settings, base, version) if base is not None else None
    source = _Git(root, paths.excluded_roots())  # git runs while the tree is scanned and packed
    rules = load_rules(root, settings.exclude, paths.excluded_roots(), gitignore=settings.use_gitignore)
    tree = scan_tree(root, rules, hash_files=False)
    migrations = find_migrations(root)
    diff: TreeDiff | None = None
    if delta_base is not None:
        from patchflow.manifest import hash_tree

        hash_tree(root, tree, on_bytes=progress("hashing files", tree.total_bytes) if progress else None)
        diff = diff_trees(delta_base.entries, tree.entries)
        packed = [tree.entries[p] for p in sorted(diff.added + diff.changed)]
    else:
        packed = tree.sorted()

    made_patches_dir = not paths.patches.exists()
    paths.patches.mkdir(parents=True, exist_ok=True)
    work = paths.patches / f".{version.tag}.tmp-{os.getpid()}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    try:
        archive = work / f"patch-{version.tag}.tar.gz"
        pack_progress = progress("packing archive", sum(e.size for e in packed)) if progress else None
        result = build_archive(root, packed, archive, pack_progress)
        for entry in result.entries:
            tree.entries[entry.path] = entry  # sha256 and size from the packing read
        summary: tuple[PatchVersion, TreeDiff] | None = None
        if delta_base is not None and diff is not None:
            summary = (delta_base.version, diff)
        elif (found := _find_base(paths, version)) is not None:
            summary = (found[0], diff_trees(found[1], tree.entries))
        manifest = _manifest(paths, version, tree, rules.patterns, migrations, result, delta_base, summary, now)
        manifest["source"] = source.result()
        digests: dict[str, tuple[str, str]] = {archive.name: (result.md5, result.sha256)}

        def write(name: str, text: str | Iterable[str]) -> None:
            md5, sha256 = hashlib.md5(), hashlib.sha256()  # noqa: S324 - checksum.md5 is for the old workflow
            with open(work / name, "wb") as handle:
                for piece in [text] if isinstance(text, str) else text:
                    data = piece.encode("utf-8")
                    handle.write(data)
                    md5.update(data)
                    sha256.update(data)
            digests[name] = (md5.hexdigest(), sha256.hexdigest())

        write(MANIFEST, _buffered(manifest_chunks(manifest)))
        changelog, changelog_note = changelog_text(paths.changelog, version)
        write("CHANGELOG.md", changelog)
        schema_note = ""
        if delta_base is None or any(e.path.startswith("prisma/") for e in packed):
            write("schema.sql", _schema_sql(root, migrations))
        else:
            schema_note = f" The database schema is unchanged: see `schema.sql` of {delta_base.version.tag}."
        changes = None
        if summary is not None:
            changes = {"added": summary[1].added, "changed": summary[1].changed, "deleted": summary[1].deleted}
        readme = _readme(
            version, tree, archive.name, result.sha256, result.md5, migrations, changes, delta=delta_base is not None
        )
        if delta_base is not None:
            readme = readme.replace(
                "\n## Checksums\n",
                f"\nThis is a **delta patch** against {delta_base.version}: the archive holds only the {len(packed)} "
                f"entries added or changed since then. Apply it on an install at {delta_base.version}.{schema_note}\n\n"
                "## Checksums\n",
                1,
            )
        if changelog_note:
            readme = readme.replace("\n## Checksums\n", f"\n**Changelog:** {changelog_note}\n\n## Checksums\n", 1)
        write("README.md", readme)
        write(MD5SUMS, "".join(f"{digests[n][0]}  {n}\n" for n in sorted(digests)))
        write(SHA256SUMS, "".join(f"{digests[n][1]}  {n}\n" for n in sorted(digests)))
        if settings.signing_key:
            from patchflow.signing import sign_file

            sign_file(work / SHA256SUMS, settings.signing_key)
        if final.exists() and not force:
            # another create-patch of this version finished meanwhile: the first one wins
            raise CreatePatchError(
                f"Patch folder {final} was created by another run meanwhile.",
                "Pass --force to replace it; this run's output was discarded.",
            )
        if final.exists():
            old = paths.patches / f".{version.tag}.old-{os.getpid()}"
            final.rename(old)
            work.rename(final)
            shutil.rmtree(old)
        else:
            os.rename(work, final)  # fails if another run created a non-empty folder meanwhile
    except OSError as exc:
        _discard(work, paths.patches if made_patches_dir else None)
        raise CreatePatchError(
            f"Cannot write the patch folder {final}: {exc}.", "Check disk space and permissions."
        ) from None
    except BaseException:
        _discard(work, paths.patches if made_patches_dir else None)
        raise
    warnings = list(tree.warnings)
    if tree.excluded_secrets:
        warnings.append("secrets left out of the patch (never packed): " + ", ".join(tree.excluded_secrets[:20]))
    return CreatedPatch(
        version=version,
        folder=final,
        archive=final / archive.name,
        archive_sha256=result.sha256,
        archive_size=result.size,
        file_count=len(tree.files()),
        total_bytes=tree.total_bytes,
        migrations=migrations,
        warnings=warnings,
        base_version=delta_base.version if delta_base else None,
        members=len(packed),
    )


def _manifest(
    paths: ProjectPaths,
    version: PatchVersion,
    tree: Tree,
    patterns: tuple[str, ...],
    migrations: list[Migration],
    result: ArchiveResult,
    delta_base: _Base | None,
    summary: tuple[PatchVersion, TreeDiff] | None,
    now: datetime | None,
) -> dict[str, Any]:
    """The manifest.json data; ``base_version``/``deleted`` describe ``summary``: the delta's base,
    or for a full patch the newest earlier patch in ``patches/``. A full patch lists the whole
    ``tree`` in ``files``; a delta (format 2) only the archive's members (:mod:`patchflow.delta`)."""
    base_version = str(summary[0]) if summary else None
    deleted = summary[1].deleted if summary else []
    manifest: dict[str, Any] = {
        "format": FULL_FORMAT,
        "version": str(version),
        "base_version": base_version,
        "created_at": _created_at(now).strftime("%Y-%m-%dT%H:%M:%SZ"),
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
