"""A PrimeFlow sample install running as a real docker compose project (for tests and the demo).

:class:`ComposeInstall` wraps a workspace made by ``scripts/sample_workspace.py``'s
``prepare_compose_workspace``: the stack is ``docker/docker-compose.local.yml`` (api and worker
built locally, PostgreSQL in a container with the named volume ``pgdata``), named by a unique
compose project. Helpers run ``docker compose`` the way patchflow does (``--env-file .env -f FILE
-p PROJECT``), read container ids / volume creation times, query the database inside the
container, and remove every container, volume and image of the project afterwards.

:func:`docker_shim` puts a logging ``docker`` in front of the real one so a test can see every
docker command a patchflow subprocess ran (field failure C25).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from sample_workspace import COMPOSE_FILE, copy_patch, make_release, prepare_compose_workspace  # noqa: E402

from support.installs import get, run_inv  # noqa: E402

__all__ = [
    "COMPOSE_FILE",
    "ComposeInstall",
    "DockerCall",
    "docker_shim",
    "read_shim_log",
    "remove_project",
    "volume_removals",
]


def _docker(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def remove_project(project: str) -> None:
    """Remove every container, network, volume and image of compose project ``project``
    (test clean-up only; patchflow itself never removes a volume)."""
    containers = _docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={project}", check=False)
    ids = containers.stdout.split()
    if ids:
        _docker("rm", "-f", "-v", *ids, check=False)
    networks = _docker("network", "ls", "-q", "--filter", f"label=com.docker.compose.project={project}", check=False)
    if networks.stdout.split():
        _docker("network", "rm", *networks.stdout.split(), check=False)
    volumes = _docker("volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={project}", check=False)
    if volumes.stdout.split():
        _docker("volume", "rm", "-f", *volumes.stdout.split(), check=False)
    images = _docker("image", "ls", "-aq", "--filter", f"label=com.docker.compose.project={project}", check=False)
    if images.stdout.split():
        _docker("image", "rm", "-f", *sorted(set(images.stdout.split())), check=False)


@dataclass
class ComposeInstall:
    """A sample install whose services run as compose project ``project``; api on ``port``."""

    root: Path
    project: str
    port: int

    @classmethod
    def create(cls, folder: Path, project: str, extra_env: dict[str, str] | None = None) -> ComposeInstall:
        """Prepare the workspace in ``folder`` (nothing is started)."""
        root = prepare_compose_workspace(folder, project=project, extra_env=extra_env)
        port = int(cls._env(root)["API_PORT"])
        return cls(root, project, port)

    @staticmethod
    def _env(root: Path) -> dict[str, str]:
        pairs = (line.split("=", 1) for line in (root / ".env").read_text().splitlines() if "=" in line)
        return {k: v for k, v in pairs}

    @property
    def compose_file(self) -> Path:
        return self.root / COMPOSE_FILE

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"

    def compose_args(self) -> list[str]:
        """``docker compose --env-file .env -f FILE -p PROJECT`` (what patchflow runs)."""
        return [
            "docker",
            "compose",
            "--env-file",
            str(self.root / ".env"),
            "-f",
            str(self.compose_file),
            "-p",
            self.project,
        ]

    def compose(self, *args: str, timeout: float = 300, check: bool = True, input: bytes | None = None) -> str:
        """Run a compose subcommand; returns stdout (text)."""
        done = subprocess.run(
            [*self.compose_args(), *args],
            capture_output=True,
            timeout=timeout,
            check=False,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and done.returncode != 0:
            raise RuntimeError(
                f"docker compose {' '.join(args)} failed ({done.returncode}): {done.stderr.decode(errors='replace')}"
            )
        return done.stdout.decode(errors="replace")

    def inv(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run ``inv <task> --root ROOT ...`` as an operator would (no terminal)."""
        return run_inv(args[0], "--root", str(self.root), *args[1:], env=env, timeout=timeout)

    def release(self, workdir: Path, version: str, **changes: Any) -> Path:
        """Build ``version`` from this install's tree (``make_release``; ``health_status=``,
        ``migration=``), create its patch there and copy it into the install."""
        source = make_release(self.root, workdir / f"source-{version}", version, **changes)
        done = run_inv("create-patch", "--root", str(source))
        assert done.returncode == 0, done.stderr + done.stdout
        return copy_patch(source, self.root, version)

    # -- containers and volume -----------------------------------------------------------------
    def container_ids(self) -> dict[str, str]:
        """service -> full container id (running or not)."""
        out = self.compose("ps", "--all", "--format", "json")
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        ids = {}
        for row in rows:
            full = _docker("inspect", "--format", "{{.Id}}", row["ID"]).stdout.strip()
            ids[row["Service"]] = full
        return ids

    def inspect(self, service: str) -> dict[str, object]:
        """``docker inspect`` of the service's container."""
        cid = self.container_ids()[service]
        data: list[dict[str, object]] = json.loads(_docker("inspect", cid).stdout)
        return data[0]

    def started_at(self, service: str) -> str:
        state = self.inspect(service)["State"]
        assert isinstance(state, dict)
        return str(state["StartedAt"])

    @property
    def volume(self) -> str:
        return f"{self.project}_pgdata"

    def volume_created(self) -> str:
        """``CreatedAt`` of the ``pgdata`` volume (changes only if the volume is recreated)."""
        return _docker("volume", "inspect", "--format", "{{.CreatedAt}}", self.volume).stdout.strip()

    def image_id(self, service: str) -> str:
        return _docker("image", "inspect", "--format", "{{.Id}}", f"{self.project}-{service}").stdout.strip()

    def image_created(self, service: str) -> str:
        return _docker("image", "inspect", "--format", "{{.Created}}", f"{self.project}-{service}").stdout.strip()

    # -- database inside the postgres service ------------------------------------------------------
    def psql(self, sql: str, db: str = "primeflow") -> str:
        """Run ``sql`` as the superuser inside the postgres service; unaligned rows."""
        return self.compose(
            "exec", "-T", "postgres", "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            "-U", "primeflow", "-d", db, "-c", sql,
        ).strip()  # fmt: skip

    def pg_dump(self) -> str:
        """A full plain dump (schema, data, owners, privileges) taken inside the container."""
        return self.compose(
            "exec", "-T", "postgres", "pg_dump", "--restrict-key=patchflowtest", "-U", "primeflow", "primeflow"
        )

    def health(self) -> tuple[int, str]:
        return get(self.health_url)

    def health_version(self) -> str | None:
        status, body = self.health()
        if status != 200:
            return None
        return str(json.loads(body).get("version"))

    def wait_health_version(self, version: str, timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.health_version() == version:
                return True
            time.sleep(0.3)
        return False

    def remove(self) -> None:
        """Remove every container, volume and image of the project (clean-up)."""
        remove_project(self.project)


# -- a logging `docker` in front of the real one ---------------------------------------------------
_FIELD = "\x1f"
_RECORD = "\x1e"


@dataclass(frozen=True)
class DockerCall:
    """One docker invocation seen by the shim: arguments and start/end times (epoch seconds)."""

    args: tuple[str, ...]
    started: float
    ended: float
    returncode: int

    def has(self, *words: str) -> bool:
        """True when ``words`` appear in the arguments in this order (not necessarily adjacent)."""
        rest = list(self.args)
        for word in words:
            if word not in rest:
                return False
            rest = rest[rest.index(word) + 1 :]
        return True

    @property
    def text(self) -> str:
        return " ".join(self.args)


def docker_shim(folder: Path) -> tuple[dict[str, str], Path]:
    """Create ``folder/bin/docker`` that logs every call and runs the real docker.

    Returns ``(env, log)``: ``env`` puts the shim first on PATH (pass it to a subprocess),
    ``log`` is read by :func:`read_shim_log`.
    """
    real = shutil.which("docker")
    if real is None:
        raise RuntimeError("docker is not installed")
    bindir = folder / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    log = folder / "docker-calls.log"
    log.touch()
    shim = bindir / "docker"
    shim.write_text(
        "#!/bin/sh\n"
        "# patchflow test shim: log the call, run the real docker, log the exit status\n"
        f"log='{log}'\n"
        "start=$(date +%s.%N)\n"
        '"' + real + '" "$@"\n'
        "rc=$?\n"
        "{\n"
        '  printf \'S%s\\037E%s\\037R%s\' "$start" "$(date +%s.%N)" "$rc"\n'
        '  for arg in "$@"; do printf \'\\037%s\' "$arg"; done\n'
        "  printf '\\036'\n"
        '} >>"$log"\n'
        'exit "$rc"\n',
        encoding="utf-8",
    )
    shim.chmod(0o755)
    env = {"PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    return env, log


def read_shim_log(log: Path) -> list[DockerCall]:
    """The calls recorded by :func:`docker_shim`, in the order they ended."""
    calls = []
    for record in log.read_text(encoding="utf-8", errors="replace").split(_RECORD):
        if not record:
            continue
        fields = record.split(_FIELD)
        started, ended, rc = float(fields[0][1:]), float(fields[1][1:]), int(fields[2][1:])
        calls.append(DockerCall(tuple(fields[3:]), started, ended, rc))
    return calls


def volume_removals(calls: list[DockerCall]) -> list[str]:
    """The calls that would remove a volume (C25): ``down -v/--volumes``, ``volume rm/remove/prune``,
    ``system prune``, ``rm -v`` of a container."""
    bad = []
    for call in calls:
        args = call.args
        if (
            (call.has("down") and ({"-v", "--volumes"} & set(args) or any(a.startswith("--volumes") for a in args)))
            or call.has("volume", "rm")
            or call.has("volume", "remove")
            or call.has("volume", "prune")
            or call.has("system", "prune")
            or (call.has("rm") and ("-v" in args or "--volumes" in args))
        ):
            bad.append(call.text)
    return bad
