"""PostgreSQL restarting under a running daemon: batches wait, then complete; nothing lost or doubled.

The test starts its own PostgreSQL server (initdb/pg_ctl, as the postgres user when run as root) so
it can stop and start it without disturbing the shared one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

import psycopg2
import pytest

from streaming import cli
from streaming.config import load_settings
from streaming.daemon import Daemon
from streaming.embedded import EmbeddedPostgres
from tests.conftest import poll
from tests.test_daemon import drop, get


@pytest.fixture
def private_pg():
    home = Path(tempfile.mkdtemp(prefix="dataops-pg-", dir="/tmp"))
    os.chmod(home, 0o755)  # the server may run as another user
    server = EmbeddedPostgres(home)
    dsn = server.start()
    yield server, dsn
    server.stop(force=True)
    shutil.rmtree(home, ignore_errors=True)


def rows(dsn: str) -> int | None:
    try:
        conn = psycopg2.connect(dsn, connect_timeout=2)
    except psycopg2.OperationalError:
        return None
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('public.orders')")
            if cur.fetchone()[0] is None:
                return 0
            cur.execute("SELECT count(*), count(DISTINCT id) FROM public.orders")
            total, distinct = cur.fetchone()
            assert total == distinct, "a row was loaded twice"
            return total
    finally:
        conn.close()


def catalog_lock_holder(dsn: str) -> str | None:
    """The application_name of the session holding an advisory lock (the daemon's catalog lock)."""
    try:
        conn = psycopg2.connect(dsn, connect_timeout=2)
    except psycopg2.OperationalError:
        return None
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                        "WHERE l.locktype = 'advisory' AND l.granted")
            row = cur.fetchone()
            return row[0] if row else None
    finally:
        conn.close()


def test_batches_survive_a_postgres_restart(private_pg, tmp_path, spark):
    server, dsn = private_pg
    config = tmp_path / "dataops.yaml"
    config.write_text(f"""
postgres: {{dsn: "{dsn}"}}
landing: {{path: "{tmp_path / 'landing'}", settle_seconds: 100ms, scan_interval: 1s}}
spark: {{master: "local[2]", checkpoint_dir: "{tmp_path / 'checkpoints'}"}}
metrics: {{port: 0}}
""")
    settings = load_settings(config)
    daemon = Daemon(settings, dsn, grace_seconds=30, spark=spark)
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        drop(settings, "orders", "1.csv", "id,v\n" + "".join(f"{i},a\n" for i in range(100)))
        poll(lambda: rows(dsn) == 100, 60, message="first file")
        server.stop(force=True)
        drop(settings, "orders", "2.csv", "id,v\n" + "".join(f"{i},b\n" for i in range(100, 200)))
        base = f"http://127.0.0.1:{daemon.health.port}"
        # Read at scrape time, with nobody asking /readyz.
        poll(lambda: daemon.metrics.registry.get_sample_value("dataops_postgres_up") == 0, 10, message="postgres down")
        code, body = poll(lambda: (r := get(base + "/readyz"))[0] == 503 and r, 30, message="not ready")
        assert body["postgres"].startswith("unreachable")
        status_config = tmp_path / "status.yaml"
        status_config.write_text(f"metrics: {{port: {daemon.health.port}}}\n")
        assert cli.main(["status", "--config", str(status_config)]) == 1  # a daemon answers: not ready
        poll(lambda: daemon.metrics.registry.get_sample_value(
            "dataops_batches_total", {"dataset": "orders", "status": "failed"}), 30, message="a failed attempt")
        server.start()
        poll(lambda: rows(dsn) == 200, 90, message="second file after the restart")
        drop(settings, "orders", "3.csv", "id,v\n" + "".join(f"{i},c\n" for i in range(200, 250)))
        poll(lambda: rows(dsn) == 250, 60, message="third file")
        assert poll(lambda: get(base + "/readyz")[0] == 200, 30, message="ready again")
        assert daemon.metrics.registry.get_sample_value("dataops_postgres_up") == 1
        poll(lambda: catalog_lock_holder(dsn), 30, message="the catalog lock taken again")
        assert catalog_lock_holder(dsn).startswith("dataops-daemon ")
    finally:
        daemon.request_stop()
        thread.join(timeout=60)
    processed = sorted(p.name for p in (settings.landing.path / "_processed" / "orders").iterdir())
    assert processed == ["1.csv", "2.csv", "3.csv"]
