"""Which files belong to a patch, and what each one is: path, type, size, sha256, mode, link target.

Exclusion uses gitignore syntax (``pathspec``): built-in defaults, the ``exclude`` setting and the
project's ``.patchignore``. Secrets (``.env``, ``.env.*`` except ``.env.example``, private keys)
are excluded even if a pattern re-includes them; Prisma migrations are always included.

Symlink policy (documented in README, field failure C06):

* a relative link whose target stays inside the tree is stored as a link;
* a dangling relative link that stays inside the tree is stored as a link and reported;
* an absolute link, or one resolving outside the tree, is an error naming the link
  (exclude it in ``.patchignore`` if it is host-specific).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, Required, TypedDict

from patchflow.digests import CHUNK, ProgressCallback
from patchflow.errors import CreatePatchError

if TYPE_CHECKING:
    import pathspec

EntryType = Literal["file", "dir", "symlink"]


class EntryJson(TypedDict, total=False):
    """An :class:`Entry` as manifest.json (and a backup's ``old_entries``) writes it: ``path`` and
    ``type`` always; ``size``, ``sha256`` and ``mode`` (octal text, ``"0755"``) for a file; ``mode``
    for a folder; ``target`` for a link."""

    path: Required[str]
    type: Required[EntryType]
    size: int
    sha256: str
    mode: str
    target: str


# no trailing "/": a symlink named uploads (or node_modules...) is host data too, not patch content
DEFAULT_EXCLUDES: tuple[str, ...] = (
    ".git",
    "node_modules",
    "dist",
    ".turbo",
    ".next",
    "coverage",
    "uploads",
    "*.log",
    ".DS_Store",
)
SECRET_PATTERNS: tuple[str, ...] = (
    ".env",
    ".env.*",
    "!.env.example",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    "!*.pub",
    ".pgpass",
    ".netrc",
    ".htpasswd",
    ".aws/credentials",
    "*.p8",
    "*.keystore",
    "*.jks",
    "*.kdbx",
)
#: Names a patch never holds and an apply never writes, at any depth, whatever a patch's own exclude
#: list or a ``.patchignore`` says (``!node_modules`` does not bring them back): a repository's
#: hooks run code, installed packages' ``.bin`` run code, and patchflow's state is its own.
NEVER_PATCHED = frozenset({".git", "node_modules", ".patchflow"})
ALWAYS_INCLUDED_PREFIX = "prisma/migrations/"  # everything under it is packed, whatever the patterns say
# one of these is in every path a secret pattern matches
_SECRET_HINT = re.compile(r"\.env|\.pem|\.key|\.p12|\.pfx|id_|pgpass|netrc|htpasswd|\.aws/|\.p8|keystore|\.jks|\.kdbx")


def clean_mode(mode: int) -> int:
    """Permission bits patchflow records and restores: ``rwx`` bits without group/other write,
    setuid, setgid or sticky (field failure C04)."""
    return stat.S_IMODE(mode) & 0o755


@dataclass(frozen=True, slots=True)
class Entry:
    """One tree entry. ``size`` is bytes (files only); ``sha256`` hex (files only);
    ``mode`` the permission bits (e.g. ``0o755``); ``target`` the link text (symlinks only)."""

    path: str
    type: EntryType
    mode: int = 0
    size: int = 0
    sha256: str = ""
    target: str = ""

    def to_json(self) -> EntryJson:
        """This entry as JSON (:class:`EntryJson`: only the keys its type has)."""
        if self.type == "file":
            return {
                "path": self.path,
                "type": "file",
                "size": self.size,
                "sha256": self.sha256,
                "mode": f"{self.mode:04o}",
            }
        if self.type == "dir":
            return {"path": self.path, "type": "dir", "mode": f"{self.mode:04o}"}
        return {"path": self.path, "type": self.type, "target": self.target}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Entry:
        kind = data["type"]
        if kind not in ("file", "dir", "symlink"):
            raise ValueError(f"unknown entry type {kind!r}")
        mode = int(str(data.get("mode", "0")), 8)
        return cls(
            path=str(data["path"]),
            type=kind,
            mode=mode,
            size=int(data.get("size", 0)),
            sha256=str(data.get("sha256", "")),
            target=str(data.get("target", "")),
        )

    def same_content(self, other: Entry) -> bool:
        """True when both entries would produce the same thing on disk (type, content, mode, target)."""
        return (self.type, self.sha256, self.mode, self.target) == (
            other.type,
            other.sha256,
            other.mode,
            other.target,
        )


@dataclass
class Tree:
    """A scanned tree: ``entries`` maps POSIX relative path to :class:`Entry` (sorted on output);
    ``stats`` maps each file's path to ``(size in bytes, st_mtime_ns)`` as scanned; ``unreadable``
    lists the paths a non-strict scan left out because this user cannot read, list or stat them."""

    entries: dict[str, Entry] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    excluded_secrets: list[str] = field(default_factory=list)
    stats: dict[str, tuple[int, int]] = field(default_factory=dict)  # file path -> (size, st_mtime_ns)
    unreadable: list[str] = field(default_factory=list)

    def files(self) -> list[Entry]:
        return [e for _, e in sorted(self.entries.items()) if e.type == "file"]

    def sorted(self) -> list[Entry]:
        return [self.entries[p] for p in sorted(self.entries)]

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries.values())


_NAME_GLOB = re.compile(r"^[A-Za-z0-9._+@~=,%-]*[A-Za-z0-9_+@~=,%*?-][A-Za-z0-9._+@~=,%*?-]*/?$")


def _name_glob_regex(globs: Iterable[str], *, anywhere: bool = False) -> re.Pattern[str] | None:
    """A regex for name globs (``*``, ``?``; no ``/``): matching one whole component, or with
    ``anywhere`` found as any whole component of a path (``search``)."""
    parts = ["".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in g) for g in globs]
    if not parts:
        return None
    alternatives = "(?:" + "|".join(parts) + ")"
    return re.compile(f"(?:^|/){alternatives}(?=/|\\Z)" if anywhere else f"{alternatives}\\Z")


def _gitignore_spec(lines: Iterable[str]) -> pathspec.GitIgnoreSpec:
    """``pathspec``'s gitignore matcher, imported only when a pattern needs it (13 ms of start-up)."""
    import pathspec

    return pathspec.GitIgnoreSpec.from_lines(lines)


class ExcludeRules:
    """Decide whether a project-relative path belongs to a patch.

    Args:
        patterns: gitignore-style patterns (defaults + settings + ``.patchignore``), in order.
        protected: folders that are never part of a patch (patches/, backups/, .patchflow/).

    Matching uses ``pathspec``'s gitignore semantics. When no pattern negates (``!``), plain name
    globs (no ``/`` but a trailing one, no ``**``, brackets or escapes: ``node_modules``,
    ``*.log``, ``tmp/``) are checked against each path component with one regex, which is what
    gitignore does for them and about ten times faster; any other pattern goes to ``pathspec``.
    Answers are remembered per path: an apply asks about the same paths for the patch, the scan
    of the tree and the scan again under the lock.
    """

    def __init__(self, patterns: Iterable[str], protected: Iterable[str] = ()) -> None:
        self.patterns = tuple(p for p in patterns if p.strip() and not p.lstrip().startswith("#"))
        self.protected = tuple(p.strip("/") for p in protected if p.strip("/"))
        self._protected_tops = frozenset(self.protected)
        self._protected_nested = tuple(p + "/" for p in self.protected if "/" in p)
        self._secrets_spec: pathspec.GitIgnoreSpec | None = None
        simple: list[str] = []
        others = list(self.patterns)
        if not any(p.startswith("!") for p in self.patterns):
            simple = [p for p in self.patterns if _NAME_GLOB.match(p) and "**" not in p]
            others = [p for p in self.patterns if p not in simple]
        self._any_name = _name_glob_regex(p.rstrip("/") for p in simple)
        self._in_folder = _name_glob_regex((p.rstrip("/") for p in simple), anywhere=True)
        self._file_name = _name_glob_regex(p for p in simple if not p.endswith("/"))
        self._spec = _gitignore_spec(others) if others else None
        self._answers: dict[tuple[str, bool], bool] = {}

    def is_secret(self, rel: str) -> bool:
        # every secret pattern holds one of these literal pieces: a path without any of them
        # cannot match (saves the pattern matching for almost every path of a tree)
        if _SECRET_HINT.search(rel) is None:
            return False
        if self._secrets_spec is None:
            self._secrets_spec = _gitignore_spec(SECRET_PATTERNS)
        return self._secrets_spec.match_file(rel)

    def excluded(self, rel: str, is_dir: bool) -> bool:
        """True if ``rel`` (POSIX, relative) is outside the patch. Directories get a trailing ``/``."""
        key = (rel, is_dir)
        answer = self._answers.get(key)
        if answer is None:
            answer = self._answers[key] = self._excluded(rel, is_dir)
        return answer

    def _excluded(self, rel: str, is_dir: bool) -> bool:
        if rel.partition("/")[0] in self._protected_tops or rel in self._protected_tops:
            return True
        if any(part in NEVER_PATCHED for part in rel.split("/")):
            return True
        if self._protected_nested and rel.startswith(self._protected_nested):
            return True
        probe = rel + "/" if is_dir else rel
        if not is_dir and self.is_secret(rel):
            return True
        if rel.startswith(ALWAYS_INCLUDED_PREFIX):
            return False
        if rel == "prisma/migrations" or rel == "prisma":
            return False
        if self._in_folder is not None:
            folder, _, name = rel.rpartition("/")
            if folder and self._in_folder.search(folder):
                return True
            last = self._any_name if is_dir else self._file_name
            if last is not None and last.match(name):
                return True
        return self._spec is not None and self._spec.match_file(probe)


def load_rules(
    root: Path,
    extra: Iterable[str],
    protected: Iterable[str],
    *,
    gitignore: bool = False,
    host_paths: Iterable[str] = (),
) -> ExcludeRules:
    """Build the rules of a project: defaults, the ``exclude`` setting, the project's root
    ``.gitignore`` when ``gitignore`` (what git does not track is not part of a release: local
    data, host overrides, generated files), then ``.patchignore`` (so it can re-include with
    ``!pattern``), then ``host_paths`` (what each host keeps as its own: nothing re-includes it).

    Raises:
        CreatePatchError: ``.gitignore`` or ``.patchignore`` exists but cannot be read.
    """
    patterns = list(DEFAULT_EXCLUDES) + list(extra)
    for name, wanted in ((".gitignore", gitignore), (".patchignore", True)):
        ignore = root / name
        if not wanted or not ignore.exists():
            continue
        try:
            patterns += ignore.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise CreatePatchError(
                f"Cannot read {ignore}: {exc}.", "Fix the file (UTF-8, readable) or remove it."
            ) from None
    patterns += list(host_paths)
    return ExcludeRules(patterns, protected)


def _link_stays_inside(rel: str, target: str) -> bool:
    if os.path.isabs(target):
        return False
    parts: list[str] = []
    for part in (PurePosixPath(rel).parent / target).parts:
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return False
            parts.pop()
        else:
            parts.append(part)
    return bool(parts)


def _bad_name(name: str) -> str:
    """Why a file name cannot travel in a patch ('' when it can): names are UTF-8 in the archive
    and the manifest, and a backslash is refused on extraction."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "the name is not valid UTF-8 (rename the file)"
    if "\\" in name:
        return "the name contains a backslash, which extraction refuses (rename the file)"
    return ""


def _resolves_inside(root: Path, link: Path) -> bool:
    """True when ``link`` resolved through every link on the way (``q -> .`` chains too) stays in ``root``."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(link)
    return real == real_root or real.startswith(real_root + os.sep)


def scan_tree(
    root: Path,
    rules: ExcludeRules,
    *,
    hash_files: bool = True,
    on_bytes: ProgressCallback | None = None,
    strict: bool = True,
    known: Mapping[str, tuple[int, int, str]] | None = None,
    workers: int | None = None,
) -> Tree:
    """Walk ``root`` once (sorted, not following links) and describe every entry the rules keep.

    Args:
        root: the project root.
        rules: what to leave out.
        hash_files: compute sha256 (False: size and mode only, e.g. before packing, which hashes).
        on_bytes: called with the number of bytes hashed, for progress bars.
        strict: raise on unreadable files, special files and links leaving the tree
            (False, used when scanning an install: warn, skip unreadable/special files, and keep
            links leaving the tree as entries so they are backed up and never followed).
        known: a cache ``path -> (size in bytes, mtime_ns, sha256)`` (e.g. from the last scan of
            an install): a file whose size and ``st_mtime_ns`` both match reuses that sha256
            instead of being read.
        workers: threads hashing files (default: every core).

    Returns:
        A :class:`Tree`; ``Tree.stats`` holds ``(size, mtime_ns)`` of every file, to build the next
        ``known`` cache.

    Raises:
        CreatePatchError: (strict) a link points outside the tree or is absolute, a file cannot be
            read, or an entry is a device, FIFO or socket. The message names the path.
    """
    tree = Tree()
    problems: list[str] = []
    to_hash: list[tuple[str, str]] = []

    def walk(folder: str, rel_folder: str) -> None:
        try:
            with os.scandir(folder) as it:
                children = sorted(it, key=lambda d: d.name)
        except OSError as exc:
            problems.append(f"{rel_folder or '.'}: cannot list directory ({exc.strerror})")
            tree.unreadable.append(rel_folder or ".")
            return
        for child in children:
            rel = f"{rel_folder}/{child.name}" if rel_folder else child.name
            try:
                st = child.stat(follow_symlinks=False)
            except OSError as exc:
                problems.append(f"{rel}: cannot stat ({exc.strerror})")
                tree.unreadable.append(rel)
                continue
            mode = st.st_mode
            excluded = rules.excluded(rel, is_dir=stat.S_ISDIR(mode))
            if excluded:
                if stat.S_ISREG(mode) and rules.is_secret(rel):
                    tree.excluded_secrets.append(rel)
                continue
            if strict:
                bad_name = _bad_name(child.name)
                if bad_name:
                    problems.append(f"{rel!r}: {bad_name}")
                    continue
            if stat.S_ISLNK(mode):
                target = os.readlink(child.path)
                if not _link_stays_inside(rel, target) or not _resolves_inside(root, Path(child.path)):
                    message = f"{rel}: symlink to {target!r} points outside the project (absolute or leaving the tree)"
                    if strict:
                        problems.append(message)
                        continue
                    # an install's host-specific link is still part of the tree: it is backed up and
                    # restored like any entry, never silently followed
                    tree.warnings.append(message)
                if not os.path.exists(child.path):
                    tree.warnings.append(f"{rel}: dangling symlink to {target!r} kept as a link")
                tree.entries[rel] = Entry(rel, "symlink", target=target)
            elif stat.S_ISDIR(mode):
                tree.entries[rel] = Entry(rel, "dir", mode=clean_mode(mode))
                walk(child.path, rel)
            elif stat.S_ISREG(mode):
                digest = ""
                tree.stats[rel] = (st.st_size, st.st_mtime_ns)
                if hash_files:
                    cached = known.get(rel) if known is not None else None
                    if cached is not None and cached[0] == st.st_size and cached[1] == st.st_mtime_ns and cached[2]:
                        digest = cached[2]
                    else:
                        to_hash.append((rel, child.path))
                elif not os.access(child.path, os.R_OK):
                    problems.append(f"{rel}: cannot read (permission denied)")
                    tree.unreadable.append(rel)
                    continue
                tree.entries[rel] = Entry(rel, "file", mode=clean_mode(mode), size=st.st_size, sha256=digest)
            else:
                problems.append(f"{rel}: special file (device, FIFO or socket) cannot be packed")

    walk(str(root), "")
    if to_hash:
        _hash_entries(tree, to_hash, problems, on_bytes, workers)
    if problems and strict:
        listed = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise CreatePatchError(
            f"The project tree at {root} cannot be packed: {listed}.",
            "Fix the permissions, replace the link with a file or an in-tree relative link, "
            "or exclude the path in .patchignore; nothing was written.",
        )
    tree.warnings.extend(problems)
    return tree


def hash_tree(
    root: Path,
    tree: Tree,
    *,
    on_bytes: ProgressCallback | None = None,
    known: Mapping[str, tuple[int, int, str]] | None = None,
    workers: int | None = None,
) -> None:
    """Fill in the sha256 of every file of ``tree`` (scanned with ``hash_files=False``) in place.

    ``known`` works as in :func:`scan_tree`.

    Raises:
        CreatePatchError: a file cannot be read (named in the message).
    """
    to_hash = []
    for rel, entry in tree.entries.items():
        if entry.type != "file" or entry.sha256:
            continue
        cached = known.get(rel) if known is not None else None
        stats = tree.stats.get(rel)
        if cached is not None and stats is not None and cached[:2] == stats and cached[2]:
            tree.entries[rel] = Entry(rel, "file", mode=entry.mode, size=entry.size, sha256=cached[2])
        else:
            to_hash.append((rel, os.path.join(root, rel)))
    problems: list[str] = []
    _hash_entries(tree, to_hash, problems, on_bytes, workers)
    if problems:
        raise CreatePatchError(
            f"The project tree at {root} cannot be packed: {'; '.join(problems[:10])}.",
            "Fix the permissions; nothing was written.",
        )


HASH_BATCH_BYTES = 8 * 1024 * 1024
HASH_BATCH_FILES = 512


def _hash_one(path: str) -> tuple[str, int] | OSError:
    """``(sha256, size)`` of a file, or the error reading it; small files in one ``read``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)  # scanned as a file: never a link now
    except OSError as exc:
        return exc
    try:
        with open(fd, "rb", buffering=0) as handle:
            digest = hashlib.sha256()
            size = 0
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except OSError as exc:
        return exc
    return digest.hexdigest(), size


def _hash_batch(paths: list[str]) -> list[tuple[str, int] | OSError]:
    return [_hash_one(path) for path in paths]


def _batches(items: list[tuple[str, str]], sizes: Mapping[str, int]) -> Iterator[list[tuple[str, str]]]:
    """Consecutive groups of at most HASH_BATCH_FILES files or about HASH_BATCH_BYTES bytes, so
    a thread pool pays its per-task cost per group, not per file."""
    batch: list[tuple[str, str]] = []
    total = 0
    for item in items:
        batch.append(item)
        total += sizes.get(item[0], 0)
        if len(batch) >= HASH_BATCH_FILES or total >= HASH_BATCH_BYTES:
            yield batch
            batch, total = [], 0
    if batch:
        yield batch


def _hash_entries(
    tree: Tree,
    to_hash: list[tuple[str, str]],
    problems: list[str],
    on_bytes: ProgressCallback | None,
    workers: int | None,
) -> None:
    """Fill in the sha256 of ``to_hash`` (rel, absolute path) on a thread pool (hashlib and file
    reads release the GIL), in batches; unreadable files become problems and leave the tree."""
    threads = workers or max(1, len(os.sched_getaffinity(0)))
    sizes = {rel: tree.entries[rel].size for rel, _ in to_hash}
    batches = list(_batches(to_hash, sizes))
    with ThreadPoolExecutor(threads, thread_name_prefix="patchflow-hash") as pool:
        results = pool.map(_hash_batch, ([path for _, path in batch] for batch in batches))
        for batch, batch_results in zip(batches, results, strict=True):
            for (rel, _), result in zip(batch, batch_results, strict=True):
                if isinstance(result, OSError):
                    problems.append(f"{rel}: cannot read ({result.strerror})")
                    tree.unreadable.append(rel)
                    del tree.entries[rel]
                    tree.stats.pop(rel, None)
                    continue
                digest, size = result
                old = tree.entries[rel]
                tree.entries[rel] = Entry(rel, "file", mode=old.mode, size=size, sha256=digest)
                if on_bytes is not None:
                    on_bytes(size)


@dataclass(frozen=True)
class TreeDiff:
    """What turning ``old`` into ``new`` does: paths added, changed (content, mode or type) and
    deleted; unchanged entries are left out. Lists are sorted."""

    added: list[str]
    changed: list[str]
    deleted: list[str]

    @property
    def empty(self) -> bool:
        return not (self.added or self.changed or self.deleted)


def diff_trees(old: Mapping[str, Entry], new: Mapping[str, Entry]) -> TreeDiff:
    """Compare two path->entry maps (dirs compare by type and mode)."""
    added = sorted(p for p in new if p not in old)
    deleted = sorted(p for p in old if p not in new)
    changed = sorted(p for p in new if p in old and not old[p].same_content(new[p]))
    return TreeDiff(added, changed, deleted)
