"""REST endpoint benchmark: records/s one endpoint reaches against a local API with 1,000-record pages.

Serves ``--records`` JSON records (nested objects, arrays, numbers, timestamps) from a local HTTP
server in pages of 1,000 and times, in one process:

  (a) the polling client alone fetching every page (HTTP + JSON): the floor for one endpoint;
  (b) the warm daemon: after one warm-up page has landed (Python workers started, table created),
      the API flips to the full set, and the clock runs until every record is committed in
      PostgreSQL (poll, Spark micro-batches, flatten/type/stage, merge, catalog statistics).

and prints records/s for both and the ratio (b)/(a) (1.0 = the pipeline adds nothing to fetching).

    python bench/bench_rest.py [--records 200000] [--dsn DSN]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

import psycopg2  # noqa: E402

from connectors.rest.client import poll  # noqa: E402
from connectors.rest.config import EndpointConfig  # noqa: E402
from streaming.config import Settings  # noqa: E402
from streaming.daemon import Daemon  # noqa: E402

PAGE = 1000


def make_pages(records: int) -> list[bytes]:
    rng = random.Random(3)
    items = [{
        "id": i, "name": f"item {i}", "price": round(rng.uniform(1, 500), 2), "quantity": rng.randint(0, 90),
        "active": rng.random() < 0.8, "updated_at": f"2024-0{1 + i % 9}-1{i % 10}T10:{i % 60:02d}:00Z",
        "owner": {"login": f"user{i % 977}", "id": i % 977}, "tags": [f"t{i % 7}", f"t{i % 11}"],
        "description": rng.choice(["", "plain", "with, comma", 'with "quotes"', "ünïcode"]),
    } for i in range(records)]
    pages = [json.dumps({"data": items[a:a + PAGE]}).encode() for a in range(0, records, PAGE)]
    return pages + [json.dumps({"data": []}).encode()]


class Api:
    def __init__(self, pages: list[bytes]):
        self.pages = pages
        self.warmup = [pages[0], pages[-1]]
        self.serving = False
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_GET(self):
                page = int(parse_qs(urlsplit(self.path).query).get("page", ["1"])[0])
                if api.serving:
                    body = api.pages[min(page, len(api.pages)) - 1]
                else:  # the warm-up page once, then an empty API
                    body, api.warmup = api.warmup[0], api.warmup[1:] or api.warmup
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/items"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    api = Api(make_pages(args.records))
    entry = {"name": "bench_items", "url": api.url, "records_path": "data", "poll_interval": "200ms",
             "pagination": {"type": "page_number", "param": "page", "start": 1}, "max_pages_per_batch": 100}
    endpoint = EndpointConfig.model_validate(entry)

    api.serving = True
    start = time.perf_counter()
    fetched = poll(endpoint, max_pages=len(api.pages) + 1)
    client_seconds = time.perf_counter() - start
    assert len(fetched.records) == args.records, len(fetched.records)
    api.serving = False

    token = uuid.uuid4().hex[:8]
    schema, cat = f"bench_{token}", f"bench_{token}_cat"
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(postgres={"dsn": args.dsn, "schema": schema, "catalog_schema": cat},
                            landing={"path": str(Path(tmp) / "landing")},
                            spark={"master": "local[2]", "checkpoint_dir": str(Path(tmp) / "checkpoints")},
                            metrics={"enabled": False}, logging={"spark_level": "ERROR"}, endpoints=[entry])
        daemon = Daemon(settings, args.dsn, grace_seconds=30)
        thread = threading.Thread(target=daemon.run, daemon=True)
        thread.start()
        conn = psycopg2.connect(args.dsn)
        conn.autocommit = True
        try:
            deadline = time.monotonic() + 600

            def wait_for(rows: int) -> None:
                with conn.cursor() as cur:
                    while True:
                        try:
                            cur.execute(f'SELECT row_count FROM "{cat}".datasets WHERE name = %s', ("bench_items",))
                            row = cur.fetchone()
                        except psycopg2.errors.UndefinedTable:  # the daemon is still starting
                            row = None
                        if row and row[0] >= rows:
                            return
                        if time.monotonic() > deadline:
                            raise SystemExit(f"only {row[0] if row else 0} of {rows} records arrived")
                        time.sleep(0.05)

            wait_for(PAGE)  # the warm-up page
            api.serving = True
            start = time.perf_counter()
            wait_for(PAGE + args.records)
            daemon_seconds = time.perf_counter() - start
        finally:
            daemon.request_stop()
            thread.join(timeout=120)
            with conn.cursor() as cur:
                cur.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE; DROP SCHEMA IF EXISTS "{cat}" CASCADE')
            conn.close()
    print(f"records: {args.records:,} in pages of {PAGE}")
    print(f"(a) client fetch only : {client_seconds:7.2f} s  {args.records / client_seconds:>10,.0f} records/s")
    print(f"(b) warm daemon to PG : {daemon_seconds:7.2f} s  {args.records / daemon_seconds:>10,.0f} records/s")
    print(f"ratio (b)/(a) records/s: {client_seconds / daemon_seconds:.2f}")


if __name__ == "__main__":
    main()
