"""Type inference: classification, joins, chunk checks — what PostgreSQL will accept, losslessly."""

import pytest

from streaming.schema import ColumnTyper, bool_token_set, classify, join

BOOLS = bool_token_set(["true", "t", "yes"], ["false", "f", "no"])


@pytest.mark.parametrize("value, kind", [
    ("1", "integer"), ("-2147483647", "integer"), ("3000000000", "bigint"), ("007", "text"),
    ("12345678901234567890123", "text"), ("3.14", "numeric"), ("1.", "numeric"), ("1e5", "double precision"),
    ("1.2345678901234567e5", "numeric"), ("1e-400", "numeric"), ("0e5", "double precision"),
    ("yes", "boolean"), ("F", "boolean"), ("2024-02-29", "date"), ("2023-02-29", "text"), ("0000-01-01", "text"),
    ("2024-01-01 10:00", "timestamp"), ("2024-01-01T10:00:00.123456", "timestamp"),
    ("2024-01-01T10:00:00Z", "timestamptz"), ("2024-01-01T10:00:00+05:30", "timestamptz"),
    ("2024-01-01T10:00:00+16:00", "text"), ("2024-01-01 24:00", "text"), ("NaN", "text"), ("abc", "text"),
])
def test_classify(value, kind):
    assert classify(value, BOOLS) == kind


def test_join_is_a_lattice():
    assert join("integer", "bigint") == "bigint"
    assert join("integer", "double precision") == "double precision"
    assert join("bigint", "double precision") == "numeric"  # a double cannot hold every bigint
    assert join("date", "timestamp") == "timestamp"
    assert join("timestamp", "timestamptz") == "text"
    assert join("boolean", "integer") == "text"
    assert join(None, "date") == "date"


@pytest.mark.parametrize("order", [0, 1, 2])
def test_inferred_type_does_not_depend_on_row_order(order):
    values = ["1e5", "0.12345678901234567890123", "12345678901234567.25"]
    values = values[order:] + values[:order]
    typer = ColumnTyper(BOOLS)
    for v in values:
        assert typer.check([v]) == []
    assert typer.current == "numeric"


def test_chunks_widen_and_never_lose_leading_zeros():
    typer = ColumnTyper(BOOLS)
    assert typer.check(["1", "2", None]) == [] and typer.current == "integer"
    assert typer.check(["00501"]) == [] and typer.current == "text"


def test_table_types_widen_only_safely_and_report_the_rest():
    typer = ColumnTyper(BOOLS, widen_from="integer")
    assert typer.check(["1", "99999999999", "abc", "007"]) == [2, 3]
    assert typer.current == "bigint"
    fixed = ColumnTyper(BOOLS, fixed="integer")
    assert fixed.check(["1", "99999999999", "abc"]) == [1, 2]
    assert fixed.current == "integer" and fixed.wanted == "bigint"


def test_configured_types_accept_what_postgres_casts():
    typer = ColumnTyper(BOOLS, fixed="bigint", loose=True)
    assert typer.check(["1", "007", "1.5", "x"]) == [2, 3]


def test_a_value_with_a_line_break_is_not_two_values():
    typer = ColumnTyper(BOOLS)
    assert typer.check(["1\n2"]) == [] and typer.current == "text"
