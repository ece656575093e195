"""Stage tasks' column summaries against PostgreSQL reading the same staged text: hashes, registers,
value texts, counts, bounds and sums must be the ones the catalog's SQL computes, value for value."""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg2 import sql

from connectors import stats
from streaming import pghash, pgvalues, summaries
from streaming.schema import ColumnTyper, bool_token_set

BOOLS = bool_token_set(["true", "yes"], ["false", "no"])


def accepted(values: list[str], kind: str) -> list[str]:
    """The values a column of ``kind`` stages (as the row stage's typer accepts them)."""
    typer = ColumnTyper(BOOLS, fixed=kind)
    return [v for v in values if not typer.check([v], v, False)]


def sql_truth(db, values: list[str | None], kind: str) -> dict:
    """What the catalog's SQL computes over the staged text cast to ``kind``."""
    column = sql.Identifier("v")
    rel = sql.SQL("(SELECT t::{} AS v FROM unnest(%s::text[]) t) rel").format(sql.SQL(kind))
    with db.conn.cursor() as cur:
        cur.execute("SET TimeZone = 'UTC'")
        cur.execute(sql.SQL("SELECT {} FROM {}").format(stats._hash_of(column, kind), rel), (values,))
        hashes = [None if h is None else h & (2**64 - 1) for (h,) in cur.fetchall()]
        aggregates = stats._aggregate(cur, sql.SQL("(SELECT t::{} AS v FROM unnest({}::text[]) t)").format(
            sql.SQL(kind), sql.Literal(values)), {"v": kind})["v"]
        cur.execute(sql.SQL("SELECT v::text, count(*) FROM {} WHERE v IS NOT NULL GROUP BY 1").format(rel), (values,))
        counts = dict(cur.fetchall())
        registers: dict[str, bytearray] = {}
        stats._add_to_sketches(cur, sql.SQL("(SELECT t::{} AS v FROM unnest({}::text[]) t)").format(
            sql.SQL(kind), sql.Literal(values)), {"v": kind}, registers)
    return {"hashes": hashes, "aggregate": aggregates, "values": counts, "registers": bytes(registers["v"])}


def summarize(values: list[str | None], kind: str, block: int = 7) -> summaries.ColumnSummary:
    """The summary of ``values`` staged in blocks of ``block`` rows."""
    summarizer = summaries.ColumnSummarizer(kind)
    array = pa.array(values, pa.string())
    if kind == "boolean":
        array = pa.array([None if v is None else v.lower() in ("true", "yes") for v in values], pa.bool_())
    for start in range(0, len(values), block):
        summarizer.add(array.slice(start, block))
    return summarizer.result()


def assert_summary_is_sql(db, values: list[str | None], kind: str,
                          required: frozenset = summaries.PIECES) -> summaries.ColumnSummary:
    """Every piece the summary has is the SQL's; it has at least ``required``."""
    truth = sql_truth(db, values, kind)
    s = summarize(values, kind)
    assert s.exact >= required, (kind, values)
    if "aggregate" in s.exact:
        count, lo, hi, total = truth["aggregate"]
        assert s.count == count
        assert (s.lo, s.hi) == (lo, hi), kind
        assert s.total == total
        if kind == "numeric" and total is not None:
            assert str(s.total) == str(total)  # the sum's scale too
    if "values" in s.exact:
        assert s.values == (truth["values"] if len(truth["values"]) <= summaries.VALUE_LIMIT else None)
    if "registers" in s.exact:
        assert s.registers == truth["registers"]
        present = [v for v in values if v is not None]
        for v, h in zip(present, [h for h in truth["hashes"] if h is not None]):  # each value's hash
            typed = pgvalues.read(pa.array([v]) if kind != "boolean" else pa.array([v.lower() in ("true", "yes")]),
                                    kind)
            assert int(typed.hashes()[0]) == h, v
    return s


def fit_64_bits(values: list[str]) -> bool:
    """Whether the numerics, all at the largest scale one is written with, fit 64-bit integers."""
    scale = max(max(0, -Decimal(v).as_tuple().exponent) for v in values)
    return all(abs(Decimal(v).scaleb(scale)) < 2**63 for v in values)


