"""verify-patch: check a patch folder before anything trusts it.

Checks, in order: the required files exist (archive, ``checksum.md5``, ``SHA256SUMS``,
``manifest.json``); every line of ``checksum.md5`` (md5sum -c format) and ``SHA256SUMS``
(sha256sum -c format) matches; ``SHA256SUMS`` covers every other file of the folder; the manifest
names this version and this archive; the archive's members equal the manifest exactly (type,
sha256, size, mode, link target) and none is unsafe.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from patchflow.archive import compare_members, read_members
from patchflow.errors import ArchiveError, VerifyError
from patchflow.manifest import Entry, file_digest
from patchflow.paths import MANIFEST, MD5SUMS, SHA256SUMS, SIGNATURE
from patchflow.signing import check_signature
from patchflow.version import PatchVersion

State = Literal["ok", "corrupt", "incomplete"]
_SUM_LINE = re.compile(r"^(?P<digest>[0-9a-fA-F]+) [ *](?P<name>.+)$")


@dataclass
class VerifyReport:
    """Outcome of a verification: ``state`` and the list of ``problems`` (empty when ok)."""

    version: PatchVersion
    folder: Path
    state: State = "ok"
    problems: list[str] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.state == "ok"

    def entries(self) -> dict[str, Entry]:
        """The manifest's files as path -> :class:`Entry`."""
        return {e["path"]: Entry.from_json(e) for e in self.manifest.get("files", [])}

    def raise_for_problems(self) -> None:
        """Raise :class:`VerifyError` listing the problems unless the patch is ok."""
        if self.ok:
            return
        listed = "; ".join(self.problems[:8])
        more = f" (and {len(self.problems) - 8} more)" if len(self.problems) > 8 else ""
        raise VerifyError(
            f"Patch {self.version.tag} in {self.folder} is {self.state}: {listed}{more}.",
            "Do not apply it: copy the patch folder again or rebuild it with create-patch. Nothing was changed.",
        )


