"""State files are inputs: the seal patchflow puts on each JSON record it writes and later trusts.

A record patchflow reads back to decide what to delete, restore or skip (the install's tree record
``installed-manifest.json`` and its ``installed.json``, a backup's ``backup.json``, the journal,
the lock's holder record, the verify cache, each line of ``history.jsonl``) carries:

* ``state_format``: the format of the record (:data:`STATE_FORMAT`); a reader refuses a higher one
  (a newer patchflow wrote it: its meaning is not guessed);
* ``checksum``: SHA-256 (hex) of the record without that key, as canonical JSON (sorted keys,
  compact separators, UTF-8, not ASCII-escaped). A record whose checksum does not match was changed
  after patchflow wrote it (a torn write, a disk fault, a hand edit) and is refused with a message
  naming the file and what to do.

A record without a ``checksum`` was written by a patchflow older than the seal and is read as it is
(an install upgraded in place keeps working). The checksum catches damage, not an attacker who
recomputes it: the files are the install owner's alone (0600/0644 in 0700 folders), and patches are
signed (``patch_verify_key``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from patchflow.errors import PatchflowError
from patchflow.paths import ProjectPaths

CHECKSUM_KEY = "checksum"
FORMAT_KEY = "state_format"
#: The format of the records this patchflow writes (and the highest it reads).
STATE_FORMAT = 1


class StateFileError(PatchflowError):
    """A state file patchflow wrote fails its seal (changed since) or is of a newer format."""


def record_checksum(data: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of ``data`` without its ``checksum`` key, as canonical JSON (sorted keys,
    compact separators, UTF-8)."""
    body = {key: value for key, value in data.items() if key != CHECKSUM_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def seal(data: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` with ``state_format`` (when it has none) and its ``checksum``."""
    sealed = {key: value for key, value in data.items() if key != CHECKSUM_KEY}
    sealed.setdefault(FORMAT_KEY, STATE_FORMAT)
    sealed[CHECKSUM_KEY] = record_checksum(sealed)
    return sealed


def seal_problem(data: Mapping[str, Any]) -> str:
    """Why ``data`` may not be trusted (empty when it may): a newer ``state_format`` or a checksum
    that does not match. A record without a checksum (an older patchflow's) passes."""
    found = data.get(FORMAT_KEY, STATE_FORMAT)
    if not isinstance(found, int) or found > STATE_FORMAT:
        return f"it was written by a newer patchflow (state format {found}; this one reads {STATE_FORMAT})"
    recorded = data.get(CHECKSUM_KEY)
    if recorded is None:
        return ""
    if not isinstance(recorded, str) or recorded != record_checksum(data):
        return "it fails its checksum (changed after patchflow wrote it: a torn write, a disk fault, a hand edit)"
    return ""


def unsealed(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` without the seal's keys (what the writer gave :func:`seal`)."""
    return {key: value for key, value in data.items() if key not in (CHECKSUM_KEY, FORMAT_KEY)}


def read_sealed(path: Path, what: str, remedy: str) -> dict[str, Any] | None:
    """The JSON object in ``path`` after its seal is checked; None when the file does not exist.

    ``what`` names the record in the message (``the install's tree record``); ``remedy`` is the
    hint (what the operator does about a damaged one).

    Raises:
        StateFileError: unreadable, not a JSON object, of a newer format or failing its checksum.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateFileError(f"{what.capitalize()} {path} cannot be read: {exc.strerror}.", remedy) from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise StateFileError(f"{what.capitalize()} {path} is damaged: it is not JSON ({exc}).", remedy) from None
    if not isinstance(data, dict):
        raise StateFileError(f"{what.capitalize()} {path} is damaged: it is not a JSON object.", remedy)
    problem = seal_problem(data)
    if problem:
        raise StateFileError(f"{what.capitalize()} {path} may not be trusted: {problem}.", remedy)
    return data


def tree_record_problem(paths: ProjectPaths) -> str:
    """Why the install's tree record (``.patchflow/installed-manifest.json``) may not be trusted
    (empty when it may, or when there is none)."""
    path = paths.installed_manifest
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return ""
    except (OSError, ValueError) as exc:
        return f"The install's tree record {path} is damaged: {exc}."
    problem = seal_problem(data) if isinstance(data, dict) else "it is not a JSON object"
    return f"The install's tree record {path} may not be trusted: {problem}." if problem else ""
