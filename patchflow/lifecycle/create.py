"""create-patch's step list as data (CREATE_STEPS) and its run, which packs patches/vX.Y.Z/.

The steps: check, scan, pack, write, publish (:data:`CREATE_STEPS`), run by the lifecycle's runner
(:func:`patchflow.lifecycle.steps.run_forward`, which logs each step like apply's: ``-> pack``,
``   pack done in 1.2 s``).

The folder is built under a temporary name beside its final place and renamed into place only
when complete (publish), so a failure leaves nothing behind and a reader never sees half a patch.
``VERSION`` is read, never written: the patch's ``VERSION`` member always names the patch's
version, packed from bytes when the tree's file says another one (:mod:`patchflow.version_member`).

One pass: the tree is walked once (sizes, modes, links), every file is read once while it is
packed (its sha256 comes from that read), the archive is hashed (sha256 and md5) while it is
written, and ``manifest.json`` is written after the archive from those digests; the checksum
files are computed from the digests and the bytes written, never by reading files again.

**Delta patches** (``base=``): only the entries added or changed since the base patch's tree are
packed, and the manifest (format 2) lists only those, the deleted paths and the sha256 of the
base's and the new whole tree (see :mod:`patchflow.delta`,
:mod:`patchflow.lifecycle.patch_manifest`), so a one-file delta is a few kilobytes whatever the
size of the tree. Its README lists the changes, not the tree; its ``schema.sql`` is written only
when it changes migrations. The base may itself be a delta: its tree is rebuilt through its own
base, each link verified.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from patchflow.archive.writer import ArchiveResult, build_archive
from patchflow.config import Settings
from patchflow.errors import CreatePatchError
from patchflow.lifecycle.patch_docs import changelog_text, readme_text, schema_sql
from patchflow.lifecycle.patch_manifest import (
    DeltaBase,
    GitRun,
    buffered,
    build_manifest,
    created_at,
    find_base,
    load_base,
    manifest_chunks,
)
from patchflow.lifecycle.steps import Step, StepSpec, bind, checked_specs, run_forward
from patchflow.manifest import Entry, ExcludeRules, Tree, TreeDiff, diff_trees, load_rules, scan_tree
from patchflow.migrations import Migration, find_migrations, migration_problems
from patchflow.paths import MANIFEST, MD5SUMS, SHA256SUMS, ProjectPaths
from patchflow.release_gate import enforce, release_checklist
from patchflow.secret_scan import find_secrets
from patchflow.txn_statements import create_warnings
from patchflow.version import PatchVersion, read_version_file
from patchflow.version_member import VersionMember, plan_version_member, use_version_member

ProgressFactory = Callable[[str, int], Callable[[int], None]]


def _quiet(line: str) -> None:
    return None


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
    version_note: str = ""  # one line when the VERSION member is not the tree's file as it is


def _discard(work: Path, made_dir: Path | None) -> None:
    shutil.rmtree(work, ignore_errors=True)
    if made_dir is not None:
        try:
            made_dir.rmdir()
        except OSError:
            pass


@dataclass
class CreateRun:
    """One create-patch: its inputs (see :func:`create_patch`), the state its steps fill in, and
    the step list bound to it (:meth:`steps`). ``log`` gets the step lines."""

    settings: Settings
    version: PatchVersion | None = None
    force: bool = False
    progress: ProgressFactory | None = None
    now: datetime | None = None
    base: PatchVersion | None = None
    log: Callable[[str], None] = _quiet
    paths: ProjectPaths | None = None
    final: Path | None = None
    delta_base: DeltaBase | None = None
    source: GitRun | None = None
    checklist_warnings: list[str] = field(default_factory=list)
    rules: ExcludeRules | None = None
    tree: Tree | None = None
    version_member: VersionMember | None = None
    contents: dict[str, bytes] = field(default_factory=dict)
    migrations: list[Migration] = field(default_factory=list)
    diff: TreeDiff | None = None
    packed: list[Entry] = field(default_factory=list)
    made_patches_dir: bool = False
    work: Path | None = None  # the temporary folder, once made (removed on failure)
    archive: Path | None = None
    result: ArchiveResult | None = None

    def steps(self) -> list[Step]:
        """The create-patch, in order (:data:`CREATE_STEPS` bound to this run)."""
        return bind(CREATE_STEPS, self)

    def _need(self) -> tuple[ProjectPaths, PatchVersion, Tree, Path]:
        assert self.paths is not None and self.version is not None and self.tree is not None
        assert self.work is not None, "the work folder is made by the pack step"
        return self.paths, self.version, self.tree, self.work

    # -- the steps ------------------------------------------------------------------------------
    def check(self) -> None:
        """The version (default: the VERSION file), the migration folders, the patch folder not
        there yet (or ``force``), a delta's base read and verified.

        Raises:
            VersionError: no version given and ``VERSION`` missing or invalid.
            CreatePatchError: a migration folder lacks its SQL, the folder exists, the base is bad.
        """
        paths = self.paths = ProjectPaths.from_settings(self.settings)
        if self.version is None:
            self.version = read_version_file(paths.version_file)
        problems = migration_problems(paths.root)
        if problems:
            raise CreatePatchError(
                f"Migration folders without a migration.sql: {'; '.join(problems)}.",
                "Rename the file to migration.sql (Prisma's layout) or remove the folder; nothing was written.",
            )
        self.final = paths.patch_dir(self.version)
        if self.final.exists() and not self.force:
            raise CreatePatchError(
                f"Patch folder {self.final} already exists.",
                "Pass --force to rebuild it, or choose another --version.",
            )
        if self.base is not None:
            self.delta_base = load_base(paths, self.settings, self.base, self.version)

    def scan(self) -> None:
        """Walk the tree once (sizes, modes, links; git asked meanwhile on a thread), plan the
        VERSION member, find the migrations; for a delta, hash the tree and diff it with the base."""
        assert self.paths is not None and self.version is not None
        root, settings = self.paths.root, self.settings
        self.source = GitRun(root, self.paths.excluded_roots())  # git runs while the tree is scanned and packed
        self.rules = load_rules(
            root, settings.exclude, self.paths.excluded_roots(), gitignore=settings.use_gitignore,
            host_paths=settings.host_paths,
        )  # fmt: skip
        tree = self.tree = scan_tree(root, self.rules, hash_files=False)
        self.version_member = plan_version_member(root, tree, self.version)
        self.contents = use_version_member(tree, self.version_member)
        self.migrations = find_migrations(root)
        if self.delta_base is not None:
            from patchflow.manifest import hash_tree

            hash_tree(root, tree, on_bytes=self.progress("hashing files", tree.total_bytes) if self.progress else None)
            self.diff = diff_trees(self.delta_base.entries, tree.entries)
            self.packed = [tree.entries[p] for p in sorted(self.diff.added + self.diff.changed)]
        else:
            self.packed = tree.sorted()

    def pack(self) -> None:
        """Make the temporary folder beside the final one and pack the archive into it (every
        packed file read once: its sha256 and size come from that read)."""
        assert self.paths is not None and self.version is not None and self.tree is not None
        paths, version = self.paths, self.version
        self.made_patches_dir = not paths.patches.exists()
        paths.patches.mkdir(parents=True, exist_ok=True)
        work = paths.patches / f".{version.tag}.tmp-{os.getpid()}"
        if work.exists():
            shutil.rmtree(work)
        work.mkdir()
        self.work = work
        self.archive = work / f"patch-{version.tag}.tar.gz"
        packing = self.progress("packing archive", sum(e.size for e in self.packed)) if self.progress else None
        self.result = build_archive(paths.root, self.packed, self.archive, packing, contents=self.contents)
        for entry in self.result.entries:
            self.tree.entries[entry.path] = entry  # sha256 and size from the packing read

    def write(self) -> None:
        """Write manifest.json (with the git source), CHANGELOG.md, schema.sql, README.md, the
        checksum files (from the digests of what was written) and the signature."""
        paths, version, tree, work = self._need()
        assert self.archive is not None and self.result is not None and self.rules is not None
        archive, result, delta_base = self.archive, self.result, self.delta_base
        summary: tuple[PatchVersion, TreeDiff] | None = None
        if delta_base is not None and self.diff is not None:
            summary = (delta_base.version, self.diff)
        elif (found := find_base(paths, version)) is not None:
            summary = (found[0], diff_trees(found[1], tree.entries))
        created = created_at(self.now, self.settings.source_date_epoch)
        manifest = build_manifest(
            paths, version, tree, self.rules.patterns, self.migrations, result, delta_base, summary, created
        )
        manifest["source"] = self.source.result() if self.source is not None else None
        changelog, changelog_note = changelog_text(paths.changelog, version)
        if self.settings.release_checks != "off":  # PATCH_SYSTEM.md's "before creating a patch"
            source = dict(manifest["source"]) if manifest["source"] else None
            checklist = release_checklist(paths.patches, paths.state, version, source, changelog_note)
            self.checklist_warnings = enforce(checklist, self.settings.release_checks)
            manifest["checklist"] = checklist
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

        write(MANIFEST, buffered(manifest_chunks(manifest)))
        write("CHANGELOG.md", changelog)
        schema_note = ""
        if delta_base is None or any(e.path.startswith("prisma/") for e in self.packed):
            write("schema.sql", schema_sql(paths.root, self.migrations))
        else:
            schema_note = f" The database schema is unchanged: see `schema.sql` of {delta_base.version.tag}."
        changes = None
        if summary is not None:
            changes = {"added": summary[1].added, "changed": summary[1].changed, "deleted": summary[1].deleted}
        readme = readme_text(
            version, tree, archive.name, result.sha256, result.md5, self.migrations, changes,
            delta=delta_base is not None,
        )  # fmt: skip
        if delta_base is not None:
            readme = readme.replace(
                "\n## Checksums\n",
                f"\nThis is a **delta patch** against {delta_base.version}: the archive holds only the "
                f"{len(self.packed)} entries added or changed since then. Apply it on an install at "
                f"{delta_base.version}.{schema_note}\n\n## Checksums\n",
                1,
            )
        if changelog_note:
            readme = readme.replace("\n## Checksums\n", f"\n**Changelog:** {changelog_note}\n\n## Checksums\n", 1)
        write("README.md", readme)
        write(MD5SUMS, "".join(f"{digests[n][0]}  {n}\n" for n in sorted(digests)))
        write(SHA256SUMS, "".join(f"{digests[n][1]}  {n}\n" for n in sorted(digests)))
        if self.settings.signing_key:
            from patchflow.signing import sign_file

            sign_file(
                work / SHA256SUMS,
                self.settings.signing_key,
                valid_days=self.settings.signature_days,
                retiring_key=self.settings.retiring_signing_key,
            )

    def publish(self) -> None:
        """Rename the complete folder into place (replacing the old one with ``force``).

        Raises:
            CreatePatchError: another run created the folder meanwhile (without ``force``).
        """
        paths, version, _, work = self._need()
        final = self.final
        assert final is not None
        if final.exists() and not self.force:
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

    # -- running it -----------------------------------------------------------------------------
    def execute(self) -> CreatedPatch:
        """Run the steps; on failure remove the temporary folder (and a patches/ folder this run
        made). Raises what :func:`create_patch` documents."""
        try:
            run_forward(self.steps(), None, log=self.log, faults=self.settings.faults)
        except OSError as exc:
            if self.work is None:
                raise
            assert self.paths is not None
            _discard(self.work, self.paths.patches if self.made_patches_dir else None)
            raise CreatePatchError(
                f"Cannot write the patch folder {self.final}: {exc}.", "Check disk space and permissions."
            ) from None
        except BaseException:
            if self.work is not None:
                assert self.paths is not None
                _discard(self.work, self.paths.patches if self.made_patches_dir else None)
            raise
        assert self.version is not None and self.final is not None and self.tree is not None
        assert self.archive is not None and self.result is not None and self.version_member is not None
        assert self.paths is not None
        # statements PostgreSQL refuses inside a transaction block, mixed with others in one migration
        warnings = (
            list(self.tree.warnings) + create_warnings(self.paths.root, self.migrations) + self.checklist_warnings
        )
        if self.tree.excluded_secrets:
            warnings.append(
                "secrets left out of the patch (never packed): " + ", ".join(self.tree.excluded_secrets[:20])
            )
        inside = find_secrets(self.paths.root, [e.path for e in self.tree.files()])
        if inside:
            more = f" (and {len(inside) - 20} more)" if len(inside) > 20 else ""
            warnings.append(
                "secrets inside files the patch carries (move them into .env, which never travels): "
                + ", ".join(inside[:20])
                + more
            )
        return CreatedPatch(
            version=self.version,
            folder=self.final,
            archive=self.final / self.archive.name,
            archive_sha256=self.result.sha256,
            archive_size=self.result.size,
            file_count=len(self.tree.files()),
            total_bytes=self.tree.total_bytes,
            migrations=self.migrations,
            warnings=warnings,
            base_version=self.delta_base.version if self.delta_base else None,
            members=len(self.packed),
            version_note=self.version_member.note,
        )


CREATE_STEPS: tuple[StepSpec, ...] = checked_specs(
    CreateRun,
    (
        StepSpec("check", "check"),
        StepSpec("scan", "scan"),
        StepSpec("pack", "pack"),
        StepSpec("write", "write"),
        StepSpec("publish", "publish"),
    ),
)
"""create-patch's steps in order, as data (nothing to undo: a failure removes the temporary folder)."""


