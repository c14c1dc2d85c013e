"""The patch tasks: create-patch, verify-patch, create-signing-key and patch-status.

patch-status runs here, or on hosts over SSH through :mod:`patchflow.tasks.deploy`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from invoke.context import Context

from patchflow.console import byte_progress, console
from patchflow.tasks.edge import REMOTE_HELP, ROOT_HELP, command, settings_for
from patchflow.units import human_bytes
from patchflow.version import PatchVersion, parse_version

if TYPE_CHECKING:
    from patchflow.paths import ProjectPaths


@command(
    help={
        "root": ROOT_HELP,
        "version": "patch version (default: the VERSION file, never modified; when it names an older version "
        "the patch carries VERSION with this one)",
        "force": "replace an existing patches/vX.Y.Z/ folder",
        "base": "build a delta patch against this version (patches/vBASE/ must exist and verify): "
        "only files added or changed since it are packed",
    }
)
def create_patch(
    c: Context, version: str | None = None, root: str | None = None, force: bool = False, base: str | None = None
) -> None:
    """Build patches/vX.Y.Z/ (archive, checksums, manifest, README, CHANGELOG, schema.sql)."""
    from patchflow.lifecycle.create import create_patch as build

    settings = settings_for(c, root)
    parsed = parse_version(version, source="--version") if version else None
    parsed_base = parse_version(base, source="--base") if base else None
    with byte_progress() as progress:
        created = build(
            settings, parsed, force=force, progress=progress, base=parsed_base,
            log=lambda line: console.print(f"  {line}", markup=False, highlight=False),  # the step lines
        )  # fmt: skip
    for warning in created.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    if created.version_note:
        console.print(created.version_note, markup=False, highlight=False)
    delta = f" (delta from {created.base_version}: {created.members} entries packed)" if created.base_version else ""
    console.print(
        f"[green]created[/] patch {created.version.tag}: {created.file_count} files, "
        f"{human_bytes(created.total_bytes)} packed into {human_bytes(created.archive_size)}, "
        f"{len(created.migrations)} migrations{delta}"
    )
    console.print(f"  folder  {created.folder}")
    console.print(f"  sha256  {created.archive_sha256}")


@command(
    help={
        "root": ROOT_HELP,
        "version": "patch version to verify (e.g. 2.3.0; default: the version in the VERSION file)",
        "deep": "also decompress the archive and compare every member with the manifest "
        "(apply does this check while it extracts)",
    }
)
def verify_patch(c: Context, version: str | None = None, root: str | None = None, deep: bool = False) -> None:
    """Check a patch folder: md5, SHA256SUMS, signature and manifest (--deep: archive members too)."""
    from patchflow.paths import ProjectPaths
    from patchflow.verify import verify_patch as check

    settings = settings_for(c, root)
    paths = ProjectPaths.from_settings(settings)
    if version:
        parsed = parse_version(version, source="--version")
    else:
        parsed = _version_from_file(paths)
        console.print(f"verifying {parsed.tag}, the version in {paths.version_file} (--version for another)")
    report = check(paths.patch_dir(parsed), parsed, verify_key=settings.verify_key, deep=deep)
    signed = " and signature" if settings.verify_key else ""
    listed = len(report.manifest.get("files", []))
    base = f", a delta on {report.delta['base_version']}" if report.delta else ""  # a delta lists only its members
    what = f"{listed} entries{base}"
    if deep:
        console.print(
            f"[green]ok[/] patch {parsed.tag}: checksums{signed} match; "
            f"{listed} archive members match the manifest ({what})"
        )
    else:
        console.print(
            f"[green]ok[/] patch {parsed.tag}: checksums{signed} and manifest match ({what}; "
            "archive members are checked when it is applied, or with --deep)"
        )


def _version_from_file(paths: ProjectPaths) -> PatchVersion:
    """The version in ``paths.version_file``, for a task run without ``--version``.

    Raises:
        VersionError: the file is missing, unreadable or not a version; the hint names the patches
            found in the patches folder.
    """
    from patchflow.errors import VersionError
    from patchflow.paths import MANIFEST
    from patchflow.version import read_version_file

    try:
        return read_version_file(paths.version_file)
    except VersionError as exc:
        folder = paths.patches
        found = sorted(p.name for p in folder.glob("v*") if (p / MANIFEST).is_file()) if folder.is_dir() else []
        where = f"patches in {folder}: {', '.join(found)}" if found else f"no patches in {folder}"
        raise VersionError(
            f"No --version given, so the version in the VERSION file is used, but: {exc.message}",
            f"Pass --version X.Y.Z ({where}), or fix VERSION; nothing was checked.",
        ) from None


@command(help={"out": "file to write the new signing key to (mode 0600; never overwritten)"})
def create_signing_key(c: Context, out: str | None = None) -> None:
    """Create an Ed25519 signing key for patches and print its verify key."""
    from patchflow.errors import ConfigError
    from patchflow.signing import generate_key

    if not out:
        raise ConfigError("No output file given.", "Pass --out path/to/patch-signing.key.")
    public = generate_key(Path(out))
    console.print(f"signing key written to {out} (keep it secret; set PATCHFLOW_SIGNING_KEY={out} for create-patch)")
    console.print(f"verify key: {public}")
    console.print("set PATCHFLOW_VERIFY_KEY to it on every host that applies patches")


@command(
    help={
        "root": ROOT_HELP,
        "json": "print machine-readable JSON instead of tables",
        "history": "INT: number of history entries to show",
        "verify": "verify every patch fully now (archive members too) instead of using cached checksum results",
        **REMOTE_HELP,
    }
)
def patch_status(
    c: Context,
    root: str | None = None,
    json_: bool = False,
    history: int = 10,
    verify: bool = False,
    host: str | None = None,
    hosts: str | None = None,
    role: str | None = None,
) -> None:
    """Show the installed version, patches, backups, apply history and any interrupted apply."""
    from patchflow.status import collect_status
    from patchflow.tasks.status_view import render_status

    if host or hosts or role:
        from patchflow.tasks.deploy import remote_status

        remote_status(c, root, host, hosts, role, json_=json_, history=history)
        return
    settings = settings_for(c, root)
    status = collect_status(settings, history_limit=history, verify_archives=verify)
    if json_:
        print(json.dumps(status, indent=2, ensure_ascii=False))
    else:
        render_status(status, console)
