"""What the catalog infers — semantic types, personal data, keys, joins — and how it hands it over.

Data with known answers is generated here, loaded through the daemon's load path, and every answer
is computed a second time from the generated data with Python sets.
"""

from __future__ import annotations

import csv
import json
import random
import re
import uuid

import pytest

from connectors import catalog_links, profile
from streaming import catalog, cli, discovery, semantics
from tests.helpers import load


def write_csv(path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(["" if v is None else v for v in row] for row in rows)


def containment(referencing, referenced) -> float:
    values = {v for v in referencing if v is not None}
    return len(values & set(referenced)) / len(values)


class Star:
    """A generated star schema with orphan keys and decoys."""

    def __init__(self, seed: int = 7):
        rng = random.Random(seed)
        self.customers = [[i, f"user{i}@example.com", f"Name{i % 150}"] for i in range(1, 401)]
        self.products = [[i, f"SKU-{i:04d}", rng.randrange(100, 10000) / 100] for i in range(1, 101)]
        self.regions = [[f"R{i}", f"Region {i}"] for i in range(1, 9)]
        # customer ids up to 440 (401..440 are orphans); region R9 is an orphan; quantity 1..20 falls inside
        # every id range (decoy); store_code repeats (decoy).
        self.orders = [[i, rng.randrange(1, 441), f"R{rng.randrange(1, 10)}", rng.randrange(1, 21),
                        rng.randrange(1, 31), rng.choice(["new", "paid", "shipped"])] for i in range(1, 1501)]
        lines, seen = [], set()
        while len(lines) < 3000:
            order, line = rng.randrange(1, 1601), rng.randrange(1, 6)  # orders 1501..1600 are orphans
            if (order, line) not in seen:
                seen.add((order, line))
                lines.append([order, line, rng.randrange(1, 121), rng.randrange(1, 11)])  # products 101..120 orphans
        self.order_lines = lines
        # Same values as customers.id, but text: a different type never joins.
        self.returns = [[f"{rng.randrange(1, 401)}" if k % 7 else "guest", k] for k in range(1, 201)]

    def write(self, tmp_path) -> dict:
        files = {}
        for name, header in (("customers", ["id", "email", "name"]), ("products", ["product_id", "sku", "price"]),
                             ("regions", ["region_code", "label"]),
                             ("orders", ["order_id", "customer_id", "region_code", "quantity", "store_code", "status"]),
                             ("order_lines", ["order_id", "line_no", "product_id", "qty"]),
                             ("returns", ["customer_id", "return_no"])):
            files[name] = tmp_path / f"{name}.csv"
            write_csv(files[name], header, getattr(self, name))
        return files

    def expected_joins(self) -> dict:
        col = lambda rows, i: [r[i] for r in rows]  # noqa: E731
        return {
            ("orders", "customer_id", "customers", "id"): containment(col(self.orders, 1), col(self.customers, 0)),
            ("orders", "region_code", "regions", "region_code"): containment(col(self.orders, 2), col(self.regions, 0)),
            ("order_lines", "order_id", "orders", "order_id"): containment(col(self.order_lines, 0), col(self.orders, 0)),
            ("order_lines", "product_id", "products", "product_id"):
                containment(col(self.order_lines, 2), col(self.products, 0)),
        }


def found_joins(settings, names) -> dict:
    out = {}
    for name in names:
        for j in catalog.show_dataset(settings.dsn, settings, name)["join_candidates"]:
            out[(name, j["column"], j["references"]["dataset"], j["references"]["column"])] = j["containment"]
    return out


STAR = ["customers", "products", "regions", "orders", "order_lines", "returns"]


def load_star(make_settings, tmp_path, star: Star, **extra):
    settings = make_settings(datasets={"products": {"primary_key": ["product_id"]},
                                       "orders": {"mode": "upsert", "primary_key": ["order_id"]}, **extra})
    files = star.write(tmp_path)
    for name in STAR:
        load(settings, name, files[name])
    return settings


def test_star_schema_yields_exactly_the_joins_the_data_supports(db, make_settings, tmp_path, monkeypatch):
    monkeypatch.setattr(catalog_links, "PAIR_SAMPLE_ROWS", 20)  # a true pair key passes the first rows' check
    star = Star()
    settings = load_star(make_settings, tmp_path, star)
    expected = star.expected_joins()
    found = found_joins(settings, STAR)
    assert set(found) == set(expected)
    for key, value in expected.items():
        assert value < 1
        assert found[key] == pytest.approx(value, abs=0.05), key
    keys = {n: catalog.show_dataset(settings.dsn, settings, n)["key_candidates"] for n in STAR}
    assert keys["products"][0] == ["product_id"]  # the declared key first
    assert keys["customers"] == [["id"], ["email"]]
    assert keys["order_lines"] == [["order_id", "line_no"]]
    assert ["store_code"] not in keys["orders"] and ["quantity"] not in keys["orders"]
    assert {c for (c,) in db.query("SELECT column_name FROM {c}.join_candidates WHERE dataset = 'orders'")} == \
        {"customer_id", "region_code"}
    assert db.scalar("SELECT columns FROM {c}.key_candidates WHERE dataset = 'order_lines' AND rank = 1") == \
        ["order_id", "line_no"]

    # Large tables go by the sketches alone: still within the bound.
    monkeypatch.setattr(profile, "EXACT_ROWS", 0)
    catalog_links.refresh(settings.dsn, settings.postgres.catalog_schema, "orders")
    sketched = found_joins(settings, ["orders"])
    assert set(sketched) == {k for k in expected if k[0] == "orders"}
    for key, value in sketched.items():
        assert value == pytest.approx(expected[key], abs=0.05), key
    assert db.scalar("SELECT method FROM {c}.join_candidates WHERE column_name = 'customer_id'") == "sketch"


def test_joins_follow_the_data_through_upserts_and_overwrites(db, make_settings, tmp_path):
    star = Star(seed=11)
    settings = load_star(make_settings, tmp_path, star, customers={"mode": "overwrite"})
    # An upsert moves every order to an existing customer: containment reaches 1.
    for row in star.orders:
        row[1] = (row[1] - 1) % 400 + 1
    path = tmp_path / "orders2.csv"
    write_csv(path, ["order_id", "customer_id", "region_code", "quantity", "store_code", "status"], star.orders)
    load(settings, "orders", path, batch_id=1)
    assert found_joins(settings, ["orders"])[("orders", "customer_id", "customers", "id")] == 1.0
    # Customers overwritten with a repeated id: id is no key any more, so nothing references it.
    rows = star.customers[:300] + [[5, "dup@example.com", "Dup"]]
    path = tmp_path / "customers2.csv"
    write_csv(path, ["id", "email", "name"], rows)
    load(settings, "customers", path, batch_id=1)
    doc = catalog.show_dataset(settings.dsn, settings, "customers")
    assert doc["key_candidates"] == [["email"]]
    assert ("orders", "customer_id", "customers", "id") not in found_joins(settings, ["orders"])
    ident = next(c for c in doc["columns"] if c["name"] == "id")
    assert ident["unique"] is False
    assert set(ident["sample_values"]) <= {str(r[0]) for r in rows}
    # The key is unique again: the orders' column is re-evaluated against it without loading orders.
    path = tmp_path / "customers3.csv"
    write_csv(path, ["id", "email", "name"], star.customers)
    load(settings, "customers", path, batch_id=2)
    assert found_joins(settings, ["orders"])[("orders", "customer_id", "customers", "id")] == 1.0
    # Most orders move to unknown customers: containment falls below one half and the candidate goes.
    rng = random.Random(1)
    for row in star.orders:
        row[1] = row[1] if rng.random() < 0.3 else 400 + row[1]
    path = tmp_path / "orders3.csv"
    write_csv(path, ["order_id", "customer_id", "region_code", "quantity", "store_code", "status"], star.orders)
    load(settings, "orders", path, batch_id=2)
    assert containment([r[1] for r in star.orders], [r[0] for r in star.customers]) < 0.5
    assert ("orders", "customer_id", "customers", "id") not in found_joins(settings, ["orders"])


def people(rng: random.Random, n: int) -> tuple[list[str], list[list]]:
    header = ["email", "homepage", "uuid", "client_ip", "ipv6_addr", "phone", "country", "country_iso3",
              "currency", "zip", "lat", "lng", "tz", "payload", "contact", "notes", "amount", "first_name", "id",
              "signup_day"]
    timezones = ["Europe/Paris", "America/New_York", "Asia/Tokyo", "UTC", "Australia/Sydney"]
    rows = []
    for i in range(n):
        rows.append([
            f"person{i}@mail{i % 7}.org", f"https://site{i}.example.com/p?q={i}", str(uuid.UUID(int=rng.getrandbits(128))),
            f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}",
            f"2001:db8:{rng.randrange(65536):x}::{rng.randrange(65536):x}",
            f"+1 {rng.randrange(200, 999)}-555-{rng.randrange(10000):04d}", rng.choice(["US", "DE", "FR", "JP", "BR"]),
            rng.choice(["USA", "DEU", "FRA", "JPN", "BRA"]), rng.choice(["USD", "EUR", "JPY", "GBP"]),
            f"{rng.randrange(1000, 99999):05d}", f"{rng.uniform(-90, 90):.5f}", f"{rng.uniform(-180, 180):.5f}",
            rng.choice(timezones), json.dumps({"k": i, "v": [1, 2]}),
            f"c{i}@corp.example.com" if i % 10 < 6 else f"call me maybe {i}",
            rng.choice(["great customer", "late payer, call before shipping", "n/a yet"]) + f" #{i}",
            str(rng.randrange(10000, 99999)), rng.choice(["Ann", "Bob", "Chen", "Dana"]), i, f"2024-01-{1 + i % 28:02d}"])
    return header, rows


