"""Endpoint records into columns: Arrow's reading against the flattening in Python, row for row.

Each set of records is staged three times into real PostgreSQL staging tables: read by Arrow into
columns (where it can) and cleaned and typed by the column kernels; flattened in Python and cleaned
by the same kernels; and flattened in Python and cleaned value by value (the path of the ``rescue``
policy). The staging tables, the quarantine tables and the reports must be equal, and each case
says whether Arrow must have read the records, so that a reader that silently hands everything to
Python fails.
"""

from __future__ import annotations

import random

import pytest

from connectors.rest import records as rest_records
from connectors.rest import jsontext
from connectors.rest.records import encode_chunk, run_records_task
from streaming.rowstage import StageTask

OPTIONS = {"null_tokens": ["NULL", "n/a"], "true_tokens": ["true", "yes"], "false_tokens": ["false", "no"],
           "date_formats": [], "flatten_depth": 1}


def bench_like(n: int, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    return [{"id": i, "name": rng.choice(["item", " padded ", "tab\tinside", "line\nbreak", "", "NULL", "Zoë"]),
             "price": rng.choice([round(rng.uniform(1, 500), 2), 3, None]), "quantity": rng.randint(0, 90),
             "active": rng.random() < 0.8, "updated_at": f"2024-0{1 + i % 9}-1{i % 10}T10:{i % 60:02d}:00Z",
             "owner": {"login": f"user{i % 97}", "id": i % 97, "site": {"url": "x"} if i % 3 else {"url": None}},
             "tags": rng.choice([[f"t{i % 7}", 'q"uote'], [], None]), "scores": rng.choice([[1, 2], [3], None]),
             "note": rng.choice(["", "plain", "with, comma", 'with "quotes"', None])} for i in range(n)]


CASES = {
    # name: (records, task fields, whether Arrow reads them)
    "bench-like": (bench_like(3000), {}, True),
    "keys appear late, nested ones too": ([{"a": 1}, {"a": 2, "o": {"x": 1}}, {"b": "s", "o": {"y": 2, "x": 3}},
                                           {"a": 4, "c": None}] * 40, {}, True),
    "integers among fractions": ([{"id": i, "v": [1, 1.5, 2 ** 40, -0.0, 1e16][i % 5]} for i in range(50)], {}, True),
    "a large integer among fractions": ([{"id": 1, "v": 1.5}, {"id": 2, "v": 2 ** 60 + 1}], {}, False),
    "a null object": ([{"id": 1, "owner": {"login": "ann"}}, {"id": 2, "owner": None}, {"id": 3}], {}, True),
    "an empty object": ([{"id": 1, "meta": {}}, {"id": 2, "meta": {"k": 1}}], {}, False),
    "an integer past 64 bits": ([{"id": 1, "big": 2 ** 70}, {"id": 2, "big": 5}], {}, False),
    "arrays": ([{"id": i, "s": [["a\\b", 'q"', "ü"], [], None][i % 3], "n": [[1, -2], [], None, [0]][i % 4],
                 "b": [[True, False], []][i % 2], "e": [["x", None], ["y"]][i % 2],
                 "c": [["line\nbreak"], ["ok"]][i % 2], "t": [["t"], []][i % 2]} for i in range(24)],
               {"table_types": {"t": "text"}}, True),
    "arrays of two kinds": ([{"id": i, "v": [["x"], [1, 2.5], [None]][i % 3]} for i in range(9)], {}, False),
    "a field of two kinds": ([{"id": 1, "v": "text"}, {"id": 2, "v": 7}, {"id": 3, "v": True}], {}, False),
    "records refused or empty": ([{"id": 1, "s": "nul\u0000inside"}, {}, {"id": 3, "s": "ok"}], {}, False),
    "records that are no objects": ([1, "two", None, [3]], {}, False),
    "a missing key and typed table": ([{"id": str(i), "n": str(i), "when": "2024-01-02"} for i in range(20)] +
                                      [{"n": "no id"}, {"id": "x", "n": "bad id"}],
                                      {"primary_key": ("id",), "table_types": {"id": "integer", "n": "jsonb",
                                                                                "when": "date", "gone": "text"},
                                       "policy": "evolve"}, True),
    "deeper": ([{"id": i, "a": {"b": {"c": i, "d": [i]}, "e": "x"}} for i in range(30)],
               {"options": {"flatten_depth": 2}}, True),
    "not opened": ([{"id": i, "a": {"b": i}} for i in range(30)], {"options": {"flatten_depth": 0}}, True),
}


def _task(db, suffix: str, fields: dict) -> StageTask:
    fields = dict(fields)
    return StageTask(path="http://api/items", name="endpoint items", seq=0, dataset="items", dsn=db.dsn,
                     stage_schema=db.schema, stage_table=f"stage_{suffix}", quarantine_table=f"quarantine_{suffix}",
                     options={**OPTIONS, **fields.pop("options", {})}, table_types=fields.pop("table_types", {}),
                     hints={}, primary_key=fields.pop("primary_key", ()), **fields)


def _chunks(records: list, size: int = 7, strict: bool = False) -> list[tuple[str, int]]:
    """Rows of an endpoint's micro-batch; ``strict``: as records the strict parser read are sent."""
    return [(encode_chunk(records[a:a + size], strict), a) for a in range(0, len(records), size)]


def _strict(records: list) -> list | None:
    """The records as the client reads them from a page with its strict parser, if it can."""
    import json

    try:
        return jsontext.loads_strict(json.dumps(records, ensure_ascii=False).encode())
    except (ValueError, UnicodeEncodeError):  # NaN, huge integers, unpaired surrogates: read leniently
        return None


@pytest.mark.parametrize("name", list(CASES))
def test_records_stage_the_same_read_by_arrow_or_in_python(db, monkeypatch, name):
    records, fields, by_arrow = CASES[name]
    db.query("CREATE SCHEMA IF NOT EXISTS {s}")
    read_by_arrow = []
    original = rest_records._struct_leaves

    def tracked(*args):
        leaves = original(*args)
        read_by_arrow.append(leaves is not None)
        return leaves

    monkeypatch.setattr(rest_records, "_struct_leaves", tracked)
    arrow = run_records_task(_task(db, "arrow", fields), _chunks(records))
    assert any(read_by_arrow) is by_arrow
    with monkeypatch.context() as patch:
        patch.setattr(rest_records, "_struct_leaves", lambda *args: None)
        python = run_records_task(_task(db, "python", fields), _chunks(records))
        patch.setattr(rest_records._ParsedRecords, "vectorized", property(lambda self: False))
        values = run_records_task(_task(db, "values", fields), _chunks(records))
    others = {"python": python, "values": values}
    strict = _strict(records)
    if strict is not None:  # records a strict parser read travel as C-written JSON: the same rows
        others["strict"] = run_records_task(_task(db, "strict", fields), _chunks(strict, strict=True))
    report = ("status", "detail", "columns", "staged_rows", "quarantined_rows")
    for other in others.values():
        assert {f: getattr(arrow, f) for f in report} == {f: getattr(other, f) for f in report}
    assert arrow.status == "staged" and arrow.staged_rows + arrow.quarantined_rows == len(records)
    assert values.staged_types is None  # staged as text, which the merge casts: compared as it reads them
    # JSON is staged as jsonb (PostgreSQL parses it once, as it takes the rows), however it was read.
    json_columns = [c[2] == "jsonb" for c in arrow.columns]
    for run in (arrow, python, *([others["strict"]] if "strict" in others else [])):
        assert [kind == "jsonb" for kind in run.staged_types] == json_columns
    true_tokens = "ARRAY[" + ", ".join(f"'{t.lower()}'" for t in OPTIONS["true_tokens"]) + "]"

    def as_merged(run, suffix: str) -> str:
        """The run's staging table as the merge reads it: text staging cast to the columns' types."""
        staged = run.staged_types or ["text"] * len(run.columns)
        cast = ["_ord"] + [f"c{i}" if s == (c[2] or "text") or c[2] in (None, "text") else
                           f"CASE WHEN c{i} IS NULL THEN NULL ELSE lower(c{i}) = ANY({true_tokens}) END"
                           if c[2] == "boolean" else f"c{i}::{c[2]}" for i, (s, c) in enumerate(zip(staged, run.columns))]
        return f"SELECT {', '.join(cast)} FROM {{s}}.stage_{suffix}"

    for suffix, run in others.items():
        for table in ("stage", "quarantine") if arrow.quarantined_rows else ("stage",):
            a, b = f"SELECT * FROM {{s}}.{table}_arrow", f"SELECT * FROM {{s}}.{table}_{suffix}"
            if table == "stage":
                a, b = as_merged(arrow, "arrow"), as_merged(run, suffix)
            assert db.scalar(f"SELECT count(*) FROM ({a}) a") == db.scalar(f"SELECT count(*) FROM ({b}) b")
            assert db.scalar(f"SELECT count(*) FROM (({a} EXCEPT ALL {b}) UNION ALL ({b} EXCEPT ALL {a})) d") == 0, \
                (table, suffix)
    # The rows in the staging table are the records that were not quarantined, by position.
    assert db.scalar("SELECT count(*) FROM {s}.stage_arrow") == arrow.staged_rows


def test_columns_come_in_the_order_keys_first_appear_with_nested_fields_in_place():
    records = [{"a": 1, "o": {"x": 1}}, {"b": 2, "o": {"y": 2}}, {"o": None, "c": 3}]
    order = rest_records.key_order(p for r in records for p in rest_records.flatten(r, 1))
    assert order == [("a",), ("o",), ("o", "x"), ("o", "y"), ("b",), ("c",)]
