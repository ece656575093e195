"""The hostile-file corpus (tests/corpus): each file's documented outcome, row by row.

| file | outcome |
|---|---|
| ragged.csv | rows 2 and 4 of data (too few / too many fields) quarantined with the count; others loaded |
| unbalanced_quotes.csv | the line opening a quote that never closes is quarantined, parsing resumes on the next line; a quote inside an unquoted field is kept as text |
| latin1.csv, cp1252.csv | decoded (cp1252 covers latin-1 text); accents, euro sign and curly quotes intact |
| bom.csv | BOM dropped: first column is ``id`` |
| crlf.csv | no carriage returns in values |
| quoted_newlines.csv | embedded CRLF/LF newlines, doubled quotes, commas, tabs and backslashes kept byte for byte, beside NULLs |
| semicolon.csv, tab.tsv, pipe.csv | delimiter sniffed |
| headers.csv | duplicate, blank, keyword, injection and over-long headers normalized; originals kept |
| big field (generated) | a 5 MB quoted field loads intact |
| binary.csv, empty.csv, whitespace_only.csv, header_only.csv | rejected with reason binary / empty / empty / header_only |
| types.csv | every type inferred; leading zeros and very long digit strings stay text |
| nulls.csv | null tokens become NULL; values trimmed |
| duplicates.csv | exact duplicate rows removed and counted |
| orders_v1..v3 | new column added (older rows NULL); bigint widening; a value fitting no widening quarantined |
| key_nulls.csv | upsert: rows with a NULL key quarantined |
| orders_v1..v3, rescue | the table never changes; the new column and values that do not fit go to ``_rescued`` |
| orders_v1..v3, fail | v2 and v3 rejected with the header diff / the type diff |
"""

from __future__ import annotations

import pytest

from tests.conftest import CORPUS
from tests.helpers import accounted, load


def quarantine(db, dataset):
    return db.query("SELECT line, column_name, raw_value, reason, record FROM {c}.quarantine "
                    "WHERE dataset = %s ORDER BY line", (dataset,))


def test_ragged_rows_are_quarantined_with_the_field_count(db, make_settings):
    result = load(make_settings(), "ragged", CORPUS / "ragged.csv")
    assert (result.rows_in, result.loaded, result.quarantined) == (4, 2, 2)
    assert db.query("SELECT id, name, qty FROM {s}.ragged ORDER BY id") == [(1, "a", 10), (4, "d", 40)]
    rows = quarantine(db, "ragged")
    assert [(r[0], r[3]) for r in rows] == [(3, "expected 3 fields, found 2"), (4, "expected 3 fields, found 4")]
    assert rows[1][4] == ["3", "c", "30", "extra"]


def test_unbalanced_quotes_cost_one_row_each(db, make_settings):
    result = load(make_settings(), "quotes", CORPUS / "unbalanced_quotes.csv")
    assert accounted(result, db)
    loaded = db.query("SELECT id, comment FROM {s}.quotes ORDER BY id")
    assert (1, "fine") in loaded and (3, "ok") in loaded and (4, "quoted, with comma") in loaded
    assert (5, 'bad"quote') in loaded  # a quote inside an unquoted field is literal text
    rows = quarantine(db, "quotes")
    assert [r[0] for r in rows] == [3]
    assert rows[0][2] == '2,"never closed' and "unparseable CSV" in rows[0][3]


@pytest.mark.parametrize("name, column, expected", [
    ("latin1.csv", "city", ["Montréal", "Zürich", "São Paulo"]),
    ("cp1252.csv", "note", ["“smart quotes”", "dash – here"]),
])
def test_legacy_encodings_are_decoded_not_mojibake(db, make_settings, name, column, expected):
    result = load(make_settings(), "enc", CORPUS / name)
    assert result.files[0]["encoding"] == "cp1252"
    assert [r[0] for r in db.query(f"SELECT {column} FROM {{s}}.enc ORDER BY id")] == expected
    if name == "cp1252.csv":
        assert db.scalar("SELECT price FROM {s}.enc WHERE id = 1") == "€5"


def test_bom_and_crlf(db, make_settings):
    settings = make_settings()
    load(settings, "bom", CORPUS / "bom.csv")
    load(settings, "crlf", CORPUS / "crlf.csv")
    assert list(db.columns("bom")) == ["id", "name"]
    assert db.query("SELECT name FROM {s}.crlf ORDER BY id") == [("alpha",), ("beta",)]