def test_semantic_types_and_personal_data(db, make_settings, tmp_path, capsys):
    settings = make_settings(datasets={"people": {"mode": "upsert", "primary_key": ["id"],
                                                  "description": "Customer contact records",
                                                  "column_descriptions": {"amount": "Order total in cents"}}})
    header, rows = people(random.Random(3), 400)
    path = tmp_path / "people.csv"
    write_csv(path, header, rows)
    assert load(settings, "people", path).loaded == len(rows)
    doc = catalog.show_dataset(settings.dsn, settings, "people")
    columns = {c["name"]: c for c in doc["columns"]}
    want = {"email": "email", "homepage": "url", "uuid": "uuid", "client_ip": "ipv4", "ipv6_addr": "ipv6",
            "phone": "phone", "country": "country_code", "country_iso3": "country_code", "currency": "currency_code",
            "zip": "postal_code", "lat": "latitude", "lng": "longitude", "tz": "timezone", "payload": "json",
            "contact": None, "notes": None, "amount": None, "first_name": None, "id": None, "signup_day": None}
    assert {n: c["semantic_type"] for n, c in columns.items()} == want
    pii = {n: c["pii"] for n, c in columns.items() if c["pii"]}
    assert pii == {"email": "email", "client_ip": "ip_address", "ipv6_addr": "ip_address", "phone": "phone",
                   "contact": "email", "first_name": "person_name"}
    # Confidence is the share of values that fit, counted independently here.
    for name, kind in want.items():
        if kind:
            values = [r[header.index(name)] for r in rows]
            if name in ("lat", "lng"):
                values = [float(v) for v in values]
            share = sum(semantics.fits(kind, v) for v in values) / len(values)
            assert columns[name]["semantic_confidence"] == pytest.approx(share, abs=1e-4), name
    assert columns["id"]["unique"] and columns["email"]["unique"] and not columns["country"]["unique"]
    # Masked wherever shown.
    raw_emails = {r[0] for r in rows} | {r[14] for r in rows}
    for sample in columns["email"]["sample_values"]:
        assert re.fullmatch(r"p\*\*\*@mail\d\.org", sample)
    assert all(re.fullmatch(r"\+\* \*\*\*-\*\*\*-\*\*\d\d", s) for s in columns["phone"]["sample_values"])
    assert all(re.fullmatch(r"10\.\d+\.\*\.\*", s) for s in columns["client_ip"]["sample_values"])
    assert len(columns["homepage"]["sample_values"]) == 5
    assert set(columns["homepage"]["sample_values"]) <= {r[1] for r in rows}
    config = str(tmp_path / "dataops.yaml")
    outputs = []
    for argv in (["catalog", "show", "people", "--json"], ["catalog", "show", "people"],
                 ["catalog", "search", "mail", "--json"], ["catalog", "search", "person0"],
                 ["catalog", "context", "people"], ["catalog", "context", "--format", "json"]):
        assert cli.main([*argv, "--config", config]) == 0
        outputs.append(capsys.readouterr().out)
    for out in outputs:
        assert not any(e in out for e in raw_emails)
        assert not any(r[5] in out for r in rows)  # phones
    view = db.query("SELECT sample_values, top_values FROM {c}.column_catalog WHERE dataset = 'people' AND pii IS NOT NULL")
    assert view and not any(e in json.dumps(v) for v in view for e in raw_emails)
    assert all(top is None for _, top in view)
    # The description from config, and about 1,500 tokens for 20 columns.
    context = outputs[4]
    assert "Customer contact records" in context and "Order total in cents" in context
    assert len(context) / 4 <= 1500


