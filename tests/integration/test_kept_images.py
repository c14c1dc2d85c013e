"""Kept images against a real Docker Engine, without a compose stack (fast): keeping the image a
service runs, pointing its name back at it, the fallback when a version has no kept image, and
pruning tags no backup needs (patchflow.services.compose_images). The same through apply and
rollback on a running stack is in tests/integration/test_compose.py."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest

from patchflow.services.compose_images import BuiltService, keep_images, prune_images, restore_images

pytestmark = pytest.mark.docker

BASE = "patchflow-local/busybox:latest"  # scripts/ensure-system.sh builds it


def docker(args: list[str], check: bool) -> str:
    """What the compose manager gives compose_images: run docker, "" for a failed command unless ``check``."""
    done = subprocess.run(args, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed: {done.stderr}")
    return done.stdout if done.returncode == 0 else ""


def image_id(reference: str) -> str:
    return docker(["docker", "image", "inspect", "--format", "{{.Id}}", reference], False).strip()


@pytest.fixture
def project(docker_engine: None) -> Iterator[str]:
    """A unique repository prefix; every image tag under it is removed afterwards."""
    name = f"pfkept{uuid.uuid4().hex[:10]}"
    yield name
    listed = docker(["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}"], False).split()
    for reference in [r for r in listed if r.startswith(name)]:
        docker(["docker", "image", "rm", reference], False)


def _two_images(project: str) -> tuple[str, str]:
    """Two distinct local images (no registry): the base, and one built on it with a label."""
    old = image_id(BASE)
    assert old, f"{BASE} is missing: run scripts/ensure-system.sh --for test"
    new_ref = f"{project}-scratch:new"
    build = subprocess.run(
        ["docker", "build", "-q", "--label", f"pf={project}", "-t", new_ref, "-"],
        input=f"FROM {BASE}\nLABEL made-by=patchflow-test\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    return old, image_id(new_ref)


def test_kept_restored_and_the_service_without_a_kept_image_named(project: str) -> None:
    old, new = _two_images(project)
    api, worker = BuiltService("api", f"{project}-api"), BuiltService("worker", f"{project}-worker:7")
    docker(["docker", "tag", old, api.image], True)  # 2.2.0 runs `old` under the names compose uses
    docker(["docker", "tag", old, worker.image], True)
    kept = keep_images(docker, [api, worker], {}, "2.2.0")
    assert kept == {"api": f"{project}-api:patchflow-2.2.0", "worker": f"{project}-worker:patchflow-2.2.0"}
    docker(["docker", "tag", new, api.image], True)  # the staging build of 2.3.0 replaces them
    docker(["docker", "tag", new, worker.image], True)

    assert restore_images(docker, [api, worker], "2.2.0") == []
    assert image_id(api.image) == image_id(worker.image) == old, "the names run 2.2.0's images again"
    assert restore_images(docker, [api, worker], "2.2.0") == []  # idempotent (a recovery runs it again)
    assert restore_images(docker, [api], "2.1.0") == ["api"], "no kept image: the caller builds it"
    assert image_id(api.image) == old, "a service without a kept image is left as it is"


def test_keep_takes_the_image_a_container_runs_not_the_newest_under_its_name(project: str) -> None:
    old, new = _two_images(project)
    api = BuiltService("api", f"{project}-api")
    docker(["docker", "tag", new, api.image], True)  # an unapplied build already took the name
    container = docker(["docker", "create", old, "true"], True).strip()
    try:
        assert keep_images(docker, [api], {"api": container}, "2.2.0") == {"api": api.kept("2.2.0")}
        assert image_id(api.kept("2.2.0")) == old
    finally:
        docker(["docker", "rm", container], False)


def test_prune_removes_only_the_tags_no_backup_restores(project: str) -> None:
    old, new = _two_images(project)
    api = BuiltService("api", f"{project}-api")
    for version, image in (("1.9.0", new), ("2.1.0", old), ("2.2.0", old)):
        docker(["docker", "tag", image, api.kept(version)], True)
    docker(["docker", "tag", old, f"{project}-api:latest"], True)
    removed = prune_images(docker, [api], {"2.2.0"})
    assert sorted(removed) == [api.kept("1.9.0"), api.kept("2.1.0")]
    assert image_id(api.kept("2.2.0")) == old and image_id(f"{project}-api:latest") == old
    assert not image_id(api.kept("1.9.0")) and not image_id(api.kept("2.1.0"))
    assert prune_images(docker, [api], {"2.2.0"}) == []
