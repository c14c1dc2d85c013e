"""A deploy freeze: a person's "not now" on one install, with a message (Kamal's ``lock acquire -m``).

``inv lock --message "DB maintenance until 14:00 - Ana"`` writes ``.patchflow/freeze.json`` (sealed,
:mod:`patchflow.state_files`): the message, who set it (user@host) and when. While it is there every
apply, rollback and deploy on that install refuses before it changes anything, showing the message,
who and when; ``patch-status`` shows it (``freeze`` in ``--json``, and a deploy's host facts carry
it, so the deploy refuses before it uploads). ``inv unlock`` lifts it. It is not the apply lock (which
a running apply holds): nothing expires it; a person lifts it.
"""

from __future__ import annotations

import getpass
import socket
from datetime import UTC, datetime
from pathlib import Path

from patchflow.errors import ConfigError, PreconditionError
from patchflow.lifecycle.journal import write_json_atomic
from patchflow.state_files import StateFileError, read_sealed, seal, unsealed
from patchflow.status_schema import FreezeJson

FREEZE_FILE = "freeze.json"
REMEDY = "Lift it with `inv unlock` once it is certain nobody relies on it (or move the file aside)."


def freeze_path(state: Path) -> Path:
    """Where the freeze of the install whose state folder is ``state`` is kept."""
    return state / FREEZE_FILE


def read_freeze(state: Path) -> FreezeJson | None:
    """The install's freeze, None when there is none.

    Raises:
        StateFileError: the file is damaged or fails its seal (a freeze is never guessed away).
    """
    data = read_sealed(freeze_path(state), "the deploy freeze", REMEDY)
    if data is None:
        return None
    body = unsealed(data)
    return FreezeJson(
        message=str(body.get("message", "")),
        user=str(body.get("user", "")),
        host=str(body.get("host", "")),
        set_at=str(body.get("set_at", "")),
    )


def set_freeze(state: Path, message: str) -> FreezeJson:
    """Freeze the install with ``message`` (replacing an earlier freeze); returns the record.

    Raises:
        ConfigError: the message is empty.
    """
    text = " ".join(message.split())
    if not text:
        raise ConfigError(
            "A freeze needs a message: what is going on, until when, and who to ask.",
            'Pass --message "DB maintenance until 14:00 - Ana". Nothing was changed.',
        )
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    record = FreezeJson(
        message=text,
        user=user,
        host=socket.gethostname(),
        set_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    write_json_atomic(freeze_path(state), seal(dict(record)))
    return record


def clear_freeze(state: Path) -> FreezeJson | None:
    """Lift the freeze; returns what it said (None when there was none). A damaged freeze file is
    removed too: lifting is what the operator asked for."""
    try:
        previous = read_freeze(state)
    except StateFileError:
        previous = None
    freeze_path(state).unlink(missing_ok=True)
    return previous


def describe(freeze: FreezeJson) -> str:
    """``"DB maintenance until 14:00 - Ana" (set by ana@db1 at 2026-12-07T21:00:00Z)``."""
    return f'"{freeze["message"]}" (set by {freeze["user"]}@{freeze["host"]} at {freeze["set_at"]})'


def refuse_when_frozen(state: Path, action: str) -> None:
    """Refuse ``action`` (apply, rollback, deploy) on a frozen install.

    Raises:
        PreconditionError: a freeze is set (its message, who and when named); nothing changed.
        StateFileError: the freeze file is damaged.
    """
    from patchflow.maintenance_page import planned

    notice = planned(state)
    if notice is not None:
        raise PreconditionError(
            f"A planned maintenance notice answers on {notice.get('ports')} since "
            f"{notice.get('since')} (pid {notice.get('pid')}): the {action} is refused; nothing was changed.",
            "End it with `inv maintenance --off` (and start the app again with `inv up`) first.",
        )
    freeze = read_freeze(state)
    if freeze is None:
        return
    raise PreconditionError(
        f"This install is frozen: {describe(freeze)}. The {action} is refused; nothing was changed.",
        "Ask whoever set it; `inv unlock` lifts the freeze.",
    )
