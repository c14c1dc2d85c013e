"""Where ``init`` writes settings: this host's into ``.patchflow/host.toml``, the release's into
``[tool.patchflow]`` of ``pyproject.toml``; both edited with tomlkit (style-preserving TOML), never
as text.

A setting's scope (``patchflow.config.FIELDS[i].scope``) decides the file: what ``init`` detects
in the compose file for the host (service manager, database mode, service, name and user, health
URL) goes into the host file, which no patch carries or replaces; what describes the release
(compose files, application and data services) into ``pyproject.toml``, which travels with every
patch. Keys already in either file are kept. ``init --set KEY=VALUE`` writes host settings,
validated with the settings' own converters. An older ``init`` wrote the host keys into
``pyproject.toml``: when the host file lacks them, they are copied there (so a patch that
replaces ``pyproject.toml`` leaves this host's values alone).

Edits keep comments, key order, other tables and the file's line endings (CRLF stays CRLF); the
result is checked to be valid TOML with the same content plus the new keys.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError

from patchflow.config import FIELDS, HOST, HostEntry
from patchflow.errors import ConfigError
from patchflow.redact import mask_url
from patchflow.settings_files import HOST_SETTINGS_FILE

#: Host-scope settings ``init`` detects (and an older ``init`` wrote into pyproject.toml).
INIT_HOST_KEYS = (
    "service_manager",
    "database_mode",
    "database_service",
    "database_name",
    "database_user",
    "health_url",
)
HOST_HEADER = (
    "This host's own patchflow settings (created by `patchflow init`; edit as needed).",
    "No patch carries or replaces this file; its values win over [tool.patchflow] in pyproject.toml",
    "(the release's settings). Keys as in [tool.patchflow]; patchflow's README lists every setting.",
)
RELEASE_COMMENT = (
    "patchflow's settings of this release (they travel with every patch); each host keeps its own "
    "in .patchflow/host.toml"
)
_BY_NAME = {f.name: f for f in FIELDS}


@dataclass
class TomlEdit:
    """A planned edit of one TOML file: the new text (None: nothing to write), the keys it adds
    with their values and where each comes from, and notes for the plan."""

    text: str | None
    added: dict[str, tuple[Any, str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def shown(name: str, value: Any) -> str:
    """``name = value`` as TOML, passwords of URLs masked (for the plan)."""
    if isinstance(value, str) and "url" in name:
        value = mask_url(value)
    elif isinstance(value, list) and "url" in name:
        value = [mask_url(v) if isinstance(v, str) else v for v in value]
    doc = tomlkit.document()
    doc[name] = _inline(value)
    return tomlkit.dumps(doc).strip()


def _inline(value: Any) -> Any:
    """Tables as inline tables (one line in the plan)."""
    if isinstance(value, Mapping):
        table = tomlkit.inline_table()
        table.update({k: _inline(v) for k, v in value.items()})
        return table
    return value


def _plain(value: Any) -> Any:
    """A converted setting value as TOML data: tuples become lists, the command manager's
    ``(name, command)`` pairs a table, the inventory a table of tables."""
    if isinstance(value, tuple):
        if value and isinstance(value[0], HostEntry):
            fields = ("host", "path", "role", "python")
            hosts: dict[str, dict[str, object]] = {}
            for h in value:
                hosts[h.name] = {k: getattr(h, k) for k in fields if getattr(h, k)}
                if h.settings:
                    hosts[h.name]["settings"] = dict(h.settings)
            return hosts
        if value and isinstance(value[0], tuple):
            return dict(value)
        return list(value)
    return value


def parse_sets(items: Sequence[str]) -> dict[str, object]:
    """``["health_url=http://localhost:4000/health", ...]`` (from ``init --set``) as settings
    values for the host file (plain TOML data: text, numbers, lists, tables), each checked with its
    setting's converter.

    Raises:
        ConfigError: an item is not ``KEY=VALUE``, names no setting, or holds a value the setting
            refuses (one paragraph naming it; nothing is written).
    """
    values: dict[str, object] = {}
    known = sorted(f.name for f in FIELDS)
    for item in items:
        key, sep, raw = item.partition("=")
        name = key.strip().replace("-", "_")
        if not sep or not name:
            raise ConfigError(
                f"--set {item!r} is not KEY=VALUE.",
                "Pass e.g. --set health_url=http://localhost:4000/health (repeat --set for more settings).",
            )
        spec = _BY_NAME.get(name)
        if spec is None:
            import difflib

            close = difflib.get_close_matches(name, known, n=1)
            raise ConfigError(
                f"--set {key.strip()}: there is no setting {name!r}.",
                (f"Did you mean {close[0]!r}? " if close else "") + f"Known settings: {', '.join(known)}.",
            )
        try:
            values[name] = _plain(spec.convert(raw))
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                f"--set {name}={raw!r}: invalid value: {exc}.",
                f"Fix the value (the README's settings table describes {name}); nothing was written.",
            ) from None
    return values


def _parse(text: str, where: str) -> tomlkit.TOMLDocument:
    try:
        return tomlkit.parse(text)
    except TOMLKitError as exc:
        raise ConfigError(f"{where} is not valid TOML: {exc}.", "Fix the file, then run init again.") from None


def _normalize_eol(original: str, new: str) -> str:
    """``new`` with the line endings of ``original``: tomlkit writes the lines it adds with LF."""
    if "\r\n" in original and original.count("\r\n") == original.count("\n"):
        return new.replace("\r\n", "\n").replace("\n", "\r\n")
    return new


def _finish(original: str, doc: tomlkit.TOMLDocument, where: str) -> str:
    """The edited text, checked: valid TOML whose content is the original's plus the additions."""
    text = _normalize_eol(original, tomlkit.dumps(doc))
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # pragma: no cover - a tomlkit defect; refuse rather than write
        raise ConfigError(f"Editing {where} would give invalid TOML ({exc}).", "Add the settings by hand.") from None
    return text


