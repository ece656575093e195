"""The daemon's HTTP endpoint: ``/metrics`` (Prometheus), ``/healthz``, ``/readyz``, ``/status``
and, when enabled, uploads (``PUT`` / ``GET /datasets/<dataset>/files/<file>``, see streaming.upload).

``/healthz`` answers 200 while the process serves requests; ``/readyz`` answers 200 once every
dataset's query runs and PostgreSQL answers, else 503 with a JSON body saying what is not ready;
``/status`` answers the same way with what ``dataops status`` prints.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

LINGER_SECONDS = 2.0
LINGER_BYTES = 64 << 20


class HealthServer:
    """Serves metrics and health on ``host:port`` from a daemon thread.

    Args:
        registry: the metrics to expose.
        readiness: returns ``(ready, details)``; called per ``/readyz`` request.
        status: returns ``(ready, document)``; called per ``/status`` request.
        uploads: an uploads object (see :mod:`streaming.upload`) serving the upload paths; None = uploads off.
    """

    def __init__(self, host: str, port: int, registry: CollectorRegistry,
                 readiness: Callable[[], tuple[bool, dict]], status: Callable[[], tuple[bool, dict]] | None = None,
                 uploads=None):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            # HTTP/1.1 for "Expect: 100-continue": an upload is refused before its body is sent.
            protocol_version = "HTTP/1.1"
            timeout = 120  # seconds a stalled client may keep a request thread waiting for bytes

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                if outer.uploads is not None and _file_path(path):
                    self._upload(path, write=False)
                elif path == "/metrics":
                    self._send(200, generate_latest(outer.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._json(200, {"status": "ok"})
                elif path == "/readyz":
                    try:
                        ready, details = outer.readiness()
                    except Exception as exc:  # a readiness probe must answer, not crash
                        ready, details = False, {"error": str(exc)}
                    self._json(200 if ready else 503, {"ready": ready, **details})
                elif path == "/status" and outer.status is not None:
                    try:
                        ready, doc = outer.status()
                    except Exception as exc:
                        ready, doc = False, {"ready": False, "error": str(exc), "datasets": []}
                    self._json(200 if ready else 503, doc)
                else:
                    self._json(404, {"error": "not found", "paths": ["/metrics", "/healthz", "/readyz", "/status"]})

            def do_PUT(self) -> None:  # noqa: N802
                path = self.path.split("?", 1)[0]
                if outer.uploads is not None and _file_path(path):
                    self._upload(path, write=True)
                else:
                    self.close_connection = True
                    self._json(404 if outer.uploads is not None else 403,
                               {"error": "not found" if outer.uploads is not None else "uploads are disabled "
                                "(upload.enabled)"})

            def handle_expect_100(self) -> bool:
                # Refuse a bad upload before the client sends its body.
                problem = self._precheck(self.path.split("?", 1)[0]) if self.command == "PUT" else None
                if problem is not None:
                    self.close_connection = True
                    self._json(problem.code, problem.body)
                    return False
                return super().handle_expect_100()

            def _precheck(self, path: str):
                from streaming.upload import UploadRefused

                if outer.uploads is None or not _file_path(path):
                    return None
                try:
                    dataset, filename = _file_path(path)
                    outer.uploads.authorize(self.headers.get("Authorization"))
                    outer.uploads.target(dataset, filename)
                    outer.uploads.check_size(self.headers.get("Content-Length"),
                                             "chunked" in self.headers.get("Transfer-Encoding", "").lower())
                except UploadRefused as refused:
                    return refused
                return None

            def _upload(self, path: str, write: bool) -> None:
                from streaming.upload import UploadRefused

                dataset, filename = _file_path(path)
                try:
                    outer.uploads.authorize(self.headers.get("Authorization"))
                    dataset, filename = outer.uploads.target(dataset, filename)
                    if not write:
                        self._json(200, outer.uploads.where(dataset, filename))
                        return
                    size = outer.uploads.check_size(self.headers.get("Content-Length"),
                                                    "chunked" in self.headers.get("Transfer-Encoding", "").lower())
                    self._json(201, outer.uploads.receive(dataset, filename, size, self.rfile))
                except UploadRefused as refused:
                    # The body was not read (or not all of it): this connection cannot carry another request.
                    self.close_connection = write or self.close_connection
                    try:
                        self._json(refused.code, refused.body)
                        if write:
                            self._linger()
                    except OSError:  # the client is gone (a body cut off): nobody to answer
                        self.close_connection = True
                except OSError as exc:
                    log.warning("upload: dataset=%s file %s: connection lost (%s); nothing was kept", dataset,
                                filename, exc)
                    self.close_connection = True
                except Exception as exc:  # e.g. the catalog unreadable while PostgreSQL restarts
                    log.warning("upload: dataset=%s file %s: %s", dataset, filename, str(exc).strip())
                    self.close_connection = True
                    self._json(503, {"error": f"cannot answer now: {str(exc).strip().splitlines()[0]}"})

            def _linger(self) -> None:
                """Read and drop what the client still sends for a moment before closing: closing with
                unread bytes resets the connection, and the client might lose our answer."""
                import socket

                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_WR)
                self.connection.settimeout(LINGER_SECONDS)
                drained = 0
                try:
                    while drained < LINGER_BYTES and (chunk := self.connection.recv(1 << 16)):
                        drained += len(chunk)
                except OSError:
                    pass

            def _json(self, code: int, body: dict) -> None:
                self._send(code, json.dumps(body, default=str).encode(), "application/json")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                if self.close_connection:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args) -> None:  # probes every few seconds: keep the log clean
                log.debug("http %s", fmt % args)

        self.registry = registry
        self.readiness = readiness
        self.status = status
        self.uploads = uploads
        self._stopped = False
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="health-http", daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def start(self) -> "HealthServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.server.shutdown()
        self.server.server_close()


def _file_path(path: str) -> tuple[str, str] | None:
    """``(dataset, file)`` of ``/datasets/<dataset>/files/<file>`` (percent-decoded), else None."""
    parts = path.split("/")
    if len(parts) == 5 and parts[0] == "" and parts[1] == "datasets" and parts[3] == "files":
        return unquote(parts[2], errors="surrogateescape"), unquote(parts[4], errors="surrogateescape")
    return None
