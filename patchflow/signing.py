"""Ed25519 signatures of a patch's ``SHA256SUMS`` (PyNaCl), so a host can refuse a patch that
was not built by whoever holds the signing key.

Files: the signing key is a 32-byte seed stored as 64 hex characters (mode 0600); the verify
key is 64 hex characters (given inline or as a file); ``SHA256SUMS.sig`` holds the detached
signature of the ``SHA256SUMS`` bytes as 128 hex characters. Because ``SHA256SUMS`` covers every
other file of the folder, the signature covers the whole patch.
"""

from __future__ import annotations

import os
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


def sign_file(target: Path, signing_key: str) -> Path:
    """Sign the bytes of ``target`` and write ``<target>.sig`` (hex); returns that path.

    Raises:
        ConfigError: the key is unreadable or malformed.
    """
    key = SigningKey(_hex_value(signing_key, "signing key", "signing_key"))
    signature = key.sign(target.read_bytes()).signature
    out = target.with_name(target.name + ".sig")
    out.write_text(signature.hex() + "\n", encoding="ascii")
    return out


def check_signature(target: Path, verify_key: str) -> None:
    """Check ``<target>.sig`` against ``target`` with ``verify_key``.

    Raises:
        VerifyError: the signature is missing, malformed or does not match.
        ConfigError: the verify key is malformed.
    """
    key = VerifyKey(_hex_value(verify_key, "verify key", "verify_key"))
    sig_path = target.with_name(target.name + ".sig")
    try:
        signature = bytes.fromhex(sig_path.read_text(encoding="ascii").strip())
    except FileNotFoundError:
        raise VerifyError(
            f"{sig_path.name} is missing, but a verify key is configured.",
            "Only signed patches are accepted here; sign it with create-patch and a signing key.",
        ) from None
    except (OSError, ValueError, UnicodeDecodeError):
        raise VerifyError(f"{sig_path.name} is not a valid signature file.", "Rebuild or re-copy the patch.") from None
    try:
        key.verify(target.read_bytes(), signature)
    except (BadSignatureError, ValueError):
        raise VerifyError(
            f"{sig_path.name} does not match {target.name} for the configured verify key.",
            "The patch was altered or signed with another key: do not apply it.",
        ) from None
