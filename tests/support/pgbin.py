"""A ``pg_bindir`` (``PATCHFLOW_PG_BINDIR``) where one PostgreSQL program is a shell script around
the real one: a pg_dump that stops half way, a pg_restore that waits at a gate. The other programs
are links to the real ones."""

from __future__ import annotations

import os
from pathlib import Path

PROGRAMS = ("pg_dump", "pg_restore", "psql")


def wrapped_pg_bindir(folder: Path, real_bindir: Path, program: str, body: str) -> Path:
    """Make ``folder`` a pg_bindir whose ``program`` runs ``body`` (``/bin/sh``; ``$REAL`` is the
    real program's path) and whose other programs are the real ones; returns ``folder``."""
    folder.mkdir()
    for name in PROGRAMS:
        if name != program:
            os.symlink(real_bindir / name, folder / name)
    script = folder / program
    script.write_text(f'#!/bin/sh\nREAL="{real_bindir / program}"\n{body}')
    script.chmod(0o755)
    return folder
