"""Endpoint inputs that used to leave traces: null objects, HTML error pages, failed first polls."""

from __future__ import annotations


import uuid

from connectors.rest.client import EndpointError, poll as poll_endpoint
from connectors.rest.endpoints import load_records
from streaming.batch import LoadContext
from connectors.rest.config import EndpointConfig
from streaming.metrics import Metrics
from tests.conftest import poll
from tests.helpers import records_frame
from tests.restserver import json_response, rest_server_fixture, text_response  # noqa: F401

ERROR_PAGE = ("<!DOCTYPE html><html><head><title>502 Bad Gateway</title><style>body { color: red; }</style>"
              "<script>var tracking = 'x'.repeat(1000);</script></head><body><h1>Bad Gateway</h1>"
              "<p>The upstream server did not answer &amp; gave up.</p>" + "<div>padding</div>" * 500 + "</body></html>")


def test_a_null_object_adds_no_column_beside_its_fields(db, make_settings, spark):
    from connectors.postgres import ensure_catalog

    endpoint = EndpointConfig(name="repos", url="http://127.0.0.1:1/repos", mode="upsert", primary_key=["id"])
    settings = make_settings()
    ensure_catalog(settings.dsn, settings.postgres.catalog_schema, settings.postgres.schema_name)
    ctx = LoadContext(settings=settings, dsn=settings.dsn, metrics=Metrics(), spark=spark)

    def batch(records, batch_id):
        df = records_frame(spark, records)
        return load_records(ctx, endpoint, df, "test:repos", batch_id)

    batch([{"id": 1, "owner": {"login": "ann"}}, {"id": 2, "owner": {"login": "bob"}}, {"id": 3, "owner": None},
           {"id": 4, "meta": {"a": {"b": 1}}}, {"id": 5, "meta": {"a": None}}], 0)
    assert set(db.columns("repos")) == {"id", "owner__login", "meta__a"}
    assert db.query("SELECT id, owner__login FROM {s}.repos ORDER BY id")[:3] == [(1, "ann"), (2, "bob"), (3, None)]
    # A later batch where every owner is null: the table's owner__login says owner is an object.
    result = batch([{"id": 6, "owner": None, "note": None}], 1)
    assert result.loaded == 1
    assert set(db.columns("repos")) == {"id", "owner__login", "meta__a", "note"}  # a plain null field stays


def test_records_postgres_refuses_go_to_quarantine_and_the_next_batch_loads(db, make_settings, spark):
    from connectors.postgres import ensure_catalog

    endpoint = EndpointConfig(name="orders", url="http://127.0.0.1:1/orders", mode="upsert", primary_key=["id"])
    settings = make_settings()
    ensure_catalog(settings.dsn, settings.postgres.catalog_schema, settings.postgres.schema_name)
    ctx = LoadContext(settings=settings, dsn=settings.dsn, metrics=Metrics(), spark=spark)

    def batch(records, batch_id):
        df = records_frame(spark, records)
        return load_records(ctx, endpoint, df, "test:orders", batch_id)

    batch([{"id": 1, "amount": 5}], 0)
    db.query("ALTER TABLE {s}.orders ADD CONSTRAINT positive CHECK (amount > 0)")
    refused = batch([{"id": 2, "amount": -1}, {"id": 3, "amount": 4}], 1)
    assert (refused.rows_in, refused.loaded, refused.quarantined) == (2, 0, 2)
    reasons = db.query("SELECT record->>'id', reason FROM {c}.quarantine ORDER BY line")
    assert [r[0] for r in reasons] == ["2", "3"] and all("23514" in r[1] and "positive" in r[1] for r in reasons)
    assert batch([{"id": 4, "amount": 9}], 2).loaded == 1
    assert db.query("SELECT id FROM {s}.orders ORDER BY id") == [(1,), (4,)]


def test_an_html_error_page_is_reported_as_a_short_text_excerpt(rest_server):
    rest_server.route("/down", lambda request: text_response(ERROR_PAGE, 502, content_type="text/html"))
    rest_server.route("/gone", lambda request: text_response(ERROR_PAGE, 404, content_type="text/html"))
    for path in ("/down", "/gone"):
        endpoint = EndpointConfig(name="api", url=rest_server.url(path), max_retries=1, backoff="1ms")
        try:
            poll_endpoint(endpoint)
        except EndpointError as exc:
            message = str(exc)
        else:
            raise AssertionError("the poll did not fail")
        assert "502 Bad Gateway" in message and "&" in message, message
        assert "<" not in message and "tracking" not in message and "color" not in message, message
        assert len(message) < 400, message