def test_text_hashes_are_postgresqls_for_every_length(db):
    values = ["", "a", "Zoë Müller", "x" * 11, "y" * 12, "z" * 13, "w" * 24, "v" * 25, "ü" * 40, "line\nbreak", "tab\t"]
    values += ["".join(random.Random(i).choice("abcé€😀 ") for _ in range(i)) for i in range(60)]
    assert_summary_is_sql(db, values + [None], "text")


def test_integers_dates_timestamps_and_booleans_are_read_as_postgresql_reads_them(db):
    assert_summary_is_sql(db, ["+5", "-0", "0", "2147483647", "-2147483648", "42", None, "+5"], "integer")
    assert_summary_is_sql(db, ["9223372036854775807", "-9223372036854775808", "4294967296", "-1", "+7"], "bigint")
    assert_summary_is_sql(db, ["2024-02-29", "0001-01-01", "9999-12-31", "2000-01-01", "1999-12-31", None], "date")
    assert_summary_is_sql(db, ["2024-01-05 10:00", "2024-01-05T10:00:00.5", "2024-01-05 23:59:59.999999",
                               "2024-01-05", "1970-01-01 00:00:00", "1900-06-30 12:00:00.000001"], "timestamp")
    assert_summary_is_sql(db, ["2024-01-05 10:00:00+05:30", "2024-01-05T10:00Z", "2024-01-05 10:00:00-0800",
                               "2024-01-05 10:00:00+05", "2024-01-05 10:00:00", "2024-01-05",
                               "2024-01-05 10:00:00.25-15:59"], "timestamptz")
    assert_summary_is_sql(db, ["true", "yes", "FALSE", "no", None], "boolean")
    assert_summary_is_sql(db, ["true", "TRUE"], "boolean")


def test_numerics_keep_their_scale_and_hash_as_postgresql_hashes_them(db):
    values = ["1.50", "1.5", "+1.5", "-1.50", "0", "0.00", "-0.0", ".5", "5.", "12345.6789", "100000000",
              "0.0001", "1e5", "1.5E-3", "-2.5e+10", "123456789012345", "0.0123", "99999999.9999",
              "10000", "1", None]
    s = assert_summary_is_sql(db, values, "numeric")
    assert s.values["1.50"] == 1 and s.values["1.5"] == 2


def test_doubles_print_sum_and_hash_as_postgresql(db):
    values = ["1.234e+02", "123.4", "0.1", "-0", "0", "1e-05", "0.0001", "1e15", "123456789012345",
              "1e+20", "2.5E-10", "-3.75", "+7", "1e200", "9.99999999999999e-200", "12", None]
    assert_summary_is_sql(db, values, "double precision")
    # Past 1e280 the sum is left to SQL; what is computed still is SQL's.
    s = assert_summary_is_sql(db, ["1e300", "9.99999999999999e-300", "2"], "double precision", frozenset())
    assert s.exact == {"values", "registers"}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(
    st.decimals(allow_nan=False, allow_infinity=False, places=None,
                min_value=-10**12, max_value=10**12).map(lambda d: format(d, "f")),
    st.integers(-10**15, 10**15).map(str),
    st.tuples(st.integers(-10**6, 10**6), st.integers(-20, 20)).map(lambda t: f"{t[0]}e{t[1]}"),
), min_size=1, max_size=60))
def test_generated_numerics_match_postgresql(db, values):
    values = accepted(values, "numeric")
    if values:
        assert_summary_is_sql(db, values, "numeric", summaries.PIECES if fit_64_bits(values) else frozenset())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e200, max_value=1e200).flatmap(
    lambda f: st.sampled_from([repr(f), f"{f:.6e}", f"{f:.3f}", f"{f:.15g}"])), min_size=1, max_size=60))
def test_generated_doubles_match_postgresql(db, values):
    values = accepted(values, "double precision")
    if values:
        # Sums of doubles past 1e280 or below 1e-280 are left to SQL.
        typical = all(float(v) == 0 or 1e-280 < abs(float(v)) < 1e280 for v in values)
        assert_summary_is_sql(db, values, "double precision", summaries.PIECES if typical else frozenset())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(max_size=40), min_size=1, max_size=60))
def test_generated_text_matches_postgresql(db, values):
    values = [v.replace("\x00", "") for v in values]
    assert_summary_is_sql(db, values, "text")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30)).flatmap(
    lambda d: st.sampled_from([d.isoformat(sep=" "), d.isoformat(), d.date().isoformat(),
                               d.isoformat(sep=" ", timespec="minutes")])), min_size=1, max_size=40))
