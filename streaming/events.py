"""Events from Python stream readers to the daemon: requests, retries, polls and their failures.

A source's ``DataSourceStreamReader`` runs in a Python process Spark starts for its query, outside
the daemon's process, so it cannot touch the daemon's metrics, logging or ``/readyz``. It sends one small JSON datagram per
event on a Unix socket the daemon owns; a lost datagram costs a metric increment, never data, so
sending never blocks and never fails the poll.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


class EventSender:
    """The reader's side; a ``None`` path sends nothing."""

    def __init__(self, path: str | None, dataset: str):
        self.path = path
        self.dataset = dataset
        self._sock: socket.socket | None = None

    def request(self, code: str) -> None:
        self._send({"event": "request", "code": code})

    def retry(self) -> None:
        self._send({"event": "retry"})

    def poll(self, records: int, pages: int = 0) -> None:
        self._send({"event": "poll", "records": records, "pages": pages})

    def error(self, kind: str, message: str) -> None:
        self._send({"event": "error", "kind": kind, "message": message[:2000]})

    def _send(self, event: dict) -> None:
        if not self.path:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)
            self._sock.sendto(json.dumps({"dataset": self.dataset, **event}).encode(), self.path)
        except OSError:
            pass  # the daemon is gone or busy: a metric is lost, not data

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class EventReceiver:
    """The daemon's side: a thread reading datagrams and handing each event to ``handler``."""

    def __init__(self, handler: Callable[[dict], None]):
        self.handler = handler
        self._dir = tempfile.mkdtemp(prefix="dataops-")
        self.path = str(Path(self._dir) / "events.sock")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self._sock.settimeout(0.5)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dataops-reader-events", daemon=True)

    def start(self) -> "EventReceiver":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                self.handler(json.loads(data))
            except Exception as exc:  # a malformed event must not stop the others
                log.debug("reader event dropped: %s", exc)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=2)
        self._sock.close()
        for path in (self.path, self._dir):
            try:
                os.unlink(path) if path == self.path else os.rmdir(path)
            except OSError:
                pass
