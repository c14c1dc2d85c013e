"""The files settings are read from: pyproject's ``[tool.patchflow]`` and ``.patchflow/host.toml``.

The first is the release's, the second this machine's (:data:`HOST_SETTINGS_FILE`); both are read
as raw tables whose values :mod:`patchflow.config` converts and validates."""

from __future__ import annotations

import tomllib
from pathlib import Path

from patchflow.errors import ConfigError

#: This machine's own settings for a checkout, relative to its root (never carried by a patch).
HOST_SETTINGS_FILE = ".patchflow/host.toml"


def release_section(text: str | bytes, where: str) -> dict[str, object]:
    """The ``[tool.patchflow]`` table of a ``pyproject.toml`` given as its text (keys with ``-``
    read as ``_``); empty when the file has none.

    Raises:
        ConfigError: the text is not valid TOML or ``tool.patchflow`` is not a table (``where``
            names the file).
    """
    try:
        data = tomllib.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where} is not valid TOML: {exc}.", "Fix the file or remove [tool.patchflow].") from None
    tool = data.get("tool", {})
    section = tool.get("patchflow", {}) if isinstance(tool, dict) else {}
    if not isinstance(section, dict):
        raise ConfigError(f"[tool.patchflow] in {where} must be a table.", "Fix the file.")
    return {k.replace("-", "_"): v for k, v in section.items()}


def read_pyproject(root: Path) -> dict[str, object]:
    path = root / "pyproject.toml"
    try:
        return release_section(path.read_bytes(), str(path)) if path.is_file() else {}
    except OSError as exc:
        raise ConfigError(f"Cannot read {path}: {exc.strerror}.", "Make it readable.") from None


def host_settings_path(root: Path) -> Path:
    """The host settings file of the checkout at ``root`` (:data:`HOST_SETTINGS_FILE`)."""
    return root / HOST_SETTINGS_FILE


def read_host_settings(root: Path) -> dict[str, object]:
    """The settings this machine keeps for the checkout at ``root``: the top-level keys of
    ``.patchflow/host.toml`` (TOML; keys with ``-`` read as ``_``); empty when the file is missing.

    Raises:
        ConfigError: the file cannot be read or is not valid TOML (named).
    """
    path = host_settings_path(root)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except PermissionError:
        from patchflow.files import current_user, describe_owner

        raise ConfigError(
            f"User {current_user()} cannot read the host settings {path}: its folder {path.parent} is "
            f"{describe_owner(path.parent)} (patchflow's state is its owner's alone). Nothing was changed.",
            "Run patchflow as the user who owns the install, or make that user its owner (chown -R).",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Cannot read the host settings {path}: {exc}.", "Make it readable UTF-8 TOML.") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"The host settings {path} are not valid TOML: {exc}.",
            'Fix the file (keys as in [tool.patchflow], e.g. service_manager = "command").',
        ) from None
    return {k.replace("-", "_"): v for k, v in data.items()}
