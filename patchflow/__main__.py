"""``python -m patchflow <task>`` (and the ``patchflow`` command): the same tasks as ``inv`` in a
set-up checkout, usable before one exists, e.g. ``python -m patchflow init``."""

from __future__ import annotations

from invoke.program import Program

from patchflow import __version__
from patchflow.tasks import ns

program = Program(namespace=ns, version=__version__, name="patchflow", binary="patchflow")


def main() -> None:
    """Run the task named on the command line."""
    program.run()


if __name__ == "__main__":
    main()