def test_search_and_context_follow_loads_and_descriptions(db, make_settings, tmp_path, capsys):
    star = Star(seed=5)
    settings = load_star(make_settings, tmp_path, star, customers={"mode": "overwrite",
                                                                   "description": "People who buy things"})
    config = str(tmp_path / "dataops.yaml")

    def search(text):
        assert cli.main(["catalog", "search", text, "--json", "--config", config]) == 0
        return json.loads(capsys.readouterr().out)

    def context(*names):
        assert cli.main(["catalog", "context", *names, "--config", config]) == 0
        return capsys.readouterr().out

    top = search("customer_id")
    assert {(i["dataset"], i["column"]) for i in top[:2]} == {("orders", "customer_id"), ("returns", "customer_id")}
    assert top[0]["matched"] == "name" and top[0]["score"] >= top[-1]["score"]
    assert search("buy")[0] == {"dataset": "customers", "column": None, "matched": "description",
                                "score": search("buy")[0]["score"]}
    shipped = search("shipped")
    assert shipped[0]["dataset"] == "orders" and shipped[0]["column"] == "status" and shipped[0]["matched"] == "values"
    text = context()
    assert text == context()  # deterministic
    for name in STAR:
        assert f"CREATE TABLE {db.schema}.{name} (" in text
    assert "orders.customer_id → customers.id" in text
    assert "order_lines.order_id → orders.order_id" in text
    assert "quantity" in text and "orders.quantity →" not in text
    assert "Keys: (order_id, line_no)" in text
    assert "People who buy things" in text
    # A description set at run time survives loads until the configured text itself changes.
    assert cli.main(["catalog", "describe", "customers", "Everyone with an account", "--config", config]) == 0
    assert cli.main(["catalog", "describe", "customers", "--column", "email", "Login address", "--config", config]) == 0
    capsys.readouterr()
    assert cli.main(["catalog", "describe", "customers", "--column", "nope", "x", "--config", config]) == 2
    assert "nope" in capsys.readouterr().err
    # Overwrite: new values, a status gone, the description kept.
    star.customers = [[i, f"buyer{i}@example.org", f"N{i}"] for i in range(1, 401)]
    path = tmp_path / "customers2.csv"
    write_csv(path, ["id", "email", "name"], star.customers)
    load(settings, "customers", path, batch_id=1)
    doc = catalog.show_dataset(settings.dsn, settings, "customers")
    assert doc["description"] == "Everyone with an account"
    assert next(c for c in doc["columns"] if c["name"] == "email")["description"] == "Login address"
    assert "Everyone with an account" in context("customers")
    settings = make_settings(datasets={"customers": {"mode": "overwrite", "description": "Buyers, v2"}})
    load(settings, "customers", path, batch_id=2)
    assert catalog.show_dataset(settings.dsn, settings, "customers")["description"] == "Buyers, v2"
    assert search("buy")[0]["dataset"] == "customers"
    # Upsert: every order becomes 'paid'; 'shipped' is no longer a value anywhere.
    for row in star.orders:
        row[5] = "paid"
    path = tmp_path / "orders2.csv"
    write_csv(path, ["order_id", "customer_id", "region_code", "quantity", "store_code", "status"], star.orders)
    load(make_settings(datasets={"orders": {"mode": "upsert", "primary_key": ["order_id"]}}), "orders", path,
         batch_id=1)
    assert not [i for i in search("shipped") if i["matched"] == "values"]
    status = next(c for c in catalog.show_dataset(settings.dsn, settings, "orders")["columns"] if c["name"] == "status")
    assert status["sample_values"] == ["paid"]
    assert cli.main(["catalog", "context", "nope", "--config", config]) == 2


