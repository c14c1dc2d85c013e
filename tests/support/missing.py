"""What a test does when a service it needs is missing: fail under CI=true, skip elsewhere."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def missing_service(reason: str) -> NoReturn:
    """Fail under ``CI=true`` (CI must provide every service: a missing one is a set-up failure);
    on a developer machine skip with ``reason`` so the rest of the suite still runs."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    raise pytest.skip.Exception(reason)
