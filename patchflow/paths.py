"""Every path patchflow reads or writes, derived in one place from the project root and settings.

Layout (relative to the project root, folders configurable)::

    patches/v2.3.0/patch-v2.3.0.tar.gz, checksum.md5, SHA256SUMS, manifest.json, ...
    backups/pre-patch-v2.3.0_20250101T143022Z_<id>/        (UTC timestamp + unique suffix)
    .patchflow/journal.json, history.jsonl, apply.lock, staging-v2.3.0/, logs/, verify-cache.json
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from patchflow.config import Settings
from patchflow.version import PatchVersion

ARCHIVE_TEMPLATE = "patch-{tag}.tar.gz"
MANIFEST = "manifest.json"
MD5SUMS = "checksum.md5"
SHA256SUMS = "SHA256SUMS"
SIGNATURE = "SHA256SUMS.sig"
BACKUP_PREFIX = "pre-patch-"


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
        return self.root / "VERSION"

    @property
    def changelog(self) -> Path:
        return self.root / "PATCH_CHANGELOG.md"

    @property
    def patchignore(self) -> Path:
        return self.root / ".patchignore"

    def patch_dir(self, version: PatchVersion) -> Path:
        return self.patches / version.tag

    def archive(self, version: PatchVersion) -> Path:
        return self.patch_dir(version) / ARCHIVE_TEMPLATE.format(tag=version.tag)

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
    def installed_manifest(self) -> Path:
        """The manifest of the patch currently installed (copied at commit)."""
        return self.state / "installed-manifest.json"

    @property
    def verify_cache(self) -> Path:
        """patch-status' cache of verification results, keyed by each patch folder's file stats."""
        return self.state / "verify-cache.json"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def pids(self) -> Path:
        return self.state / "run"

    def staging(self, version: PatchVersion) -> Path:
        """The staging folder beside the tree (same filesystem, so the switch is a rename)."""
        return self.state / f"staging-{version.tag}"

    def excluded_roots(self) -> tuple[str, ...]:
        """Project-relative folders patchflow owns; never packed, never deleted by an apply."""
        out = []
        for folder in (self.patches, self.backups, self.state):
            try:
                out.append(folder.relative_to(self.root).as_posix())
            except ValueError:
                continue
        return tuple(out)
