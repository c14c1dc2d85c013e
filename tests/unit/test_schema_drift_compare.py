"""The comparison of two schemas' catalog facts (patchflow.schema_drift.differences)."""

from __future__ import annotations

from patchflow.schema_drift import differences


def test_each_difference_is_named_once_in_name_order() -> None:
    live = {"column User.nickname": "text", "index a_idx": "CREATE INDEX a_idx ON t (x)", "table User": ""}
    expected = {"column User.email": "text NOT NULL", "index a_idx": "CREATE INDEX a_idx ON t (y)", "table User": ""}
    assert differences(live, expected) == [
        "column User.email (text NOT NULL) missing from the live database",
        "column User.nickname (text) only in the live database",
        "index a_idx differs (live: CREATE INDEX a_idx ON t (x); migrations: CREATE INDEX a_idx ON t (y))",
    ]


def test_equal_schemas_have_no_difference_and_long_definitions_are_cut() -> None:
    assert differences({"table T": ""}, {"table T": ""}) == []
    (only,) = differences({"view v": "SELECT " + "x, " * 60}, {})
    assert only.startswith("view v (SELECT x, x,") and only.endswith("...) only in the live database")
    assert len(only) < 140