def test_semantic_rules_on_values_alone():
    emails = ["ann@example.com"] * 6 + ["not an address"] * 4
    counts = {"email": sum(semantics.fits("email", v) for v in emails)}
    assert semantics.classify("contact", "text", counts, len(emails)) == (None, None)
    assert semantics.pii_category("contact", None, counts, len(emails)) == "email"
    assert semantics.classify("amount", "integer", {"postal_code": 10, "latitude": 0}, 10) == (None, None)
    assert semantics.classify("zip", "integer", {"postal_code": 10}, 10) == ("postal_code", 1.0)
    assert semantics.classify("lat", "numeric", {"latitude": 10, "longitude": 10}, 10) == ("latitude", 1.0)
    assert not semantics.fits("ipv4", "256.1.1.1") and not semantics.fits("email", "a@b")
    assert semantics.mask("jane@example.com", "email") == "j***@example.com"
    assert semantics.mask("+44 20 7946 0958", "phone") == "+** ** **** **58"
    assert semantics.mask("192.168.10.20", "ip_address") == "192.168.*.*"
    assert catalog_links.name_evidence("customer_id", "customers", "id")
    assert catalog_links.name_evidence("origin_tailnum", "planes", "tailnum")
    assert catalog_links.name_evidence("billing_customer_id", "customers", "id")
    assert not catalog_links.name_evidence("quantity", "customers", "id")
    assert not catalog_links.name_evidence("id", "customers", "id")
    assert catalog_links.singular("categories") == "category" and catalog_links.singular("boxes") == "box"


