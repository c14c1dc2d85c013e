"""Kept images: the installed version's compose images under a version tag, so a rollback never builds.

The staging build of an apply replaces the images compose runs (``<project>-api:latest``, or the
service's ``image:``) with the new version's. Before it, :func:`keep_images` tags the image each
``build:`` application service of the installed version runs (its container's image, else the
image of that name) as ``<repository>:patchflow-<version>``, as Kamal keeps one image per version.
Bringing a version back (the automatic rollback's ``start-old``, ``rollback-patch``),
:func:`restore_images` points each ``build:`` service's image name at the image kept for that
version, so ``up --no-build`` starts the old images: no ``docker compose build`` in the stopped
window, no base image or package registry needed. A service without a kept image (a backup older
than this, a tag removed by hand) is named and built from the restored tree, as before.
:func:`prune_images` removes the ``patchflow-*`` tags of versions no kept backup restores
(``prune-backups``); an image a container still uses is never removed (no ``--force``).

Image references follow Docker's grammar (``[registry[:port]/]path[:tag][@digest]``; a tag is
``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

TAG_PREFIX = "patchflow-"
_NOT_IN_TAG = re.compile(r"[^A-Za-z0-9_.-]")

#: runs ``docker ...`` arguments; ``check`` False returns the output of a failed command as ""
Docker = Callable[[list[str], bool], str]


def version_tag(version: str) -> str:
    """The tag keeping ``version``'s images: ``2.2.0`` -> ``patchflow-2.2.0`` (a character a
    Docker tag may not hold becomes ``_``: ``1.0.0+b7`` -> ``patchflow-1.0.0_b7``; 128 at most)."""
    return (TAG_PREFIX + (_NOT_IN_TAG.sub("_", version) or "unknown"))[:128]


def repository(image: str) -> str:
    """The repository of an image reference, without tag or digest:
    ``registry:5000/team/api:1.2`` -> ``registry:5000/team/api``; ``proj-api`` -> ``proj-api``."""
    name = image.split("@", 1)[0]
    colon, slash = name.rfind(":"), name.rfind("/")
    return name[:colon] if colon > slash else name


@dataclass(frozen=True)
class BuiltService:
    """A compose service with ``build:``: ``image`` is the name compose builds and runs it as."""

    service: str
    image: str

    def kept(self, version: str) -> str:
        """The reference keeping this service's image of ``version``."""
        return f"{repository(self.image)}:{version_tag(version)}"


def built_services(config: Mapping[str, Any], project: str, services: Collection[str]) -> list[BuiltService]:
    """The services of ``services`` that the compose model ``config`` (``docker compose config
    --format json``) builds, each with its image name: its ``image:``, else compose's default
    ``<project>-<service>``; sorted by service."""
    model = config.get("services")
    if not isinstance(model, Mapping):
        return []
    found = []
    for name, service in sorted(model.items()):
        if name in services and isinstance(service, Mapping) and service.get("build"):
            image = service.get("image")
            found.append(BuiltService(str(name), str(image) if image else f"{project}-{name}"))
    return found


def image_id(docker: Docker, reference: str) -> str:
    """The id of image ``reference`` ("" when there is none)."""
    return docker(["docker", "image", "inspect", "--format", "{{.Id}}", reference], False).strip()


def keep_images(
    docker: Docker, built: Sequence[BuiltService], containers: Mapping[str, str], version: str
) -> dict[str, str]:
    """Tag the image each of ``built`` runs (the image of its container in ``containers``,
    service -> container id, else the image of its name) as ``<repository>:patchflow-<version>``.
    Returns service -> kept reference (a service with no image yet is left out).

    Raises:
        ServiceError: (from ``docker``) a tag could not be made.
    """
    kept = {}
    for service in built:
        container = containers.get(service.service)
        source = ""
        if container:
            source = docker(["docker", "inspect", "--format", "{{.Image}}", container], False).strip()
        source = source or image_id(docker, service.image)
        if not source:
            continue
        target = service.kept(version)
        docker(["docker", "tag", source, target], True)
        kept[service.service] = target
    return kept


def restore_images(docker: Docker, built: Sequence[BuiltService], version: str) -> list[str]:
    """Point each of ``built``'s image names at the image kept for ``version``; returns the
    services that have no kept image (the caller builds those).

    Raises:
        ServiceError: (from ``docker``) a tag could not be made.
    """
    missing = []
    for service in built:
        kept = image_id(docker, service.kept(version))
        if not kept:
            missing.append(service.service)
            continue
        if image_id(docker, service.image) != kept:
            docker(["docker", "tag", service.kept(version), service.image], True)
    return missing


def prune_images(docker: Docker, built: Sequence[BuiltService], keep_versions: Collection[str]) -> list[str]:
    """Remove the ``patchflow-*`` tags of ``built``'s repositories whose version is not in
    ``keep_versions``; returns the references removed. A reference Docker refuses to remove (a
    container uses its image) is kept: never ``--force``."""
    wanted = {version_tag(v) for v in keep_versions}
    removed = []
    for repo in sorted({repository(s.image) for s in built}):
        listed = docker(["docker", "image", "ls", "--format", "{{.Tag}}", repo], False)
        for tag in sorted({t.strip() for t in listed.splitlines()}):
            if not tag.startswith(TAG_PREFIX) or tag in wanted:
                continue
            reference = f"{repo}:{tag}"
            if docker(["docker", "image", "rm", reference], False).strip():
                removed.append(reference)
    return removed
