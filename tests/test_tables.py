"""Readable terminal tables: `dataops catalog show` without --json fits 100 columns, no Python reprs."""

from __future__ import annotations

import datetime as dt
import re

from streaming import cli
from streaming.tables import render_document, render_table
from tests.helpers import load


def test_catalog_show_prints_every_part_as_tables_within_100_columns(db, make_settings, tmp_path, capsys):
    settings = make_settings()
    first = tmp_path / "a.csv"
    first.write_text("Order ID,Customer Name,Amount,Note\n" + "".join(
        f"{i},customer {i},{i}.25,\"a rather long note that goes on and on, number {i}\"\n" for i in range(40)))
    second = tmp_path / "b.csv"
    second.write_text("Order ID,Customer Name,Amount,Note\n41,x,1.5,\nbad,y,z,w\n")
    load(settings, "orders", first)
    load(settings, "orders", second)
    assert cli.main(["catalog", "show", "orders", "--config", str(tmp_path / "dataops.yaml")]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 100
    assert "datetime" not in out and "Decimal(" not in out and "{'" not in out
    for title in ("dataset", "columns", "top_values", "recent_loads"):
        assert any(line == title for line in out.splitlines()), title
    loads = db.query("SELECT load_id, rows_loaded, rows_quarantined, started_at FROM {c}.loads ORDER BY load_id")
    table = out.split("recent_loads\n", 1)[1]
    for load_id, loaded, quarantined, started in loads:
        stamp = started.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
        row = next(line for line in table.splitlines() if line.split()[:1] == [str(load_id)])
        assert stamp in row and re.search(rf"\b{loaded}\b.*\b{quarantined}\b", row), row
    assert re.search(r"^customer_name\s+Customer Name\s+text", out, re.M)


def test_new_parts_of_a_document_print_without_code_of_their_own():
    doc = {"dataset": "orders", "row_count": 3, "primary_key": ["id", "day"],
           "keys": [{"columns": ["id"], "unique": True, "checked_at": dt.datetime(2026, 1, 2, 3, 4, 5,
                                                                                tzinfo=dt.timezone.utc)}],
           "semantic": {"email": "contact_email"}}
    text = render_document(doc, title="dataset", max_width=60)
    assert "primary_key  id, day" in text and "keys" in text.splitlines()
    assert "2026-01-02 03:04:05Z" in text and "yes" in text and "contact_email" in text
    wide = render_table([{"name": "n" * 30, "value": "word " * 40, "count": 12345}], max_width=50)
    assert max(len(line) for line in wide.splitlines()) <= 50
    body = wide.splitlines()[2:]
    assert body[0].endswith("12345") and body[0].split()[0] + body[1].split()[0] == "n" * 30  # folded, not lost
