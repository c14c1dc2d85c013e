"""Pure command builders: compose never removes volumes (C25), postgres stops on errors (C10/C11)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from patchflow.commands import Secret, compose, display, postgres, split_command

PROJECT = Path("/srv/prime flow")


def prefix() -> list[str]:
    return compose.base(PROJECT, ["docker/docker-compose.yml", "docker/override.yml"], "primeflow")


def all_compose_commands() -> list[list[str]]:
    p = prefix()
    services = ["api", "worker"]
    return [
        p,
        compose.build(p, services),
        compose.stop(p, services, 20),
        compose.up(p, services),
        compose.up(p, services, wait=True, wait_timeout=60, no_deps=True, build=True),
        compose.up(p, [], wait=False),
        compose.down(p),
        compose.restart(p, services, 10),
        compose.ps(p),
        compose.logs(p, services, follow=True, tail=100),
        compose.logs(p, [], follow=False, tail=None),
        compose.config_services(p),
    ]


def test_base_prefix() -> None:
    args = prefix()
    assert args[:2] == ["docker", "compose"]
    assert args[-2:] == ["-p", "primeflow"]
    files = [args[i + 1] for i, a in enumerate(args) if a == "-f"]
    assert files == ["/srv/prime flow/docker/docker-compose.yml", "/srv/prime flow/docker/override.yml"]


@pytest.mark.parametrize("args", all_compose_commands(), ids=lambda a: " ".join(a[len(prefix()) :]) or "base")
def test_builders_never_remove_volumes(args: list[str]) -> None:
    assert all(isinstance(a, str) for a in args)
    assert not {"-v", "--volumes", "volume", "prune", "system"} & set(args)


class RecordingRunner:
    """A runner that records the commands it is given and answers like a quiet docker (the
    guard under test must stop a command before it reaches any runner)."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []

    def run(self, args: list[str], **kwargs: object) -> object:
        from patchflow.runner import Result

        self.commands.append(list(args))
        stdout = "api\nworker\npostgres\n" if "config" in args else ""
        return Result(tuple(args), 0, stdout)


def test_the_compose_manager_refuses_a_volume_removal_before_running_it(tmp_path: Path) -> None:
    from patchflow.config import load_settings
    from patchflow.errors import ServiceError
    from patchflow.paths import ProjectPaths
    from patchflow.services.compose import ComposeManager

    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "docker-compose.yml").write_text("services: {}\n")
    settings = load_settings(tmp_path, environ={"PATH": "/usr/bin:/bin"})
    runner = RecordingRunner()
    manager = ComposeManager(settings, ProjectPaths.from_settings(settings), runner)  # type: ignore[arg-type]
    manager._available = True  # no engine here: the guard, not docker, is under test
    for bad in (["down", "-v"], ["down", "--volumes=true"], ["volume", "rm", "x_pgdata"], ["system", "prune"]):
        with pytest.raises((ValueError, ServiceError)):
            manager._run([*manager.prefix(), *bad], "test")
    assert runner.commands == [], "a volume removal never reached the runner"
    manager.down()
    manager.stop()
    manager.start()
    assert [c[len(manager.prefix()) :][:1] for c in runner.commands] == [["down"], ["config"], ["stop"], ["up"]]
    for command in runner.commands:
        compose.assert_no_volume_removal(command)


def test_down_keeps_volumes() -> None:
    assert compose.down(prefix())[len(prefix()) :] == ["down"]


def test_up_flags() -> None:
    args = compose.up(prefix(), ["api"], wait_timeout=90)
    assert args[len(prefix()) :] == ["up", "-d", "--wait", "--wait-timeout", "90", "--no-build", "api"]


@pytest.mark.parametrize(
    "command",
    [
        "docker compose down -v",
        "docker compose -p primeflow down --volumes",
        "docker compose down --remove-orphans -v",
        "docker compose down --volumes=true",
        "docker volume rm primeflow_pgdata",
        "docker volume remove primeflow_pgdata",
        "docker volume prune -f",
        "docker system prune --volumes",
        "docker system prune -af --volumes",
    ],
)
def test_volume_removal_is_refused(command: str) -> None:
    with pytest.raises(ValueError, match="refusing to run a command that removes volumes") as caught:
        compose.assert_no_volume_removal(shlex.split(command))
    assert command in str(caught.value)


