"""A rollback renames the folders an apply added whole into a trash folder (one ``rename`` each)
instead of deleting their files one at a time inside the stopped window
(:func:`patchflow.restore.move_added_folders`); a folder holding anything the patch did not add
(a file written since, e.g. an upload) is left for the path-by-path removal, which keeps it."""

from __future__ import annotations

import os
from pathlib import Path

from patchflow.restore import move_added_folders


def _tree(root: Path, paths: list[str]) -> None:
    for rel in paths:
        path = root / rel
        if rel.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(rel, encoding="utf-8")


def test_a_folder_the_apply_added_whole_is_renamed_into_the_trash_with_all_it_holds(tmp_path: Path) -> None:
    root, trash = tmp_path / "install", tmp_path / "install" / ".patchflow" / "trash-restore-r1"
    _tree(root, ["src/old.js", "src/feature/a.js", "src/feature/deep/b.js", "src/feature/deep/c.js", "docs/x.md"])
    os.symlink("a.js", root / "src/feature/link.js")
    added = [
        "src/feature", "src/feature/a.js", "src/feature/deep", "src/feature/deep/b.js",
        "src/feature/deep/c.js", "src/feature/link.js", "docs/x.md",
    ]  # fmt: skip
    moved = move_added_folders(root, added, trash)
    assert moved == set(added) - {"docs/x.md"}, "a file on its own is removed by the caller"
    assert not (root / "src/feature").exists() and (root / "src/old.js").is_file()
    assert (trash / "src/feature/deep/c.js").read_text(encoding="utf-8") == "src/feature/deep/c.js"
    assert (trash / "src/feature/link.js").is_symlink()


def test_a_folder_holding_a_file_written_since_is_left_but_a_whole_folder_inside_it_moves(tmp_path: Path) -> None:
    root, trash = tmp_path / "install", tmp_path / "trash"
    _tree(root, ["uploads/new/photo.jpg", "uploads/new/thumbs/t1.jpg", "uploads/new/readme.txt"])
    added = ["uploads/new", "uploads/new/thumbs", "uploads/new/thumbs/t1.jpg", "uploads/new/readme.txt"]
    moved = move_added_folders(root, added, trash)
    assert moved == {"uploads/new/thumbs", "uploads/new/thumbs/t1.jpg"}
    assert (root / "uploads/new/photo.jpg").is_file(), "the host's file is never moved"
    assert (root / "uploads/new/readme.txt").is_file(), "left for the caller to remove path by path"


def test_nothing_added_or_a_folder_already_gone_moves_nothing(tmp_path: Path) -> None:
    root, trash = tmp_path / "install", tmp_path / "trash"
    root.mkdir()
    assert move_added_folders(root, [], trash) == set()
    assert move_added_folders(root, ["gone", "gone/file.js"], trash) == set()
    assert not trash.exists()


def test_a_name_already_in_the_trash_leaves_the_folder_for_path_by_path_removal(tmp_path: Path) -> None:
    root, trash = tmp_path / "install", tmp_path / "trash"
    _tree(root, ["lib/a.js"])
    _tree(trash, ["lib/other.js"])  # a rename onto a folder that is not empty fails
    assert move_added_folders(root, ["lib", "lib/a.js"], trash) == set()
    assert (root / "lib/a.js").is_file()
