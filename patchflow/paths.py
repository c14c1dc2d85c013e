"""Every path and file name patchflow reads or writes, derived in one place.

Layout (relative to the project root, the three folders configurable)::

    VERSION                                    the installed version (bytes of the patch)
    patches/v2.3.0/patch-v2.3.0.tar.gz, checksum.md5, SHA256SUMS[.sig], manifest.json,
                   README.md, CHANGELOG.md, schema.sql
    backups/pre-patch-v2.3.0_20250101T143022Z_<id>/
        files/ VERSION installed-manifest.json installed.json database.dump backup.json
        outputs/ displaced/
    .patchflow/journal.json history.jsonl apply.lock apply.lock.json sequence
               installed-manifest.json installed.json staging-v2.3.0/ logs/ run/
               verify-cache.json
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from patchflow.config import Settings
from patchflow.version import PatchVersion

VERSION_FILE = "VERSION"
VERSION_TEMP = ".VERSION.patchflow-tmp"
MANIFEST = "manifest.json"
MD5SUMS = "checksum.md5"
SHA256SUMS = "SHA256SUMS"
SIGNATURE = "SHA256SUMS.sig"
PATCH_README = "README.md"
PATCH_CHANGELOG = "CHANGELOG.md"
SCHEMA_SQL = "schema.sql"
BACKUP_PREFIX = "pre-patch-"
BACKUP_JSON = "backup.json"
BACKUP_FILES = "files"
BACKUP_OUTPUTS = "outputs"
BACKUP_DISPLACED = "displaced"
DUMP_FILE = "database.dump"
INSTALLED_MANIFEST = "installed-manifest.json"
INSTALLED_RECORD = "installed.json"
OPERATION_LOG = "patchflow.log"


def archive_name(version: PatchVersion) -> str:
    """The archive file name of a patch: ``patch-v2.3.0.tar.gz``."""
    return f"patch-{version.tag}.tar.gz"


@dataclass(frozen=True)
class BackupPaths:
    """The files of one backup folder."""

    folder: Path

    @property
    def record(self) -> Path:
        return self.folder / BACKUP_JSON

    @property
    def files(self) -> Path:
        return self.folder / BACKUP_FILES

    @property
    def outputs(self) -> Path:
        return self.folder / BACKUP_OUTPUTS

    @property
    def displaced(self) -> Path:
        return self.folder / BACKUP_DISPLACED

    @property
    def version_file(self) -> Path:
        return self.folder / VERSION_FILE

    @property
    def installed_manifest(self) -> Path:
        return self.folder / INSTALLED_MANIFEST

    @property
    def installed_record(self) -> Path:
        return self.folder / INSTALLED_RECORD

    @property
    def dump(self) -> Path:
        return self.folder / DUMP_FILE


@dataclass(frozen=True)
class ProjectPaths:
    """Paths of one project root; every other module asks this object instead of joining strings."""

    root: Path
    patches: Path
    backups: Path
    state: Path

    @classmethod
    def from_settings(cls, settings: Settings) -> ProjectPaths:
        """Derive the paths from ``settings.root`` and the ``*_dir`` settings."""
        root = settings.root
        return cls(
            root=root,
            patches=root / settings.patches_dir,
            backups=root / settings.backups_dir,
            state=root / settings.state_dir,
        )

    @property
    def version_file(self) -> Path:
        return self.root / VERSION_FILE

    @property
    def version_temp(self) -> Path:
        """Where ``VERSION`` is written before it is renamed into place."""
        return self.root / VERSION_TEMP

    @property
    def changelog(self) -> Path:
        """The project's changelog: ``PATCH_CHANGELOG.md`` when it exists, else ``CHANGELOG.md``."""
        patch_log = self.root / "PATCH_CHANGELOG.md"
        return patch_log if patch_log.is_file() else self.root / "CHANGELOG.md"

    @property
    def patchignore(self) -> Path:
        return self.root / ".patchignore"

    def patch_dir(self, version: PatchVersion) -> Path:
        return self.patches / version.tag

    def archive(self, version: PatchVersion) -> Path:
        return self.patch_dir(version) / archive_name(version)

    def backup(self, name: str) -> BackupPaths:
        """The files of backup folder ``name`` under ``backups/``."""
        return BackupPaths(self.backups / name)

    @property
    def journal(self) -> Path:
        return self.state / "journal.json"

    @property
    def history(self) -> Path:
        return self.state / "history.jsonl"

    @property
    def lock(self) -> Path:
        return self.state / "apply.lock"

    @property
    def lock_info(self) -> Path:
        return self.state / "apply.lock.json"

    @property
    def sequence(self) -> Path:
        """The counter that numbers backups (their order never depends on the clock)."""
        return self.state / "sequence"

    @property
    def installed_manifest(self) -> Path:
        """The manifest of the patch currently installed (copied at commit)."""
        return self.state / INSTALLED_MANIFEST

    @property
    def installed_record(self) -> Path:
        """What installed the current version: version, backup to roll it back, when, migrations."""
        return self.state / INSTALLED_RECORD

    @property
    def installed_stats(self) -> Path:
        """(size, mtime_ns, sha256) of the installed tree's files when last seen: the next plan
        hashes only files whose size or mtime changed."""
        return self.state / "installed-stats.json"

    @property
    def displaced_databases(self) -> Path:
        """The record of databases displaced by restores (kept, listed, pruned)."""
        return self.state / "displaced-databases.json"

    @property
    def group_window(self) -> Path:
        """The record of deploy's group window that stopped this host's services (cleared by the
        next apply's or rollback's commit, or start-services)."""
        return self.state / "group-window.json"

    @property
    def snapshots(self) -> Path:
        """The record of the database snapshots applies took on the database server (listed, pruned)."""
        return self.state / "snapshots.json"

    @property
    def space_reserve(self) -> Path:
        """Room held while a run holds the lock, given back when a state write finds the disk full."""
        return self.state / "space-reserve"

    @property
    def verify_cache(self) -> Path:
        """patch-status' cache of verification results, keyed by each patch folder's file stats."""
        return self.state / "verify-cache.json"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def operation_log(self) -> Path:
        """The log of every apply and rollback (steps, commands, errors), appended."""
        return self.logs / OPERATION_LOG

    @property
    def pids(self) -> Path:
        return self.state / "run"

    def staging(self, version: PatchVersion) -> Path:
        """The staging folder beside the tree (same filesystem, so the switch is a rename)."""
        return self.state / f"staging-{version.tag}"

    def trash(self, name: str) -> Path:
        """Where a folder is renamed before it is deleted (cleanup out of the stopped window)."""
        return self.state / f"trash-{name}"

    def excluded_roots(self) -> tuple[str, ...]:
        """Project-relative folders patchflow owns; never packed, never deleted by an apply."""
        out = []
        for folder in (self.patches, self.backups, self.state):
            try:
                out.append(folder.relative_to(self.root).as_posix())
            except ValueError:
                continue
        return tuple(out)