def test_generated_timestamps_match_postgresql(db, values):
    assert_summary_is_sql(db, accepted(values, "timestamp"), "timestamp")


def test_a_column_with_many_values_is_counted_no_further_and_sketched_whole(db):
    rng = random.Random(3)
    values = [str(rng.randrange(10**6)) for _ in range(30_000)] + [None] * 5
    s = assert_summary_is_sql(db, values, "integer")
    assert s.values is None


def test_summaries_of_parts_merge_into_the_summary_of_the_whole(db):
    rng = random.Random(4)
    values = [f"{rng.randrange(-999, 999)}.{rng.randrange(100):02d}" for _ in range(600)]
    parts = [summarize(values[i:i + 200], "numeric") for i in range(0, 600, 200)]
    merged = summaries.merge(parts)
    whole = summarize(values, "numeric")
    assert (merged.count, merged.lo, merged.hi, merged.total, merged.values, merged.registers) == \
        (whole.count, whole.lo, whole.hi, whole.total, whole.values, whole.registers)
    assert summaries.merge([summarize(["1"], "integer"), summarize(["1"], "numeric")]) is None


def test_values_no_summary_reads_exactly_leave_the_column_to_sql():
    s = summarize(["1" * 30, "2"], "numeric")  # past 64 bits: still counted by their texts
    assert s.exact == {"values"} and s.values == {"1" * 30: 1, "2": 1}
    s = summarize(["123456789012345", "0.000000000000123"], "numeric", block=2)  # past 64 bits at one scale
    assert s.exact == {"values"}
    s = summarize(['{"a": 1}'], "jsonb")
    assert not s.exact
    s = summarize(["0.12345678901234567"], "double precision")  # more digits than a double's exact sum
    assert "aggregate" not in s.exact and "registers" in s.exact


def test_float8_text_is_postgresqls(db):
    rng = random.Random(9)
    values = [0.0, -0.0, 1.0, 100.0, 1e14, 1e15, 123456789012345.0, 0.0001, 0.00001, 1.5e-300, 2.0**60,
              1 / 3, -2.5, 5e-324, 1.7976931348623157e308]
    values += [rng.uniform(-1e6, 1e6) for _ in range(200)] + [rng.random() * 10 ** rng.randint(-30, 30) for _ in range(200)]
    texts = db.query("SELECT v::float8::text FROM unnest(%s::text[]) WITH ORDINALITY u(v, i) ORDER BY i",
                     ([repr(v) for v in values],))
    assert [pgvalues.float8_text(v) for v in values] == [t for (t,) in texts]


def test_numeric_digits_hash_like_postgresql(db):
    """pghash.numeric on digit rows with leading and trailing zero digits and any weight."""
    import numpy as np

    values = [Decimal("12345.67"), Decimal("0.0001"), Decimal("-98765432.1"), Decimal("10000"), Decimal("0")]
    rows = np.array([[0, 0, 1, 2345, 6700], [0, 0, 0, 0, 1], [0, 9876, 5432, 1000, 0], [0, 0, 1, 0, 0],
                     [0, 0, 0, 0, 0]], np.int16)
    weights = np.array([3, 3, 2, 3, 0])  # of each row's first digit
    hashes = [h & (2**64 - 1) for (h,) in db.query(
        "SELECT hash_numeric_extended(v, 0) FROM unnest(%s::numeric[]) WITH ORDINALITY u(v, i) ORDER BY i", (values,))]
    assert [int(h) for h in pghash.numeric(rows, weights)] == hashes


@pytest.mark.parametrize("kind", ["integer", "date"])
def test_registers_of_distinct_values_are_those_of_every_value(kind):
    values = [str(i % 7) if kind == "integer" else f"2024-01-0{1 + i % 7}" for i in range(100)]
    counted = summarize(values, kind)
    assert counted.values is not None
    typed = pgvalues.read(pa.array(values), kind)
    assert counted.registers == pghash.registers(typed.hashes()).tobytes()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), min_size=50, max_size=200))
def test_generated_float8_texts_are_postgresqls(db, values):
    texts = db.query("SELECT v::float8::text FROM unnest(%s::text[]) WITH ORDINALITY u(v, i) ORDER BY i",
                     ([repr(v) for v in values],))
    assert [pgvalues.float8_text(v) for v in values] == [t for (t,) in texts]


