"""verify-patch: check a patch folder before anything trusts it.

The default (shallow) check reads every file of the folder ONCE (the archive's sha256 and md5
computed from the same read) and never decompresses the archive: the required files exist
(archive, ``checksum.md5``, ``SHA256SUMS``, ``manifest.json``); every line of ``checksum.md5``
(md5sum -c format) and ``SHA256SUMS`` (sha256sum -c format) matches; ``SHA256SUMS`` covers every
other file of the folder; with a verify key, ``SHA256SUMS.sig`` signs ``SHA256SUMS``; the
manifest is well formed, names this version and this archive, and its archive sha256 matches.

The deep check (``check_archive=True``, ``verify-patch --deep``) also reads the archive's members
and compares them with the manifest (type, sha256, size, mode, link target; for a delta patch the
``delta.members`` subset) and refuses unsafe members. An apply gets the same member-by-member
check from its one-pass extraction (:func:`patchflow.archive.extract.extract_archive`).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from patchflow.delta import DELTA_FORMAT, FULL_FORMAT, expand_delta, full_manifest, manifest_entries
from patchflow.digests import file_digests
from patchflow.errors import ArchiveError, VerifyError
from patchflow.manifest import Entry
from patchflow.paths import MANIFEST, MD5SUMS, SHA256SUMS, SIGNATURE
from patchflow.version import PatchVersion

State = Literal["ok", "corrupt", "incomplete"]
_SUM_LINE = re.compile(r"^(?P<digest>[0-9a-fA-F]+) [ *](?P<name>.+)$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_OCTAL = re.compile(r"^[0-7]{1,6}$")


@dataclass
class VerifyReport:
    """Outcome of a verification: ``state`` and the list of ``problems`` (empty when ok);
    ``deep`` tells whether the archive's members were compared too."""

    version: PatchVersion
    folder: Path
    state: State = "ok"
    problems: list[str] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)
    deep: bool = False
    tree: dict[str, Entry] | None = None  # a delta's whole tree, once expanded
    signed_by: str = ""  # the verify key (hex) whose signature was checked ("": none was)
    # (manifest, its files as entries): parsed once per manifest, read by every step of an apply
    _parsed: tuple[dict[str, Any], dict[str, Entry]] | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.state == "ok"

    def entries(self) -> dict[str, Entry]:
        """The whole tree the patch ends on, path -> :class:`Entry`: the manifest's files for a full
        patch; for a delta patch the tree :meth:`expand` rebuilt (RuntimeError before that)."""
        if self.delta is None:
            return self.archive_entries()
        if self.tree is None:
            raise RuntimeError(f"the delta patch {self.version} must be expanded against an install first")
        return self.tree

    @property
    def delta(self) -> dict[str, Any] | None:
        """The manifest's ``delta`` object (``base_version``, ``base_manifest_sha256``,
        ``base_tree_sha256``, ``tree_sha256``; see :mod:`patchflow.delta`) for a delta patch,
        None for a full patch."""
        value = self.manifest.get("delta")
        return value if isinstance(value, dict) else None

    def archive_entries(self) -> dict[str, Entry]:
        """The entries the archive holds (the manifest's files: the whole tree of a full patch, the
        added and changed entries of a delta). Pass this to :func:`patchflow.archive.extract.extract_archive`.
        Parsed once per manifest; callers must not change the mapping."""
        if self._parsed is None or self._parsed[0] is not self.manifest:
            self._parsed = (self.manifest, manifest_entries(self.manifest))
        return self._parsed[1]

    def expand(self, records: Sequence[Path]) -> None:
        """For a delta patch, rebuild the whole tree from the first of ``records`` (whole-tree
        manifests: the install's record, its backup's copy) that holds the base tree; nothing to do
        for a full patch.

        Raises:
            VerifyError: see :func:`patchflow.delta.expand_delta`.
        """
        if self.delta is not None and self.tree is None:
            self.tree = expand_delta(self.manifest, records)

    def tree_manifest(self) -> dict[str, Any]:
        """The manifest an install records after applying this patch: always a whole tree (a delta's
        rebuilt tree, see :func:`patchflow.delta.full_manifest`)."""
        if self.delta is None:
            return self.manifest
        return full_manifest(self.manifest, self.entries())

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


@dataclass
class _Sums:
    """The parsed lines of one checksum file: name -> expected hex digest."""

    name: str
    algorithm: str
    listed: dict[str, str] = field(default_factory=dict)


