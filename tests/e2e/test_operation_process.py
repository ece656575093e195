"""`dataops run` and `dataops ingest` as a person sees them: a quiet start that says what matters,
one daemon per landing folder (a killed one never blocks the next), progress while ingesting."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from tests.conftest import poll
from tests.e2e.test_daemon_process import _free_port, running

pytestmark = pytest.mark.e2e

NOISE = ("log4j", "NativeCodeLoader", "loopback address", "FutureWarning", "incubator modules",
         "Setting default log level", "WARN ")
PASSWORD = "s3cret-pw"  # the test server trusts local connections: any password works


def dataops(*args: str, cwd, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    return subprocess.run([sys.executable, "-m", "streaming.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout, **kwargs)


def test_quiet_start_one_daemon_per_landing_folder_and_kill_9(db, tmp_path):
    port = _free_port()
    config = tmp_path / "dataops.yaml"
    dsn = db.dsn.replace("postgres@", f"postgres:{PASSWORD}@")
    config.write_text(yaml.safe_dump({
        "postgres": {"dsn": dsn, "schema": db.schema, "catalog_schema": db.catalog},
        "landing": {"path": "landing", "settle_seconds": "200ms"},
        "spark": {"master": "local[2]", "checkpoint_dir": "checkpoints"},
        "metrics": {"port": port},
    }))
    (tmp_path / "landing" / "orders").mkdir(parents=True)
    log = tmp_path / "daemon.log"
    with running(config, log) as first:
        poll(lambda: "query started" in log.read_text(), 120, interval=0.2, message=f"daemon up (log: {log})")
        text = log.read_text()
        lines = [line.split(": ", 1)[-1] for line in text.splitlines()]
        assert lines[0].startswith("dataops ") and lines[0].endswith(" starting")
        assert lines[1].startswith("PostgreSQL postgresql://postgres:***@127.0.0.1") and db.catalog in lines[1]
        assert lines[2] == f"landing folder {tmp_path / 'landing'}; datasets: orders"
        assert lines[3] == "endpoints: none; object_stores: none"
        assert lines[4].startswith(f"metrics on http://127.0.0.1:{port}/metrics")
        assert PASSWORD not in text
        assert not [n for n in NOISE if n in text], text

        # A second daemon on the same config refuses at once, naming the first.
        started = time.monotonic()
        second = dataops("run", "--config", str(config), cwd=tmp_path, timeout=60)
        assert second.returncode != 0 and time.monotonic() - started < 30
        assert f"pid {first.pid}" in second.stderr and socket.gethostname() in second.stderr, second.stderr
        assert "landing folder" in second.stderr

        status = dataops("status", "--config", str(config), cwd=tmp_path)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "orders" in status.stdout and "running" in status.stdout

        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    assert dataops("status", "--config", str(config), cwd=tmp_path).returncode == 2

    # The killed daemon's locks died with it: the next start runs and loads.
    (tmp_path / "landing" / "orders" / "a.csv").write_text("id\n1\n2\n")
    with running(config, log) as again:
        poll(lambda: db.scalar("SELECT count(*) FROM {c}.loads WHERE status = 'committed'"), 120, interval=0.2,
             message=f"restarted daemon loads (log: {log})")
        ready = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5).read())
        assert ready["datasets"][0]["last_batch"]["rows_loaded"] == 2
        again.send_signal(signal.SIGTERM)
        assert again.wait(timeout=90) == 0


def test_ingest_progress_lines_bar_and_quiet(db, tmp_path):
    config = tmp_path / "dataops.yaml"
    config.write_text(yaml.safe_dump({"postgres": {"dsn": db.dsn, "schema": db.schema, "catalog_schema": db.catalog},
                                      "metrics": {"enabled": False}}))
    data = tmp_path / "p.csv"
    data.write_text("id,v\n" + "".join(f"{i},x{i}\n" for i in range(2000)))

    plain = dataops("ingest", str(data), "--dataset", "p", "--config", str(config), cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    phases = [line.split(": ", 2)[2] for line in plain.stderr.splitlines() if line.startswith("dataops: p.csv -> p: ")]
    names = [p.split(" (")[0].split(" after")[0] for p in phases]
    assert names[-3:] == ["merging", "catalog statistics", "done"], phases
    assert names[0].startswith("staged") and "merging (2,000 rows staged" in phases[-3], phases
    assert json.loads(plain.stdout)["loaded"] == 2000

    quiet = dataops("ingest", str(data), "--dataset", "q", "--config", str(config), "--quiet", cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    assert json.loads(quiet.stdout)["loaded"] == 2000

    # On a terminal: a progress bar on stderr.
    controller, terminal = pty.openpty()
    try:
        env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "COLUMNS": "100"}
        proc = subprocess.Popen([sys.executable, "-m", "streaming.cli", "ingest", str(data), "--dataset", "t",
                                 "--config", str(config)], stdout=subprocess.PIPE, stderr=terminal, env=env,
                                cwd=tmp_path)
        os.close(terminal)
        drawn = b""
        while True:
            ready, _, _ = select.select([controller], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the process closed the terminal
                break
            if not chunk:
                break
            drawn += chunk
        out, _ = proc.communicate(timeout=60)
    finally:
        os.close(controller)
    assert proc.returncode == 0 and json.loads(out)["loaded"] == 2000
    screen = drawn.decode(errors="replace")
    assert "p.csv -> t" in screen and "2,000 rows" in screen and "\x1b[" in screen, screen[-2000:]
    assert db.scalar("SELECT count(*) FROM {s}.t") == 2000
