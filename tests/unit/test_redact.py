"""The one redaction point (issue 25, fault 3): URL passwords, ``password=`` parameters and every
remembered secret are masked, whatever characters a hostile password holds."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from patchflow.redact import RedactingStream, forget_all, redact, remember, remember_settings, url_secrets


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    forget_all()
    yield
    forget_all()


@pytest.mark.parametrize(
    "password",
    ["hunter22", "p@ss:w/rd", "a%zzb", "x y&z=1#frag", "ünï€ode", "'quoted'", "trailing\\"],
)
def test_a_hostile_password_in_a_url_is_masked_as_written_decoded_and_encoded(password: str) -> None:
    from urllib.parse import quote

    url = f"postgresql://app:{quote(password, safe='')}@db:5432/primeflow?sslmode=require"
    remember_settings(url, "", {}, {})
    line = f"could not connect to {url}: password {password!r} rejected ({quote(password, safe='')})"
    masked = redact(line)
    assert password not in masked and quote(password, safe="") not in masked, masked
    assert "postgresql://app:***@db:5432/primeflow" in masked


def test_password_parameters_and_conninfo_are_masked_by_shape() -> None:
    text = "host=db password='s3cr et' dbname=x and postgresql://u@h/d?password=abc%40def&sslmode=require"
    assert redact(text) == "host=db password=*** dbname=x and postgresql://u@h/d?password=***&sslmode=require"
    assert url_secrets("postgresql://u:p@ss@h/d?password=zz") == ["p@ss", "zz"]


def test_secret_names_in_the_environment_are_remembered_and_short_values_are_not() -> None:
    remember_settings(
        "", "", {"API_TOKEN": "tok-123456", "HOME": "/root"}, {"JWT_SECRET": "abc", "DB_KEY": "k3y-value"}
    )
    assert redact("tok-123456 k3y-value /root abc") == "*** *** /root abc"


def test_the_stream_masks_what_passes_and_keeps_the_targets_nature() -> None:
    remember(["letmein-42"])
    target = io.StringIO()
    stream = RedactingStream(lambda: target)
    assert stream.write("pw letmein-42\n") == len("pw letmein-42\n")
    assert target.getvalue() == "pw ***\n" and stream.isatty() is False


def test_a_history_record_is_redacted_value_by_value_never_as_json_text(tmp_path: Path) -> None:
    """Redacting the JSON text broke records (a remembered "3600" inside a pid, an escaped quote
    eaten) and missed non-ASCII secrets escaped as \\u00e4: each string value is redacted instead."""
    from patchflow.lifecycle.journal import append_history, read_history

    remember(["pässwörd-1", "136001x"])
    remember_settings("", "", {"ACCESS_TOKEN_TTL": "3600", "FEATURE_SECRET_ON": "true"}, {})
    history = tmp_path / "history.jsonl"
    error = 'libpq: password authentication failed for "pässwörd-1" password=x" 3600 true'
    append_history(history, {"action": "apply", "result": "failed", "pid": 136001, "error": error})
    (record,) = read_history(history)
    assert record["pid"] == 136001 and "pässwörd" not in record["error"] and "3600 true" in record["error"]
