"""One daemon per landing folder, checkpoint directory and catalog schema.

Every lock dies with its process, so a holder killed with ``kill -9`` (or a power loss) never blocks
the next start:

- ``flock`` on ``_dataops.lock`` in the landing folder and in the checkpoint directory; the holder
  writes who it is into the file after locking, so a refused start can say who holds it.
- a PostgreSQL session advisory lock keyed on the catalog schema's name, held by a connection that
  lives as long as the daemon. ``dataops run`` takes it exclusively, ``dataops ingest`` shared: ingests
  may run side by side, never beside a daemon on the same catalog. The holder is found again in
  ``pg_locks`` / ``pg_stat_activity`` (its ``application_name`` names host and pid).

Runs on the driver.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import psycopg2

from streaming.errors import DataOpsError

log = logging.getLogger(__name__)

LOCK_FILE = "_dataops.lock"
KEEPALIVE_SECONDS = 5.0


class LockHeld(DataOpsError):
    """Another dataops process holds the landing folder, checkpoint directory or catalog schema."""


def holder_name(role: str) -> str:
    """``dataops-daemon host:pid``: the ``application_name`` of the lock's connection."""
    return f"dataops-{role} {socket.gethostname()}:{os.getpid()}"


class FileLock:
    """An exclusive ``flock`` on ``<folder>/_dataops.lock``, released when the process exits.

    Args:
        folder: the landing folder or checkpoint directory (created if missing).
        what: how messages name it ("landing folder", "checkpoint directory").
    """

    def __init__(self, folder: Path, what: str):
        self.path = Path(folder).resolve() / LOCK_FILE
        self.what = what
        self._fd: int | None = None

    def acquire(self, role: str = "daemon") -> "FileLock":
        """Take the lock or raise :class:`LockHeld` naming the holder (host, pid, since)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise LockHeld(f"{self.what} {self.path.parent} is in use by another dataops process "
                           f"({_describe(holder)}); stop it first, or give this one its own "
                           f"{self.what}") from None
        # The file stays (deleting it would let two processes lock two different files); its
        # content only says who holds it now.
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "role": role,
                                   "since": _now()}) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


class CatalogLock:
    """A PostgreSQL session advisory lock on the catalog schema, on a connection kept for its life.

    Args:
        dsn: the database the catalog lives in.
        catalog_schema: the schema whose name keys the lock.
        shared: take it shared (``ingest``) rather than exclusive (the daemon).
    """

    def __init__(self, dsn: str, catalog_schema: str, shared: bool = False):
        self.dsn = dsn
        self.catalog_schema = catalog_schema
        self.shared = shared
        self.role = "ingest" if shared else "daemon"
        self.key = lock_key(catalog_schema)
        self._conn = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> "CatalogLock":
        """Take the lock or raise :class:`LockHeld` naming the holding backend.

        Raises:
            psycopg2.Error: PostgreSQL is unreachable (the caller waits it out).
        """
        # TCP keepalives: a server that vanished without closing the connection (network, power) is
        # noticed within ~30 s, and the keeper's check does not hang on it.
        conn = psycopg2.connect(self.dsn, application_name=holder_name(self.role), connect_timeout=5,
                                keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                fn = "pg_try_advisory_lock_shared" if self.shared else "pg_try_advisory_lock"
                cur.execute(f"SELECT {fn}(%s)", (self.key,))
                if not cur.fetchone()[0]:
                    holders = self._holders(cur)
                    raise LockHeld(f"catalog schema {self.catalog_schema} is in use by another dataops process "
                                   f"({'; '.join(holders) or 'holder not visible to this role'}); stop it first, "
                                   f"or set postgres.catalog_schema to a schema of its own")
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return self

    def _holders(self, cur) -> list[str]:
        cur.execute(
            "SELECT a.application_name, a.pid, a.client_addr, a.backend_start FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.classid::bigint = %s AND l.objid::bigint = %s AND l.objsubid = 1 AND a.pid <> pg_backend_pid()",
            ((self.key >> 32) & 0xFFFFFFFF, self.key & 0xFFFFFFFF))
        return [f"{name or 'unnamed session'}, PostgreSQL backend pid {pid}, client {addr or 'local socket'}, "
                f"since {start.isoformat(timespec='seconds') if start else 'unknown'}"
                for name, pid, addr, start in cur.fetchall()]

    def keep(self, on_lost: Callable[[str], None]) -> "CatalogLock":
        """Watch the lock's connection from a thread; after PostgreSQL restarts, take the lock again.

        ``on_lost(message)`` is called if another process took the lock while ours was gone.
        """
        def loop() -> None:
            while not self._stop.wait(KEEPALIVE_SECONDS):
                if self._alive():
                    continue
                try:
                    self.acquire()
                    log.info("catalog lock on %s taken again after the PostgreSQL connection dropped",
                             self.catalog_schema)
                except LockHeld as exc:
                    on_lost(str(exc))
                    return
                except psycopg2.Error:
                    continue  # PostgreSQL still down: try again at the next tick

        self._thread = threading.Thread(target=loop, name="dataops-catalog-lock", daemon=True)
        self._thread.start()
        return self

    def _alive(self) -> bool:
        if self._conn is None or self._conn.closed:
            return False
        try:
            with self._conn.cursor() as cur:
                cur.execute("SELECT 1")
            return True
        except psycopg2.Error:
            self._close()
            return False

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg2.Error:
                pass
            self._conn = None

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=KEEPALIVE_SECONDS + 10)
        if self._conn is not None and not self._conn.closed:
            # Released before the session ends: its backend drops its locks only as it exits, after
            # the close returns, so a process starting right after this one could still find it held.
            try:
                with self._conn.cursor() as cur:
                    cur.execute("SELECT pg_advisory_unlock_all()")
            except psycopg2.Error:
                pass  # the session is gone, and its locks with it
        self._close()


def lock_key(catalog_schema: str) -> int:
    """The advisory lock's bigint key: a stable hash of the catalog schema's name."""
    digest = hashlib.sha256(f"dataops catalog {catalog_schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class DaemonLocks:
    """The file locks of a daemon: its landing folder and checkpoint directory (released together)."""

    def __init__(self, landing: Path, checkpoints: Path | str):
        self.files = [FileLock(Path(landing), "landing folder")]
        if "://" not in str(checkpoints) or str(checkpoints).startswith("file:"):
            # Remote checkpoint storage (hdfs://, s3a://) has no flock; the catalog lock still guards it.
            self.files.append(FileLock(Path(str(checkpoints).removeprefix("file:")), "checkpoint directory"))
        self.catalog: CatalogLock | None = None

    def acquire_files(self) -> None:
        taken = []
        try:
            for lock in self.files:
                taken.append(lock.acquire())
        except LockHeld:
            for lock in taken:
                lock.release()
            raise

    def release(self) -> None:
        if self.catalog is not None:
            self.catalog.release()
            self.catalog = None
        for lock in self.files:
            lock.release()


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "holder unknown"
    return (f"dataops {holder.get('role', 'daemon')} pid {holder.get('pid', '?')} on host "
            f"{holder.get('host', '?')}, since {holder.get('since', '?')}")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