def _keys(table: Mapping[str, Any]) -> set[str]:
    return {str(k).replace("-", "_") for k in table}


def release_table(doc: tomlkit.TOMLDocument, where: str) -> MutableMapping[str, Any] | None:
    """``tool.patchflow`` of a parsed pyproject.toml as tomlkit finds it, whatever its form: a
    table (``[tool.patchflow]``, a super-table of ``[tool.patchflow.hosts.*]``), dotted keys
    (``tool.patchflow.x = ...`` at the top level or ``patchflow.x = ...`` under ``[tool]``) or an
    inline table (``patchflow = {...}`` under ``[tool]``); None when it has none. Keys set on it
    are written in the same form.

    Raises:
        ConfigError: ``tool`` or ``tool.patchflow`` is not a table.
    """
    tool = doc.get("tool")
    if tool is None:
        return None
    if not isinstance(tool, MutableMapping):
        raise ConfigError(f"`tool` in {where} is not a table.", "Fix the file, then run init again.")
    section = tool.get("patchflow")
    if section is None:
        return None
    if not isinstance(section, MutableMapping):
        raise ConfigError(f"`tool.patchflow` in {where} is not a table.", "Fix the file, then run init again.")
    return section


def plan_release_settings(original: str | None, detected: Mapping[str, Any], where: str) -> TomlEdit:
    """The edit of ``pyproject.toml`` (its text, None when missing) adding the release-scope
    settings of ``detected`` that ``[tool.patchflow]`` does not hold yet.

    Raises:
        ConfigError: the file is not valid TOML, or ``tool``/``tool.patchflow`` is not a table.
    """
    wanted = {k: v for k, v in detected.items() if _BY_NAME[k].scope != HOST}
    doc = _parse(original or "", where)
    section = release_table(doc, where)
    present = _keys(section) if section is not None else set()
    missing = {k: v for k, v in wanted.items() if k not in present}
    if not missing:
        return TomlEdit(None)
    if section is None:
        tool = doc.get("tool")
        if tool is None:
            if doc.body and not tomlkit.dumps(doc).endswith("\n\n"):
                doc.add(tomlkit.nl())
            tool = tomlkit.table(is_super_table=True)
            doc.add("tool", tool)
        table = tomlkit.table()
        table.add(tomlkit.comment(RELEASE_COMMENT))
        tool.append("patchflow", table)
        section = table
    for key, value in missing.items():
        section[key] = value
    added = {k: (v, "detected") for k, v in missing.items()}
    note = "adds to [tool.patchflow]: " + "; ".join(shown(k, v) for k, v in missing.items())
    return TomlEdit(_finish(original or "", doc, where), added, [note])


def _unwrap(value: Any) -> Any:
    return value.unwrap() if hasattr(value, "unwrap") else value


def plan_host_settings(
    original: str | None,
    detected: Mapping[str, Any],
    release: Mapping[str, Any],
    sets: Mapping[str, Any],
) -> TomlEdit:
    """The edit of the host file (its text, None when missing): ``sets`` (from ``--set``) written
    over what is there; host-scope keys an older init left in the release's ``[tool.patchflow]``
    (``release``, as read) copied when missing; the host-scope settings of ``detected`` added when
    missing. Existing keys are kept unless ``--set`` names them.

    Raises:
        ConfigError: the host file is not valid TOML.
    """
    where = HOST_SETTINGS_FILE
    doc = _parse(original or "", where)
    present = _keys(doc)
    added: dict[str, tuple[Any, str]] = {}
    for key, value in sets.items():
        current = next((v for k, v in doc.items() if str(k).replace("-", "_") == key), None)
        if current is None or _unwrap(current) != value:
            added[key] = (value, "--set")
    release_keys = {k.replace("-", "_"): v for k, v in release.items()}
    for key in INIT_HOST_KEYS:
        if key in present or key in added:
            continue
        if key in release_keys:
            added[key] = (release_keys[key], "copied from pyproject.toml [tool.patchflow]")
        elif key in detected:
            added[key] = (detected[key], "detected")
    if not added:
        return TomlEdit(None)
    if original is None:
        for line in HOST_HEADER:
            doc.add(tomlkit.comment(line))
    for key, (value, _) in added.items():
        for existing in [k for k in doc if str(k).replace("-", "_") == key and str(k) != key]:
            del doc[existing]
        doc[key] = value
    notes = []
    for source in ("--set", "copied from pyproject.toml [tool.patchflow]", "detected"):
        keys = [k for k, (_, s) in added.items() if s == source]
        if keys:
            what = "; ".join(shown(k, added[k][0]) for k in keys)
            if source.startswith("copied"):
                notes.append(
                    f"copies from pyproject.toml [tool.patchflow] (written there by an older init): {what} "
                    "(this host keeps them when a patch replaces pyproject.toml)"
                )
            else:
                notes.append(f"sets ({source}): {what}")
    return TomlEdit(_finish(original or "", doc, where), added, notes)
