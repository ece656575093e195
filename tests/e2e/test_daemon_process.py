"""`dataops run` as a user runs it: a subprocess, files dropped, SIGTERM, restart, nothing twice."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import poll

pytestmark = pytest.mark.e2e


@contextlib.contextmanager
def running(config: Path, log: Path, **env: str) -> Iterator[subprocess.Popen]:
    """``dataops run --config`` as a subprocess (extra environment variables in ``env``), killed on
    the way out if the test did not stop it."""
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, **env}
    proc = subprocess.Popen([sys.executable, "-m", "streaming.cli", "run", "--config", str(config)],
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env, cwd=config.parent)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()


def drop(folder: Path, name: str, ids: range) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("Order ID,Amount (USD),Note\n" + "".join(f"{i},{i}.50,\"n, {i}\"\n" for i in ids))


def write_config(db, tmp_path: Path) -> tuple[Path, int]:
    """The daemon's config for this test's schemas; returns its path and the metrics port."""
    port = _free_port()
    config = tmp_path / "dataops.yaml"
    config.write_text(yaml.safe_dump({
        "postgres": {"dsn": db.dsn, "schema": db.schema, "catalog_schema": db.catalog},
        "landing": {"path": "landing", "settle_seconds": "200ms"},
        "spark": {"master": "local[2]", "checkpoint_dir": "checkpoints"},
        "metrics": {"port": port},
    }))
    return config, port


def loaded_rows(db) -> int:
    if db.scalar("SELECT to_regclass(%s)", (f"{db.schema}.orders",)) is None:
        return 0
    return db.scalar(f'SELECT count(*) FROM "{db.schema}".orders')


def staging_tables(db) -> int:
    """Staging tables in the catalog schema: a batch is in flight."""
    return db.scalar("SELECT count(*) FROM pg_tables WHERE schemaname = %s AND tablename LIKE 'stg%%'", (db.catalog,))


def test_run_sigterm_restart_exactly_once(db, tmp_path):
    config, port = write_config(db, tmp_path)
    landing = tmp_path / "landing" / "orders"
    log = tmp_path / "daemon.log"

    with running(config, log) as proc:
        drop(landing, "sales.csv", range(0, 100))
        poll(lambda: loaded_rows(db) == 100, 120, interval=0.2, message=f"first file loaded (log: {log})")
        drop(landing, "more.csv", range(100, 150))
        poll(lambda: loaded_rows(db) == 150, 60, interval=0.2, message="second file loaded")
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'dataops_rows_written_total{dataset="orders"} 150.0' in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0, log.read_text()[-3000:]

    # Dropped while the daemon is down.
    drop(landing, "offline.csv", range(150, 175))
    with running(config, log) as proc:
        poll(lambda: loaded_rows(db) == 175, 120, interval=0.2, message="file dropped while down loaded")
        drop(landing, "after.csv", range(175, 180))
        poll(lambda: loaded_rows(db) == 180, 60, interval=0.2, message="file after restart loaded")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0

    assert db.scalar(f'SELECT count(DISTINCT order_id) FROM "{db.schema}".orders') == 180
    assert db.scalar(f"SELECT note FROM \"{db.schema}\".orders WHERE order_id = 7") == "n, 7"
    processed = sorted(p.name for p in (tmp_path / "landing" / "_processed" / "orders").iterdir())
    assert processed == ["after.csv", "more.csv", "offline.csv", "sales.csv"]
    assert "Traceback" not in log.read_text()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_during_a_large_batch_commits_it_whole_or_not_at_all(db, tmp_path):
    config, port = write_config(db, tmp_path)
    landing = tmp_path / "landing" / "orders"
    log = tmp_path / "daemon.log"
    n = 300_000

    def healthy():
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).status == 200
        except OSError:
            return False

    with running(config, log) as proc:
        drop(landing, "warm.csv", range(-10, 0))
        poll(lambda: loaded_rows(db) == 10, 120, interval=0.2, message="warm-up file")
        drop(landing, "big.csv", range(0, n))
        poll(lambda: staging_tables(db), 60, interval=0.02, message="the large batch in flight")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    assert loaded_rows(db) in (10, 10 + n)  # the batch committed whole or not at all
    with running(config, log) as proc:
        poll(lambda: loaded_rows(db) == 10 + n, 180, interval=0.2, message="the large file after restart")
        poll(healthy, 60, interval=0.1, message="healthz while starting")
        proc.send_signal(signal.SIGTERM)  # possibly while Spark is still starting: still a clean exit
        assert proc.wait(timeout=90) == 0
    assert db.scalar(f'SELECT count(DISTINCT order_id) FROM "{db.schema}".orders') == 10 + n


def test_a_crash_mid_batch_loses_nothing_and_loads_nothing_twice(db, tmp_path):
    """SIGKILL (no chance to clean up) while a batch is in flight, then restart."""
    config, _ = write_config(db, tmp_path)
    landing = tmp_path / "landing" / "orders"
    log = tmp_path / "daemon.log"
    n = 200_000

    with running(config, log) as proc:
        drop(landing, "warm.csv", range(-10, 0))
        poll(lambda: loaded_rows(db) == 10, 120, interval=0.2, message="warm-up file")
        drop(landing, "big.csv", range(0, n))
        poll(lambda: staging_tables(db), 60, interval=0.02, message="the batch in flight")
        proc.kill()
        proc.wait(timeout=30)
    drop(landing, "after.csv", range(n, n + 5))
    with running(config, log) as proc:
        poll(lambda: loaded_rows(db) == 15 + n, 180, interval=0.2, message="everything after the crash")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
    assert db.scalar(f'SELECT count(DISTINCT order_id) FROM "{db.schema}".orders') == 15 + n
    processed = sorted(p.name for p in (tmp_path / "landing" / "_processed" / "orders").iterdir())
    assert processed == ["after.csv", "big.csv", "warm.csv"]


def test_checkpoints_written_through_the_checksummed_file_context_carry_on(db, tmp_path):
    """Checkpoints of releases that wrote them through Hadoop's FileContext (with checksum files
    beside them) keep their query and batches under today's FileSystem-based writer."""
    config, _ = write_config(db, tmp_path)
    settings = yaml.safe_load(config.read_text())
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump({**settings, "spark": {**settings["spark"], "conf": {
        "spark.sql.streaming.checkpointFileManagerClass":
            "org.apache.spark.sql.execution.streaming.checkpointing.FileContextBasedCheckpointFileManager",
        "spark.hadoop.fs.AbstractFileSystem.file.impl": "org.apache.hadoop.fs.local.LocalFs",
        "spark.hadoop.fs.file.impl": "org.apache.hadoop.fs.LocalFileSystem"}}}))
    landing = tmp_path / "landing" / "orders"
    log = tmp_path / "daemon.log"
    for conf, name, ids in ((old, "first.csv", range(0, 30)), (config, "second.csv", range(30, 80))):
        with running(conf, log) as proc:
            drop(landing, name, ids)
            poll(lambda: loaded_rows(db) == ids.stop, 120, interval=0.2, message=f"{name} loaded (log: {log})")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=90) == 0, log.read_text()[-3000:]
        if conf is old:
            assert any((tmp_path / "checkpoints").rglob(".*.crc"))
    loads = db.query("SELECT stream, batch_id, rows_loaded FROM {c}.loads ORDER BY load_id")
    assert [(b, n) for _, b, n in loads] == [(0, 30), (1, 50)] and loads[0][0] == loads[1][0]
    assert loaded_rows(db) == 80
