"""What a patch changes in patchflow's own settings: the release's ``[tool.patchflow]``.

A patch carries the project's ``pyproject.toml`` and with it the release's ``[tool.patchflow]``
(:mod:`patchflow.config`). Before anything stops, the plan compares the installed release's
section with the patch's and lists every setting whose value changes on this host, with the source
that decides it after the switch; a release value this host overrides (in ``.patchflow/host.toml``,
``.env``, the environment or a flag) is listed as kept. A patch whose section is not valid TOML or
holds an invalid setting is refused: every later command (the rollback included) would fail on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchflow.config import FIELDS, HOST, Settings, convert_setting, format_setting
from patchflow.errors import ConfigError, VerifyError
from patchflow.settings_files import release_section

PYPROJECT = "pyproject.toml"
_RELEASE_SOURCES = ("default", "pyproject.toml")


@dataclass(frozen=True)
class SettingChange:
    """One setting the new release's ``[tool.patchflow]`` changes.

    ``before``/``after`` are the values in effect on this host before and after the switch (as
    written in an environment variable); ``release_before``/``release_after`` what the two
    releases say (empty: not set there, the default applies). ``kept_by`` names the layer that
    keeps this host's value (``.patchflow/host.toml``, ``.env:PATCHFLOW_X``...), empty when the
    release's value takes effect; ``scope`` is the setting's (``host`` or ``release``).
    """

    name: str
    scope: str
    before: str
    after: str
    release_before: str
    release_after: str
    kept_by: str = ""

    def describe(self) -> str:
        """One line for the plan."""
        if self.kept_by:
            return (
                f"{self.name}: the release now says {self.release_after or '(default)'}; this host keeps "
                f"{self.before} ({self.kept_by})"
            )
        line = f"{self.name}: {self.before} -> {self.after} (release pyproject.toml)"
        if self.scope == HOST:
            line += "; a host setting: pin this host's value in .patchflow/host.toml to keep it whatever a release says"
        return line


def _text(value: Any) -> str:
    return format_setting(value) if value is not None else ""


def release_changes(
    settings: Settings, new_pyproject: bytes | None, *, removed: bool = False, where: str = PYPROJECT
) -> list[SettingChange]:
    """Compare the installed release's ``[tool.patchflow]`` (the root's ``pyproject.toml``) with
    the one a patch brings.

    Args:
        settings: the settings in effect now (their sources tell which values this host overrides).
        new_pyproject: the bytes of the patch's ``pyproject.toml``; None when the patch leaves the
            file as it is (``removed`` False) or removes it (``removed`` True).
        where: how the patch's file is named in errors.

    Returns:
        The settings whose release value changes, in the settings' order.

    Raises:
        VerifyError: the patch's ``pyproject.toml`` is not valid TOML, or its ``[tool.patchflow]``
            holds an unknown setting or an invalid value. Nothing was changed.
    """
    if new_pyproject is None and not removed:
        return []
    current_path = settings.root / PYPROJECT
    try:
        old = release_section(current_path.read_bytes(), str(current_path)) if current_path.is_file() else {}
    except (OSError, ConfigError):
        old = {}  # the installed file is unreadable or broken: the settings loaded without it
    try:
        new = release_section(new_pyproject, where) if new_pyproject is not None else {}
        parsed_new = {name: convert_setting(name, raw, f"{where} [tool.patchflow]") for name, raw in new.items()}
    except ConfigError as exc:
        raise VerifyError(
            f"The patch's settings cannot be used: {exc.message}",
            f"{exc.hint} Every command after the switch (the rollback too) would fail on them: fix "
            "[tool.patchflow] in the project's pyproject.toml and rebuild the patch. Nothing was changed.",
        ) from None
    changes = []
    for spec in FIELDS:
        if old.get(spec.name) == new.get(spec.name):
            continue
        try:
            parsed_old = convert_setting(spec.name, old[spec.name], PYPROJECT) if spec.name in old else spec.default
        except ConfigError:
            parsed_old = None
        now = getattr(settings, spec.name)
        after_release = parsed_new.get(spec.name, spec.default)
        if parsed_old == after_release:
            continue  # written differently, same value
        source = settings.source(spec.name)
        kept = "" if source in _RELEASE_SOURCES else source
        changes.append(
            SettingChange(
                name=spec.name,
                scope=spec.scope,
                before=_text(now),
                after=_text(now if kept else after_release),
                release_before=_text(parsed_old) if spec.name in old else "",
                release_after=_text(parsed_new.get(spec.name)),
                kept_by=kept,
            )
        )
    return changes


def pyproject_in_patch(archive: Path, in_archive: bool, in_tree: bool) -> tuple[bytes | None, bool]:
    """``(bytes, removed)`` of the patch's ``pyproject.toml``: its bytes when the archive holds it
    (``in_archive``), ``(None, True)`` when the patch's tree has none (``in_tree`` False), else
    ``(None, False)`` (a delta that leaves it as it is).

    Raises:
        ArchiveError: the archive is corrupt before that member.
    """
    if in_archive:
        from patchflow.archive.reader import read_member_bytes

        data = read_member_bytes(archive, {PYPROJECT}, limit=4 << 20).get(PYPROJECT)
        return data, False
    return None, not in_tree
