"""The daemon's HTTP endpoint: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``.

``/healthz`` answers 200 while the process serves requests; ``/readyz`` answers 200 once every
dataset's query runs and PostgreSQL answers, else 503 with a JSON body saying what is not ready.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)


class HealthServer:
    """Serves metrics and health on ``host:port`` from a daemon thread.

    Args:
        registry: the metrics to expose.
        readiness: returns ``(ready, details)``; called per ``/readyz`` request.
    """

    def __init__(self, host: str, port: int, registry: CollectorRegistry,
                 readiness: Callable[[], tuple[bool, dict]]):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(outer.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._json(200, {"status": "ok"})
                elif path == "/readyz":
                    try:
                        ready, details = outer.readiness()
                    except Exception as exc:  # a readiness probe must answer, not crash
                        ready, details = False, {"error": str(exc)}
                    self._json(200 if ready else 503, {"ready": ready, **details})
                else:
                    self._json(404, {"error": "not found", "paths": ["/metrics", "/healthz", "/readyz"]})

            def _json(self, code: int, body: dict) -> None:
                self._send(code, json.dumps(body, default=str).encode(), "application/json")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args) -> None:  # probes every few seconds: keep the log clean
                log.debug("http %s", fmt % args)

        self.registry = registry
        self.readiness = readiness
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
        self.server.shutdown()
        self.server.server_close()
