"""Ed25519 signatures of a patch's ``SHA256SUMS`` (PyNaCl), so a host can refuse a patch that
was not built by whoever holds the signing key.

Files: the signing key is a 32-byte seed stored as 64 hex characters (mode 0600); the verify
key is 64 hex characters (given inline or as a file); ``SHA256SUMS.sig`` holds the detached
signature of the ``SHA256SUMS`` bytes and of its expiry, with the signer's key and, when the key is
being replaced, the old key's announcement of the new one (:func:`sign_file`). Because
``SHA256SUMS`` covers every other file of the folder, the signature covers the whole patch.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from patchflow.errors import ConfigError, VerifyError


def _hex_value(value: str, what: str, setting: str) -> bytes:
    text = value.strip()
    path = Path(text).expanduser()
    if len(text) != 64 or not all(c in "0123456789abcdefABCDEF" for c in text):
        try:
            text = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"Cannot read the {what} {path}: {exc}.", f"Fix the {setting} setting.") from None
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ConfigError(f"The {what} must be 64 hex characters (32 bytes).", f"Fix the {setting} setting.")
    return raw


def verify_key_hex(verify_key: str) -> str:
    """The ``verify_key`` setting's key as 64 hex characters (it holds the key or names its file).

    Raises:
        ConfigError: unreadable or malformed.
    """
    return bytes(VerifyKey(_hex_value(verify_key, "verify key", "verify_key"))).hex()


def generate_key(path: Path) -> str:
    """Write a new signing key to ``path`` (mode 0600, refused if it exists); return the verify key (hex).

    Raises:
        ConfigError: ``path`` exists or cannot be written.
    """
    key = SigningKey.generate()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} already exists.", "Choose another file; a key is never overwritten.") from None
    except OSError as exc:
        raise ConfigError(f"Cannot write {path}: {exc.strerror}.", "Check the folder and permissions.") from None
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(bytes(key).hex() + "\n")
    return bytes(key.verify_key).hex()


#: The line appended to the signed bytes: the expiry is signed with the sums, so it cannot be moved.
EXPIRES_LINE = b"\npatchflow-signature-expires: "
ROTATION_PREFIX = b"patchflow key rotation: "


def _expiry_message(data: bytes, expires: str) -> bytes:
    return data + EXPIRES_LINE + expires.encode("ascii") + b"\n"


def sign_file(
    target: Path, signing_key: str, *, valid_days: float = 365.0, retiring_key: str = "", now: datetime | None = None
) -> Path:
    """Sign the bytes of ``target`` and write ``<target>.sig``; returns that path.

    The file is JSON (format 2): ``signed_by`` (the verify key, hex), ``expires`` (UTC, ISO 8601:
    ``valid_days`` after ``now``; a host refuses the patch after it, so an old signed patch cannot
    be replayed), ``signature`` (hex Ed25519 over the bytes followed by the expiry line) and, with
    ``retiring_key`` (the signing key being replaced), ``announced_by``: the retiring key's verify
    key and its signature of ``patchflow key rotation: <signed_by>``, so a host that pins the
    retiring key accepts the new one (The Update Framework's root rotation, in small).

    Raises:
        ConfigError: a key is unreadable or malformed.
    """
    key = SigningKey(_hex_value(signing_key, "signing key", "signing_key"))
    public = bytes(key.verify_key).hex()
    expires = ((now or datetime.now(UTC)) + timedelta(days=valid_days)).strftime("%Y-%m-%dT%H:%M:%SZ")
    record: dict[str, object] = {
        "format": 2,
        "signed_by": public,
        "expires": expires,
        "signature": key.sign(_expiry_message(target.read_bytes(), expires)).signature.hex(),
    }
    if retiring_key:
        old = SigningKey(_hex_value(retiring_key, "retiring signing key", "retiring_signing_key"))
        record["announced_by"] = {
            "key": bytes(old.verify_key).hex(),
            "signature": old.sign(ROTATION_PREFIX + public.encode("ascii")).signature.hex(),
        }
    out = target.with_name(target.name + ".sig")
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="ascii")
    return out


def check_signature(target: Path, verify_key: str, *, now: datetime | None = None) -> str:
    """Check ``<target>.sig`` against ``target`` with the pinned ``verify_key``. Returns the verify
    key (hex) that signed it: the pinned one, or a new one the pinned key announced (rotation).

    A format-1 file (128 hex characters, patchflow before expiries) is checked without an expiry.

    Raises:
        VerifyError: the signature is missing, malformed, does not match, was made by a key the
            pinned one never announced, or expired.
        ConfigError: the verify key is malformed.
    """
    pinned = VerifyKey(_hex_value(verify_key, "verify key", "verify_key"))
    sig_path = target.with_name(target.name + ".sig")
    try:
        text = sig_path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise VerifyError(
            f"{sig_path.name} is missing, but a verify key is configured.",
            "Only signed patches are accepted here; sign it with create-patch and a signing key.",
        ) from None
    except (OSError, UnicodeDecodeError):
        raise VerifyError(f"{sig_path.name} is not a valid signature file.", "Rebuild or re-copy the patch.") from None
    data = target.read_bytes()
    if not text.startswith("{"):
        _verify(pinned, data, text, sig_path, target)
        return bytes(pinned).hex()
    try:
        record = json.loads(text)
        signed_by, expires, signature = str(record["signed_by"]), str(record["expires"]), str(record["signature"])
        expiry = datetime.strptime(expires, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        signer = VerifyKey(bytes.fromhex(signed_by))
    except (ValueError, KeyError, TypeError):
        raise VerifyError(f"{sig_path.name} is not a valid signature file.", "Rebuild or re-copy the patch.") from None
    if signed_by != bytes(pinned).hex():
        _check_announcement(pinned, signed_by, record.get("announced_by"), sig_path)
    _verify(signer, _expiry_message(data, expires), signature, sig_path, target)
    if (now or datetime.now(UTC)) > expiry:
        raise VerifyError(
            f"{sig_path.name} expired on {expires}: the patch was signed long ago, or is an old one sent again",
            "Build the release again with create-patch (it signs it anew); an expired patch is never applied.",
        )
    return signed_by


def _check_announcement(pinned: VerifyKey, signed_by: str, announced: object, sig_path: Path) -> None:
    """Accept ``signed_by`` only when the pinned key signed its announcement.

    Raises:
        VerifyError: no announcement by the pinned key.
    """
    try:
        assert isinstance(announced, dict)
        by, signature = str(announced["key"]), bytes.fromhex(str(announced["signature"]))
        if by != bytes(pinned).hex():
            raise ValueError("announced by another key")
        pinned.verify(ROTATION_PREFIX + signed_by.encode("ascii"), signature)
    except (AssertionError, KeyError, ValueError, BadSignatureError):
        raise VerifyError(
            f"{sig_path.name} was made by key {signed_by[:16]}..., which the pinned verify key never announced.",
            "The patch was signed with another key: do not apply it. (A new signing key is accepted when the "
            "patch carries its announcement signed by the pinned one: create-patch with retiring_signing_key.)",
        ) from None


def _verify(key: VerifyKey, message: bytes, signature_hex: str, sig_path: Path, target: Path) -> None:
    try:
        key.verify(message, bytes.fromhex(signature_hex))
    except (BadSignatureError, ValueError):
        raise VerifyError(
            f"{sig_path.name} does not match {target.name} for the configured verify key.",
            "The patch was altered or signed with another key: do not apply it.",
        ) from None