def test_quoted_newlines_quotes_and_commas_are_byte_faithful(db, make_settings):
    load(make_settings(), "addr", CORPUS / "quoted_newlines.csv")
    assert db.query("SELECT id, address, quote FROM {s}.addr ORDER BY id") == [
        (1, "12 Main St\r\nApt 4", 'she said "hi", then left'),
        (2, "line1\nline2\nline3", "plain"),
        (3, "simple", "a,b,c"),
        (4, None, "tab\there\\\\backslash"),  # two backslashes, as in the file
    ]


@pytest.mark.parametrize("name, delimiter", [("semicolon.csv", ";"), ("tab.tsv", "\t"), ("pipe.csv", "|")])
def test_delimiters_are_sniffed(db, make_settings, name, delimiter):
    result = load(make_settings(), "delim", CORPUS / name)
    assert result.files[0]["delimiter"] == delimiter
    assert db.scalar("SELECT count(*) FROM {s}.delim") == result.loaded > 1
    assert len(db.columns("delim")) >= 2


def test_hostile_headers_are_normalized_and_originals_kept(db, make_settings):
    load(make_settings(), "hdr", CORPUS / "headers.csv")
    columns = list(db.columns("hdr"))
    assert columns[:6] == ["name", "name_2", "column_3", "select", "x_drop_table_users", "amount_usd"]
    assert len(columns[6].encode()) <= 63 and columns[6].startswith("very_long_column_name")
    assert db.query('SELECT name, name_2, column_3, "select" FROM {s}.hdr') == [("ann", "ANN", "blank", "kw")]
    sources = dict(db.query("SELECT name, source_name FROM {c}.columns WHERE dataset = 'hdr'"))
    assert sources["x_drop_table_users"] == 'x"; DROP TABLE users; --'
    assert sources["amount_usd"] == "Amount (USD)"


def test_five_megabyte_field(db, make_settings, tmp_path):
    big = "x" * (5 << 20)
    path = tmp_path / "big.csv"
    path.write_text(f'id,blob\n1,"{big}"\n2,small\n')
    result = load(make_settings(), "big", path)
    assert result.loaded == 2
    assert db.scalar("SELECT length(blob) FROM {s}.big WHERE id = 1") == 5 << 20


@pytest.mark.parametrize("name, reason", [
    ("binary.csv", "binary"), ("empty.csv", "empty"), ("whitespace_only.csv", "empty"), ("header_only.csv", "header_only"),
])
def test_unreadable_files_are_rejected_with_a_reason(db, make_settings, name, reason):
    result = load(make_settings(), "bad", CORPUS / name)
    assert result.files[0]["status"] == "rejected"
    assert result.files[0]["reason"] == reason
    assert name in result.files[0]["detail"]
    assert result.rows_in == 0
    assert db.scalar("SELECT to_regclass(%s)", (f"{db.schema}.bad",)) is None


def test_types_are_inferred_without_losing_information(db, make_settings):
    load(make_settings(), "types", CORPUS / "types.csv")
    assert db.columns("types") == {
        "int_col": "integer", "big_col": "bigint", "dec_col": "numeric", "float_col": "double precision",
        "bool_col": "boolean", "date_col": "date", "ts_col": "timestamp without time zone",
        "tstz_col": "timestamp with time zone", "zip": "text", "mixed": "text", "card": "text",
    }
    row = db.query("SELECT zip, dec_col::text, bool_col, card, tstz_col = '2024-02-29T08:00:00Z'::timestamptz "
                   "FROM {s}.types WHERE int_col = -2")[0]
    assert row == ("00501", "2.25", False, "98765432109876543210987", True)


def test_null_tokens_and_trimming(db, make_settings):
    load(make_settings(), "nulls", CORPUS / "nulls.csv")
    assert db.query("SELECT id, a, b, c FROM {s}.nulls ORDER BY id") == [
        (1, None, None, None), (2, None, None, None), (3, "x", "y", "z")]


def test_exact_duplicates_are_removed_and_counted(db, make_settings):
    result = load(make_settings(), "dups", CORPUS / "duplicates.csv")
    assert (result.rows_in, result.loaded, result.duplicates) == (6, 3, 3)
    assert db.scalar("SELECT count(*) FROM {s}.dups") == 3


