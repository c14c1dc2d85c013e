"""The ``VERSION`` member of a patch: always the patch's own version.

An apply writes the patch's ``VERSION`` member into the install (or ``<version>\\n`` when the patch
has none), so a patch must never carry a ``VERSION`` naming another version. create-patch packs:

* the tree's ``VERSION`` file as it is (its exact bytes: ``v2.3.0``, CRLF, trailing spaces...) when
  it is a regular file naming the patch's version (the same text: build metadata counts);
* otherwise the bytes ``"<version>\\n"``, with the tree file's mode (0644 when there is none), and a
  one-line note saying so: the tree says another (older) version, as when
  ``make create-patch VERSION=2.3.0`` runs on a tree whose ``VERSION`` says 2.2.0; the tree has
  no ``VERSION``, or the exclude rules leave it out; the file is a symbolic link (an install's
  ``VERSION`` is a plain file); its content is not a version.

The working tree's file is never written. Refused, with nothing written: a ``VERSION`` naming a
*newer* version than the patch (a patch labelled 2.3.0 of a tree that says 2.4.0 is a typo or a
stale checkout), except a pre-release of the tree's release (``--version 2.4.0-rc.1`` on a tree
saying 2.4.0); and a ``VERSION`` that is a folder.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from patchflow.errors import CreatePatchError, PatchflowError
from patchflow.manifest import Entry, Tree, clean_mode
from patchflow.paths import VERSION_FILE
from patchflow.version import PatchVersion, read_version_file


@dataclass(frozen=True)
class VersionMember:
    """What create-patch packs as ``VERSION``: ``data`` None packs the tree's file as scanned;
    else ``entry`` (a file entry of ``data``, sha256 and size filled in) replaces the tree's entry
    and ``data`` is packed. ``note`` is one line for the output (empty when the file is packed as
    it is)."""

    data: bytes | None = None
    entry: Entry | None = None
    note: str = ""


def _older(version: PatchVersion, found: PatchVersion) -> bool:
    """True when ``version`` precedes ``found`` and is not a pre-release of ``found``'s release."""
    if not version < found:
        return False
    same_release = (version.major, version.minor, version.patch) == (found.major, found.minor, found.patch)
    return not (same_release and version.pre is not None and found.pre is None)


def _shown(path: Path) -> str:
    """The first line of ``path`` as a short repr, for a note about content that is not a version."""
    try:
        text = path.read_bytes()[:200].decode("utf-8", errors="replace")
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return repr(first[:40]) if first else "empty"


def plan_version_member(root: Path, tree: Tree, version: PatchVersion) -> VersionMember:
    """Decide the ``VERSION`` member of patch ``version`` of the tree at ``root`` (scanned into
    ``tree``; see the module docstring). Reads ``root/VERSION``, writes nothing.

    Raises:
        CreatePatchError: ``VERSION`` names a newer version than ``version`` (not a pre-release
            of it), or is a folder.
    """
    path = root / VERSION_FILE
    scanned = tree.entries.get(VERSION_FILE)
    if scanned is not None and scanned.type == "dir":
        raise CreatePatchError(
            f"{path} is a folder: an install's VERSION is a file holding its version, which every apply writes.",
            "Move the folder away (the patch carries VERSION as a file); nothing was written.",
        )
    found: PatchVersion | None = None
    if path.is_file():
        try:
            found = read_version_file(path)
        except PatchflowError:
            found = None
    if found is not None and _older(version, found):
        raise CreatePatchError(
            f"The tree's VERSION says {found}, which is newer than the patch version {version}: an install would "
            f"get the code of {found} recorded as the older {version}.",
            f"Pass --version {found} or a newer version (or correct VERSION if it is wrong); nothing was written.",
        )
    if scanned is not None and scanned.type == "file" and found is not None and str(found) == str(version):
        return VersionMember()  # the tree's own bytes
    mode = clean_mode(scanned.mode) if scanned is not None and scanned.type == "file" else 0o644
    data = f"{version}\n".encode("ascii")
    entry = Entry(VERSION_FILE, "file", mode=mode, size=len(data), sha256=hashlib.sha256(data).hexdigest())
    unchanged = "the tree's file is left unchanged"
    if scanned is not None and scanned.type == "symlink":
        why = f"the tree's VERSION is a symbolic link (to {scanned.target}); an install's is a plain file"
    elif not path.exists() and not path.is_symlink():
        why = "the tree has no VERSION file"
        unchanged = "none is created in the tree"
    elif scanned is None:
        why = "the exclude rules leave the tree's VERSION out, but every install has one"
    elif found is None:
        why = f"the tree's VERSION is not a version ({_shown(path)})"
    else:
        why = f"the tree's VERSION says {found}"
    return VersionMember(data, entry, f"VERSION: {why}; the patch carries VERSION {version} ({unchanged})")


def use_version_member(tree: Tree, member: VersionMember) -> dict[str, bytes]:
    """Put ``member`` into ``tree`` (replacing the scanned ``VERSION`` entry) and return the
    ``contents`` argument of :func:`patchflow.archive.writer.build_archive` (empty when the tree's file
    is packed as it is)."""
    if member.data is None or member.entry is None:
        return {}
    tree.entries[VERSION_FILE] = member.entry
    tree.stats.pop(VERSION_FILE, None)  # not a scanned file any more (no cached hash applies)
    return {VERSION_FILE: member.data}
