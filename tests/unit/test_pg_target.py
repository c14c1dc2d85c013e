"""patchflow.pg_target: DATABASE_URL split for libpq; a URL libpq cannot parse is a ConfigError
naming the variable, never a traceback."""

from __future__ import annotations

import pytest

from patchflow.errors import ConfigError
from patchflow.pg_target import parse_database_url


def test_prisma_parameters_are_dropped_and_the_schema_kept() -> None:
    parsed = parse_database_url("postgresql://app:s3cret@db:5433/shop?schema=sales&connection_limit=5&sslmode=disable")
    assert parsed.dbname == "shop"
    assert parsed.schema == "sales"
    assert parsed.dropped == ("connection_limit", "schema")
    assert parsed.env["PGPASSWORD"] == "s3cret"
    assert parsed.env["PGPORT"] == "5433"
    assert parsed.env["PGSSLMODE"] == "disable"
    assert "schema" not in parsed.conninfo


@pytest.mark.parametrize(
    ("url", "detail"),
    [
        ("postgresql://u@[::1/db", "IPv6"),  # urllib refuses it before libpq sees it (ValueError)
        ("postgresql://%zz@h/db", "percent-encoded"),  # libpq refuses these (psycopg.ProgrammingError)
        ("postgresql://u@h/db?options=%00", "%00"),
        ("postgresql://u@h/\udc80", "utf-8"),  # a name that is not text (UnicodeEncodeError)
    ],
)
def test_a_url_libpq_cannot_parse_is_a_config_error_naming_the_source(url: str, detail: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_database_url(url, source="database_admin_url")
    assert caught.value.message.startswith("database_admin_url is not a valid PostgreSQL URL")
    assert detail in caught.value.message
    assert "postgresql://user:password@host:5432/dbname" in caught.value.hint


def test_not_a_postgresql_url() -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL is not a PostgreSQL URL"):
        parse_database_url("mysql://u@h/db")
