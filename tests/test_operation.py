"""A running daemon as operators and uploaders use it: uploads over HTTP, `dataops status`, and the
state metrics computed at scrape time."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import time

import pytest
import yaml

from streaming import cli
from streaming.metrics import Metrics
from tests.conftest import poll
from tests.restserver import json_response, rest_server_fixture  # noqa: F401

TOKEN = "upl0ad-s3cret-t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        text = response.read().decode()
        return response.status, json.loads(text) if text.startswith("{") else text
    finally:
        conn.close()


def raw_put(port: int, path: str, length: int, pieces: list[bytes], pause: float = 0.0) -> bytes:
    """A PUT sent by hand: headers declaring ``length``, then ``pieces`` with ``pause`` between them;
    returns what the server answered (empty if it answered nothing)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"PUT {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\n"
                  f"Content-Length: {length}\r\n\r\n".encode())
        for piece in pieces:
            time.sleep(pause)
            s.sendall(piece)
        if sum(map(len, pieces)) < length:
            s.shutdown(socket.SHUT_WR)  # the client gives up half-way
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
        return answer


def csv(ids) -> bytes:
    return ("id,v\n" + "".join(f"{i},v{i}\n" for i in ids)).encode()


def table_ids(db, table: str) -> set[int]:
    if db.scalar("SELECT to_regclass(%s)", (f"{db.schema}.{table}",)) is None:
        return set()
    return {r[0] for r in db.query(f'SELECT id FROM "{db.schema}"."{table}"')}


def load_of(db, name: str) -> int | None:
    """The committed load that lists file ``name``, read from the catalog."""
    return db.scalar("SELECT load_id FROM {c}.loads, jsonb_array_elements(files) e WHERE e->>'name' = %s "
                     "AND status = 'committed' ORDER BY load_id DESC LIMIT 1", (name,))


@pytest.fixture
def operated(db, make_settings, run_daemon, rest_server, monkeypatch, tmp_path):
    """A daemon with uploads on, a landing dataset ``orders`` and an endpoint ``items``."""
    monkeypatch.setenv("DATAOPS_UPLOAD_TOKEN", TOKEN)
    rest_server.route("/items", lambda r: json_response([{"id": i, "name": f"n{i}"} for i in range(5)]))
    settings = make_settings(metrics={"enabled": True, "port": 0}, upload={"enabled": True, "max_bytes": 4096},
                             endpoints=[{"name": "items", "url": rest_server.url("/items"), "poll_interval": "500ms",
                                         "mode": "upsert", "primary_key": ["id"]}])
    (settings.landing.path / "orders").mkdir(parents=True)
    metrics = Metrics()
    daemon = run_daemon(settings, metrics=metrics)
    poll(lambda: daemon.health is not None, 30, message="health server")
    port = daemon.health.port
    poll(lambda: request(port, "GET", "/readyz")[0] == 200 and len(daemon.queries) == 2, 90, message="ready")
    # `dataops status` reads the port from the config: a copy naming the port the daemon got.
    doc = yaml.safe_load((tmp_path / "dataops.yaml").read_text())
    doc["metrics"]["port"] = port
    status_config = tmp_path / "status.yaml"
    status_config.write_text(yaml.safe_dump(doc))
    return settings, daemon, port, str(status_config), metrics


