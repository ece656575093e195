"""One daemon per landing folder, checkpoint directory and catalog schema; locks die with their holder."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from streaming import cli
from streaming.daemon import Daemon
from streaming.locks import CatalogLock, FileLock, LockHeld
from tests.conftest import poll


def test_a_held_folder_refuses_a_second_holder_and_names_the_first(tmp_path):
    first = FileLock(tmp_path / "landing", "landing folder").acquire()
    with pytest.raises(LockHeld) as refused:
        FileLock(tmp_path / "landing", "landing folder").acquire()
    message = str(refused.value)
    assert f"pid {os.getpid()}" in message and socket.gethostname() in message and "since 20" in message
    assert str(tmp_path / "landing") in message
    first.release()
    FileLock(tmp_path / "landing", "landing folder").acquire().release()  # free again


def test_catalog_lock_is_exclusive_for_daemons_and_shared_for_ingests(db):
    daemon = CatalogLock(db.dsn, db.catalog).acquire()
    with pytest.raises(LockHeld) as refused:
        CatalogLock(db.dsn, db.catalog, shared=True).acquire()
    assert f"dataops-daemon {socket.gethostname()}:{os.getpid()}" in str(refused.value)
    assert "backend pid" in str(refused.value) and db.catalog in str(refused.value)
    CatalogLock(db.dsn, db.catalog + "_other").acquire().release()  # another catalog is another lock
    daemon.release()
    ingests = [CatalogLock(db.dsn, db.catalog, shared=True).acquire() for _ in range(2)]  # side by side
    with pytest.raises(LockHeld) as refused:
        CatalogLock(db.dsn, db.catalog).acquire()
    assert "dataops-ingest" in str(refused.value)
    for lock in ingests:
        lock.release()
    CatalogLock(db.dsn, db.catalog).acquire().release()


HOLDER = """
import sys, time
from pathlib import Path
from streaming.locks import CatalogLock, DaemonLocks
locks = DaemonLocks(Path(sys.argv[1]), Path(sys.argv[2]))
locks.acquire_files()
locks.catalog = CatalogLock(sys.argv[3], sys.argv[4]).acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_a_killed_holder_never_blocks_the_next_start(db, tmp_path, make_settings):
    settings = make_settings()
    args = [str(settings.landing.path), str(settings.spark.checkpoint_dir), db.dsn, db.catalog]
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, *args], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(LockHeld) as refused:  # the daemon refuses at once, naming the holder
            Daemon(settings, db.dsn).run()
        assert time.monotonic() - started < 5
        assert f"pid {holder.pid}" in str(refused.value)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    finally:
        if holder.poll() is None:
            holder.kill()
    # Nothing to clean up: every lock went with the process (the PostgreSQL session ends at once).
    poll(lambda: _try(lambda: CatalogLock(db.dsn, db.catalog).acquire().release()), 10, message="catalog lock free")
    for folder, what in ((settings.landing.path, "landing folder"), (settings.spark.checkpoint_dir, "checkpoint")):
        FileLock(folder, what).acquire().release()


def test_a_daemon_on_the_catalog_of_another_refuses_and_ingest_too(db, make_settings, tmp_path, capsys):
    settings = make_settings()
    held = CatalogLock(db.dsn, db.catalog).acquire()
    try:
        # Its own landing folder and checkpoints, but the same catalog schema.
        other = make_settings(landing={"path": str(tmp_path / "other")},
                              spark={"checkpoint_dir": str(tmp_path / "other-checkpoints")})
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            with pytest.raises(LockHeld, match="catalog schema"):
                Daemon(other, db.dsn).run()
        finally:
            for sig, handler in handlers.items():  # run() installed the daemon's own
                signal.signal(sig, handler)
        data = tmp_path / "x.csv"
        data.write_text("id\n1\n")
        assert cli.main(["ingest", str(data), "--dataset", "x", "--config", str(tmp_path / "dataops.yaml")]) == 2
        assert "dataops-daemon" in capsys.readouterr().err
        assert db.scalar("SELECT to_regclass(%s)", (f"{db.schema}.x",)) is None
    finally:
        held.release()
    # Released: the landing folder and checkpoint directory of the refused daemon are free as well.
    FileLock(settings.landing.path, "landing folder").acquire().release()


def _try(action) -> bool:
    try:
        action()
        return True
    except LockHeld:
        return False
