"""The one-pass checked extraction of a patch archive against its manifest: :func:`extract_archive`.

The archive is decompressed once (a read-ahead thread); each member header is checked as it
arrives (:func:`patchflow.archive.reader.walk`, then: listed in the manifest with the same type,
size, mode and link target), then written and hashed in the same read; missing members are found
at the end, and every symlink is resolved with ``realpath``. Files are created with
``O_EXCL | O_NOFOLLOW`` (never through a link), owned by the running user, with the manifest's
mode (no setuid, setgid, sticky or group/other write). Any problem removes everything extracted
so far and raises :class:`ArchiveError` naming the member. ``tarfile``'s extraction (and its
``data`` filter) is not used: these checks cover what that filter does (CVE-2007-4559, C01).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path

from patchflow.archive.reader import member_kind, unsafe, walk
from patchflow.archive.stream import Stream
from patchflow.errors import ArchiveError
from patchflow.manifest import Entry, clean_mode


def _header_mismatch(member: tarfile.TarInfo, expected: Entry | None) -> str | None:
    """What :func:`compare_members` would say about ``member`` from its header alone (or None)."""
    path = member.name
    if expected is None:
        return f"{path}: in the archive but not listed in manifest.json"
    kind = member_kind(member)
    if kind != expected.type:
        return f"{path}: archive has a {kind}, manifest says {expected.type}"
    if kind == "file" and member.size != expected.size:
        return f"{path}: content differs from manifest.json (sha256/size)"
    if kind != "symlink" and clean_mode(member.mode) != expected.mode:
        return f"{path}: mode {clean_mode(member.mode):04o} differs from manifest.json ({expected.mode:04o})"
    if kind == "symlink" and member.linkname != expected.target:
        return f"{path}: link target differs from manifest.json"
    return None


def _mismatch(archive: Path, problems: list[str]) -> ArchiveError:
    return ArchiveError(
        f"The archive {archive.name} does not match its manifest: {'; '.join(problems[:10])}.",
        "Refusing to extract (nothing was kept); rebuild or re-copy the patch.",
    )


class _Extraction:
    """The state of one :func:`extract_archive`: what was created, so a failure removes it all."""

    def __init__(self, archive: Path, destination: Path) -> None:
        self.archive = archive
        self.destination = destination
        self.made: list[Path] = []  # folders created up to and including destination
        self.base = str(destination)
        self.kinds: dict[str, str] = {"": "dir"}
        self.dirs: list[tuple[str, int]] = []  # folders whose mode is set at the end
        self.links: list[Entry] = []
        self.umask = _current_umask()

    def prepare(self) -> None:
        missing = []
        folder = self.destination
        while not folder.exists() and not folder.is_symlink():
            missing.append(folder)
            folder = folder.parent
        if self.destination.is_symlink() or (self.destination.exists() and not self.destination.is_dir()):
            raise ArchiveError(
                f"Cannot extract into {self.destination}: it is not a folder.", "Remove it and try again."
            )
        if not missing and any(os.scandir(self.destination)):
            raise ArchiveError(
                f"Cannot extract into {self.destination}: the folder is not empty.",
                "Extraction needs an empty or new folder; remove it and try again.",
            )
        try:
            for folder in reversed(missing):
                folder.mkdir()
                self.made.append(folder)
        except OSError as exc:
            for folder in reversed(self.made):
                folder.rmdir()
            raise ArchiveError(
                f"Cannot create {self.destination}: {exc.strerror}.", "Check permissions and disk space."
            ) from None

    def discard(self) -> None:
        """Remove everything this extraction created (the destination's content, and the folders
        it made)."""
        if not self.destination.is_dir() or self.destination.is_symlink():
            return
        for path in (self.destination / p for p, _ in reversed(self.dirs)):
            try:
                os.chmod(path, 0o700, follow_symlinks=False)
            except OSError:
                pass
        with os.scandir(self.destination) as children:
            for child in children:
                if child.is_dir(follow_symlinks=False):
                    shutil.rmtree(child.path, ignore_errors=True)
                else:
                    try:
                        os.unlink(child.path)
                    except OSError:
                        pass
        for folder in reversed(self.made):
            try:
                folder.rmdir()
            except OSError:
                break

    def parent_of(self, name: str) -> None:
        """Make sure every folder above ``name`` is a folder of this extraction (created as
        needed, e.g. the unchanged folders of a delta patch); never a link or a file."""
        parts = name.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            prefix = "/".join(parts[:depth])
            kind = self.kinds.get(prefix)
            if kind is None:
                os.mkdir(os.path.join(self.base, prefix), 0o700)
                self.kinds[prefix] = "implicit"
            elif kind not in ("dir", "implicit"):
                raise unsafe(name, self.archive, f"its folder {prefix!r} is a {kind} in the archive")

    def write_file(
        self, member: tarfile.TarInfo, stream: Stream, entry: Entry, on_bytes: Callable[[int], None] | None
    ) -> None:
        name = member.name
        digest = hashlib.sha256()
        mode = clean_mode(entry.mode)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(os.path.join(self.base, name), flags, mode)  # the open fd may write whatever the mode
        self.kinds[name] = "file"
        try:
            for piece in stream.pieces(member.size):
                digest.update(piece)
                view = piece
                while view:
                    view = view[os.write(fd, view) :]
                if on_bytes is not None:
                    on_bytes(len(piece))
            if mode & self.umask:
                os.fchmod(fd, mode)
        finally:
            os.close(fd)
        if digest.hexdigest() != entry.sha256:
            raise _mismatch(self.archive, [f"{name}: content differs from manifest.json (sha256/size)"])

    def add(
        self, member: tarfile.TarInfo, stream: Stream, entry: Entry, on_bytes: Callable[[int], None] | None
    ) -> None:
        name = member.name
        self.parent_of(name)
        if member.isdir():
            mode = clean_mode(entry.mode)
            final = mode & 0o700 == 0o700 and not mode & self.umask  # writable now, and mkdir gives it exactly
            if self.kinds.get(name) != "implicit":
                os.mkdir(os.path.join(self.base, name), mode if final else 0o700)
                if not final:
                    self.dirs.append((name, mode))
            else:
                self.dirs.append((name, mode))
            self.kinds[name] = "dir"
        elif member.issym():
            os.symlink(member.linkname, os.path.join(self.base, name))
            self.kinds[name] = "symlink"
            self.links.append(entry)
        else:
            self.write_file(member, stream, entry, on_bytes)

    def finish(self, expected: Mapping[str, Entry]) -> None:
        missing = [p for p in sorted(expected) if p not in self.kinds or self.kinds[p] == "implicit"]
        if missing:
            listed = [f"{p}: listed in manifest.json but missing from the archive" for p in missing]
            raise _mismatch(self.archive, listed)
        real_root = os.path.realpath(self.destination)
        for entry in self.links:
            # resolved through every link (``q -> .`` chains): must stay inside the folder
            real = os.path.realpath(self.destination / entry.path)
            if real != real_root and not real.startswith(real_root + os.sep):
                raise ArchiveError(
                    f"Unsafe member {entry.path!r} in {self.archive.name}: the symlink leads outside the folder "
                    f"(through {entry.target!r}).",
                    "The archive is refused; nothing was applied.",
                )
        for name, kind in self.kinds.items():
            if kind == "implicit":
                os.chmod(self.destination / name, 0o755)  # noqa: S103 - a folder of the patch tree
        for name, mode in sorted(self.dirs, key=lambda item: item[0].count("/"), reverse=True):
            os.chmod(self.destination / name, mode)


def _current_umask() -> int:
    """The process umask, read without changing it (Linux), else by setting and restoring it."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # pragma: no cover - not Linux
    os.umask(mask)  # pragma: no cover
    return mask  # pragma: no cover