@pytest.mark.parametrize(
    "command",
    ["docker compose down", "docker compose down --remove-orphans", "docker compose logs --tail 5 api"],
)
def test_harmless_commands_pass_the_guard(command: str) -> None:
    compose.assert_no_volume_removal(shlex.split(command))


@pytest.mark.parametrize(
    ("root", "configured", "expected"),
    [
        (Path("/srv/PrimeFlow"), "", "primeflow"),
        (Path("/srv/Prime Flow.v2"), "", "primeflowv2"),
        (Path("/srv/__x"), "", "x"),
        (Path("/srv/***"), "", "primeflow"),
        (Path("/srv/a"), "custom", "custom"),
    ],
)
def test_project_name(root: Path, configured: str, expected: str) -> None:
    assert compose.project_name(root, configured) == expected


def test_display_masks_secrets_and_quotes() -> None:
    args = ["pg_dump", "--dbname", Secret("postgresql://app:hunter2@db/app"), "my file.dump"]
    shown = display(args)
    assert "hunter2" not in shown
    assert shown == "pg_dump --dbname '***' 'my file.dump'"
    assert repr(Secret("hunter2")) == "Secret('***')"
    assert Secret("hunter2") == "hunter2", "the real value still reaches the program"


def test_split_command() -> None:
    assert split_command("pnpm prisma migrate deploy --schema 'prisma/my schema.prisma'") == [
        "pnpm",
        "prisma",
        "migrate",
        "deploy",
        "--schema",
        "prisma/my schema.prisma",
    ]


PSQL = ["/usr/lib/postgresql/15/bin/psql"]


def test_pg_restore_stops_on_the_first_error() -> None:
    args = postgres.pg_restore(["pg_restore"], "app", keep_owners=False)
    assert isinstance(args, list)
    assert args[0] == "pg_restore"
    assert "--exit-on-error" in args
    assert "--single-transaction" in args
    assert "--dbname=app" in args
    assert {"--no-owner", "--no-privileges"} <= set(args)


def test_pg_restore_keeping_owners_and_list() -> None:
    args = postgres.pg_restore(["pg_restore"], "app", keep_owners=True, use_list="/tmp/toc.list")
    assert "--no-owner" not in args
    assert "--no-privileges" not in args
    assert args[-1] == "--use-list=/tmp/toc.list"
    assert "--exit-on-error" in args


def test_psql_has_on_error_stop() -> None:
    script = postgres.psql(PSQL)
    assert script[:1] == PSQL
    assert script[-2:] == ["-f", "-"]
    index = script.index("-v")
    assert script[index + 1] == "ON_ERROR_STOP=1"
    assert "-X" in script
    query = postgres.psql(PSQL, sql="SELECT 1", tuples=True, host="/run/pg")
    assert query[-2:] == ["-c", "SELECT 1"]
    assert "ON_ERROR_STOP=1" in query
    assert {"-A", "-t"} <= set(query)
    assert query[query.index("-h") + 1] == "/run/pg"


def test_the_in_place_restore_runs_one_transaction_from_a_script() -> None:
    whole = postgres.psql(PSQL, single_transaction=True)
    assert "--single-transaction" in whole and whole[-2:] == ["-f", "-"] and "ON_ERROR_STOP=1" in whole
    assert "--single-transaction" not in postgres.psql(PSQL)
    script = postgres.pg_restore_script(["pg_restore"], "/b/.restore.sql", use_list="/tmp/toc.list")
    assert script == ["pg_restore", "--no-password", "--file=/b/.restore.sql", "--use-list=/tmp/toc.list"]
    assert "--dbname" not in " ".join(script), "a script, nothing restored"


def test_pg_dump_and_list() -> None:
    assert postgres.pg_dump(["pg_dump"]) == ["pg_dump", "--format=custom", "--no-password"]
    assert postgres.pg_restore_list(["pg_restore"], "/b/database.dump") == ["pg_restore", "--list", "/b/database.dump"]
    assert postgres.pg_restore_list(["pg_restore"]) == ["pg_restore", "--list"]


@pytest.mark.parametrize(
    ("func", "value", "expected"),
    [
        (postgres.quote_ident, "app", '"app"'),
        (postgres.quote_ident, 'my"db', '"my""db"'),
        (postgres.quote_literal, "it's", "'it''s'"),
        (postgres.quote_literal, "x'; DROP TABLE u; --", "'x''; DROP TABLE u; --'"),
    ],
)
def test_quoting(func: object, value: str, expected: str) -> None:
    assert func(value) == expected  # type: ignore[operator]