def _check_sums(folder: Path, sums_name: str, algorithm: str, length: int, report: VerifyReport) -> set[str]:
    listed: set[str] = set()
    try:
        text = (folder / sums_name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        report.problems.append(f"{sums_name} cannot be read ({exc})")
        return listed
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = _SUM_LINE.match(line)
        if match is None or len(match["digest"]) != length:
            report.problems.append(f"{sums_name} line {number} is not in {algorithm}sum format")
            continue
        name = match["name"]
        if "/" in name or name in (".", ".."):
            report.problems.append(f"{sums_name} line {number} names a file outside the patch folder: {name!r}")
            continue
        listed.add(name)
        target = folder / name
        if not target.is_file():
            report.problems.append(f"{sums_name} lists {name}, which is missing")
        elif file_digest(target, algorithm)[0] != match["digest"].lower():
            report.problems.append(f"{name}: {algorithm} checksum mismatch ({sums_name})")
    return listed


def _check_shapes(manifest: dict[str, Any]) -> None:
    """Raise ValueError when a field of ``manifest`` has the wrong JSON type."""

    def list_of(key: str, kind: type, required: bool = False) -> None:
        value = manifest.get(key, None if required else [])
        if not isinstance(value, list) or not all(isinstance(item, kind) for item in value):
            raise ValueError(f"{key!r} must be a list of {kind.__name__}")

    if not isinstance(manifest.get("archive"), dict) or not isinstance(manifest.get("version"), str):
        raise ValueError("'archive' must be an object and 'version' a string")
    list_of("files", dict, required=True)
    list_of("migrations", dict)
    list_of("exclude", str)
    list_of("deleted", str)
    for item in manifest.get("migrations", []):
        if not isinstance(item.get("name"), str):
            raise ValueError("every migration needs a 'name' string")
    for item in manifest["files"]:
        if not isinstance(item.get("path"), str) or not isinstance(item.get("size", 0), int) or item.get("size", 0) < 0:
            raise ValueError("every file needs a 'path' string and a size >= 0")


def verify_patch_folder(
    folder: Path, version: PatchVersion, *, check_archive: bool = True, verify_key: str = ""
) -> VerifyReport:
    """Verify the patch folder ``folder`` of ``version``; never raises for a bad patch.

    Returns:
        A :class:`VerifyReport`: ``incomplete`` when the folder or a required file is missing,
        ``corrupt`` for any mismatch, ``ok`` otherwise. ``check_archive=False`` skips reading the
        archive members (checksums still cover the archive bytes). With ``verify_key`` (hex or a
        file) ``SHA256SUMS.sig`` must be a valid Ed25519 signature of ``SHA256SUMS``.

    Raises:
        ConfigError: ``verify_key`` is malformed.
    """
    report = VerifyReport(version, folder)
    archive_name = f"patch-{version.tag}.tar.gz"
    if not folder.is_dir():
        report.state = "incomplete"
        report.problems.append(f"the folder {folder} does not exist")
        return report
    missing = [n for n in (archive_name, MD5SUMS, SHA256SUMS, MANIFEST) if not (folder / n).is_file()]
    if missing:
        report.state = "incomplete"
        report.problems.extend(f"{n} is missing" for n in missing)
        return report

    listed_md5 = _check_sums(folder, MD5SUMS, "md5", 32, report)
    if archive_name not in listed_md5:
        report.problems.append(f"{MD5SUMS} does not list {archive_name}")
    listed_sha = _check_sums(folder, SHA256SUMS, "sha256", 64, report)
    present = {p.name for p in folder.iterdir() if p.is_file()} - {SHA256SUMS, SIGNATURE}
    for name in sorted(present - listed_sha):
        report.problems.append(f"{name} is not covered by {SHA256SUMS}")

    if verify_key:
        try:
            check_signature(folder / SHA256SUMS, verify_key)
        except VerifyError as exc:
            report.problems.append(exc.message)

    try:
        report.manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        if not isinstance(report.manifest, dict):
            raise ValueError("not an object")
        _check_shapes(report.manifest)
        entries = report.entries()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        report.manifest = {}
        report.problems.append(f"{MANIFEST} is not a valid manifest ({exc})")
        report.state = "corrupt"
        return report
    if report.manifest.get("version") != str(version):
        report.problems.append(f"{MANIFEST} is for version {report.manifest.get('version')!r}, not {version}")
    archive_meta = report.manifest.get("archive", {})
    if archive_meta.get("name") != archive_name:
        report.problems.append(f"{MANIFEST} names archive {archive_meta.get('name')!r}, not {archive_name}")
    elif archive_meta.get("sha256") != file_digest(folder / archive_name)[0]:
        report.problems.append(f"{archive_name}: sha256 differs from {MANIFEST}")

    if check_archive and not report.problems:
        try:
            members = read_members(folder / archive_name)
            report.problems.extend(compare_members(members, entries))
        except ArchiveError as exc:
            report.problems.append(exc.message)
    if report.problems:
        report.state = "corrupt"
    return report


def verify_patch(folder: Path, version: PatchVersion, *, verify_key: str = "") -> VerifyReport:
    """Verify and raise on any problem.

    Raises:
        VerifyError: the patch is incomplete or corrupt (message lists what is wrong).
    """
    if not folder.is_dir():
        known = sorted(p.name for p in folder.parent.iterdir() if p.is_dir()) if folder.parent.is_dir() else []
        raise VerifyError(
            f"Patch {version.tag} not found: {folder} does not exist.",
            f"Copy the patch folder there or build it with `inv create-patch --version {version}`"
            f"{'; patches here: ' + ', '.join(known) if known else ''}. Nothing was changed.",
        )
    report = verify_patch_folder(folder, version, verify_key=verify_key)
    report.raise_for_problems()
    return report