def extract_archive(
    archive: Path,
    destination: Path,
    expected: Mapping[str, Entry],
    *,
    on_bytes: Callable[[int], None] | None = None,
) -> None:
    """Extract ``archive`` into the empty or new folder ``destination`` in one checked pass.

    The members must equal ``expected`` exactly (the manifest's entries, or for a delta patch
    the subset it packs: :meth:`patchflow.verify.VerifyReport.archive_entries`). Folders above a
    member that the archive does not hold (a delta's unchanged folders) are created with mode
    0755. Files end up owned by the running user with the manifest's modes (no setuid, setgid,
    sticky, group/other write). See the module docstring for every check.

    Args:
        on_bytes: progress callback, fed with bytes of file content written.

    Raises:
        ArchiveError: an unsafe member, a mismatch with ``expected``, a corrupt or truncated
            archive, a destination that is not an empty folder, or a write error (disk full).
            The message names the member at fault; everything extracted so far is removed, and
            folders created for ``destination`` too.
    """
    job = _Extraction(archive, destination)
    job.prepare()
    try:
        for member, stream in walk(archive):
            entry = expected.get(member.name)
            problem = _header_mismatch(member, entry)
            if problem is not None or entry is None:
                raise _mismatch(archive, [problem or member.name])
            job.add(member, stream, entry, on_bytes)
        job.finish(expected)
    except BaseException as exc:  # any exit, an interrupt too: nothing extracted is kept; re-raised
        job.discard()
        if isinstance(exc, ArchiveError):
            raise
        if isinstance(exc, (tarfile.TarError, OSError, zlib.error)):
            raise ArchiveError(
                f"Extraction of {archive.name} failed: {exc}.",
                "Check disk space and permissions; nothing was extracted.",
            ) from None
        raise
