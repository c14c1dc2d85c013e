"""Run commands: :class:`LocalRunner` runs them, :class:`DryRunner` only records and prints them.

Swapping the runner is how a dry run works (like SSHKit's Printer backend): code that builds
and runs commands never checks a ``dry_run`` flag itself. Commands are argument lists; no shell.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from patchflow.commands import display
from patchflow.errors import CommandError


@dataclass(frozen=True)
class Result:
    """What a command did: ``returncode``, captured ``stdout``/``stderr`` (text, UTF-8)."""

    args: tuple[str, ...]
    returncode: int
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def output(self) -> str:
        return (self.stdout + ("\n" if self.stdout and self.stderr else "") + self.stderr).strip()


class Runner:
    """Interface: ``run(args, ...)`` returns a :class:`Result`; ``check=True`` raises on failure."""

    dry = False

    def run(
        self,
        args: Sequence[str],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        timeout: float | None = None,
        input_file: Path | None = None,
        output_file: Path | None = None,
        what: str = "",
    ) -> Result:
        raise NotImplementedError


@dataclass
class LocalRunner(Runner):
    """Run commands on this machine with :mod:`subprocess` (no shell).

    ``env`` entries are added to the current environment. ``input_file``/``output_file`` connect
    stdin/stdout to files (binary; e.g. a database dump), otherwise stdout is captured as text.
    ``log`` receives one line per command (``display()`` form, secrets masked).
    """

    log: Callable[[str], None] | None = None

    def run(
        self,
        args: Sequence[str],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        timeout: float | None = None,
        input_file: Path | None = None,
        output_file: Path | None = None,
        what: str = "",
    ) -> Result:
        """Run ``args``; raise :class:`CommandError` (with output) when ``check`` and it fails.

        Raises:
            CommandError: the program is missing, timed out (``timeout`` seconds) or exited non-zero.
        """
        if self.log is not None:
            self.log(display(args))
        full_env = dict(os.environ)
        full_env.update(env or {})
        label = what or display(args)
        stdin = open(input_file, "rb") if input_file else subprocess.DEVNULL  # noqa: SIM115
        stdout = open(output_file, "wb") if output_file else subprocess.PIPE  # noqa: SIM115
        try:
            proc = subprocess.run(
                [str(a) for a in args],
                cwd=cwd,
                env=full_env,
                stdin=stdin,
                stdout=stdout,
                stderr=subprocess.PIPE,
                timeout=timeout,
                check=False,
            )
        except FileNotFoundError:
            raise CommandError(
                f"{label}: the program {args[0]!r} was not found.",
                f"Install it or put it on PATH (tried PATH={full_env.get('PATH', '')}).",
                returncode=127,
            ) from None
        except subprocess.TimeoutExpired:
            raise CommandError(f"{label}: timed out after {timeout:.0f} s.", "", returncode=124) from None
        finally:
            if input_file:
                stdin.close()  # type: ignore[union-attr]
            if output_file:
                stdout.close()  # type: ignore[union-attr]
        out = proc.stdout.decode("utf-8", "replace") if isinstance(proc.stdout, bytes) else ""
        err = proc.stderr.decode("utf-8", "replace") if isinstance(proc.stderr, bytes) else ""
        result = Result(tuple(str(a) for a in args), proc.returncode, out, err)
        if check and not result.ok:
            raise CommandError(
                f"{label} failed with exit code {proc.returncode}: {_tail(result.output)}",
                "",
                returncode=proc.returncode,
                output=result.output,
            )
        return result


def _tail(text: str, lines: int = 12) -> str:
    rows = text.strip().splitlines()
    return "\n".join(rows[-lines:]) if rows else "(no output)"


@dataclass
class DryRunner(Runner):
    """Record commands instead of running them; every command "succeeds" with empty output."""

    dry = True
    commands: list[str] = field(default_factory=list)
    log: Callable[[str], None] | None = None

    def run(
        self,
        args: Sequence[str],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        timeout: float | None = None,
        input_file: Path | None = None,
        output_file: Path | None = None,
        what: str = "",
    ) -> Result:
        line = display(args)
        self.commands.append(line)
        if self.log is not None:
            self.log(f"[dry run] {line}")
        return Result(tuple(str(a) for a in args), 0)
