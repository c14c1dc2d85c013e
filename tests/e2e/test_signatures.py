"""Signed patches: create-patch signs SHA256SUMS; a host with a verify key refuses anything else."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from support.installs import INV, REPO, run_inv
from support.missing import missing_service

pytestmark = pytest.mark.e2e


def _tree(root: Path) -> Path:
    shutil.copytree(REPO / "examples" / "primeflow-sample", root, symlinks=True)
    return root


def test_signed_patch_verifies_and_tampering_or_another_key_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "signing.key"
    made = run_inv("create-signing-key", "--out", str(key))
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    public = made.stdout.split("verify key:")[1].split()[0]
    assert len(public) == 64

    again = run_inv("create-signing-key", "--out", str(key))
    assert again.returncode == 1 and "already exists" in again.stderr

    root = _tree(tmp_path / "primeflow")
    created = run_inv("create-patch", "--root", str(root), env={"PATCHFLOW_SIGNING_KEY": str(key)})
    assert created.returncode == 0, created.stderr
    folder = root / "patches" / "v2.2.0"
    assert (folder / "SHA256SUMS.sig").is_file()

    ok = run_inv("verify-patch", "--root", str(root), "--version", "2.2.0", env={"PATCHFLOW_VERIFY_KEY": public})
    assert ok.returncode == 0, ok.stderr
    assert "signature" in ok.stdout

    other = tmp_path / "other.key"
    other_public = run_inv("create-signing-key", "--out", str(other)).stdout.split("verify key:")[1].split()[0]
    wrong = run_inv(
        "verify-patch", "--root", str(root), "--version", "2.2.0", env={"PATCHFLOW_VERIFY_KEY": other_public}
    )
    assert wrong.returncode == 1 and "which the pinned verify key never announced" in " ".join(wrong.stderr.split())

    # a tampered checksum list with recomputed contents no longer matches its signature
    sums = folder / "SHA256SUMS"
    sums.write_text(sums.read_text().replace("  README.md", "  README.md\n") + "\n")
    tampered = run_inv("verify-patch", "--root", str(root), "--version", "2.2.0", env={"PATCHFLOW_VERIFY_KEY": public})
    assert tampered.returncode == 1 and "SHA256SUMS.sig does not match" in tampered.stderr


def test_unsigned_patch_is_refused_where_a_verify_key_is_set(tmp_path: Path) -> None:
    root = _tree(tmp_path / "primeflow")
    assert run_inv("create-patch", "--root", str(root)).returncode == 0
    public = "ab" * 32
    refused = run_inv("verify-patch", "--root", str(root), "--version", "2.2.0", env={"PATCHFLOW_VERIFY_KEY": public})
    assert refused.returncode == 1 and "SHA256SUMS.sig is missing" in refused.stderr
    bad_key = run_inv("verify-patch", "--root", str(root), "--version", "2.2.0", env={"PATCHFLOW_VERIFY_KEY": "xyz"})
    assert bad_key.returncode == 1 and "verify key" in bad_key.stderr


def test_a_deploy_uploads_the_signature_with_the_patch(tmp_path: Path) -> None:
    """A host with a verify key refuses a patch without ``SHA256SUMS.sig``: the deploy's upload list
    (the files it sends and checks there) carries it (it did not, and every signed deploy to a
    pinned host was refused as corrupt)."""
    from patchflow.config import load_settings
    from patchflow.remote.transfer import local_patch
    from patchflow.version import parse_version

    key = tmp_path / "signing.key"
    public = run_inv("create-signing-key", "--out", str(key)).stdout.split("verify key:")[1].split()[0]
    root = _tree(tmp_path / "primeflow")
    assert run_inv("create-patch", "--root", str(root), env={"PATCHFLOW_SIGNING_KEY": str(key)}).returncode == 0
    settings = load_settings(root, environ={"PATCHFLOW_VERIFY_KEY": public})
    patch = local_patch(settings, parse_version("2.2.0"))
    signature = root / "patches" / "v2.2.0" / "SHA256SUMS.sig"
    assert patch.files["SHA256SUMS.sig"][0] == signature.stat().st_size


def test_an_expired_signature_is_refused_and_a_rotated_key_is_accepted_only_when_the_pinned_one_announced_it(
    tmp_path: Path,
) -> None:
    """Issue 25's Build: a signature carries its expiry (``signature_days``), so an old signed patch
    sent again is refused once it expired; a new signing key is accepted by a host pinning the old
    one only when the patch carries the old key's announcement of it (``retiring_signing_key``)."""
    old, new, stranger = (tmp_path / f"{n}.key" for n in ("old", "new", "stranger"))
    keys = {
        p: run_inv("create-signing-key", "--out", str(p)).stdout.split("verify key:")[1].split()[0]
        for p in (old, new, stranger)
    }
    root = _tree(tmp_path / "primeflow")
    folder = root / "patches" / "v2.2.0"

    def build(**env: str) -> None:
        done = run_inv("create-patch", "--root", str(root), "--force", env=env)
        assert done.returncode == 0, done.stdout + done.stderr

    def verify(pinned: str, *, later: str = "") -> tuple[int, str]:
        clock = ["faketime", later] if later else []  # the host's clock, days after the signing
        done = subprocess.run(
            [*clock, *INV, "verify-patch", "--root", str(root), "--version", "2.2.0"],
            env={**os.environ, "PATCHFLOW_VERIFY_KEY": pinned},
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        return done.returncode, " ".join((done.stdout + done.stderr).split())

    if shutil.which("faketime") is None:
        missing_service("faketime is not installed (scripts/ensure-system.sh --for test installs it)")
    build(PATCHFLOW_SIGNING_KEY=str(old), PATCHFLOW_SIGNATURE_DAYS="1")
    assert verify(keys[old])[0] == 0
    code, text = verify(keys[old], later="+2 days")
    assert code == 1 and "SHA256SUMS.sig expired on" in text and "rebuild it with create-patch" in text, text

    build(PATCHFLOW_SIGNING_KEY=str(new), PATCHFLOW_RETIRING_SIGNING_KEY=str(old))
    assert verify(keys[old])[0] == 0, "the pinned old key announced the new one"
    assert verify(keys[new])[0] == 0
    assert json.loads((folder / "SHA256SUMS.sig").read_text())["announced_by"]["key"] == keys[old]

    build(PATCHFLOW_SIGNING_KEY=str(stranger), PATCHFLOW_RETIRING_SIGNING_KEY=str(new))
    code, text = verify(keys[old])
    assert code == 1 and "which the pinned verify key never announced" in text, "announced by a key nobody pinned"
