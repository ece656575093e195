"""REST endpoints through Spark into PostgreSQL: the stream reader, the daemon, config reloads.

A small API of our own runs on 127.0.0.1 (tests/restserver.py); the daemon runs in-process with the
session's Spark.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid

import yaml

from connectors.rest.config import EndpointConfig
from connectors.rest.endpoints import EndpointSource
from streaming.batch import LoadContext, load_batch
from streaming.sources import Dataset
from streaming.metrics import Metrics
from tests.conftest import poll
from tests.helpers import records_frame
from tests.restserver import json_response, rest_server_fixture, text_response  # noqa: F401

# Endpoint readers run in a Python process Spark's JVM starts, which inherits the environment the
# JVM was started with (the daemon's, in production): a credential must be set before the session.
TOKEN = "s3cr3t-token-value"
os.environ["DATAOPS_TEST_ITEMS_TOKEN"] = TOKEN


class ItemsApi:
    """An API of items with ``updated_at``; ``since`` returns items updated at or after it, oldest first,
    in pages of ``size`` (``page`` from 1), like many real APIs do."""

    def __init__(self, server, path="/items", size=2):
        self.items: dict[int, dict] = {}
        self.size = size
        self.lock = threading.Lock()
        self.failure = None  # (status, body) to answer instead, while set
        server.route(path, self.handle)

    def put(self, item_id: int, updated_at: str, **fields) -> None:
        with self.lock:
            self.items[item_id] = {"id": item_id, "updated_at": updated_at, **fields}

    def handle(self, request):
        if self.failure is not None:
            status, body = self.failure
            return text_response(body, status) if isinstance(body, str) else json_response(body, status)
        since = request.arg("since")
        page = int(request.arg("page", "1"))
        with self.lock:
            items = sorted(self.items.values(), key=lambda i: (i["updated_at"], i["id"]))
        if since:
            items = [i for i in items if i["updated_at"] >= since]
        return json_response({"data": items[(page - 1) * self.size: page * self.size]})


def endpoint_entry(url: str, name: str = "items", **extra) -> dict:
    entry = {"name": name, "url": url, "records_path": "data", "poll_interval": "300ms", "timeout": "2s",
             "pagination": {"type": "page_number", "param": "page", "start": 1}, "max_retries": 1,
             "backoff": "10ms"}
    entry.update(extra)
    return entry


def rows(db, table, order="id"):
    if db.scalar("SELECT to_regclass(%s)", (f"{db.schema}.{table}",)) is None:
        return []
    return db.query(f'SELECT * FROM "{db.schema}"."{table}" ORDER BY {order}')


def count(db, table):
    return len(rows(db, table, order="1"))


def test_records_are_flattened_typed_and_quarantined(db, make_settings, spark):
    """One batch planned by the endpoint source and loaded: nested objects, arrays, types, a NULL key."""
    from connectors.postgres import ensure_catalog

    endpoint = EndpointConfig(name="repos", url="http://127.0.0.1:1/repos", mode="upsert", primary_key=["id"])
    settings = make_settings()
    ensure_catalog(settings.dsn, settings.postgres.catalog_schema, settings.postgres.schema_name)
    records = [
        {"id": 1, "Full Name": "a/b", "owner": {"login": "ann", "address": {"city": "Oslo"}}, "tags": ["x", "y"],
         "stars": 10, "score": 1.5, "private": False, "created": "2024-01-02T03:04:05Z", "note": ""},
        {"id": 2, "Full Name": "c/d", "owner": {"login": "bob"}, "tags": [], "stars": 3, "score": 2,
         "private": True, "created": "2024-02-03T00:00:00Z", "note": None, "extra": {"deep": [1]}},
        {"id": None, "Full Name": "no key"},
        {"id": 1, "Full Name": "a/b renamed", "owner": {"login": "ann"}, "stars": 11},
        {"id": 5, "Full Name": "nul\u0000inside"},  # PostgreSQL cannot store NUL: quarantined
    ]
    df = records_frame(spark, records)
    ctx = LoadContext(settings=settings, dsn=settings.dsn, metrics=Metrics(), spark=spark)
    dataset = Dataset(endpoint.name, endpoint.name, endpoint)
    batch = EndpointSource(ctx).plan(dataset, df.repartition(2), 0)
    result = load_batch(ctx, dataset, batch, f"test:{uuid.uuid4()}", 0)
    assert (result.rows_in, result.loaded, result.quarantined, result.duplicates) == (5, 2, 2, 1)
    types = db.columns("repos")
    assert types["owner__login"] == "text" and types["owner__address"] == "jsonb" and types["tags"] == "jsonb"
    assert types["full_name"] == "text" and types["private"] == "boolean" and types["stars"] == "integer"
    assert types["created"] == "timestamp with time zone" and types["extra__deep"] == "jsonb"
    got = db.query("SELECT id, full_name, owner__login, owner__address, tags, stars, private, note FROM {s}.repos "
                   "ORDER BY id")
    assert got == [(1, "a/b renamed", "ann", None, None, 11, None, None),
                   (2, "c/d", "bob", None, [], 3, True, None)]
    assert db.query("SELECT reason, record->>'full_name' FROM {c}.quarantine ORDER BY line") == [
        ("NULL in primary key column id", "no key"),
        ("the record holds a NUL character or an unpaired surrogate, which PostgreSQL cannot store", None)]
    assert db.scalar("SELECT source_name FROM {c}.columns WHERE name = 'owner__login'") == "owner.login"


def test_incremental_endpoint_across_a_restart_has_no_duplicates_and_no_gaps(db, make_settings, run_daemon,
                                                                             rest_server):
    api = ItemsApi(rest_server)
    api.put(1, "2023-12-31T00:00:00Z", name="before the initial value")
    for i in range(2, 7):
        api.put(i, f"2024-01-0{i}T00:00:00Z", name=f"item {i}")
    entry = endpoint_entry(rest_server.url("/items"), incremental={
        "cursor_field": "updated_at", "param": "since", "initial_value": "2024-01-01T00:00:00Z"})
    settings = make_settings(endpoints=[entry])
    daemon = run_daemon(settings)
    poll(lambda: count(db, "items") == 5, 60, message="first items")
    api.put(7, "2024-01-06T00:00:00Z", name="same stamp as the mark")  # ties with the high-water mark
    api.put(8, "2024-01-08T00:00:00Z", name="item 8")
    poll(lambda: count(db, "items") == 7, 30, message="new items")
    run_daemon.stop(daemon)
    requests_before_restart = rest_server.count("/items")

    api.put(9, "2024-01-09T00:00:00Z", name="while stopped")
    api.put(3, "2024-01-10T00:00:00Z", name="item 3 changed")  # an update appends a new version
    daemon = run_daemon(settings)
    poll(lambda: count(db, "items") == 9, 60, message="items after restart")
    got = rows(db, "items", order="updated_at, id")
    assert [r[0] for r in got] == [2, 3, 4, 5, 6, 7, 8, 9, 3]
    assert 1 not in [r[0] for r in got]
    # The API was asked only for what is new: since the last mark, never from the initial value again.
    sinces = [r.arg("since") for r in rest_server.requests_to("/items")]
    assert sinces[0] == "2024-01-01T00:00:00Z"
    # The first request after the restart starts from a checkpointed mark: the last batch's end, or its
    # start when Spark had not yet recorded the batch as done and replays it (the ledger skips it).
    assert sinces[requests_before_restart] in ("2024-01-06T00:00:00Z", "2024-01-08T00:00:00Z")
    assert "2024-01-01T00:00:00Z" not in sinces[requests_before_restart:]
    assert db.scalar("SELECT count(*) FROM {c}.loads WHERE status = 'committed'") >= 3
    registry = daemon.metrics.registry
    assert registry.get_sample_value("dataops_api_requests_total", {"endpoint": "items", "code": "200"}) > 0


def test_snapshot_endpoint_upserts_changes_and_inserts(db, make_settings, run_daemon, rest_server):
    api = ItemsApi(rest_server, path="/products", size=100)
    api.put(1, "t", name="one", price=1)
    api.put(2, "t", name="two", price=2)
    entry = endpoint_entry(rest_server.url("/products"), name="products", mode="upsert", primary_key=["id"],
                           pagination="none")
    settings = make_settings(endpoints=[entry])
    run_daemon(settings)
    poll(lambda: count(db, "products") == 2, 60, message="snapshot")
    api.put(2, "t", name="two", price=20)
    api.put(3, "t", name="three", price=3)
    poll(lambda: [r[3] for r in rows(db, "products")] == [1, 20, 3], 30, message="updates and inserts")
    assert db.scalar("SELECT row_count FROM {c}.datasets WHERE name = 'products'") == 3


def test_a_broken_endpoint_does_not_stop_others_and_recovers(db, make_settings, run_daemon, rest_server, caplog):
    good = ItemsApi(rest_server, path="/good", size=10)
    good.put(1, "t", name="a")
    bad = ItemsApi(rest_server, path="/bad", size=10)
    bad.put(1, "t", name="z")
    bad.failure = (500, "internal error")

    def authorized(request):
        assert request.headers.get("Authorization") == f"Bearer {TOKEN}"
        return good.handle(request)

    rest_server.route("/good", authorized)
    settings = make_settings(endpoints=[
        endpoint_entry(rest_server.url("/good"), name="good", auth={"type": "bearer", "token_env": "DATAOPS_TEST_ITEMS_TOKEN"}),
        endpoint_entry(rest_server.url("/bad"), name="bad", mode="upsert", primary_key=["id"]),
    ])
    caplog.set_level(logging.INFO)
    daemon = run_daemon(settings)
    (settings.landing.path / "csv").mkdir(parents=True)
    (settings.landing.path / "csv" / "a.csv").write_text("k\n1\n2\n")
    poll(lambda: count(db, "good") == 1 and count(db, "csv") == 2, 60, message="good endpoint and CSV")
    registry = daemon.metrics.registry
    poll(lambda: registry.get_sample_value("dataops_api_errors_total", {"endpoint": "bad", "kind": "http_5xx"}),
         30, message="error counted")
    assert registry.get_sample_value("dataops_api_requests_total", {"endpoint": "bad", "code": "500"}) >= 2
    assert registry.get_sample_value("dataops_api_retries_total", {"endpoint": "bad"}) >= 1
    ready, body = daemon.readiness()
    assert "500" in body["endpoints"]["bad"] and body["endpoints"]["good"] == "ok"

    bad.failure = (200, "{not json")
    poll(lambda: registry.get_sample_value("dataops_api_errors_total", {"endpoint": "bad", "kind": "invalid_json"}),
         30, message="malformed JSON reported")
    bad.failure = None
    poll(lambda: count(db, "bad") == 1, 30, message="bad endpoint recovered")
    good.put(2, "t", name="b")
    poll(lambda: count(db, "good") >= 2, 30, message="good endpoint still polling")
    assert any("endpoint bad" in r.getMessage() and "not JSON" in r.getMessage() for r in caplog.records)
    # The token is nowhere: logs, catalog, metrics.
    assert "s3cr3t" not in caplog.text
    assert "s3cr3t" not in json.dumps(db.query("SELECT * FROM {c}.datasets"), default=str)
    from prometheus_client import generate_latest

    assert b"s3cr3t" not in generate_latest(registry)


def test_an_edit_made_while_the_daemon_starts_takes_effect(db, make_settings, run_daemon, rest_server, tmp_path):
    from streaming.daemon import ConfigWatch

    api = ItemsApi(rest_server, path="/late", size=10)
    api.put(1, "t", name="a")
    settings = make_settings()
    config = tmp_path / "dataops.yaml"
    read = ConfigWatch.signature(str(config))  # the file the settings came from
    doc = yaml.safe_load(config.read_text())
    doc["endpoints"] = [endpoint_entry(rest_server.url("/late"), name="late")]
    config.write_text(yaml.safe_dump(doc))  # edited before the daemon watches the file
    run_daemon(settings, config_path=config, config_read=read)
    poll(lambda: count(db, "late") == 1, 60, message="endpoint added before the watch began")


def test_endpoints_are_added_changed_and_removed_by_editing_the_config(db, make_settings, run_daemon, rest_server,
                                                                       tmp_path, caplog):
    first = ItemsApi(rest_server, path="/first", size=10)
    first.put(1, "t", name="a")
    second = ItemsApi(rest_server, path="/second", size=10)
    second.put(1, "t", name="b")
    second.put(2, "t", name="c")
    settings = make_settings(endpoints=[endpoint_entry(rest_server.url("/first"), name="first", mode="upsert",
                                                       primary_key=["id"])])
    config = tmp_path / "dataops.yaml"
    doc = yaml.safe_load(config.read_text())
    caplog.set_level(logging.INFO)
    run_daemon(settings, config_path=config)
    poll(lambda: count(db, "first") == 1, 60, message="first endpoint")

    doc["endpoints"].append(endpoint_entry(rest_server.url("/second"), name="second"))
    config.write_text(yaml.safe_dump(doc))
    poll(lambda: count(db, "second") == 2, 60, message="added endpoint")

    config.write_text("endpoints: [{name: broken}]\n")  # invalid: refused, everything keeps running
    poll(lambda: "edit refused" in caplog.text, 10, message="refused edit logged")
    first.put(2, "t", name="still polled")
    poll(lambda: count(db, "first") == 2, 30, message="first endpoint after a refused edit")

    doc["endpoints"] = [endpoint_entry(rest_server.url("/second"), name="first", mode="upsert", primary_key=["id"])]
    config.write_text(yaml.safe_dump(doc))  # "second" removed, "first" now reads /second
    poll(lambda: [r[2] for r in rows(db, "first")] == ["b", "c"], 60, message="changed endpoint")
    poll(lambda: "endpoint=second: removed" in caplog.text, 10, message="removal logged")
    before = rest_server.count("/first")
    second_calls = len([r for r in rest_server.requests_to("/second")])
    poll(lambda: len(rest_server.requests_to("/second")) > second_calls + 2, 30, message="changed endpoint polls")
    assert rest_server.count("/first") == before  # the old URL is no longer polled