def test_column_descriptions_take_source_names(make_settings):
    settings = make_settings(datasets={"orders": {"column_descriptions": {"Amount (USD)": "Total"}}},
                             endpoints=[{"name": "items", "url": "http://127.0.0.1:1/items", "description": "Items",
                                         "column_descriptions": {"owner__login": "Who owns it"}}])
    assert settings.dataset("orders").column_descriptions == {"amount_usd": "Total"}
    assert next(e for e in settings.section("endpoints") if e.name == "items").description == "Items"


def test_large_batches_are_typed_from_a_bounded_share_of_their_rows(db, make_settings, tmp_path):
    settings = make_settings(datasets={"accounts": {"mode": "upsert", "primary_key": ["id"]}})
    rows = 15_000
    path = tmp_path / "accounts.csv"
    write_csv(path, ["id", "login"], [[i, f"a{i}@example.net"] for i in range(rows)])
    load(settings, "accounts", path)
    tested = db.scalar("SELECT (semantic_counts->>'_tested')::int FROM {c}.columns WHERE name = 'login'")
    assert tested == profile.TESTED_ROWS < rows
    login = next(c for c in catalog.show_dataset(settings.dsn, settings, "accounts")["columns"] if c["name"] == "login")
    assert (login["semantic_type"], login["semantic_confidence"], login["pii"]) == ("email", 1.0, "email")
    # Every row replaced by a handle: the replaced rows' tests are subtracted, the new ones added.
    write_csv(path, ["id", "login"], [[i, f"handle_{i}"] for i in range(rows)])
    load(settings, "accounts", path, batch_id=1)
    login = next(c for c in catalog.show_dataset(settings.dsn, settings, "accounts")["columns"] if c["name"] == "login")
    assert login["semantic_type"] is None and login["pii"] is None
    assert all(v.startswith("handle_") for v in login["sample_values"])


