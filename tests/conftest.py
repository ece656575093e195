"""Shared fixtures: a real PostgreSQL (one pair of schemas per test) and one local Spark session."""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg2
import pytest

from streaming.config import load_settings

TEST_DSN = os.environ.get("DATAOPS_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test")
CORPUS = Path(__file__).parent / "corpus"


def poll(check, timeout: float = 30.0, interval: float = 0.05, message: str = "condition"):
    """Call ``check`` until it returns a truthy value or ``timeout`` passes; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


@pytest.fixture(autouse=True)
def _restore_logging():
    """``dataops`` commands run in-process replace the root handlers; put them back after each test."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def dsn() -> str:
    try:
        psycopg2.connect(TEST_DSN, connect_timeout=5).close()
    except psycopg2.OperationalError as exc:
        pytest.exit(f"PostgreSQL at {TEST_DSN} is not reachable ({exc}); start it or set DATAOPS_TEST_DSN", 3)
    return TEST_DSN


class Db:
    """A test's own data schema and catalog schema, with query helpers."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        token = uuid.uuid4().hex[:10]
        self.schema = f"t_{token}"
        self.catalog = f"t_{token}_cat"
        self.conn = psycopg2.connect(dsn)
        self.conn.autocommit = True

    def query(self, sql: str, params=None) -> list[tuple]:
        with self.conn.cursor() as cur:
            cur.execute(sql.format(s=self.schema, c=self.catalog), params)
            return cur.fetchall() if cur.description else []

    def scalar(self, sql: str, params=None):
        rows = self.query(sql, params)
        return rows[0][0] if rows else None

    def columns(self, table: str) -> dict[str, str]:
        return dict(self.query(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = %s "
            "AND table_name = %s ORDER BY ordinal_position", (self.schema, table)))

    def drop(self) -> None:
        with self.conn.cursor() as cur:
            cur.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE; DROP SCHEMA IF EXISTS "{self.catalog}" CASCADE')
        self.conn.close()


@pytest.fixture
def db(dsn):
    d = Db(dsn)
    yield d
    d.drop()


@pytest.fixture
def make_settings(db, tmp_path):
    """Build validated Settings for this test's schemas; keyword arguments override sections."""

    def build(**sections):
        base = {
            "postgres": {"dsn": db.dsn, "schema": db.schema, "catalog_schema": db.catalog},
            "landing": {"path": str(tmp_path / "landing"), "settle_seconds": "100ms", "scan_interval": "1s"},
            "spark": {"master": "local[2]", "checkpoint_dir": str(tmp_path / "checkpoints")},
            "metrics": {"enabled": False},
        }
        for key, value in sections.items():
            base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) and key != "datasets" else value
        path = tmp_path / "dataops.yaml"
        import yaml

        path.write_text(yaml.safe_dump(base))
        return load_settings(path)

    return build


@pytest.fixture(scope="session")
def spark():
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from streaming.config import Settings
    from streaming.session import create_session

    settings = Settings(spark={"master": "local[2]"}, logging={"spark_level": "ERROR"})
    session = create_session(settings)
    yield session
    session.stop()


@pytest.fixture
def run_daemon(spark):
    """Start an in-process daemon on the session's Spark: ``run_daemon(settings, config_path=None)``;
    ``run_daemon.stop(daemon)`` stops one early; every daemon is stopped after the test."""
    from streaming.daemon import Daemon
    from streaming.metrics import Metrics

    started = []

    def start(settings, config_path=None, metrics=None, config_read=None):
        daemon = Daemon(settings, settings.dsn, metrics=metrics or Metrics(), grace_seconds=30, spark=spark,
                        config_path=str(config_path) if config_path else None, config_read=config_read)
        thread = threading.Thread(target=daemon.run, name="daemon-under-test")
        thread.start()
        started.append((daemon, thread))
        return daemon

    def stop(daemon):
        for d, thread in started:
            if d is daemon:
                d.request_stop()
                thread.join(timeout=60)
                assert not thread.is_alive(), "daemon did not stop"

    start.stop = stop
    yield start
    for daemon, thread in started:
        daemon.request_stop()
        thread.join(timeout=60)
        assert not thread.is_alive(), "daemon did not stop"