def test_float8_text_where_the_shortest_digits_lie_halfway_to_a_neighbour(db):
    value = 6.91638034647849e16  # Python's repr: 6.91638034647849e+16, exactly halfway; PostgreSQL's has 17 digits
    assert pgvalues.float8_text(value) == db.scalar("SELECT %s::float8::text", (value,)) == "6.9163803464784896e+16"


BINARY_CASES = {
    "integer": ["+5", "-0", "2147483647", "-2147483648", None, "42"],
    "bigint": ["9223372036854775807", "-9223372036854775808", None, "+7"],
    "numeric": ["1.50", "+1.5", "-1.50", "0.00", "-0.0", ".5", "5.", "1e5", "1.5E-3", "-2.5e+10", None, "12345.6789",
                "0.0001", "99999999999999999999.99", "-123456789012345678901234567890", "1e-20"],
    "double precision": ["1.234e+02", "-0", "0", "1e-300", "1.7976931348623157e308", None, "+7", "0.1"],
    "date": ["2024-02-29", "0001-01-01", "9999-12-31", None, "1999-12-31"],
    "timestamp": ["2024-01-05 10:00", "2024-01-05T10:00:00.5", "2024-01-05", None, "1900-06-30 12:00:00.000001"],
    "timestamptz": ["2024-01-05 10:00:00+05:30", "2024-01-05T10:00Z", "2024-01-05 10:00:00", None, "2024-01-05"],
    "boolean": ["true", "no", None, "yes"],
    "text": ["", "Zoë", None, "tab\there", "line\nbreak", "x" * 5000],
}


@pytest.mark.parametrize("kind", sorted(BINARY_CASES))
def test_binary_copy_stores_what_the_text_would(db, kind):
    """Each type's binary COPY fields (streaming.pgvalues) against PostgreSQL reading the same text."""
    assert_binary_is_text(db, BINARY_CASES[kind], kind)


NUMERIC_TEXTS = st.one_of(
    st.decimals(allow_nan=False, allow_infinity=False, places=None, min_value=-10**30, max_value=10**30).map(
        lambda d: format(d, "f")),
    st.integers(-10**20, 10**20).map(str),
    st.tuples(st.integers(-10**6, 10**6), st.integers(-25, 25)).map(lambda t: f"{t[0]}e{t[1]}"),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(NUMERIC_TEXTS, st.none()), min_size=1, max_size=40))
def test_generated_numerics_copy_in_binary_as_their_text(db, values):
    values = [v for v in values if v is None or accepted([v], "numeric")]
    if values:
        assert_binary_is_text(db, values, "numeric")


def assert_binary_is_text(db, values: list[str | None], kind: str) -> None:
    import io
    import uuid

    array = pa.array([None if v is None else v.lower() in ("true", "yes") for v in values]) if kind == "boolean" \
        else pa.array(values, pa.string())
    # Blocks of three, each read with the scale of the one before as a hint (as a task reads its
    # blocks); a block's column is written with the fixed-width fields where it has no NULL.
    data, scale = pgvalues.COPY_HEADER, None
    for start in range(0, len(values), 3):
        block = pgvalues.read(array.slice(start, 3), kind, scale)
        scale = getattr(block, "scale", None)
        positions = pa.array(range(start, start + len(block.raw) + (0 if block.valid is None else
                                                                    int((~block.valid).sum()))), pa.int64())
        data += pgvalues.copy_rows(positions, [block])
    data += pgvalues.COPY_TRAILER
    table = f"b_{uuid.uuid4().hex[:8]}"
    db.query("CREATE SCHEMA IF NOT EXISTS {s}")
    db.query(f"CREATE TABLE {{s}}.{table} (i bigint, v {kind})")
    db.query("SET TimeZone = 'UTC'")
    with db.conn.cursor() as cur:
        cur.copy_expert(f'COPY "{db.schema}".{table} FROM STDIN WITH (FORMAT binary)', io.BytesIO(data))
    stored = db.query(f"SELECT v::text FROM {{s}}.{table} ORDER BY i")
    texts = [None if v is None else ("true" if v.lower() in ("true", "yes") else "false") if kind == "boolean" else v
             for v in values]
    expected = db.query(f"SELECT t::{kind}::text FROM unnest(%s::text[]) WITH ORDINALITY u(t, i) ORDER BY i", (texts,))
    assert stored == expected
