"""Delta patches: a manifest that lists only what changed since a base patch, and the full tree
rebuilt from it.

A delta patch (``create-patch --base 2.3.0``) has manifest ``"format": 2``. Its ``"files"`` hold
only the entries added or changed since the base, which are exactly the archive's members;
``"deleted"`` the base paths the new tree no longer has; and::

    "delta": {
        "base_version": "2.3.0",
        "base_manifest_sha256": "<sha256 of the base patch's manifest.json bytes>",
        "base_tree_sha256": "<tree_sha256 of the base's whole tree>",
        "tree_sha256": "<tree_sha256 of the whole new tree>"
    }

``base_manifest_sha256`` names the exact base patch folder it was built from (for people: a
rebuilt base with the same tree is as good, so only the tree hashes are checked). ``file_count``,
``total_bytes`` and ``migrations`` describe the whole new tree. A one-file delta
of a 40,000-file tree is therefore a few kilobytes, not a manifest of the whole tree.

The whole tree is rebuilt as base entries - ``deleted`` + ``files`` and must hash to
``tree_sha256``; the base entries come from the install's record of its tree
(``.patchflow/installed-manifest.json``, always a whole tree) and must hash to
``base_tree_sha256``. Both checks make a delta refuse to apply on any tree but its own base and
make a damaged or hand-edited delta refuse to apply at all. Older patchflow versions refuse a
format-2 manifest (they require ``delta.members``) instead of misreading it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from patchflow.errors import VerifyError
from patchflow.manifest import Entry

FULL_FORMAT = 1
DELTA_FORMAT = 2


def tree_sha256(entries: Iterable[Entry]) -> str:
    """The sha256 (hex) of a whole tree: one line of compact, key-sorted JSON per entry
    (:meth:`Entry.to_json`), in path order. Equal trees give equal digests whatever their order
    or source (a scan, a manifest, a rebuilt delta)."""
    digest = hashlib.sha256()
    for entry in sorted(entries, key=lambda e: e.path):
        digest.update(json.dumps(entry.to_json(), sort_keys=True, separators=(",", ":")).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def manifest_entries(manifest: Mapping[str, Any]) -> dict[str, Entry]:
    """The ``files`` of a manifest as path -> :class:`Entry`."""
    return {item["path"]: Entry.from_json(item) for item in manifest.get("files", [])}


def rebuild_tree(base: Mapping[str, Entry], changed: Iterable[Entry], deleted: Iterable[str]) -> dict[str, Entry]:
    """``base`` without the ``deleted`` paths, with every entry of ``changed`` put in (path ->
    :class:`Entry`). Pure; the caller checks the result against the delta's ``tree_sha256``.

    Raises:
        ValueError: ``deleted`` names paths ``base`` does not have (a delete the tree hash cannot
            vouch for: it would remove a file the host added).
    """
    tree = dict(base)
    stray = [path for path in deleted if path not in tree]
    if stray:
        raise ValueError(f"it deletes paths its base does not have: {', '.join(stray[:10])}")
    for path in deleted:
        del tree[path]
    for entry in changed:
        tree[entry.path] = entry
    return tree


def expand_delta(manifest: dict[str, Any], records: Sequence[Path]) -> dict[str, Entry]:
    """The whole tree a delta manifest ends on, rebuilt from the first of ``records`` (manifests
    of whole trees, normally ``.patchflow/installed-manifest.json`` and the backup's copy of it)
    that holds the delta's base tree. A record that already holds the delta's new tree (the apply
    was killed after it wrote its record) is returned as it is.

    Args:
        manifest: a verified format-2 manifest (see the module docstring).
        records: candidate manifest files, in order of preference; missing ones are skipped.

    Returns:
        path -> :class:`Entry` of the whole new tree (its ``tree_sha256`` checked).

    Raises:
        VerifyError: no record holds the base tree (the install is not the base build, or has no
            record of its tree), or the rebuilt tree does not hash to ``tree_sha256`` (the delta
            is damaged). Nothing was changed.
    """
    delta = manifest["delta"]
    version, base = manifest.get("version", "?"), delta["base_version"]
    damaged = (
        f"Do not apply it: rebuild it with `inv create-patch --version {version} --base {base}`, or apply "
        f"the full patch of {version}. Nothing was changed."
    )
    seen: list[str] = []
    for record in records:
        try:
            data = json.loads(record.read_text(encoding="utf-8"))
            entries = manifest_entries(data)
        except FileNotFoundError:
            continue
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            seen.append(f"{record} cannot be read ({type(exc).__name__}: {exc})")
            continue
        found = tree_sha256(entries.values())
        if found == delta["tree_sha256"]:
            return entries
        if found != delta["base_tree_sha256"]:
            seen.append(f"{record} holds {data.get('version', 'an unknown version')} (tree sha256 {found[:12]})")
            continue
        try:
            tree = rebuild_tree(entries, manifest_entries(manifest).values(), manifest.get("deleted", []))
        except ValueError as exc:
            raise VerifyError(
                f"The delta patch {version} does not fit the tree of {base}: {exc} (its manifest is damaged or was "
                "edited).",
                damaged,
            ) from None
        rebuilt = tree_sha256(tree.values())
        if rebuilt != delta["tree_sha256"]:
            raise VerifyError(
                f"The delta patch {version} does not rebuild its own tree: {base}'s tree plus its changes hash "
                f"to {rebuilt[:12]}, the patch says {delta['tree_sha256'][:12]} (its manifest is damaged or was "
                "edited).",
                damaged,
            )
        return tree
    why = "; ".join(seen) if seen else "the install has no record of its tree (.patchflow/installed-manifest.json)"
    raise VerifyError(
        f"The delta patch {version} is built on the tree of {base} (tree sha256 "
        f"{delta['base_tree_sha256'][:12]}), and this install's tree is not known to be that one: {why}.",
        f"Apply the full patch of {version} (a delta needs an install that a patch of {base} was applied to, "
        "from the same build). Nothing was changed.",
    )


def full_manifest(manifest: dict[str, Any], tree: Mapping[str, Entry]) -> dict[str, Any]:
    """A copy of the delta ``manifest`` that lists the whole ``tree`` in ``files`` (format 1, what
    an install records as its tree); its ``delta`` object is kept as ``applied_delta``, with
    ``members`` naming the paths the delta's archive held."""
    whole = {key: value for key, value in manifest.items() if key != "delta"}
    whole["format"] = FULL_FORMAT
    whole["files"] = [tree[path].to_json() for path in sorted(tree)]
    whole["applied_delta"] = {**manifest["delta"], "members": sorted(item["path"] for item in manifest["files"])}
    return whole
