"""Backups are inputs (issue 22, fault 1): a rollback checks the backup it restores before it stops
anything, and ``patch-status --verify`` names a damaged one. Each case first shows what the damage
would have done (a host file deleted, a mixed tree, a changed file restored, a journal that never
clears, a cut dump listed as fine), then that it is refused with the backup named and nothing
changed. One real install (sample, command services, real PostgreSQL) at 2.3.0 per test."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.installs import Install

from patchflow.state_files import record_checksum

pytestmark = pytest.mark.integration


def _applied(install: Install, tmp_path: Path) -> Path:
    install.release(tmp_path, "2.3.0")
    done = install.inv("apply-patch", "--version", "2.3.0", "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    (backup,) = [p for p in (install.root / "backups").iterdir() if p.name.startswith("pre-patch-v2.3.0_")]
    return backup


def _edit(backup: Path, change: Callable[[dict[str, Any]], None], *, reseal: bool) -> None:
    record = backup / "backup.json"
    data = json.loads(record.read_text())
    change(data)
    if reseal:  # as if the damage were made by something that knows the checksum: the tree check still holds
        data["checksum"] = record_checksum(data)
    record.write_text(json.dumps(data))


def _refused(install: Install, said: str) -> str:
    tree = install.state()
    done = install.inv("rollback-patch", "--version", "2.3.0", "--yes")
    text = done.stdout + done.stderr
    assert done.returncode != 0, text
    assert "cannot be trusted to restore" in text and said in text, text
    assert "Nothing was changed" in text
    assert install.state() == tree and (install.root / "VERSION").read_text().strip() == "2.3.0"
    assert not (install.root / ".patchflow" / "journal.json").exists()
    return text


@pytest.mark.parametrize("reseal", [False, True], ids=["edited", "edited-and-resealed"])
def test_a_backup_whose_new_paths_name_a_host_file_never_deletes_it(
    install: Install, tmp_path: Path, reseal: bool
) -> None:
    backup = _applied(install, tmp_path)
    _edit(backup, lambda data: data["new_paths"].append("uploads/photo.jpg"), reseal=reseal)
    said = "does not match" if not reseal else "the installed version's tree does not hold (uploads/photo.jpg)"
    _refused(install, said)
    assert (install.root / "uploads" / "photo.jpg").is_file(), "the host's file is still there"


def test_an_emptied_old_entries_or_another_restores_version_is_refused(install: Install, tmp_path: Path) -> None:
    backup = _applied(install, tmp_path)
    _edit(backup, lambda data: data.update(old_entries=[]), reseal=False)
    _refused(install, "its backup.json was changed after patchflow wrote it")
    _edit(backup, lambda data: data.update(restores_version="2.1.0"), reseal=False)
    _refused(install, "its backup.json was changed after patchflow wrote it")


def test_a_saved_file_changed_inside_the_backup_is_refused_and_a_cut_dump_is_named_by_verify(
    install: Install, tmp_path: Path
) -> None:
    backup = _applied(install, tmp_path)
    data = json.loads((backup / "backup.json").read_text())
    saved = next(e for e in data["old_entries"] if e["type"] == "file" and e.get("size", 0) > 0)
    copy = backup / "files" / saved["path"]
    body = copy.read_bytes()
    copy.write_bytes(bytes([body[0] ^ 1]) + body[1:])  # same size, other bytes
    _refused(install, f"the saved copy of {saved['path']} differs from its recorded sha256")
    copy.write_bytes(body)

    status = json.loads(install.inv("patch-status", "--json").stdout)
    assert [b["problems"] for b in status["backups"]] == [[] for _ in status["backups"]], status["backups"]
    dumps = [p for p in backup.iterdir() if p.name.endswith(".dump")]
    assert dumps, "the snapshot's dump is in the backup once the apply returned"
    dumps[0].write_bytes(dumps[0].read_bytes()[:-100])  # cut short: the shallow status sees its size
    shallow = json.loads(install.inv("patch-status", "--json").stdout)["backups"][0]["problems"]
    assert any("cut short" in p for p in shallow), shallow
    shown = install.inv("patch-status", "--verify")
    assert "DAMAGED" in " ".join(shown.stdout.split()), shown.stdout
    dumps[0].write_bytes(b"x" * (dumps[0].stat().st_size + 100))  # the right size, other bytes: --verify only
    assert json.loads(install.inv("patch-status", "--json").stdout)["backups"][0]["problems"] == []
    deep = json.loads(install.inv("patch-status", "--json", "--verify").stdout)["backups"][0]["problems"]
    assert deep == ["its database dump is corrupt or incomplete: it differs from its recorded sha256"], deep


def test_a_tree_record_that_gained_a_host_file_refuses_the_next_apply_and_deletes_nothing(
    install: Install, tmp_path: Path
) -> None:
    """The install's tree record decides what an apply deletes (the paths the patches own that the
    new version no longer has): one that gained ``uploads/photo.jpg`` after patchflow wrote it
    would make the next apply delete that upload. It fails its seal: the apply is refused with the
    record named, ``patch-status`` lists it as not trusted, and once it is moved aside (the remedy
    the hint gives) the apply goes on and the upload stays."""
    _applied(install, tmp_path)
    upload = install.root / "uploads" / "photo.jpg"
    upload.parent.mkdir(exist_ok=True)
    upload.write_bytes(b"\xff\xd8 a customer's photo")
    record = install.root / ".patchflow" / "installed-manifest.json"
    data = json.loads(record.read_text())
    data["files"].append({**data["files"][-1], "path": "uploads/photo.jpg"})
    record.write_text(json.dumps(data))
    install.release(tmp_path, "2.4.0")
    tree = install.state()

    done = install.inv("apply-patch", "--version", "2.4.0", "--yes")
    assert done.returncode == 1, done.stdout + done.stderr
    flat = " ".join(done.stderr.split())
    assert f"The install's tree record {record} may not be trusted: it fails its checksum" in flat, flat
    assert "Move it aside" in flat and "Nothing was changed" in flat
    assert install.state() == tree and upload.is_file()
    status = json.loads(install.inv("patch-status", "--json").stdout)
    assert any("installed-manifest.json may not be trusted" in line for line in status["damaged_state"]), status

    record.rename(record.with_name("installed-manifest.json.damaged"))
    done = install.inv("apply-patch", "--version", "2.4.0", "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert upload.read_bytes() == b"\xff\xd8 a customer's photo"
    assert json.loads(install.inv("patch-status", "--json").stdout)["damaged_state"] == []