def create_patch(
    settings: Settings,
    version: PatchVersion | None = None,
    *,
    force: bool = False,
    progress: ProgressFactory | None = None,
    now: datetime | None = None,
    base: PatchVersion | None = None,
    log: Callable[[str], None] = _quiet,
) -> CreatedPatch:
    """Build ``patches/vX.Y.Z/`` from the project tree at ``settings.root`` (:data:`CREATE_STEPS`).

    Args:
        settings: resolved settings (root, exclude patterns, folders, signing key).
        version: the patch version; default: the ``VERSION`` file. The file is never modified:
            when it names another (older) version, or is missing, the patch's ``VERSION`` member
            is packed as ``"<version>\\n"`` (see :mod:`patchflow.version_member`).
        force: replace an existing patch folder of that version.
        progress: ``progress(label, total_bytes)`` returns a callback fed with bytes done.
        now: creation time (UTC); default the ``source_date_epoch`` setting (``SOURCE_DATE_EPOCH``)
            if set, else the clock.
        base: build a delta patch against this version: ``patches/v<base>/`` must exist and
            verify; only entries added or changed since its manifest are packed (see the
            module docstring for the manifest's ``delta`` key).
        log: gets one line as each step starts (``-> scan``) and one when it is done, with its
            duration in seconds (``   scan done in 0.4 s``), as apply-patch's steps.

    Returns:
        A :class:`CreatedPatch`.

    Raises:
        VersionError: no version given and ``VERSION`` missing or invalid.
        CreatePatchError: the folder exists (without ``force``), a link leaves the tree, a file is
            unreadable, the folder cannot be written, ``VERSION`` names a newer version than
            ``version`` or is a folder, or the delta's base is missing, not older or does not
            verify. Nothing is left on disk in that case.
        ArchiveError: a file changed while it was being packed (nothing is left on disk).
    """
    run = CreateRun(settings, version, force=force, progress=progress, now=now, base=base, log=log)
    return run.execute()
