"""Moving a patch to a host: the verified local patch, and the resumable SFTP upload checked there.

:func:`upload_patch` sends ``patches/vX`` of this checkout into ``patches/.upload-vX-<id>/`` on the
host (``parallel`` hosts at a time, see :mod:`patchflow.remote.rolling`): files already there with
the same SHA-256 are skipped, a partial file whose bytes match the start of ours is continued, then
``receive-patch`` verifies the folder there and renames it to ``patches/vX``. A partial upload is
never renamed, so never applied (C08 (f)).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from patchflow.commands.remote import receive_patch_args
from patchflow.config import Settings
from patchflow.errors import RemoteError, VerifyError
from patchflow.paths import SHA256SUMS, SIGNATURE, ProjectPaths
from patchflow.remote.session import ConnectionLost, HostSession
from patchflow.remote.wire import NOT_VERIFIED, HostFacts, received, upload_dir_name
from patchflow.version import PatchVersion

CHUNK = 256 * 1024


@dataclass(frozen=True)
class LocalPatch:
    """A verified local patch folder: ``files`` maps each file name to (size in bytes, sha256)."""

    version: PatchVersion
    folder: Path
    files: dict[str, tuple[int, str]]
    sums_sha256: str
    delta_base: str | None = None  # the version a delta patch is built on; None for a full patch
    base_tree_sha256: str | None = None  # the delta's base tree (patchflow.delta.tree_sha256)
    migrations: tuple[str, ...] = ()  # the names of the migrations it carries (its manifest's)

    @property
    def upload_name(self) -> str:
        return upload_dir_name(self.version, self.sums_sha256)

    @property
    def total_bytes(self) -> int:
        return sum(size for size, _ in self.files.values())


def local_patch(settings: Settings, version: PatchVersion) -> LocalPatch:
    """Verify this checkout's ``patches/vX`` (as apply would, shallow) and list its files with the
    SHA-256 from its ``SHA256SUMS``.

    Raises:
        VerifyError: the folder is missing or does not verify.
    """
    from patchflow.verify import verify_patch

    folder = ProjectPaths.from_settings(settings).patch_dir(version)
    if not folder.is_dir():
        raise VerifyError(
            f"No patch folder {folder} in this checkout.", f"Build it first: inv create-patch --version {version}."
        )
    report = verify_patch(folder, version, verify_key=settings.verify_key)
    files: dict[str, tuple[int, str]] = {}
    sums_bytes = (folder / SHA256SUMS).read_bytes()
    for line in sums_bytes.decode("utf-8").splitlines():
        digest, _, name = line.partition(" ")
        name = name.lstrip(" *")
        if digest and name:
            files[name] = ((folder / name).stat().st_size, digest.lower())
    sums_sha256 = hashlib.sha256(sums_bytes).hexdigest()
    files[SHA256SUMS] = (len(sums_bytes), sums_sha256)
    signature = folder / SIGNATURE
    if signature.is_file():  # a host with a verify key refuses the patch without it
        data = signature.read_bytes()
        files[SIGNATURE] = (len(data), hashlib.sha256(data).hexdigest())
    delta = report.delta or {}
    base = str(delta["base_version"]) if delta else None
    from patchflow.migrations import from_manifest

    names = tuple(m.name for m in from_manifest(report.manifest))
    return LocalPatch(
        version, folder, files, sums_sha256, base, str(delta.get("base_tree_sha256") or "") or None, names
    )


@dataclass
class UploadResult:
    """One host's upload: ``state`` is ``placed`` (sent, checked there, renamed) or ``already`` (that
    exact patch was there); bytes ``sent`` now, ``reused`` (same SHA-256 there, or the first
    ``resumed`` bytes of partial files); ``seconds`` it took."""

    state: str
    sent: int = 0
    reused: int = 0
    resumed: int = 0
    seconds: float = 0.0

    def describe(self) -> str:
        if self.state == "already":
            return "the same patch is already there (not sent again)"
        parts = [f"{self.sent} bytes sent"]
        if self.reused:
            parts.append(f"{self.reused} bytes already there")
        if self.resumed:
            parts.append(f"continued a partial upload at {self.resumed} bytes")
        return ", ".join(parts) + f" in {self.seconds:.1f} s; checked there and placed"


def _prefix_sha256(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    left = size
    with open(path, "rb") as handle:
        while left > 0:
            chunk = handle.read(min(CHUNK, left))
            if not chunk:
                break
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def upload_patch(session: HostSession, facts: HostFacts, patch: LocalPatch) -> UploadResult:
    """Upload ``patch`` into ``patches/.upload-vX-<id>/`` on the host, continuing what an earlier
    upload left, then have ``receive-patch`` check it there and rename it to ``patches/vX``.

    Raises:
        ConnectionLost: the connection broke, or a step got no answer, during the upload (run again:
            it continues where it stopped) or during the check there (whether the patch was put in
            place is unknown; run again: the upload resumes or is found in place).
        RemoteError: ``patches/vX`` there holds a different patch, the upload does not verify there
            (``receive-patch`` said so: exit 1; it is not put in place), or ``receive-patch``
            refused it for another reason (its error).
    """
    started = time.monotonic()
    state = facts.upload
    final = state.get("final") if state else None
    tag = patch.version.tag
    if isinstance(final, dict):
        if final.get("sums_sha256") == patch.sums_sha256:
            return UploadResult("already", reused=patch.total_bytes, seconds=time.monotonic() - started)
        raise RemoteError(
            f"{session.name}: patches/{tag} there holds a different patch than this checkout's.",
            f"Patch versions must be unique: build a new version, or move patches/{tag} away on the host.",
        )
    partial = ((state.get("partial") if state else None) or {}).get(patch.upload_name, {})
    patches_dir = facts.path("patches")
    remote_dir = f"{patches_dir}/{patch.upload_name}"
    result = UploadResult("placed")
    where = "upload"
    try:
        with session.sftp_call("creating the upload folder") as sftp:
            for folder in (patches_dir, remote_dir):
                try:
                    sftp.stat(folder)
                except FileNotFoundError:
                    sftp.mkdir(folder, 0o755)
        for name, (size, digest) in sorted(patch.files.items(), key=lambda item: item[0] == SHA256SUMS):
            there = partial.get(name)
            offset = 0
            if isinstance(there, (list, tuple)) and len(there) == 2:
                their_size, their_digest = int(there[0]), str(there[1])
                if their_size == size and their_digest == digest:
                    result.reused += size
                    continue
                if 0 < their_size < size and _prefix_sha256(patch.folder / name, their_size) == their_digest:
                    offset = their_size
            where = f"sending {name}"
            with (
                session.sftp_call(where) as sftp,
                sftp.open(f"{remote_dir}/{name}", "r+b" if offset else "wb") as remote,
                open(patch.folder / name, "rb") as local,
            ):
                remote.set_pipelined(True)
                if offset:
                    remote.seek(offset)
                    local.seek(offset)
                    result.resumed += offset
                    result.reused += offset
                while chunk := local.read(session.chunk_size(CHUNK)):
                    remote.write(chunk)
                    result.sent += len(chunk)
                    session.count_sent(len(chunk))
    except ConnectionLost as exc:
        raise ConnectionLost(
            f"{session.name}: the upload was interrupted after {result.sent + result.reused} of "
            f"{patch.total_bytes} bytes ({where}): {exc.message}",
            f"Run the same deploy again: the upload continues where it stopped ({patches_dir}/{patch.upload_name} "
            "there); a partial upload is never put in place or applied.",
        ) from None
    try:
        done = session.run(
            facts.task(*receive_patch_args(facts.root, str(patch.version), patch.upload_name)),
            what="the check of the upload (receive-patch)",
        )
    except ConnectionLost as exc:
        raise ConnectionLost(
            f"{session.name}: the connection was lost while the server checked the upload, so whether the patch "
            f"was put in place there is unknown ({exc.message.removeprefix(session.name + ': ')}).",
            "Run the same deploy again: it resumes the upload (nothing already there is sent again) and has it "
            "checked, or finds it in place; nothing was applied.",
        ) from None
    if done.exited != 0:
        if NOT_VERIFIED in done.stdout.splitlines():
            raise RemoteError(
                f"{session.name}: the uploaded patch does not verify there, so it was not put in place: "
                f"{done.last_error()}",
                "Run the deploy again (files that differ are sent again); a partial or corrupt upload is never "
                "applied. If it fails again, compare the host's verify key with the patch's signature.",
                exit_code=1,
            )
        raise RemoteError(
            f"{session.name}: receive-patch refused the upload there (exit {done.exited}): {done.last_error()}",
            "Nothing was applied. Fix what the error names on the host, then run the same deploy again.",
            exit_code=1 if done.exited in (1, 2) else None,
        )
    result.state = received(done.stdout)
    result.seconds = time.monotonic() - started
    return result
