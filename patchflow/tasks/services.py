"""The service tasks: up, down, ps, restart and logs of the checkout's stack.

The stack is docker compose or the configured commands (:mod:`patchflow.services`)."""

from __future__ import annotations

import json

from invoke.context import Context

from patchflow.console import console
from patchflow.tasks.edge import ROOT_HELP, command, context_for


@command(help={"root": ROOT_HELP})
def up(c: Context, root: str | None = None) -> None:
    """Start the stack (all compose services, or every configured command)."""
    context_for(c, root).services.up()
    console.print("[green]up[/]")


@command(help={"root": ROOT_HELP})
def down(c: Context, root: str | None = None) -> None:
    """Stop the stack (compose down without ever removing volumes)."""
    context_for(c, root).services.down()
    console.print("[green]down[/]")


@command(help={"root": ROOT_HELP, "json": "print JSON"})
def ps(c: Context, root: str | None = None, json_: bool = False) -> None:
    """List services and their state."""
    states = context_for(c, root).services.status()
    if json_:
        print(json.dumps([s.__dict__ for s in states], indent=2))
        return
    for state in states:
        console.print(f"{state.name:<12} {state.state:<10} {state.detail}", markup=False)


@command(help={"root": ROOT_HELP, "service": "service name (default: all application services)"})
def restart(c: Context, root: str | None = None, service: str | None = None) -> None:
    """Restart one service or all application services."""
    context_for(c, root).services.restart([service] if service else None)
    console.print("[green]restarted[/]")


@command(
    help={
        "root": ROOT_HELP,
        "service": "service name (default: the application services)",
        "follow": "keep following",
        "tail": "INT: number of lines from the end",
    }
)
def logs(
    c: Context, root: str | None = None, service: str | None = None, follow: bool = False, tail: int = 100
) -> None:
    """Show service logs."""
    services = context_for(c, root).services
    services.logs([service] if service else services.app_services(), follow=follow, tail=tail)
