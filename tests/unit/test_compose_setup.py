"""Compose wiring without an engine: project name, command prefix, database credentials, errors.

The behaviour against a real engine is in tests/integration/test_compose.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from patchflow.commands import compose
from patchflow.config import load_settings
from patchflow.pg_target import target_from_settings
from patchflow.services.compose import _compose_errors, compose_prefix


def _project(tmp_path: Path, compose_text: str, env: str = "") -> Path:
    root = tmp_path / "Prime Flow"
    (root / "docker").mkdir(parents=True)
    (root / "docker" / "docker-compose.yml").write_text(compose_text, encoding="utf-8")
    if env:
        (root / ".env").write_text(env, encoding="utf-8")
    return root


def test_project_name_follows_what_compose_itself_uses(tmp_path: Path) -> None:
    root = _project(tmp_path, "name: primeflow\nservices:\n  api:\n    image: x\n")
    files = ["docker/docker-compose.yml"]
    assert compose.project_name(root, "configured", files, {"COMPOSE_PROJECT_NAME": "env"}) == "configured"
    assert compose.project_name(root, "", files, {"COMPOSE_PROJECT_NAME": "From_Env"}) == "from_env"
    assert compose.project_name(root, "", files, {}) == "primeflow"
    (root / "docker" / "docker-compose.yml").write_text("services:\n  api:\n    image: x\n", encoding="utf-8")
    # compose's default project directory is the folder of the first file
    assert compose.project_name(root, "", files, {}) == "docker"
    (root / "docker" / "docker-compose.yml").write_text("name: ${X:-a}\nservices: {}\n", encoding="utf-8")
    assert compose.project_name(root, "", files, {}) == "docker", "an interpolated name is not guessed"
    assert compose.project_name(root) == "primeflow"


def test_prefix_reads_the_install_env_and_keeps_paths_relative_to_the_file(tmp_path: Path) -> None:
    root = _project(tmp_path, "services: {}\n", env="PATCHFLOW_COMPOSE_PROJECT=pf\n")
    settings = load_settings(root, environ={})
    staging = root / ".patchflow" / "staging-v2.3.0"
    args = compose_prefix(settings, root, staging)
    assert "--project-directory" not in args, "relative paths (build context '..', env_file) stay file-relative"
    assert args[args.index("--env-file") + 1] == str(root / ".env")
    assert args[args.index("-f") + 1] == str(staging / "docker" / "docker-compose.yml")
    assert args[-2:] == ["-p", "pf"], "images built in staging carry the install's project name"
    (root / ".env").unlink()
    assert "--env-file" not in compose_prefix(load_settings(root, environ={}), root)


@pytest.mark.parametrize(
    ("settings_env", "service_env", "expected"),
    [
        ({}, {}, ("postgres", "postgres")),
        ({}, {"POSTGRES_DB": "app", "POSTGRES_USER": "owner"}, ("app", "owner")),
        ({"POSTGRES_DB": "dotenv_db"}, {"POSTGRES_USER": "owner"}, ("dotenv_db", "owner")),
        (
            {"PATCHFLOW_DATABASE_NAME": "set", "PATCHFLOW_DATABASE_USER": "su"},
            {"POSTGRES_DB": "app", "POSTGRES_USER": "owner"},
            ("set", "su"),
        ),
    ],
)
def test_compose_database_credentials(
    tmp_path: Path, settings_env: dict[str, str], service_env: dict[str, str], expected: tuple[str, str]
) -> None:
    env = "PATCHFLOW_DATABASE_MODE=compose\n" + "".join(f"{k}={v}\n" for k, v in settings_env.items())
    root = _project(tmp_path, "services: {}\n", env=env)
    target = target_from_settings(load_settings(root, environ={}), ["docker", "compose"], service_env)
    assert target is not None and (target.dbname, target.user) == expected
    argv, env_vars = target.command("pg_dump")
    assert argv[:4] == ["docker", "compose", "exec", "-T"] and argv[-2:] == ["postgres", "pg_dump"]
    assert f"PGUSER={expected[1]}" in argv and f"PGDATABASE={expected[0]}" in argv and env_vars == {}


def test_compose_errors_keep_the_reason_not_the_progress() -> None:
    output = "\n".join(
        [
            " Container pf-worker-1  Recreate",
            " Container pf-api-1  Started",
            "#7 DONE 0.2s",
            " api  Built",
            "container pf-api-1 is unhealthy",
        ]
    )
    assert _compose_errors(output) == "container pf-api-1 is unhealthy"


def test_a_service_cannot_be_both_application_and_data(tmp_path: Path) -> None:
    from patchflow.config import load_settings
    from patchflow.errors import ConfigError
    from patchflow.paths import ProjectPaths
    from patchflow.runner import LocalRunner
    from patchflow.services.compose import ComposeManager

    settings = load_settings(tmp_path, environ={"PATCHFLOW_APP_SERVICES": "api,postgres"})
    with pytest.raises(ConfigError) as caught:
        ComposeManager(settings, ProjectPaths.from_settings(settings), LocalRunner())
    assert "postgres" in caught.value.message and "data_services" in caught.value.message
    assert not any(tmp_path.iterdir())
