"""What keeps the plan made again under the lock cheap (issue 19): exclusion answers remembered per
rules object, the install's records parsed once per version of the file. Each must never serve a
stale answer."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from patchflow.context import Context
from patchflow.lifecycle.planning import _read_installed_manifest, _read_installed_stats, install_rules
from patchflow.manifest import ExcludeRules


def _ctx(root: Path, host_paths: tuple[str, ...] = ("uploads/",)) -> Context:
    paths = SimpleNamespace(
        installed_manifest=root / "installed-manifest.json",
        installed_stats=root / "installed-stats.json",
        excluded_roots=lambda: ("patches", "backups", ".patchflow"),
    )
    return cast(Context, SimpleNamespace(paths=paths, settings=SimpleNamespace(host_paths=host_paths)))


def test_exclusion_answers_are_remembered_and_the_same() -> None:
    rules = ExcludeRules(["node_modules", "docker/override.yml", "*.log"], ("patches",))
    asked: list[tuple[str, bool]] = []
    real = rules._excluded

    def counting(rel: str, is_dir: bool) -> bool:
        asked.append((rel, is_dir))
        return real(rel, is_dir)

    rules._excluded = counting  # type: ignore[method-assign]
    paths = [("src/a.js", False), ("docker/override.yml", False), ("node_modules", True), ("x.log", False)]
    first = [rules.excluded(p, d) for p, d in paths]
    second = [rules.excluded(p, d) for p, d in paths]
    assert first == second == [False, True, True, True]
    assert asked == paths  # each path matched once
    assert rules.excluded("node_modules", False) is True and asked[-1] == ("node_modules", False)


def test_the_same_patterns_give_the_same_rules_object(tmp_path: Path) -> None:
    manifest: dict[str, Any] = {"exclude": ["*.log"]}
    assert install_rules(_ctx(tmp_path), manifest) is install_rules(_ctx(tmp_path), dict(manifest))
    assert install_rules(_ctx(tmp_path), manifest) is not install_rules(_ctx(tmp_path), {"exclude": ["*.tmp"]})
    assert install_rules(_ctx(tmp_path), manifest) is not install_rules(_ctx(tmp_path, ("storage/",)), manifest)


def _write_atomic(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _manifest(*paths: str) -> dict[str, Any]:
    return {"files": [{"path": p, "type": "file", "size": 1, "sha256": "a" * 64, "mode": "0644"} for p in paths]}


def test_a_changed_install_record_is_read_again(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    _write_atomic(ctx.paths.installed_manifest, _manifest("VERSION", "a.js"))
    first = _read_installed_manifest(ctx)
    assert sorted(first) == ["VERSION", "a.js"]
    first.pop("VERSION")  # make_plan does this: the next read must not see it
    assert sorted(_read_installed_manifest(ctx)) == ["VERSION", "a.js"]
    _write_atomic(ctx.paths.installed_manifest, _manifest("VERSION", "b.js"))  # another apply committed
    assert sorted(_read_installed_manifest(ctx)) == ["VERSION", "b.js"]
    ctx.paths.installed_manifest.unlink()
    assert _read_installed_manifest(ctx) == {}


def test_changed_install_stats_are_read_again(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    _write_atomic(ctx.paths.installed_stats, {"a.js": [1, 10, "a" * 64]})
    assert _read_installed_stats(ctx) == {"a.js": (1, 10, "a" * 64)}
    _write_atomic(ctx.paths.installed_stats, {"a.js": [2, 20, "b" * 64]})
    assert _read_installed_stats(ctx) == {"a.js": (2, 20, "b" * 64)}
    ctx.paths.installed_stats.write_text("not json")
    assert _read_installed_stats(ctx) == {}
