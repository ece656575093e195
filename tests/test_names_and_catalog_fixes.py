"""Transliterated column names (existing tables keep theirs), nested landing folders, `ingest` and the
catalog's record of a dataset, numeric top values as the table holds them."""

from __future__ import annotations

import json
import logging

import pytest

from connectors.landing import Landing
from streaming import catalog
from streaming.cli import main
from streaming.naming import normalize_columns, normalize_dataset_name, normalize_identifier
from tests.helpers import load


@pytest.mark.parametrize("raw, expected", [
    ("Größe", "groesse"), ("GRÖSSE", "groesse"), ("Äpfel", "aepfel"), ("MÜLLER", "mueller"),
    ("é", "e"), ("Łódź", "lodz"), ("Ærø", "aero"), ("Đakovo", "dakovo"), ("Gro\u0308sse", "groesse"),
    ("Größe (cm)", "groesse_cm"), ("日付", ""),
])
def test_latin_letters_are_transliterated(raw, expected):
    assert normalize_identifier(raw) == expected


def test_other_scripts_fall_back_to_positions_and_table_names_keep_their_rule():
    assert normalize_columns(["id", "日付", "Размер"]) == ["id", "column_2", "column_3"]
    assert normalize_dataset_name("Größe") == "groe"  # tables, inboxes and checkpoints keep their names


def test_a_new_table_gets_transliterated_columns_an_existing_one_keeps_its_own(db, make_settings, tmp_path):
    settings = make_settings()
    path = tmp_path / "a.csv"
    path.write_text("Größe,日付,Prénom\n42,2024-01-02,Zoë\n")
    load(settings, "fresh", path)
    assert list(db.columns("fresh")) == ["groesse", "column_2", "prenom"]
    assert db.query("SELECT name, source_name FROM {c}.columns WHERE dataset = 'fresh' ORDER BY ordinal") == [
        ("groesse", "Größe"), ("column_2", "日付"), ("prenom", "Prénom")]

    # A table loaded before transliteration: its column "groe" (from "Größe") goes on loading.
    db.query("CREATE TABLE {s}.sizes (groe integer, strae text)")
    db.query("INSERT INTO {s}.sizes VALUES (1, 'a')")
    other = tmp_path / "b.csv"
    other.write_text("Größe,Straße,Farbe\n2,b,rot\n")
    result = load(settings, "sizes", other)
    assert result.loaded == 1
    assert list(db.columns("sizes")) == ["groe", "strae", "farbe"]
    assert db.query("SELECT groe, strae, farbe FROM {s}.sizes ORDER BY groe") == [(1, "a", None), (2, "b", "rot")]


def test_a_nested_folder_is_reported_once_and_left_alone(tmp_path, caplog):
    root = tmp_path / "landing"
    (root / "orders" / "sub").mkdir(parents=True)
    (root / "orders" / "sub" / "x.csv").write_text("id\n1\n")
    (root / "orders" / "top.csv").write_text("id\n2\n")
    landing = Landing(root, settle_seconds=0.0, scan_interval=60, on_dataset=lambda name: None)
    caplog.set_level(logging.WARNING, logger="connectors.landing")
    landing.scan()
    landing.scan()
    landing.observe(str(root / "orders" / "sub" / "x.csv"), "closed")
    warnings = [r.getMessage() for r in caplog.records if "orders/sub" in r.getMessage()]
    assert len(warnings) == 1 and "ignored" in warnings[0]
    assert landing.pending_count("orders") == 1  # top.csv only
    assert (root / "orders" / "sub" / "x.csv").exists()


def test_ingest_with_another_mode_keeps_the_catalog_record(db, make_settings, tmp_path, capsys):
    settings = make_settings(datasets={"people": {"mode": "upsert", "primary_key": ["id"]}})
    first = tmp_path / "1.csv"
    first.write_text("id,name\n1,ann\n2,bob\n")
    load(settings, "people", first)
    before = db.query("SELECT mode, source, primary_key FROM {c}.datasets WHERE name = 'people'")
    snapshot = tmp_path / "2.csv"
    snapshot.write_text("id,name\n7,cy\n")
    code = main(["ingest", str(snapshot), "--dataset", "people", "--mode", "overwrite",
                 "--config", str(tmp_path / "dataops.yaml")])
    assert code == 0 and json.loads(capsys.readouterr().out)["loaded"] == 1
    assert db.query("SELECT id, name FROM {s}.people") == [(7, "cy")]
    assert db.query("SELECT mode, source, primary_key FROM {c}.datasets WHERE name = 'people'") == before
    assert before[0][0] == "upsert"


def test_numeric_top_values_read_as_the_table_holds_them(db, make_settings, tmp_path):
    settings = make_settings()
    path = tmp_path / "p.csv"
    path.write_text("price\n1.20\n1.20\n3.50\n10\n")
    load(settings, "prices", path)
    more = tmp_path / "q.csv"
    more.write_text("price\n1.20\n")
    load(settings, "prices", more, batch_id=1)
    doc = catalog.show_dataset(settings.dsn, settings, "prices")
    (price,) = doc["columns"]
    held = dict(db.query("SELECT price::text, count(*) FROM {s}.prices GROUP BY 1"))
    assert {t["value"]: t["count"] for t in price["top_values"]} == held == {"1.20": 2, "3.50": 1, "10": 1}  # one 1.20 of p.csv was a duplicate
