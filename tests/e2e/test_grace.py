"""`dataops run --grace N`: a batch still running when the grace period ends is cancelled, not waited for."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psycopg2
import pytest

from tests.conftest import poll
from tests.e2e.test_daemon_process import drop, loaded_rows, running, write_config

pytestmark = pytest.mark.e2e


def merge_waiting_on_lock(db) -> bool:
    return bool(db.scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                          "AND wait_event_type = 'Lock' AND query LIKE %s", ("%datasets%",)))


def test_sigterm_cancels_a_batch_that_outlasts_the_grace_period(db, tmp_path):
    config, _ = write_config(db, tmp_path)
    landing = tmp_path / "landing" / "orders"
    log = tmp_path / "daemon.log"
    with running(config, log) as proc:
        drop(landing, "first.csv", range(0, 100))
        poll(lambda: loaded_rows(db) == 100, 120, interval=0.2, message=f"first file loaded (log: {log})")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0

    # Another session holds the dataset's catalog row: the next merge blocks until it lets go.
    holder = psycopg2.connect(db.dsn)
    try:
        with holder.cursor() as cur:
            cur.execute(f'SELECT * FROM "{db.catalog}".datasets WHERE name = %s FOR UPDATE', ("orders",))
        env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
        proc = subprocess.Popen([sys.executable, "-m", "streaming.cli", "run", "--config", str(config), "--grace", "2"],
                                stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env, cwd=config.parent)
        try:
            drop(landing, "second.csv", range(100, 150))
            poll(lambda: merge_waiting_on_lock(db), 120, interval=0.1, message="the second batch's merge blocked")
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
    assert "cancelled it" in text and "Traceback" not in text
    assert loaded_rows(db) == 100
    assert db.scalar("SELECT count(*) FROM {c}.loads WHERE dataset = 'orders'") == 1  # rolled back whole
    assert [p.name.endswith("_second.csv") for p in (landing.parent / "_inbox" / "orders").iterdir()] == [True]

    with running(config, log) as proc:
        poll(lambda: loaded_rows(db) == 150, 120, interval=0.2, message="the cancelled batch replayed")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
    assert db.scalar('SELECT count(DISTINCT order_id) FROM {s}.orders') == 150
    loads = db.query("SELECT files->0->>'name' FROM {c}.loads WHERE dataset = 'orders' AND status = 'committed' "
                     "ORDER BY load_id")
    assert loads == [("first.csv",), ("second.csv",)]
    assert (landing.parent / "_processed" / "orders" / "second.csv").exists()
