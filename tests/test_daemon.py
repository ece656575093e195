"""The daemon in-process with the session's Spark: landing folder to PostgreSQL, supervision."""

from __future__ import annotations

import json


from tests.conftest import poll


def drop(settings, dataset, name, text):
    folder = settings.landing.path / dataset
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.tmp"
    tmp.write_text(text)
    tmp.rename(folder / name)


def count(db, table):
    if db.scalar("SELECT to_regclass(%s)", (f"{db.schema}.{table}",)) is None:
        return None
    return db.scalar(f'SELECT count(*) FROM "{db.schema}"."{table}"')


def test_files_land_archive_and_reject(db, make_settings, run_daemon):
    settings = make_settings(datasets={"customers": {"mode": "upsert", "primary_key": ["customer_id"]}})
    (settings.landing.path / "orders").mkdir(parents=True)
    daemon = run_daemon(settings)
    drop(settings, "orders", "sales.csv", "Order ID,Amount (USD)\n1,9.99\n2,5\n")
    poll(lambda: count(db, "orders") == 2, 60, message="orders loaded")
    assert db.columns("orders") == {"order_id": "integer", "amount_usd": "numeric"}
    poll(lambda: (settings.landing.path / "_processed" / "orders" / "sales.csv").exists(), 10, message="archive")

    # A new dataset folder while running, with upsert.
    drop(settings, "customers", "c1.csv", "Customer ID,Name\n1,Ann\n2,Bob\n")
    poll(lambda: count(db, "customers") == 2, 60, message="customers loaded")
    drop(settings, "customers", "c2.csv", "Customer ID,Name\n2,Robert\n3,Cy\n")
    poll(lambda: count(db, "customers") == 3, 30, message="customers upserted")
    assert db.query("SELECT name FROM {s}.customers ORDER BY customer_id") == [("Ann",), ("Robert",), ("Cy",)]

    drop(settings, "orders", "broken.csv", "")
    sidecar = settings.landing.path / "_rejected" / "orders" / "broken.csv.error.json"
    poll(sidecar.exists, 30, message="rejection")
    assert json.loads(sidecar.read_text())["reason"] == "empty"
    assert count(db, "orders") == 2
    registry = daemon.metrics.registry
    assert registry.get_sample_value("dataops_rows_written_total", {"dataset": "orders"}) == 2
    assert registry.get_sample_value("dataops_files_rejected_total", {"dataset": "orders"}) == 1
    assert registry.get_sample_value("dataops_query_up", {"dataset": "customers"}) == 1


def get(url: str) -> tuple[int, dict | str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode()
            code = response.status
    except urllib.error.HTTPError as err:
        body, code = err.read().decode(), err.code
    return code, json.loads(body) if body.startswith("{") else body


def test_health_readiness_metrics_and_query_restart(db, make_settings, run_daemon):
    settings = make_settings(metrics={"enabled": True, "port": 0})
    (settings.landing.path / "orders").mkdir(parents=True)
    daemon = run_daemon(settings)
    poll(lambda: daemon.health is not None, 30, message="health server")
    base = f"http://127.0.0.1:{daemon.health.port}"
    assert get(base + "/healthz") == (200, {"status": "ok"})
    code, body = poll(lambda: (r := get(base + "/readyz"))[0] == 200 and r[1]["queries"] and r, 60,
                      message="ready with the dataset's query")
    assert body["queries"] == {"orders": "running"} and body["postgres"] == "ok"

    drop(settings, "orders", "a.csv", "id,v\n1,x\n2,y\n3,y\n3,y\n4,NA\nbad\n")
    poll(lambda: count(db, "orders") == 4, 60, message="rows loaded")
    metrics = poll(lambda: (m := get(base + "/metrics")[1]) and 'dataops_rows_written_total{dataset="orders"} 4.0' in m
                   and m, 10, message="metrics")
    assert db.scalar("SELECT rows_loaded FROM {c}.loads") == 4
    assert 'dataops_rows_quarantined_total{dataset="orders"} 1.0' in metrics
    assert 'dataops_duplicates_removed_total{dataset="orders"} 1.0' in metrics
    assert 'dataops_batches_total{dataset="orders",status="committed"} 1.0' in metrics
    assert 'dataops_query_up{dataset="orders"} 1.0' in metrics

    # Kill the query behind the daemon's back: readiness drops, the supervisor brings it back.
    daemon.queries["orders"].query.stop()
    poll(lambda: daemon.metrics.registry.get_sample_value("dataops_query_restarts_total", {"dataset": "orders"}),
         30, message="restart counted")
    poll(lambda: get(base + "/readyz")[0] == 200, 60, message="ready again")
    drop(settings, "orders", "b.csv", "id,v\n5,z\n")
    poll(lambda: count(db, "orders") == 5, 60, message="loads after restart")
    assert daemon.metrics.registry.get_sample_value("dataops_query_up", {"dataset": "orders"}) == 1


def test_a_failing_dataset_does_not_stop_the_others(db, make_settings, run_daemon):
    # "bad" cannot be created (partition column is not a date): its file is rejected with the reason.
    settings = make_settings(datasets={"bad": {"partition_by": "amount"}})
    daemon = run_daemon(settings)
    drop(settings, "bad", "b.csv", "id,amount\n1,2\n")
    drop(settings, "good", "g.csv", "id\n1\n2\n3\n")
    poll(lambda: count(db, "good") == 3, 60, message="good dataset loaded")
    sidecar = settings.landing.path / "_rejected" / "bad" / "b.csv.error.json"
    poll(sidecar.exists, 30, message="bad file rejected")
    assert "not a date or timestamp" in json.loads(sidecar.read_text())["error"]
    drop(settings, "good", "g2.csv", "id\n4\n")
    poll(lambda: count(db, "good") == 4, 30, message="good keeps flowing")
    assert count(db, "bad") is None
    assert daemon.metrics.registry.get_sample_value("dataops_query_up", {"dataset": "bad"}) == 1
