"""`dataops run --grace N`: a batch still running when the grace period ends is cancelled, not waited for."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psycopg2
import pytest

from connectors.postgres import ensure_catalog
from tests.conftest import poll
from tests.e2e.test_daemon_process import drop, loaded_rows, running, write_config

pytestmark = pytest.mark.e2e


def merge_waiting_on_lock(db) -> bool:
    return bool(db.scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                          "AND wait_event_type = 'Lock' AND query LIKE %s", ("%loads%",)))


def test_sigterm_cancels_a_batch_that_outlasts_the_grace_period(db, tmp_path):
    config, _ = write_config(db, tmp_path)
    landing = tmp_path / "landing" / "orders"
    log = tmp_path / "daemon.log"
    ensure_catalog(db.dsn, db.catalog, db.schema)
    # Another session locks the ledger against writes: the batch's merge blocks until it lets go.
    holder = psycopg2.connect(db.dsn)
    try:
        with holder.cursor() as cur:
            cur.execute(f'LOCK TABLE "{db.catalog}".loads IN EXCLUSIVE MODE')
        env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
        proc = subprocess.Popen([sys.executable, "-m", "streaming.cli", "run", "--config", str(config), "--grace", "2"],
                                stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env, cwd=config.parent)
        try:
            drop(landing, "orders.csv", range(0, 50))
            poll(lambda: merge_waiting_on_lock(db), 120, interval=0.1, message=f"the batch's merge blocked ({log})")
            proc.send_signal(signal.SIGTERM)
            # The lock is still held: the daemon exits only because it cancelled its batch.
            assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
        assert not merge_waiting_on_lock(db)
    finally:
        holder.rollback()
        holder.close()
    text = log.read_text()
    assert "cancelled it (1 PostgreSQL session(s)" in text and "Traceback" not in text
    assert loaded_rows(db) == 0
    assert db.scalar("SELECT count(*) FROM {c}.loads") == 0  # rolled back whole
    assert [p.name.endswith("_orders.csv") for p in (landing.parent / "_inbox" / "orders").iterdir()] == [True]

    with running(config, log) as proc:
        poll(lambda: loaded_rows(db) == 50, 120, interval=0.2, message="the cancelled batch replayed")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
    assert db.scalar('SELECT count(DISTINCT order_id) FROM {s}.orders') == 50
    assert db.query("SELECT files->0->>'name' FROM {c}.loads WHERE status = 'committed'") == [("orders.csv",)]
    assert (landing.parent / "_processed" / "orders" / "orders.csv").exists()
