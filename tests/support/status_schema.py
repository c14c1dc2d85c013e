"""The README's "patch-status --json" table as data, and a check that a status JSON matches it.

Each row of the table is ``| `path` | type | meaning |``: ``a[].b`` is field ``b`` of the
objects in array ``a``, ``a.b`` field ``b`` of object ``a``; the type is ``string``, ``integer``,
``number``, ``boolean``, ``array ...`` or ``object``, with ``or null``; ``*(optional)*`` in the
meaning marks a field only some records have; ``(fields as `x[]`)`` says an object has the fields
of ``x[]``. An object with no documented fields of its own (``history[].steps``) is open.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from support.installs import REPO

TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}


@dataclass(frozen=True)
class Field:
    path: str
    types: tuple[str, ...]
    optional: bool
    same_as: str | None


def documented() -> dict[str, Field]:
    """Every field of the README's table, by path."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## patch-status --json\n", 1)[1].split("\n## ", 1)[0]
    fields = {}
    for path, kind, meaning in re.findall(r"^\| `([^`]+)` \| ([^|]+?) \| (.*) \|$", section, re.MULTILINE):
        types = tuple(part.strip().split()[0] for part in kind.split(" or "))
        assert all(t in TYPES for t in types), (path, kind)
        same = re.search(r"\(fields as `([^`]+)`\)", meaning)
        fields[path] = Field(path, types, "*(optional)*" in meaning, same.group(1) if same else None)
    assert fields, "the README has no patch-status --json table"
    return fields


def children(fields: dict[str, Field], parent: str) -> dict[str, Field]:
    """The documented fields directly inside ``parent`` ("" for the top level, ``a[]`` for the
    objects of array ``a``), following ``fields as``."""
    field = fields.get(parent)
    if field is not None and field.same_as:
        parent = field.same_as
    prefix = f"{parent}." if parent else ""
    found = {}
    for path, item in fields.items():
        if path.startswith(prefix) and path != parent:
            rest = path[len(prefix) :]
            if rest and "." not in rest and "[" not in rest:
                found[rest] = item
    return found


def _type_ok(value: Any, types: tuple[str, ...]) -> bool:
    if isinstance(value, bool):
        return "boolean" in types
    return any(isinstance(value, TYPES[t]) for t in types)


def problems(status: dict[str, Any]) -> list[str]:
    """What in ``status`` differs from the README's table (empty: it matches)."""
    fields = documented()
    found: list[str] = []

    def walk(value: Any, path: str) -> None:
        field = fields.get(path)
        if field is not None and not _type_ok(value, field.types):
            found.append(f"{path}: {type(value).__name__} {value!r:.60} is not {' or '.join(field.types)}")
            return
        if isinstance(value, dict):
            inside = children(fields, path)
            if not inside and path:
                return  # an open object (step name -> seconds)
            for key, item in value.items():
                child = f"{path}.{key}" if path else key
                if key not in inside:
                    found.append(f"{child}: not documented")
                    continue
                walk(item, inside[key].path)
            for key, item_field in inside.items():
                if key not in value and not item_field.optional:
                    found.append(f"{path + '.' if path else ''}{key}: documented, missing")
        elif isinstance(value, list):
            element = f"{path}[]"
            if children(fields, element):
                for item in value:
                    walk(item, element)
            elif field is not None and "of strings" in _kind_text(path):
                found.extend(f"{path}: {item!r} is not a string" for item in value if not isinstance(item, str))

    walk(status, "")
    return found


def _kind_text(path: str) -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    row = re.search(rf"^\| `{re.escape(path)}` \| ([^|]+?) \|", text, re.MULTILINE)
    return row.group(1) if row else ""


def assert_matches_readme(status: dict[str, Any]) -> None:
    """Fail naming every field of ``status`` the README does not document as emitted."""
    wrong = problems(status)
    assert not wrong, "patch-status --json differs from the README's table:\n" + "\n".join(wrong)
