"""`dataops run` with an object store: SIGKILL mid-batch, objects added while down, nothing twice."""

from __future__ import annotations

import signal

import pytest
import yaml

from tests.conftest import poll
from tests.e2e.test_daemon_process import _free_port, running, staging_tables
from tests.s3server import READER_KEY, READER_SECRET, REGION, s3_server_fixture

pytestmark = pytest.mark.e2e

s3 = pytest.fixture(scope="module", name="s3")(s3_server_fixture)
ROWS = 40_000


def objects(start: int, rows: int = ROWS) -> bytes:
    return ("invoice_id,amount,note\n" + "".join(f"{i},{i}.25,\"n, {i}\"\n" for i in range(start, start + rows))).encode()


def loaded(db) -> int:
    if db.scalar("SELECT to_regclass(%s)", (f"{db.schema}.invoices",)) is None:
        return 0
    return db.scalar(f'SELECT count(*) FROM "{db.schema}".invoices')


def test_a_crash_mid_batch_loses_no_object_and_loads_none_twice(db, tmp_path, s3):
    prefix = f"kill-{db.schema}"
    for n in range(6):
        s3.put(s3.bucket, f"{prefix}/part-{n}.csv", objects(n * ROWS))
    config = tmp_path / "dataops.yaml"
    config.write_text(yaml.safe_dump({
        "postgres": {"dsn": db.dsn, "schema": db.schema, "catalog_schema": db.catalog},
        "landing": {"path": "landing"},
        "spark": {"master": "local[2]", "checkpoint_dir": "checkpoints"},
        "metrics": {"port": _free_port()},
        "object_stores": [{"name": "invoices", "url": f"s3://{s3.bucket}/{prefix}/", "endpoint_url": s3.url,
                           "region": REGION, "poll_interval": "300ms", "max_objects_per_batch": 2,
                           "auth": {"access_key_env": "E2E_S3_KEY", "secret_key_env": "E2E_S3_SECRET"}}],
    }))
    log = tmp_path / "daemon.log"
    env = {"E2E_S3_KEY": READER_KEY, "E2E_S3_SECRET": READER_SECRET}
    with running(config, log, **env) as proc:
        poll(lambda: loaded(db) >= 2 * ROWS, 180, interval=0.1, message=f"the first batch (log: {log})")
        poll(lambda: staging_tables(db), 60, interval=0.02, message="a batch in flight")
        proc.kill()
        proc.wait(timeout=30)
    # While it is down: an object whose key sorts before every other, and one after.
    s3.put(s3.bucket, f"{prefix}/a-first.csv", objects(6 * ROWS, 10))
    s3.put(s3.bucket, f"{prefix}/z-last.csv", objects(6 * ROWS + 10, 10))
    total = 6 * ROWS + 20
    with running(config, log, **env) as proc:
        poll(lambda: loaded(db) == total, 240, interval=0.2, message=f"everything after the crash (log: {log})")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0, log.read_text()[-3000:]
    assert db.scalar(f'SELECT count(DISTINCT invoice_id) FROM "{db.schema}".invoices') == total
    names = db.query("SELECT e->>'name' FROM {c}.loads, jsonb_array_elements(files) e "
                     "WHERE dataset = 'invoices' AND status = 'committed' ORDER BY 1")
    assert [r[0] for r in names] == sorted(["a-first.csv", "z-last.csv"] + [f"part-{n}.csv" for n in range(6)])
    assert READER_SECRET not in log.read_text()
