"""The collection installed checkouts' ``tasks.py`` import: ``from patchflow.cli import ns``.

The tasks live in :mod:`patchflow.tasks`; ``init`` writes that line into checkouts, so it stays."""

from patchflow.tasks import ns

__all__ = ["ns"]