def test_a_failing_endpoint_records_no_load_until_it_returns_records(db, make_settings, run_daemon, rest_server):
    state = {"broken": True}

    def handle(request):
        if state["broken"]:
            return text_response(ERROR_PAGE, 404, content_type="text/html")
        return json_response([{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])

    rest_server.route("/items", handle)
    name = f"items_{uuid.uuid4().hex[:6]}"
    settings = make_settings(endpoints=[{"name": name, "url": rest_server.url("/items"), "poll_interval": "200ms",
                                         "mode": "upsert", "primary_key": ["id"], "max_retries": 0}])
    daemon = run_daemon(settings)
    registry = daemon.metrics.registry
    poll(lambda: (registry.get_sample_value("dataops_api_errors_total", {"endpoint": name, "kind": "http_4xx"})
                  or 0) >= 3, 60, message="failed polls counted")
    query = daemon.queries[f"endpoint:{name}"].query
    poll(lambda: any(p["batchId"] >= 0 for p in query.recentProgress), 30, message="a micro-batch ran")
    _, body = daemon.readiness()
    shown = body["endpoints"][name]
    assert "404" in shown and "Bad Gateway" in shown and "<" not in shown and len(shown) < 400, shown
    assert db.scalar("SELECT count(*) FROM {c}.loads") == 0

    state["broken"] = False
    poll(lambda: db.scalar(f'SELECT count(*) FROM "{db.schema}"."{name}"') == 2 if db.scalar(
        "SELECT to_regclass(%s)", (f"{db.schema}.{name}",)) else False, 60, message="records loaded")
    assert db.query("SELECT status, rows_in FROM {c}.load_history") == [("committed", 2)]


def test_a_field_typed_in_one_part_of_a_batch_and_text_in_another_keeps_every_raw_value(db, make_settings, spark):
    """Records stage typed columns; where another part of the batch holds text in the column, the
    part is staged again with it as text, so values such as +5 and 007 reach the table as written."""
    settings = make_settings()
    ctx = LoadContext(settings=settings, dsn=settings.dsn, metrics=Metrics(), spark=spark)
    from connectors.postgres import ensure_catalog

    ensure_catalog(settings.dsn, settings.postgres.catalog_schema, settings.postgres.schema_name)
    endpoint = EndpointConfig.model_validate({"name": "codes", "url": "http://127.0.0.1:1/codes", "mode": "append"})
    typed = [{"id": i, "code": "+5" if i % 2 else str(i), "at": "2024-01-01T10:00"} for i in range(40)]
    text = [{"id": i, "code": f"0{i}", "at": "2024-01-01T10:00"} for i in range(40, 80)]
    df = records_frame(spark, typed + text, chunk=20)
    assert df.rdd.getNumPartitions() >= 2  # the typed records in one part, the text ones in another
    result = load_records(ctx, endpoint, df, "test:codes", 0)
    assert (result.rows_in, result.loaded, result.quarantined) == (80, 80, 0)
    assert db.columns("codes") == {"id": "integer", "code": "text", "at": "timestamp without time zone"}
    assert db.query("SELECT code FROM {s}.codes ORDER BY id") == [(r["code"],) for r in typed + text]


def test_a_record_with_json_that_jsonb_refuses_goes_to_quarantine_alone(db, make_settings, spark):
    """Records read leniently may hold NaN inside an array, which jsonb cannot store: that record goes
    to quarantine with the reason, the others load."""
    from connectors.postgres import ensure_catalog

    endpoint = EndpointConfig(name="readings", url="http://127.0.0.1:1/readings", mode="upsert", primary_key=["id"])
    settings = make_settings()
    ensure_catalog(settings.dsn, settings.postgres.catalog_schema, settings.postgres.schema_name)
    ctx = LoadContext(settings=settings, dsn=settings.dsn, metrics=Metrics(), spark=spark)

    def batch(records, batch_id):
        return load_records(ctx, endpoint, records_frame(spark, records), "test:readings", batch_id)

    assert batch([{"id": 1, "values": [1.5, 2]}], 0).loaded == 1
    refused = batch([{"id": 2, "values": [float("nan")]}, {"id": 3, "values": [3]},
                     {"id": 4, "nested": {"deep": {"x": float("inf")}}, "values": None}], 1)
    assert (refused.rows_in, refused.loaded, refused.quarantined) == (3, 1, 2)
    assert db.query("SELECT record->>'id', column_name, raw_value, reason FROM {c}.quarantine ORDER BY line") == [
        ("2", "values", "[NaN]", "the value holds NaN or Infinity, which a jsonb column cannot store"),
        ("4", "nested__deep", '{"x":Infinity}', "the value holds NaN or Infinity, which a jsonb column cannot store")]
    assert batch([{"id": 5, "values": [5]}], 2).loaded == 1
    assert db.query("SELECT id, \"values\"::text FROM {s}.readings ORDER BY id") == [
        (1, "[1.5, 2]"), (3, "[3]"), (5, "[5]")]
