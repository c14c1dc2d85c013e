"""patchflow.project.detect_settings reads a checkout's compose file as YAML gives it: services
written without a body, or with values of the wrong kind, hold nothing to read instead of
crashing init."""

from __future__ import annotations

from pathlib import Path

from patchflow.project import detect_settings


def _compose(root: Path, text: str) -> Path:
    (root / "docker").mkdir(parents=True)
    (root / "docker" / "docker-compose.yml").write_text(text, encoding="utf-8")
    return root


def test_a_stack_with_an_api_and_its_database_in_compose(tmp_path: Path) -> None:
    root = _compose(
        tmp_path,
        "services:\n"
        "  api:\n"
        "    ports: ['4000:3000']\n"
        "    environment: {PORT: '3000', DATABASE_URL: 'postgresql://app:pw@postgres:5432/shop'}\n"
        "    healthcheck: {test: ['CMD', 'curl', '-f', 'http://localhost:3000/healthz']}\n"
        "  postgres:\n"
        "    image: postgres:16\n"
        "    environment: [POSTGRES_DB=shop, POSTGRES_USER=owner]\n",
    )
    found = detect_settings(root).settings
    assert found["app_services"] == ["api"]
    assert found["data_services"] == ["postgres"]
    assert found["database_mode"] == "compose"
    assert (found["database_name"], found["database_user"]) == ("shop", "owner")
    assert found["health_url"] == ["http://localhost:4000/healthz"]


def test_services_without_a_body_or_of_the_wrong_kind_are_read_as_empty(tmp_path: Path) -> None:
    root = _compose(
        tmp_path,
        "services:\n  api:\n  worker: just a string\n  db:\n    image: postgres:16\n    healthcheck: yes\n",
    )
    found = detect_settings(root)
    assert found.settings["app_services"] == ["api", "worker"]
    assert found.settings["data_services"] == ["db"]
    assert any("publishes no port" in note for note in found.notes)


def test_services_that_are_not_a_mapping_hold_no_service(tmp_path: Path) -> None:
    found = detect_settings(_compose(tmp_path, "services: [api, worker]\n"))
    assert found.settings["app_services"] == []
    assert "services (none)" in found.notes[0]