def _read_sums(folder: Path, sums_name: str, algorithm: str, length: int, report: VerifyReport) -> _Sums:
    sums = _Sums(sums_name, algorithm)
    try:
        text = (folder / sums_name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        report.problems.append(f"{sums_name} cannot be read ({exc})")
        return sums
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
        sums.listed[name] = match["digest"].lower()
    return sums


def _check_sums(folder: Path, sums: _Sums, digests: dict[str, dict[str, str]], report: VerifyReport) -> None:
    for name, expected in sums.listed.items():
        found = digests.get(name)
        if found is None:
            report.problems.append(f"{sums.name} lists {name}, which is missing")
        elif found[sums.algorithm] != expected:
            report.problems.append(f"{name}: {sums.algorithm} checksum mismatch ({sums.name})")


def _digest_files(folder: Path, wanted: dict[str, set[str]]) -> dict[str, dict[str, str]]:
    """Each file of ``wanted`` (name -> algorithms) read once; missing files are left out."""
    out: dict[str, dict[str, str]] = {}
    for name, algorithms in sorted(wanted.items()):
        target = folder / name
        if not target.is_file():
            continue
        try:
            out[name] = file_digests(target, sorted(algorithms))[0]
        except OSError:
            continue
    return out


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
        if item.get("type") not in ("file", "dir", "symlink"):
            raise ValueError(f"unknown entry type {item.get('type')!r}")
        mode = item.get("mode", "0")
        if not isinstance(mode, str | int) or not _OCTAL.match(str(mode)):
            raise ValueError(f"the mode of {item['path']!r} is not an octal number")
        if not isinstance(item.get("sha256", ""), str) or not isinstance(item.get("target", ""), str):
            raise ValueError(f"the sha256 and target of {item['path']!r} must be strings")
    paths = [item["path"] for item in manifest["files"]]
    if len(set(paths)) != len(paths):
        raise ValueError("a path is listed twice in 'files'")
    form = manifest.get("format", FULL_FORMAT)
    if form not in (FULL_FORMAT, DELTA_FORMAT) or isinstance(form, bool):
        raise ValueError(f"format {form!r} is not one this patchflow reads (1, 2): it was made by a newer patchflow")
    if (form == DELTA_FORMAT) != ("delta" in manifest):
        raise ValueError("a delta patch has format 2 and a 'delta' object; a full patch neither")
    if "delta" in manifest:
        delta = manifest["delta"]
        keys = ("base_manifest_sha256", "base_tree_sha256", "tree_sha256")
        if (
            not isinstance(delta, dict)
            or not isinstance(delta.get("base_version"), str)
            or not all(isinstance(delta.get(key), str) and _HEX64.match(delta[key]) for key in keys)
        ):
            raise ValueError(
                "'delta' must hold base_version and base_manifest_sha256, base_tree_sha256, tree_sha256 (sha256 hex)"
            )
        both = sorted(set(paths) & set(manifest.get("deleted", [])))
        if both:
            raise ValueError(f"paths both changed and deleted: {', '.join(both[:5])}")


def _load_manifest(path: Path) -> tuple[dict[str, Any] | None, str]:
    """The parsed, shape-checked manifest, or None and why not."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict):
            raise ValueError("not an object")
        _check_shapes(manifest)  # every entry as Entry.from_json needs it, without building them
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, str(exc)
    return manifest, ""


class _Background:
    """Run ``function(*args)`` on a thread; :meth:`result` joins it and returns (or raises)."""

    def __init__(self, function: Callable[..., dict[str, dict[str, str]]], *args: Any) -> None:
        self._value: dict[str, dict[str, str]] = {}
        self._error: BaseException | None = None

        def run() -> None:
            try:
                self._value = function(*args)
            except BaseException as exc:  # handed to result()
                self._error = exc

        self._thread = threading.Thread(target=run, name="patchflow-verify", daemon=True)
        self._thread.start()

    def result(self) -> dict[str, dict[str, str]]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def _migration_folder_problems(manifest: dict[str, Any]) -> list[str]:
    """Folders of ``prisma/migrations/`` in the manifest without a ``migration.sql`` (Prisma refuses
    them; skipping one silently would leave its tables missing). A delta lists only changed
    entries: a folder whose ``migration.sql`` it leaves as it is, is one of its ``migrations``."""
    paths = {str(item.get("path")): item.get("type") for item in manifest.get("files", []) if isinstance(item, dict)}
    if "delta" in manifest:
        paths |= {str(m.get("path")): "file" for m in manifest.get("migrations", []) if isinstance(m, dict)}
    prefix = "prisma/migrations/"
    folders = [p for p, kind in paths.items() if kind == "dir" and p.startswith(prefix) and "/" not in p[len(prefix) :]]
    return [f"migration folder {p}/ has no migration.sql" for p in sorted(folders) if f"{p}/migration.sql" not in paths]


def verify_patch_folder(
    folder: Path, version: PatchVersion, *, check_archive: bool = False, verify_key: str = ""
) -> VerifyReport:
    """Verify the patch folder ``folder`` of ``version``; never raises for a bad patch.

    Args:
        folder: ``patches/vX.Y.Z``.
        version: the version the folder must hold.
        check_archive: also read the archive's members and compare them with the manifest
            (deep; the default is shallow: checksums, signature and manifest, the archive's
            bytes hashed once, not decompressed).
        verify_key: Ed25519 verify key (hex or a file); ``SHA256SUMS.sig`` must then be a valid
            signature of ``SHA256SUMS``.

    Returns:
        A :class:`VerifyReport`: ``incomplete`` when the folder or a required file is missing,
        ``corrupt`` for any mismatch, ``ok`` otherwise.

    Raises:
        ConfigError: ``verify_key`` is malformed.
    """
    report = VerifyReport(version, folder, deep=check_archive)
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

    md5_sums = _read_sums(folder, MD5SUMS, "md5", 32, report)
    sha_sums = _read_sums(folder, SHA256SUMS, "sha256", 64, report)
    wanted: dict[str, set[str]] = {archive_name: {"sha256"}}
    for sums in (md5_sums, sha_sums):
        for name in sums.listed:
            wanted.setdefault(name, set()).add(sums.algorithm)
    # the archive (the big read) is hashed on a thread while this one reads the small files and
    # parses the manifest; every file is read once, whatever lists it
    archive_digests = _Background(_digest_files, folder, {archive_name: wanted.pop(archive_name)})
    digests = _digest_files(folder, wanted)
    manifest, manifest_error = _load_manifest(folder / MANIFEST)
    digests.update(archive_digests.result())
    _check_sums(folder, md5_sums, digests, report)
    if archive_name not in md5_sums.listed:
        report.problems.append(f"{MD5SUMS} does not list {archive_name}")
    _check_sums(folder, sha_sums, digests, report)
    present = {p.name for p in folder.iterdir() if p.is_file()} - {SHA256SUMS, SIGNATURE}
    for name in sorted(present - set(sha_sums.listed)):
        report.problems.append(f"{name} is not covered by {SHA256SUMS}")

    if verify_key:
        from patchflow.signing import check_signature

        try:
            report.signed_by = check_signature(folder / SHA256SUMS, verify_key)
        except VerifyError as exc:
            report.problems.append(exc.message)

    if manifest is None:
        report.problems.append(f"{MANIFEST} is not a valid manifest ({manifest_error})")
        report.state = "corrupt"
        return report
    report.manifest = manifest
    if report.manifest.get("version") != str(version):
        report.problems.append(f"{MANIFEST} is for version {report.manifest.get('version')!r}, not {version}")
    archive_meta = report.manifest.get("archive", {})
    if archive_meta.get("name") != archive_name:
        report.problems.append(f"{MANIFEST} names archive {archive_meta.get('name')!r}, not {archive_name}")
    elif archive_meta.get("sha256") != digests.get(archive_name, {}).get("sha256"):
        report.problems.append(f"{archive_name}: sha256 differs from {MANIFEST}")
    report.problems.extend(_migration_folder_problems(report.manifest))

    if check_archive and not report.problems:
        from patchflow.archive.reader import compare_members, read_members

        expected = report.archive_entries()
        try:
            members = read_members(folder / archive_name)
            report.problems.extend(compare_members(members, expected))
        except ArchiveError as exc:
            report.problems.append(exc.message)
    if report.problems:
        report.state = "corrupt"
    return report


def verify_patch(folder: Path, version: PatchVersion, *, verify_key: str = "", deep: bool = False) -> VerifyReport:
    """Verify (shallow by default, see :func:`verify_patch_folder`) and raise on any problem.

    Args:
        deep: also compare the archive's members with the manifest (``verify-patch --deep``).

    Raises:
        VerifyError: the patch is missing, incomplete or corrupt (message lists what is wrong).
    """
    if not folder.is_dir():
        known = sorted(p.name for p in folder.parent.iterdir() if p.is_dir()) if folder.parent.is_dir() else []
        raise VerifyError(
            f"Patch {version.tag} not found: {folder} does not exist.",
            f"Copy the patch folder there or build it with `inv create-patch --version {version}`"
            f"{'; patches here: ' + ', '.join(known) if known else ''}. Nothing was changed.",
        )
    report = verify_patch_folder(folder, version, check_archive=deep, verify_key=verify_key)
    report.raise_for_problems()
    return report