def test_joins_found_off_the_batch_path_converge_on_the_data(db, make_settings, tmp_path):
    """The daemon hands candidates to a background LinkRefresher; once it has drained, they are
    the same joins the data supports, however the batches' requests were coalesced."""
    from connectors.files import LandedFile, load_files
    from connectors.postgres import ensure_catalog
    from streaming.batch import LinkRefresher, LoadContext
    from streaming.metrics import Metrics

    star = Star(seed=5)
    settings = make_settings(datasets={"products": {"primary_key": ["product_id"]},
                                       "orders": {"mode": "upsert", "primary_key": ["order_id"]}})
    ensure_catalog(settings.dsn, settings.postgres.catalog_schema, settings.postgres.schema_name)
    ctx = LoadContext(settings=settings, dsn=settings.dsn, metrics=Metrics())
    refresher = LinkRefresher(ctx).start()
    ctx.find_links = refresher.request
    files = star.write(tmp_path)
    for name in STAR:
        load_files(ctx, name, [LandedFile(str(files[name]), files[name].name)], f"test:{uuid.uuid4()}", 0)
    refresher.stop()
    expected = star.expected_joins()
    found = found_joins(settings, STAR)
    assert set(found) == set(expected)
    for link, share in expected.items():
        assert found[link] == pytest.approx(share, abs=1e-4)
    unique = {(name,) for i, name in enumerate(["id", "email", "name"])
              if len({r[i] for r in star.customers}) == len(star.customers)}
    keys = catalog.show_dataset(settings.dsn, settings, "customers")["key_candidates"]
    assert {tuple(k) for k in keys} == unique


def test_pairs_repeated_among_the_first_rows_are_ruled_out_without_a_scan_of_the_table(db, monkeypatch):
    from psycopg2.extras import RealDictCursor

    monkeypatch.setattr(catalog_links, "PAIR_SAMPLE_ROWS", 10)
    db.query("CREATE SCHEMA IF NOT EXISTS {s}")
    # (a, b) is a key; (b, c) repeats in the first rows (1 and 2); (a, c) only in the last (14 and 44).
    db.query("CREATE TABLE {s}.t AS SELECT i % 15 AS a, i / 15 AS b, "
             "CASE WHEN i = 2 THEN 1 WHEN i = 44 THEN 14 ELSE i END AS c FROM generate_series(0, 44) i")
    rows = 45
    columns = {name: {"name": name, "ordinal": n, "type": "integer", "non_null_count": rows, "null_count": 0,
                      "is_unique": False, "distinct_count": db.scalar(f"SELECT count(DISTINCT {name}) FROM {{s}}.t")}
               for n, name in enumerate(("a", "b", "c"))}
    dataset = {"primary_key": None, "row_count": rows, "table_schema": db.schema, "table_name": "t"}
    scanned = []
    original = catalog_links._pair_counts

    def spy(cur, pairs, rel):
        scanned.append([(x["name"], y["name"]) for x, y in pairs])
        return original(cur, pairs, rel)

    monkeypatch.setattr(catalog_links, "_pair_counts", spy)
    with db.conn.cursor(cursor_factory=RealDictCursor) as cur:
        keys = catalog_links.key_candidates(cur, dataset, columns)
    assert keys == [["a", "b"]]
    assert {p for p in scanned[0]} == {("a", "b"), ("a", "c"), ("b", "c")}  # the first rows: all pairs
    assert set(scanned[1]) == {("a", "b"), ("a", "c")}  # the whole table: the pairs left
    assert db.scalar("SELECT count(DISTINCT (b, c)) FROM (SELECT * FROM {s}.t LIMIT 10) s") < 10
    assert db.scalar("SELECT count(DISTINCT (a, c)) FROM (SELECT * FROM {s}.t LIMIT 10) s") == 10
    assert db.scalar("SELECT count(DISTINCT (a, c)) FROM {s}.t") < rows