def test_schema_evolves_new_columns_and_widening(db, make_settings):
    settings = make_settings()
    load(settings, "orders", CORPUS / "orders_v1.csv")
    load(settings, "orders", CORPUS / "orders_v2_new_column.csv")
    assert db.columns("orders") == {"order_id": "integer", "qty": "integer", "shipped": "date", "channel": "text"}
    assert db.query("SELECT order_id, channel FROM {s}.orders ORDER BY order_id") == [(1, None), (2, None), (3, "web")]
    result = load(settings, "orders", CORPUS / "orders_v3_type_change.csv")
    assert db.columns("orders")["qty"] == "bigint"
    assert db.columns("orders")["shipped"] == "timestamp without time zone"
    assert db.scalar("SELECT qty FROM {s}.orders WHERE order_id = 4") == 5000000000
    assert result.quarantined == 1
    (line, column, raw, reason, _), = quarantine(db, "orders")
    assert (line, column, raw) == (3, "qty", "abc") and "bigint" in reason
    versions = db.query("SELECT version, changes FROM {c}.schema_versions WHERE dataset = 'orders' ORDER BY version")
    assert [v for v, _ in versions] == [1, 2, 3]
    assert {"change": "add_column", "column": "channel", "type": "text"} in versions[1][1]


def test_null_keys_are_quarantined_for_upsert(db, make_settings):
    settings = make_settings(datasets={"people": {"mode": "upsert", "primary_key": ["id"]}})
    result = load(settings, "people", CORPUS / "key_nulls.csv")
    assert (result.loaded, result.quarantined) == (2, 2)
    assert [r[3] for r in quarantine(db, "people")] == ["NULL in primary key column id"] * 2
    assert db.scalar("SELECT quarantined_rows FROM {c}.datasets WHERE name = 'people'") == 2


def test_rescue_keeps_the_schema_and_rescues_what_does_not_fit(db, make_settings):
    settings = make_settings(datasets={"orders": {"on_schema_change": "rescue"}})
    load(settings, "orders", CORPUS / "orders_v1.csv")
    new_column = load(settings, "orders", CORPUS / "orders_v2_new_column.csv")
    changed = load(settings, "orders", CORPUS / "orders_v3_type_change.csv")
    assert db.columns("orders") == {"order_id": "integer", "qty": "integer", "shipped": "date", "_rescued": "jsonb"}
    assert (new_column.loaded, changed.loaded, changed.quarantined) == (1, 2, 0)
    rescued = dict(db.query("SELECT order_id, _rescued FROM {s}.orders WHERE _rescued IS NOT NULL"))
    assert rescued[3] == {"channel": "web", "_file": "orders_v2_new_column.csv"}
    assert rescued[4] == {"qty": "5000000000", "shipped": "2024-01-04 08:30:00", "_file": "orders_v3_type_change.csv"}
    assert rescued[5] == {"qty": "abc", "_file": "orders_v3_type_change.csv"}
    assert db.query("SELECT qty, shipped FROM {s}.orders WHERE order_id = 5") == [(None, __import__("datetime").date(2024, 1, 5))]
    assert db.scalar("SELECT count(*) FROM {c}.schema_versions WHERE dataset = 'orders'") == 1


def test_fail_rejects_files_that_do_not_match_with_a_diff(db, make_settings):
    settings = make_settings(datasets={"orders": {"on_schema_change": "fail"}})
    load(settings, "orders", CORPUS / "orders_v1.csv")
    header = load(settings, "orders", CORPUS / "orders_v2_new_column.csv")
    assert header.files[0]["status"] == "rejected" and header.files[0]["reason"] == "schema_mismatch"
    assert header.files[0]["diff"] == {"new_columns": ["channel"], "missing_columns": []}
    types = load(settings, "orders", CORPUS / "orders_v3_type_change.csv")
    assert types.files[0]["status"] == "rejected"
    assert types.files[0]["diff"] == {"changed_types": {"qty": {"table": "integer", "file": "bigint"},
                                                        "shipped": {"table": "date", "file": "timestamp"}}}
    assert db.scalar("SELECT count(*) FROM {s}.orders") == 2
    assert db.columns("orders") == {"order_id": "integer", "qty": "integer", "shipped": "date"}


def test_configured_date_formats(db, make_settings, tmp_path):
    path = tmp_path / "eu.csv"
    path.write_text("id,day,at\n1,31/01/2024,31/01/2024 10:30\n2,2024-02-29,29/02/2024 23:59\n3,NA,\n")
    settings = make_settings(datasets={"eu": {"date_formats": ["%d/%m/%Y", "%d/%m/%Y %H:%M"]}})
    result = load(settings, "eu", path)
    assert result.quarantined == 0
    assert db.columns("eu") == {"id": "integer", "day": "date", "at": "timestamp without time zone"}
    assert db.query("SELECT day::text, at::text FROM {s}.eu ORDER BY id") == [
        ("2024-01-31", "2024-01-31 10:30:00"), ("2024-02-29", "2024-02-29 23:59:00"), (None, None)]
