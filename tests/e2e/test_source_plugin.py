"""A source shipped outside the project: discovered through its entry point by `dataops run`, loading a table."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import poll
from tests.e2e.test_daemon_process import _free_port, running

pytestmark = pytest.mark.e2e

PLUGIN = Path(__file__).resolve().parent.parent / "plugin_source"


def test_a_plugin_source_is_found_through_its_entry_point_and_loads_a_dataset(db, tmp_path):
    env_path = os.pathsep.join(filter(None, [str(PLUGIN), os.environ.get("PYTHONPATH")]))
    listed = subprocess.run([sys.executable, "-c", "from streaming.sources import registry; print(sorted(registry()))"],
                            env={**os.environ, "PYTHONPATH": env_path}, capture_output=True, text=True, check=True)
    assert listed.stdout.split() == ["['endpoints',", "'landing',", "'numbers',", "'object_stores']"]

    config = tmp_path / "dataops.yaml"
    config.write_text(yaml.safe_dump({
        "postgres": {"dsn": db.dsn, "schema": db.schema, "catalog_schema": db.catalog},
        "landing": {"path": "landing"},
        "spark": {"master": "local[2]", "checkpoint_dir": "checkpoints"},
        "metrics": {"port": _free_port()},
        "numbers": [{"name": "squares", "count": 250, "mode": "upsert", "primary_key": ["n"]}],
    }))
    log = tmp_path / "daemon.log"
    with running(config, log, PYTHONPATH=env_path) as proc:
        def loaded():
            if db.scalar("SELECT to_regclass(%s)", (f"{db.schema}.squares",)) is None:
                return 0
            return db.scalar(f'SELECT count(*) FROM "{db.schema}".squares')

        poll(lambda: loaded() == 250, 120, interval=0.2, message=f"plugin dataset loaded (log: {log})")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0, log.read_text()[-3000:]
    assert db.columns("squares") == {"n": "integer", "square": "integer"}
    assert db.scalar(f'SELECT sum(square) FROM "{db.schema}".squares') == sum(i * i for i in range(1, 251))
    assert (tmp_path / "checkpoints" / "numbers" / "squares").is_dir()
    stream = db.scalar("SELECT stream FROM {c}.loads WHERE dataset = 'squares' LIMIT 1")
    assert stream.startswith("numbers:squares:")
