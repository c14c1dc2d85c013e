"""The references of kept compose images (patchflow.services.compose_images), table-driven with
hostile values; keeping, restoring and pruning them against a real Docker engine is in
tests/integration/test_compose.py."""

from __future__ import annotations

import re

import pytest

from patchflow.services.compose_images import BuiltService, built_services, repository, version_tag

TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")  # Docker's grammar of a tag


@pytest.mark.parametrize(
    ("version", "tag"),
    [
        ("2.2.0", "patchflow-2.2.0"),
        ("1.0.0-rc.1+build.7", "patchflow-1.0.0-rc.1_build.7"),
        ("", "patchflow-unknown"),
        ("2.2.0; docker system prune", "patchflow-2.2.0__docker_system_prune"),
        ("9" * 300, "patchflow-" + "9" * 118),
    ],
)
def test_a_version_tag_is_a_valid_docker_tag(version: str, tag: str) -> None:
    assert version_tag(version) == tag
    assert TAG.match(version_tag(version))


@pytest.mark.parametrize(
    ("image", "repo"),
    [
        ("proj-api", "proj-api"),
        ("proj-api:latest", "proj-api"),
        ("registry.example:5000/team/api:1.2", "registry.example:5000/team/api"),
        ("registry.example:5000/team/api", "registry.example:5000/team/api"),
        ("team/api@sha256:" + "a" * 64, "team/api"),
        ("team/api:1.2@sha256:" + "a" * 64, "team/api"),
    ],
)
def test_the_repository_of_an_image_reference(image: str, repo: str) -> None:
    assert repository(image) == repo


def test_only_application_services_that_build_are_kept_under_their_image_name() -> None:
    config = {
        "services": {
            "api": {"build": {"context": "."}},
            "worker": {"build": {"context": "."}, "image": "primeflow/worker:${TAG}"},
            "frontend": {"image": "nginx:1.27"},  # pulled, not built: nothing to keep
            "postgres": {"build": {"context": "."}},  # a data service: never stopped nor replaced
        }
    }
    built = built_services(config, "pf", {"api", "worker", "frontend"})
    assert built == [BuiltService("api", "pf-api"), BuiltService("worker", "primeflow/worker:${TAG}")]
    assert built[0].kept("2.2.0") == "pf-api:patchflow-2.2.0"
    assert built[1].kept("2.2.0") == "primeflow/worker:patchflow-2.2.0"
    assert built_services({}, "pf", {"api"}) == [] and built_services({"services": []}, "pf", {"api"}) == []
