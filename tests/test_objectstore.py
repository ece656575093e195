"""S3-compatible object stores through Spark into PostgreSQL, against a real SeaweedFS server."""

from __future__ import annotations

import csv
import io
import json
import os
import uuid

import pytest
import yaml

from connectors.csvfile import plan_parts
from connectors.objectstore.store import S3Object, StoreLocation
from streaming.metrics import Metrics
from tests.conftest import poll
from tests.s3server import READER_KEY, READER_SECRET, REGION, S3Server, s3_server_fixture

# Readers and executors run in processes Spark's JVM starts, which inherit the environment the JVM
# was started with: credentials must be set before the session.
os.environ["DATAOPS_TEST_S3_KEY"] = READER_KEY
os.environ["DATAOPS_TEST_S3_SECRET"] = READER_SECRET
os.environ["DATAOPS_TEST_S3_WRONG"] = "not-the-secret"


s3 = pytest.fixture(scope="session", name="s3")(s3_server_fixture)


def csv_bytes(ids, extra: str = "") -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["invoice_id", "amount", "note"])
    for i in ids:
        writer.writerow([i, f"{i}.50", f"row {i}{extra}"])
    return out.getvalue().encode()


def store_entry(server: S3Server, prefix: str, name: str = "invoices", bucket: str | None = None, **extra) -> dict:
    return {"name": name, "url": f"s3://{bucket or server.bucket}/{prefix}/", "endpoint_url": server.url,
            "region": REGION,
            "auth": {"access_key_env": "DATAOPS_TEST_S3_KEY", "secret_key_env": "DATAOPS_TEST_S3_SECRET"},
            "poll_interval": "300ms", **extra}


def ids_in(db, table: str) -> list[int]:
    if db.scalar("SELECT to_regclass(%s)", (f"{db.schema}.{table}",)) is None:
        return []
    return [r[0] for r in db.query(f"SELECT invoice_id FROM {{s}}.{table} ORDER BY invoice_id")]


def test_objects_load_once_while_running_and_after_a_restart(db, make_settings, run_daemon, s3):
    bucket, top = s3.bucket, f"t{uuid.uuid4().hex[:10]}"
    s3.put(bucket, f"{top}/in/2024/b.csv", csv_bytes(range(10, 20)))
    s3.put(bucket, f"{top}/in/c.csv", csv_bytes(range(20, 25)))
    s3.put(bucket, f"{top}/in/notes.json", b'{"not": "csv"}')  # not matched by the default suffixes
    s3.put(bucket, f"{top}/elsewhere/x.csv", csv_bytes(range(900, 905)))  # outside the prefix
    s3.put(bucket, f"{top}/in/bad.csv", b"invoice_id,amount\n1,\x00\x01\x02binary\n")
    settings = make_settings(object_stores=[store_entry(s3, f"{top}/in", mode="upsert", primary_key=["invoice_id"])])
    metrics = Metrics()
    daemon = run_daemon(settings, metrics=metrics)
    poll(lambda: ids_in(db, "invoices") == list(range(10, 25)), 90, message="first load")

    s3.put(bucket, f"{top}/in/d.csv", csv_bytes(range(25, 30)))
    poll(lambda: ids_in(db, "invoices") == list(range(10, 30)), 60, message="an object added while running")
    ready, body = daemon.readiness()
    assert body["object_stores"] == {"invoices": "ok"} and body["queries"]["object_store:invoices"] == "running"
    run_daemon.stop(daemon)

    # While the daemon is down: a key sorting before every seen one, and one after.
    s3.put(bucket, f"{top}/in/2023/a.csv", csv_bytes(range(0, 10)))
    s3.put(bucket, f"{top}/in/e.csv", csv_bytes(range(30, 33)))
    run_daemon(settings, metrics=metrics)
    poll(lambda: ids_in(db, "invoices") == list(range(0, 33)), 90, message="objects added while down")

    loads = db.query("SELECT e->>'name', e->>'status', e->>'reason' FROM {c}.loads, jsonb_array_elements(files) e "
                     "WHERE dataset = 'invoices' AND status = 'committed' ORDER BY 1")
    names = [r[0] for r in loads]
    # Each object exactly once in the load history; the JSON and the other prefix never.
    assert names == sorted(["2023/a.csv", "2024/b.csv", "bad.csv", "c.csv", "d.csv", "e.csv"])
    assert [r[1:] for r in loads if r[0] == "bad.csv"] == [("rejected", "binary")]
    quarantined = db.query("SELECT file, reason FROM {c}.quarantine WHERE dataset = 'invoices'")
    assert len(quarantined) == 1 and quarantined[0][0] == "bad.csv" and "binary" in quarantined[0][1]
    assert db.scalar("SELECT count(*) FROM {s}.invoices") == 33  # upsert: no key twice
    source = db.scalar("SELECT source FROM {c}.datasets WHERE name = 'invoices'")
    assert source == f"s3://{bucket}/{top}/in/"
    assert s3.filesystem().get_file_info(f"{bucket}/{top}/in/bad.csv").size > 0  # objects are left as they were
    # Counted right after the commit that made the rows visible.
    poll(lambda: metrics.registry.get_sample_value("dataops_files_loaded_total", {"dataset": "invoices"}) == 5, 10,
         message="loaded objects counted")