def test_upload_status_codes_and_files_that_load(operated, db, caplog):
    settings, daemon, port, _, _ = operated
    caplog.set_level(logging.DEBUG, logger="streaming")
    landing = settings.landing.path

    code, body = request(port, "PUT", "/datasets/orders/files/a.csv", csv(range(3)), AUTH)
    assert (code, body["dataset"], body["file"]) == (201, "orders", "a.csv")
    where = poll(lambda: (r := request(port, "GET", "/datasets/orders/files/a.csv", headers=AUTH)[1])
                 ["status"] == "loaded" and r, 60, message="a.csv loaded")
    assert where["load_id"] == load_of(db, "a.csv") and table_ids(db, "orders") == {0, 1, 2}

    # Who may upload, and how much.
    assert request(port, "PUT", "/datasets/orders/files/b.csv", csv([9]))[0] == 401
    assert request(port, "PUT", "/datasets/orders/files/b.csv", csv([9]), {"Authorization": "Bearer nope"})[0] == 401
    assert request(port, "GET", "/datasets/orders/files/a.csv")[0] == 401
    code, body = request(port, "PUT", "/datasets/orders/files/big.csv", b"x" * 5000, AUTH)
    assert code == 413 and body["max_bytes"] == 4096
    assert request(port, "PUT", "/datasets/orders/files/empty.csv", b"", AUTH)[0] == 400
    chunked = {**AUTH, "Transfer-Encoding": "chunked"}
    assert request(port, "PUT", "/datasets/orders/files/c.csv", iter([csv([7])]), chunked)[0] == 411
    for path in ("/datasets/orders/files/..", "/datasets/orders/files/.hidden.csv", "/datasets/orders/files/_x.csv",
                 "/datasets/orders/files/a%2Fb.csv", "/datasets/orders/files/a%00b.csv", "/datasets/orders/files/",
                 "/datasets/../files/x.csv", "/datasets/_inbox/files/x.csv", "/datasets/.git/files/x.csv"):
        assert request(port, "PUT", path, csv([8]), AUTH)[0] == 400, path

    # 409 while a file of that name waits: one still open by its writer stays in the dataset folder.
    with open(landing / "orders" / "w.csv", "wb") as writer:
        writer.write(csv([20]))
        writer.flush()
        assert request(port, "PUT", "/datasets/orders/files/w.csv", csv([21]), AUTH)[0] == 409
        assert request(port, "GET", "/datasets/orders/files/w.csv", headers=AUTH)[1]["status"] == "waiting"

    # A slow client: the body trickles in over more than a second.
    body = csv(range(30, 40))
    answer = raw_put(port, "/datasets/orders/files/slow.csv", len(body), [body[i:i + 20] for i in range(0, len(body), 20)],
                     pause=0.25)
    assert answer.startswith(b"HTTP/1.1 201"), answer
    # A body cut off half-way: nothing kept, nothing loaded.
    cut = csv(range(100, 140))
    raw_put(port, "/datasets/orders/files/cut.csv", len(cut), [cut[: len(cut) // 2]])
    poll(lambda: table_ids(db, "orders") >= {20, *range(30, 40)}, 60, message="w.csv and slow.csv loaded")
    poll(lambda: not list((landing / "_uploads").glob("*")), 10, message="staging emptied")
    assert request(port, "GET", "/datasets/orders/files/cut.csv", headers=AUTH)[0] == 404
    assert not (landing / "orders" / "cut.csv").exists()
    assert not table_ids(db, "orders") & set(range(100, 140))
    assert table_ids(db, "orders") == {0, 1, 2, 20, *range(30, 40)}

    # Rejected files say why.
    assert request(port, "PUT", "/datasets/orders/files/notes.json", b'{"a": 1}', AUTH)[0] == 201
    where = poll(lambda: (r := request(port, "GET", "/datasets/orders/files/notes.json", headers=AUTH)[1])
                 ["status"] == "rejected" and r, 30, message="notes.json rejected")
    assert where["reason"] == "extension"
    assert request(port, "PUT", "/datasets/items/files/x.csv", csv([1]), AUTH)[0] == 409  # an endpoint's table
    assert TOKEN not in caplog.text


def test_status_command_and_metrics_at_scrape_time(operated, db, capsys):
    settings, daemon, port, status_config, metrics = operated
    landing = settings.landing.path
    (landing / "orders" / "s.csv").write_bytes(csv(range(5)))
    poll(lambda: load_of(db, "s.csv"), 60, message="s.csv loaded")
    poll(lambda: db.scalar("SELECT count(*) FROM {c}.loads WHERE dataset = 'items' AND status = 'committed'"),
         60, message="items loaded")

    assert cli.main(["status", "--json", "--config", status_config]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ready"] is True and doc["postgres"] == "ok" and doc["uptime_seconds"] > 0
    by_name = {d["dataset"]: d for d in doc["datasets"]}
    assert set(by_name) == {"orders", "items"}
    orders = by_name["orders"]
    assert orders["query"] == "running" and orders["source"].endswith("orders") and orders["files_pending"] == 0
    last = db.query("SELECT load_id, rows_loaded FROM {c}.loads WHERE dataset = 'orders' AND status = 'committed' "
                    "ORDER BY load_id DESC LIMIT 1")[0]
    assert (orders["last_batch"]["load_id"], orders["last_batch"]["rows_loaded"]) == last
    assert by_name["items"]["source"].startswith("endpoint http://") and by_name["items"]["files_pending"] is None

    assert cli.main(["status", "--config", status_config]) == 0
    text = capsys.readouterr().out
    assert "orders" in text and "items" in text and "running" in text
    assert all(len(line) <= 100 for line in text.splitlines())

    # State gauges are computed at scrape, from what the daemon is doing now.
    registry = metrics.registry
    assert registry.get_sample_value("dataops_postgres_up") == 1
    assert registry.get_sample_value("dataops_query_up", {"dataset": "orders"}) == 1
    assert registry.get_sample_value("dataops_query_up", {"dataset": "items"}) == 1
    with open(landing / "orders" / "open.csv", "wb") as writer:  # held back while its writer has it open
        writer.write(csv([50]))
        writer.flush()
        poll(lambda: registry.get_sample_value("dataops_files_pending", {"dataset": "orders"}) == 1, 10,
             message="one file pending")
        on_disk = len(list((landing / "orders").iterdir())) + len(
            [p for p in (landing / "_inbox" / "orders").iterdir() if not p.name.startswith("_")])
        assert on_disk == 1
    poll(lambda: registry.get_sample_value("dataops_files_pending", {"dataset": "orders"}) == 0, 60,
         message="nothing pending once it loaded")
    # Between the watcher handing the file on and the inbox holding it, nothing counts as pending.
    poll(lambda: 50 in table_ids(db, "orders"), 60, message="the held-back file loaded")
    # Spark's progress gauges cover endpoint queries as well as landing folders.
    poll(lambda: registry.get_sample_value("dataops_spark_batch_duration_seconds", {"dataset": "items"}) is not None,
         30, message="endpoint progress")
    assert registry.get_sample_value("dataops_spark_batch_duration_seconds", {"dataset": "orders"}) is not None
    daemon.queries["orders"].query.stop()  # behind the daemon's back: the next scrape sees it
    assert registry.get_sample_value("dataops_query_up", {"dataset": "orders"}) == 0


def test_status_without_a_daemon_exits_2(make_settings, tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    make_settings(metrics={"enabled": True, "port": free})
    assert cli.main(["status", "--config", str(tmp_path / "dataops.yaml")]) == 2
    assert f"127.0.0.1:{free}" in capsys.readouterr().err
