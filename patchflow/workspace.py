"""The packages of a pnpm workspace, found the way pnpm finds them (for preflight).

A project is a pnpm workspace when its root holds ``pnpm-workspace.yaml``
(https://pnpm.io/pnpm-workspace_yaml): its ``packages`` list holds globs of package folders
relative to the root (``apps/*``, ``packages/**``), ``!`` globs remove folders again, and a folder
is a package when it holds a ``package.json``; ``node_modules`` is never searched. The root is a
package of its own (``pnpm ls -r`` lists it first). Without that file the project is its root
alone (npm's and yarn's ``workspaces`` field is not read: preflight runs pnpm, which ignores it).
The globs are expanded with the standard library's :func:`glob.glob` (``*`` within one folder
name, ``**`` across folders, hidden folders left out), the YAML read with PyYAML.
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patchflow.errors import PatchflowError

WORKSPACE_FILE = "pnpm-workspace.yaml"


@dataclass(frozen=True)
class Package:
    """One package: its folder, ``rel`` its path from the root (``.`` for the root), its
    ``package.json`` name (or ``rel``) and its ``scripts`` (name -> command text)."""

    folder: Path
    rel: str
    name: str
    scripts: dict[str, str] = field(default_factory=dict)


def _read_package(folder: Path, rel: str) -> Package:
    """The package in ``folder`` (``package.json`` may be missing: no name, no scripts).

    Raises:
        PatchflowError: ``package.json`` is not valid JSON or not an object (named).
    """
    path = folder / "package.json"
    if not path.is_file():
        return Package(folder, rel, rel)
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PatchflowError(f"{path} is not valid JSON: {exc}.", "Fix package.json.") from None
    if not isinstance(data, dict):
        raise PatchflowError(f"{path} does not hold a JSON object.", "Fix package.json.")
    scripts = data.get("scripts") or {}
    if not isinstance(scripts, dict):
        raise PatchflowError(f'{path}: "scripts" is not an object.', "Fix package.json.")
    name = data.get("name")
    return Package(
        folder, rel, name if isinstance(name, str) and name else rel, {str(k): str(v) for k, v in scripts.items()}
    )


def _globs(root: Path) -> list[str] | None:
    """The ``packages`` globs of ``root/pnpm-workspace.yaml``, or None when there is no such file.

    Raises:
        PatchflowError: the file is not YAML, or ``packages`` is not a list of strings.
    """
    import yaml

    path = root / WORKSPACE_FILE
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PatchflowError(f"{path} cannot be read as YAML: {exc}.", "Fix pnpm-workspace.yaml.") from None
    packages = data.get("packages", []) if isinstance(data, dict) else None
    if packages is None:
        packages = []
    if not isinstance(packages, list) or not all(isinstance(p, str) for p in packages):
        raise PatchflowError(
            f'{path}: "packages" is not a list of folder globs.',
            "Write it as pnpm expects, e.g. packages: ['apps/*', 'packages/*'].",
        )
    return [str(p) for p in packages]


def _expand(root: Path, pattern: str) -> set[str]:
    """Root-relative POSIX paths of the folders holding a package.json that ``pattern`` matches."""
    pattern = pattern.strip().removeprefix("./").rstrip("/")
    if pattern in ("", "."):
        return {"."}
    found = set()
    for match in glob.glob(pattern, root_dir=root, recursive=True):
        rel = Path(match).as_posix()
        if "node_modules" in rel.split("/") or not (root / rel / "package.json").is_file():
            continue
        found.add(rel)
    return found


def workspace_packages(root: Path) -> list[Package]:
    """The root package, then every package of the workspace in path order (see the module
    docstring); just the root when ``root`` is not a pnpm workspace.

    Raises:
        PatchflowError: ``pnpm-workspace.yaml`` or a ``package.json`` cannot be read (named).
    """
    packages = [_read_package(root, ".")]
    globs = _globs(root)
    if not globs:
        return packages
    included: set[str] = set()
    for pattern in (g for g in globs if not g.lstrip().startswith("!")):
        included |= _expand(root, pattern)
    for pattern in (g for g in globs if g.lstrip().startswith("!")):
        included -= _expand(root, pattern.lstrip()[1:])
    included.discard(".")
    packages += [_read_package(root / rel, rel) for rel in sorted(included)]
    return packages
