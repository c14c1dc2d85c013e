"""Settings: layered sources (defaults < pyproject < .env < environment < flags), validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from patchflow.config import FIELDS, load_settings
from patchflow.errors import ConfigError
from patchflow.redact import mask_url
from patchflow.setting_values import settings_table_markdown


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


def _pyproject(root: Path, body: str) -> None:
    (root / "pyproject.toml").write_text(
        f"[project]\nname = 'primeflow'\n\n[tool.patchflow]\n{body}\n", encoding="utf-8"
    )


def test_defaults_when_nothing_is_configured(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, environ={})
    assert settings.root == tmp_path.resolve()
    assert settings.health_timeout == 60.0
    assert settings.service_manager == "compose"
    assert settings.compose_files == ("docker/docker-compose.yml",)
    assert all(settings.source(f.name) == "default" for f in FIELDS)
    assert list(tmp_path.iterdir()) == []


def test_precedence_of_every_layer(tmp_path: Path) -> None:
    _pyproject(
        tmp_path,
        "health_timeout = 10\nstop_timeout = 11\nretention_days = 12\nretention_keep = 13\n"
        'compose_project = "from-pyproject"',
    )
    (tmp_path / ".env").write_text(
        "PATCHFLOW_STOP_TIMEOUT=21\nPATCHFLOW_RETENTION_DAYS=22\nPATCHFLOW_RETENTION_KEEP=23\n", encoding="utf-8"
    )
    environ = {"PATCHFLOW_RETENTION_DAYS": "32", "PATCHFLOW_RETENTION_KEEP": "33"}
    settings = load_settings(tmp_path, environ=environ, overrides={"retention_keep": 43, "stop_timeout": None})

    assert settings.compose_project == "from-pyproject"
    assert settings.health_timeout == 10.0
    assert settings.stop_timeout == 21.0
    assert settings.retention_days == 32
    assert settings.retention_keep == 43
    assert settings.start_retries == 3
    assert settings.source("compose_project") == "pyproject.toml"
    assert settings.source("health_timeout") == "pyproject.toml"
    assert settings.source("stop_timeout") == ".env:PATCHFLOW_STOP_TIMEOUT"
    assert settings.source("retention_days") == "env:PATCHFLOW_RETENTION_DAYS"
    assert settings.source("retention_keep") == "flag"
    assert settings.source("start_retries") == "default"


def test_pyproject_keys_may_use_dashes_and_lists(tmp_path: Path) -> None:
    _pyproject(tmp_path, 'app-services = ["api", "worker"]\nexclude = ["tmp/", "*.bak"]')
    settings = load_settings(tmp_path, environ={})
    assert settings.app_services == ("api", "worker")
    assert settings.exclude == ("tmp/", "*.bak")


def test_environment_lists_and_commands_are_parsed(tmp_path: Path) -> None:
    environ = {
        "PATCHFLOW_HEALTH_URL": "http://a/health, http://b/health",
        "PATCHFLOW_COMMANDS": "api=node apps/api/server.js;worker=node apps/worker/main.js",
        "PATCHFLOW_SERVICE_MANAGER": "command",
    }
    settings = load_settings(tmp_path, environ=environ)
    assert settings.health_url == ("http://a/health", "http://b/health")
    assert settings.commands == (("api", "node apps/api/server.js"), ("worker", "node apps/worker/main.js"))
    assert settings.service_manager == "command"


def test_database_url_from_dotenv(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("DATABASE_URL=postgresql://app:dotenv-pw@db:5432/app\n", encoding="utf-8")
    settings = load_settings(tmp_path, environ={})
    assert settings.database_url == "postgresql://app:dotenv-pw@db:5432/app"
    assert settings.source("database_url") == ".env:DATABASE_URL"
    assert settings.dotenv["DATABASE_URL"] == "postgresql://app:dotenv-pw@db:5432/app"


def test_database_url_environment_beats_dotenv(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("DATABASE_URL=postgresql://app:dotenv-pw@db/app\n", encoding="utf-8")
    settings = load_settings(tmp_path, environ={"DATABASE_URL": "postgresql://app:env-pw@other/app"})
    assert settings.database_url == "postgresql://app:env-pw@other/app"
    assert settings.source("database_url") == "env:DATABASE_URL"
    assert mask_url(settings.database_url) == "postgresql://app:***@other/app"


def test_patchflow_database_url_wins_at_the_same_level(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "DATABASE_URL=postgresql://generic@db/app\nPATCHFLOW_DATABASE_URL=postgresql://specific@db/app\n",
        encoding="utf-8",
    )
    settings = load_settings(tmp_path, environ={})
    assert settings.database_url == "postgresql://specific@db/app"
    assert settings.source("database_url") == ".env:PATCHFLOW_DATABASE_URL"


def test_invalid_environment_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path, environ={"PATCHFLOW_HEALTH_TIMEOUT": "abc"})
    assert "'abc'" in caught.value.message
    assert "PATCHFLOW_HEALTH_TIMEOUT in the environment" in caught.value.message
    assert "PATCHFLOW_HEALTH_TIMEOUT" in caught.value.hint
    assert list(tmp_path.iterdir()) == []


def test_invalid_dotenv_value_names_the_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("PATCHFLOW_HEALTH_TIMEOUT=abc\n", encoding="utf-8")
    before = _snapshot(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path, environ={})
    assert f"PATCHFLOW_HEALTH_TIMEOUT in {tmp_path.resolve() / '.env'}" in caught.value.message
    assert _snapshot(tmp_path) == before


def test_invalid_choice_lists_the_allowed_values(tmp_path: Path) -> None:
    _pyproject(tmp_path, 'service_manager = "systemd"')
    before = _snapshot(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path, environ={})
    message = caught.value.message
    assert "'systemd'" in message
    assert "service_manager" in message
    assert "pyproject.toml [tool.patchflow]" in message
    assert "command, compose, none" in message
    assert _snapshot(tmp_path) == before


def test_negative_number_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'-1'.*'retention_keep'.*>= 0"):
        load_settings(tmp_path, environ={"PATCHFLOW_RETENTION_KEEP": "-1"})


def test_bad_commands_value_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="name=command pairs"):
        load_settings(tmp_path, environ={"PATCHFLOW_COMMANDS": "just-a-command"})


def test_unknown_key_in_pyproject(tmp_path: Path) -> None:
    _pyproject(tmp_path, "helth_timeout = 5")
    before = _snapshot(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path, environ={})
    assert "Unknown setting 'helth_timeout'" in caught.value.message
    assert str(tmp_path.resolve() / "pyproject.toml") in caught.value.message
    assert "health_timeout" in caught.value.hint
    assert _snapshot(tmp_path) == before


def test_unknown_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Unknown setting 'colour' in a command-line flag"):
        load_settings(tmp_path, environ={}, overrides={"colour": "red"})


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.patchflow\nhealth_timeout = 5\n", encoding="utf-8")
    before = _snapshot(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path, environ={})
    assert str(tmp_path.resolve() / "pyproject.toml") in caught.value.message
    assert "not valid TOML" in caught.value.message
    assert _snapshot(tmp_path) == before


def test_tool_patchflow_must_be_a_table(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool]\npatchflow = "yes"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\[tool.patchflow\] in .*pyproject.toml must be a table"):
        load_settings(tmp_path, environ={})


def test_root_must_be_a_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError) as caught:
        load_settings(missing, environ={})
    assert str(missing) in caught.value.message
    assert "--root" in caught.value.hint
    assert not missing.exists()

    a_file = tmp_path / "VERSION"
    a_file.write_text("2.2.0\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="is not a directory"):
        load_settings(a_file, environ={})


def test_settings_table_lists_every_field() -> None:
    table = settings_table_markdown()
    lines = table.splitlines()
    assert lines[0].startswith("| setting | scope | environment variable |")
    assert len(lines) == 2 + len(FIELDS)
    for f in FIELDS:
        assert f"| `{f.name}` | {f.scope} | `{f.env}` |" in table
    assert "PATCHFLOW_TEST_KILL_AT" not in table, "the test hook is not a documented setting"
    assert "`PATCHFLOW_HEALTH_TIMEOUT` | `60.0`" in table
    assert "| `exclude` | release | `PATCHFLOW_EXCLUDE` | `(empty)` |" in table


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://app:secret@db:5432/app", "postgresql://app:***@db:5432/app"),
        ("postgresql://app:p@ss:w@rd@db/app", "postgresql://app:***@db/app"),
        ("postgresql://app@db/app", "postgresql://app@db/app"),
        ("postgresql://db/app", "postgresql://db/app"),
        (
            "postgresql://app@db/app?sslmode=require&password=s3cr3t",
            "postgresql://app@db/app?sslmode=require&password=***",
        ),
        ("postgresql://app:a@db/app?password=b&x=1", "postgresql://app:***@db/app?password=***&x=1"),
        ("not a url", "not a url"),
        ("", ""),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_dotenv_that_is_not_utf8_names_the_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_bytes(b"# caf\xe9\nPATCHFLOW_HEALTH_TIMEOUT=5\n")
    before = _snapshot(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path, environ={})
    assert f"Cannot read {tmp_path.resolve() / '.env'}" in caught.value.message
    assert "UTF-8" in caught.value.hint
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("PATCHFLOW_PATCHES_DIR", "/", "inside the project root"),
        ("PATCHFLOW_PATCHES_DIR", "..", "inside the project root"),
        ("PATCHFLOW_STATE_DIR", ".", "inside the project root"),
        ("PATCHFLOW_BACKUPS_DIR", "src", "belongs to the project"),
        ("PATCHFLOW_HEALTH_TIMEOUT", "nan", "finite"),
        ("PATCHFLOW_DB_WAIT_TIMEOUT", "inf", "finite"),
    ],
)
def test_unsafe_folders_and_non_finite_numbers_are_refused(tmp_path, variable, value, fragment) -> None:  # type: ignore[no-untyped-def]
    from patchflow.config import load_settings
    from patchflow.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path, environ={variable: value})
    assert fragment in caught.value.message and variable in caught.value.message


def test_a_misspelt_setting_is_an_error_with_a_suggestion(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from patchflow.config import load_settings
    from patchflow.errors import ConfigError

    (tmp_path / ".env").write_text("PATCHFLOW_SERVICE_MANGER=none\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path, environ={})
    assert "PATCHFLOW_SERVICE_MANGER" in caught.value.message and "PATCHFLOW_SERVICE_MANAGER" in caught.value.hint


def test_settings_are_typed_and_frozen(tmp_path: Path) -> None:
    import dataclasses

    settings = load_settings(tmp_path, environ={"PATCHFLOW_START_RETRIES": "7"})
    assert settings.start_retries == 7 and isinstance(settings.start_retries, int)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.start_retries = 1  # type: ignore[misc]
    assert settings.environ == {"PATCHFLOW_START_RETRIES": "7"}, "the environment reaches the core only here"


def test_the_readme_lists_every_setting_as_the_code_defines_it() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert settings_table_markdown() in readme, "regenerate the README's settings table (settings_table_markdown)"


# -- host settings (issue 18): a machine's own settings beat the release's -----------------------


def _checkout(tmp_path: Path, release: str, host: str | None) -> Path:
    root = tmp_path / "checkout"
    (root / ".patchflow").mkdir(parents=True)
    (root / "pyproject.toml").write_text(f"[project]\nname = 'primeflow'\n\n[tool.patchflow]\n{release}", "utf-8")
    if host is not None:
        (root / ".patchflow" / "host.toml").write_text(host, encoding="utf-8")
    return root


def test_host_settings_win_over_the_release_and_say_where_they_come_from(tmp_path: Path) -> None:
    root = _checkout(
        tmp_path,
        'service_manager = "compose"\nhealth_url = ["http://localhost:4000/health"]\napp_services = ["api"]\n',
        'service_manager = "command"\nhealth_url = "http://127.0.0.1:3001/health"\n'
        '[hosts.web1]\nhost = "deploy@10.0.0.5"\n',
    )
    settings = load_settings(root, environ={})
    assert settings.service_manager == "command" and settings.source("service_manager") == ".patchflow/host.toml"
    assert settings.health_url == ("http://127.0.0.1:3001/health",)
    assert settings.app_services == ("api",) and settings.source("app_services") == "pyproject.toml"
    assert settings.hosts[0].name == "web1" and settings.hosts[0].host == "deploy@10.0.0.5"
    # the environment still beats the host file
    env = load_settings(root, environ={"PATCHFLOW_SERVICE_MANAGER": "none"})
    assert env.service_manager == "none" and env.source("service_manager") == "env:PATCHFLOW_SERVICE_MANAGER"


def test_a_release_section_given_explicitly_replaces_the_pyproject_one(tmp_path: Path) -> None:
    from patchflow.settings_files import release_section

    root = _checkout(tmp_path, 'app_services = ["api"]\n', 'health_url = "http://127.0.0.1:1/health"\n')
    new = release_section(b'[tool.patchflow]\napp_services = ["api", "worker"]\nhealth_url = ["http://x/h"]\n', "p")
    settings = load_settings(root, environ={}, release=new)
    assert settings.app_services == ("api", "worker")
    assert settings.health_url == ("http://127.0.0.1:1/health",), "the host file still wins"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('service_manager = "compose"\nservice_manager = "none"\n', "not valid TOML"),
        ('service_manger = "command"\n', "Did you mean 'service_manager'"),
        ('service_manager = "systemd"\n', "expected one of"),
        ("stop_timeout = -3\n", "host.toml"),
    ],
)
def test_a_bad_host_settings_file_is_named(tmp_path: Path, text: str, expected: str) -> None:
    root = _checkout(tmp_path, "", text)
    with pytest.raises(ConfigError) as caught:
        load_settings(root, environ={})
    assert expected in caught.value.message + caught.value.hint
    assert ".patchflow/host.toml" in caught.value.message


def test_every_setting_has_a_scope_and_the_host_ones_are_the_machines() -> None:
    scopes = {f.name: f.scope for f in FIELDS}
    assert set(scopes.values()) == {"host", "release"}
    for name in ("service_manager", "health_url", "database_url", "verify_key", "hosts", "commands"):
        assert scopes[name] == "host", name
    for name in ("app_services", "compose_files", "build_command", "exclude", "host_paths"):
        assert scopes[name] == "release", name


def test_an_inventory_entry_carries_its_hosts_own_settings(tmp_path: Path) -> None:
    root = _checkout(
        tmp_path,
        '[tool.patchflow.hosts.web1]\nhost = "deploy@10.0.0.5"\n'
        '[tool.patchflow.hosts.web1.settings]\nservice_manager = "command"\n'
        'health_url = ["http://127.0.0.1:3001/health", "http://127.0.0.1:3002/health"]\nstop_timeout = 5\n',
        None,
    )
    (entry,) = load_settings(root, environ={}).hosts
    assert dict(entry.settings) == {
        "service_manager": "command",
        "health_url": "http://127.0.0.1:3001/health,http://127.0.0.1:3002/health",
        "stop_timeout": "5.0",
    }


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ('service_manger = "command"', "did you mean 'service_manager'"),
        ('service_manager = "systemd"', "hosts.web1.settings.service_manager: expected one of"),
        ('hosts = "x"', "may not hold an inventory"),
    ],
)
def test_a_bad_inventory_setting_is_named_with_its_host(tmp_path: Path, table: str, expected: str) -> None:
    root = _checkout(tmp_path, f"[tool.patchflow.hosts.web1.settings]\n{table}\n", None)
    with pytest.raises(ConfigError) as caught:
        load_settings(root, environ={})
    assert expected in caught.value.message


# -- SOURCE_DATE_EPOCH: read through the settings like every other variable ---------------------


def test_source_date_epoch_is_read_from_the_environment_as_a_setting(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, environ={"SOURCE_DATE_EPOCH": "1700000000"})
    assert settings.source_date_epoch == "1700000000"
    assert settings.source("source_date_epoch") == "env:SOURCE_DATE_EPOCH"
    assert load_settings(tmp_path, environ={}).source_date_epoch == ""


def test_patchflow_source_date_epoch_wins_over_the_conventional_variable(tmp_path: Path) -> None:
    environ = {"SOURCE_DATE_EPOCH": "1700000000", "PATCHFLOW_SOURCE_DATE_EPOCH": "1600000000"}
    settings = load_settings(tmp_path, environ=environ)
    assert settings.source_date_epoch == "1600000000"
    assert settings.source("source_date_epoch") == "env:PATCHFLOW_SOURCE_DATE_EPOCH"


def test_source_date_epoch_in_dotenv_is_the_apps_and_not_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("SOURCE_DATE_EPOCH=1700000000\n", encoding="utf-8")
    settings = load_settings(tmp_path, environ={})
    assert settings.source_date_epoch == ""
    assert settings.source("source_date_epoch") == "default"


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("yesterday", "whole seconds since 1970-01-01 UTC"),
        ("-5", "whole seconds since 1970-01-01 UTC"),
        ("1.5", "whole seconds since 1970-01-01 UTC"),
        ("١٢٣", "whole seconds since 1970-01-01 UTC"),  # digits, but not ASCII ones
        ("99999999999999999", "before the year 10000"),
    ],
)
def test_a_malformed_source_date_epoch_is_an_error_naming_the_variable(
    tmp_path: Path, value: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path, environ={"SOURCE_DATE_EPOCH": value})
    assert "SOURCE_DATE_EPOCH in the environment" in caught.value.message
    assert fragment in caught.value.message
    assert "PATCHFLOW_SOURCE_DATE_EPOCH" in caught.value.hint
    assert list(tmp_path.iterdir()) == []