def test_a_large_object_is_read_in_ranges_and_parsed_in_parts(db, make_settings, run_daemon, s3):
    bucket, top = s3.bucket, f"t{uuid.uuid4().hex[:10]}"
    n = 60_000
    data = csv_bytes(range(n), extra=" with some padding to make the object a few megabytes long")
    assert len(data) > 3 << 20
    s3.put(bucket, f"{top}/in/big.csv", data)
    location = StoreLocation("big", bucket, f"{top}/in/", s3.url, REGION, "DATAOPS_TEST_S3_KEY", "DATAOPS_TEST_S3_SECRET")
    plan = plan_parts(S3Object(location, f"{top}/in/big.csv", len(data)), "big.csv", {"encoding": None, "delimiter": None}, 2)
    assert plan is not None and len(plan.ranges) == 2 and plan.ranges[-1][1] == len(data)
    settings = make_settings(landing={"split_bytes": 1 << 20, "local_parse_bytes": 1 << 20},
                             object_stores=[store_entry(s3, f"{top}/in", name="big")])
    run_daemon(settings)
    poll(lambda: ids_in(db, "big")[-1:] == [n - 1], 120, message="the large object")
    assert db.scalar("SELECT count(DISTINCT invoice_id) FROM {s}.big") == n
    assert db.scalar("SELECT count(*) FROM {s}.big") == n
    assert db.scalar("SELECT sum(invoice_id) FROM {s}.big") == n * (n - 1) // 2


def test_store_failures_are_reported_and_retried_and_config_edits_add_stores(db, make_settings, run_daemon, s3,
                                                                             tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO)
    bucket, top = s3.bucket, f"t{uuid.uuid4().hex[:10]}"
    s3.put(bucket, f"{top}/in/a.csv", csv_bytes(range(5)))
    later = S3Server(tmp_path / "later", bucket="late")  # not started yet: its port refuses connections
    settings = make_settings(object_stores=[
        store_entry(s3, f"{top}/in", name="good"),
        store_entry(later, "in", name="late", bucket="late"),
        store_entry(s3, f"{top}/in", name="wrongkey", auth={"access_key_env": "DATAOPS_TEST_S3_KEY",
                                                        "secret_key_env": "DATAOPS_TEST_S3_WRONG"}),
        store_entry(s3, "in", name="nobucket", bucket="no-such-bucket"),
    ])
    config = tmp_path / "dataops.yaml"
    doc = yaml.safe_load(config.read_text())
    metrics = Metrics()
    daemon = run_daemon(settings, config_path=config, metrics=metrics)
    poll(lambda: ids_in(db, "good") == list(range(5)), 90, message="the good store loads")

    def status():
        return daemon.readiness()[1]["object_stores"]

    poll(lambda: all(status().get(n, "ok") != "ok" for n in ("late", "wrongkey", "nobucket")), 60,
         message="failures in /readyz")
    body = status()
    assert later.url in body["late"] and "NETWORK_CONNECTION" in body["late"]
    assert "SIGNATURE_DOES_NOT_MATCH" in body["wrongkey"] and "not-the-secret" not in json.dumps(body)
    assert "no-such-bucket" in body["nobucket"]
    for kind, name in (("unreachable", "late"), ("auth", "wrongkey"), ("no_bucket", "nobucket")):
        assert metrics.registry.get_sample_value("dataops_source_errors_total", {"dataset": name, "kind": kind}) >= 1
    assert "dataset=late: object store late (s3://late/in/" in caplog.text
    assert "not-the-secret" not in caplog.text and READER_SECRET not in caplog.text

    later.start()  # the store comes back
    try:
        later.put("late", "in/x.csv", csv_bytes(range(100, 103)))
        poll(lambda: ids_in(db, "late") == [100, 101, 102], 120, message="the store that came back")
        poll(lambda: status()["late"] == "ok", 30, message="late store ok again")

        # A store added by editing the config starts loading without a restart.
        s3.put(bucket, f"{top}/more/m.csv", csv_bytes(range(200, 204)))
        extra = store_entry(s3, f"{top}/in", name="added")
        extra["url"] = f"s3://{bucket}/{top}/more/"
        doc["object_stores"].append(extra)
        config.write_text(yaml.safe_dump(doc))
        poll(lambda: ids_in(db, "added") == [200, 201, 202, 203], 90, message="the store added to the config")
        doc["object_stores"] = [e for e in doc["object_stores"] if e["name"] != "added"]
        config.write_text(yaml.safe_dump(doc))
        poll(lambda: "object_store=added: removed" in caplog.text, 30, message="removal")
        poll(lambda: "object_store:added" not in daemon.readiness()[1]["queries"], 30, message="query gone")
    finally:
        later.stop()
