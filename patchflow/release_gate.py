"""The release checklist at create-patch: PATCH_SYSTEM.md's "before creating a patch", checked and
recorded in the patch's manifest (``checklist``).

* ``changelog``: ``PATCH_CHANGELOG.md`` has a section for this version;
* ``version``: the version is greater than the newest patch of ``patches/`` and one SemVer step
  from it (the next patch, minor or major version, or a pre-release of one);
* ``committed``: the git checkout has no change that is not committed (the manifest's ``source``);
* ``preflight``: ``inv preflight`` passed on this very commit, with nothing uncommitted (it
  records each pass in ``.patchflow/preflight.json``).

Each item is ``{"ok": true|false|null, "detail": ...}`` (null: cannot be known, e.g. no git). The
``release_checks`` setting says what a failed item does: ``warn`` (a create-patch warning; the
default), ``refuse`` (create-patch stops before it writes anything) or ``off`` (not checked, not
recorded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from patchflow.errors import CreatePatchError
from patchflow.lifecycle.journal import utc_now, write_json_atomic
from patchflow.state_files import StateFileError, read_sealed, seal, unsealed
from patchflow.version import PatchVersion, parse_version

PREFLIGHT_RECORD = "preflight.json"


def record_preflight_pass(state: Path, source: dict[str, Any] | None) -> None:
    """Note that preflight passed on the checkout's current commit (``source``: its git commit and
    whether it had changes; None outside git)."""
    write_json_atomic(
        state / PREFLIGHT_RECORD,
        seal({"commit": (source or {}).get("commit"), "dirty": bool((source or {}).get("dirty")), "at": utc_now()}),
    )


def _newest_patch(patches: Path, version: PatchVersion) -> PatchVersion | None:
    found = []
    for folder in patches.glob("v*") if patches.is_dir() else []:
        try:
            other = parse_version(folder.name.removeprefix("v"))
        except Exception:
            continue
        if other != version and (folder / "manifest.json").is_file():
            found.append(other)
    return max(found) if found else None


def _one_step(old: PatchVersion, new: PatchVersion) -> bool:
    steps = {
        (old.major, old.minor, old.patch + 1),
        (old.major, old.minor + 1, 0),
        (old.major + 1, 0, 0),
        (old.major, old.minor, old.patch),  # a release of old's pre-release, or a newer pre-release
    }
    return (new.major, new.minor, new.patch) in steps


def release_checklist(
    paths_patches: Path, state: Path, version: PatchVersion, source: dict[str, Any] | None, changelog_note: str
) -> dict[str, dict[str, Any]]:
    """The checklist of the module docstring for a patch of ``version``."""
    items: dict[str, dict[str, Any]] = {}
    items["changelog"] = {"ok": not changelog_note, "detail": changelog_note or f"PATCH_CHANGELOG.md has {version}"}
    newest = _newest_patch(paths_patches, version)
    if newest is None:
        items["version"] = {"ok": None, "detail": "no earlier patch in patches/ to compare with"}
    elif not newest < version:
        items["version"] = {"ok": False, "detail": f"{version} is not greater than the newest patch {newest}"}
    elif not _one_step(newest, version):
        items["version"] = {"ok": False, "detail": f"{newest} -> {version} skips a version (not one SemVer step)"}
    else:
        items["version"] = {"ok": True, "detail": f"{newest} -> {version}"}
    if source is None:
        items["committed"] = {"ok": None, "detail": "not a git checkout"}
    else:
        dirty = bool(source.get("dirty"))
        items["committed"] = {
            "ok": not dirty,
            "detail": f"changes not committed on {source.get('commit')}" if dirty else f"commit {source.get('commit')}",
        }
    try:
        passed = read_sealed(state / PREFLIGHT_RECORD, "the preflight record", "")
    except StateFileError:
        passed = None
    record = unsealed(passed) if passed else None
    if record is None:
        items["preflight"] = {"ok": False, "detail": "inv preflight has not passed on this checkout"}
    elif source is None or record.get("commit") != source.get("commit") or record.get("dirty") or source.get("dirty"):
        items["preflight"] = {
            "ok": False,
            "detail": f"inv preflight passed on another tree at {record.get('at')}",
        }
    else:
        items["preflight"] = {"ok": True, "detail": f"inv preflight passed at {record.get('at')}"}
    return items


def enforce(checklist: dict[str, dict[str, Any]], mode: str) -> list[str]:
    """The warnings of the failed items (``warn``), or refuse (``refuse``).

    Raises:
        CreatePatchError: ``mode`` is ``refuse`` and an item failed (each named); nothing was written.
    """
    failed = [f"{name}: {str(item['detail']).rstrip('.')}" for name, item in checklist.items() if item["ok"] is False]
    if failed and mode == "refuse":
        raise CreatePatchError(
            f"The release checklist failed: {'; '.join(failed)}. Nothing was written.",
            'Fix each item (or set release_checks = "warn" to build it anyway, recorded in its manifest).',
        )
    return [f"release checklist: {line}" for line in failed]
