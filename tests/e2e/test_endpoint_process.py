"""`dataops run` with REST endpoints: added by editing the config, secrets from the environment only."""

from __future__ import annotations

import signal
import urllib.request

import pytest
import yaml

from tests.conftest import poll
from tests.e2e.test_daemon_process import _free_port, running
from tests.restserver import json_response, rest_server_fixture  # noqa: F401

pytestmark = pytest.mark.e2e

TOKEN = "e2e-s3cret-bearer"


def rows(db, table: str) -> int:
    if db.scalar("SELECT to_regclass(%s)", (f"{db.schema}.{table}",)) is None:
        return 0
    return db.scalar(f'SELECT count(*) FROM "{db.schema}"."{table}"')


def test_an_endpoint_added_to_the_config_of_a_running_daemon(db, tmp_path, rest_server):
    items = [{"id": i, "owner": {"login": f"u{i}"}, "tags": ["a"]} for i in range(30)]

    def handle(request):
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return json_response({"error": "unauthorized"}, 401)
        page = int(request.arg("page", "1"))
        return json_response({"data": items[(page - 1) * 10: page * 10]})

    rest_server.route("/items", handle)
    port = _free_port()
    config = tmp_path / "dataops.yaml"
    doc = {
        "postgres": {"dsn": db.dsn, "schema": db.schema, "catalog_schema": db.catalog},
        "landing": {"path": "landing"},
        "spark": {"master": "local[2]", "checkpoint_dir": "checkpoints"},
        "metrics": {"port": port},
    }
    config.write_text(yaml.safe_dump(doc))
    log = tmp_path / "daemon.log"
    with running(config, log, E2E_ITEMS_TOKEN=TOKEN) as proc:
        poll(lambda: "watching" in log.read_text(), 120, interval=0.2, message=f"daemon up (log: {log})")
        doc["endpoints"] = [{"name": "items", "url": rest_server.url("/items"), "records_path": "data",
                             "pagination": {"type": "page_number", "param": "page"}, "poll_interval": "500ms",
                             "mode": "upsert", "primary_key": ["id"],
                             "auth": {"type": "bearer", "token_env": "E2E_ITEMS_TOKEN"}}]
        config.write_text(yaml.safe_dump(doc))
        poll(lambda: rows(db, "items") == 30, 120, interval=0.2, message=f"endpoint loaded (log: {log})")
        assert db.columns("items")["owner__login"] == "text" and db.columns("items")["tags"] == "jsonb"
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'dataops_api_requests_total{code="200",endpoint="items"}' in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "endpoint=items" in text and TOKEN not in text
