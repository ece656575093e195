"""A small threaded HTTP server for tests that talk to REST APIs.

Handlers are registered per path and return ``(status, headers, body)``; every request is recorded.
Standalone::

    with RestServer() as srv:
        srv.route("/items", json_response([{"id": 1}]))
        url = srv.url("/items")
        ...
        assert srv.count("/items") == 1

or through the ``rest_server`` fixture (import ``rest_server_fixture`` into a conftest or test module).
Handlers run in the server's threads, so a handler may sleep to simulate a slow API.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
import traceback
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import pytest
from requests.structures import CaseInsensitiveDict

if TYPE_CHECKING:
    from typing_extensions import Self

Response = tuple[int, dict[str, str], Any]
Handler = Callable[["Request"], Response]


@dataclasses.dataclass
class Request:
    """One request as the server saw it.

    Attributes:
        method: ``GET``, ``POST`` ...
        path: the path without the query string.
        query: parameter -> value, or -> list of values when the parameter is repeated.
        query_all: parameter -> list of values, always.
        headers: case-insensitive header mapping.
        body: the raw request body.
        base_url: ``http://127.0.0.1:<port>``, to build absolute links in responses.
        raw_path: the path and query string exactly as sent.
    """

    method: str
    path: str
    query: dict[str, str | list[str]]
    query_all: dict[str, list[str]]
    headers: CaseInsensitiveDict
    body: bytes
    base_url: str
    raw_path: str = ""

    @property
    def url(self) -> str:
        """The full URL requested (path and query as sent)."""
        return self.base_url + self.raw_path

    def arg(self, name: str, default: str | None = None) -> str | None:
        """The first value of a query parameter."""
        values = self.query_all.get(name)
        return values[0] if values else default

    def json(self) -> Any:
        return json.loads(self.body)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response."""
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(data).encode()


def text_response(text: str, status: int = 200, content_type: str = "text/plain",
                  headers: dict[str, str] | None = None) -> Response:
    """A text (non-JSON) response."""
    return status, {"Content-Type": f"{content_type}; charset=utf-8", **(headers or {})}, text.encode()


def empty_response(status: int = 204, headers: dict[str, str] | None = None) -> Response:
    """A response without a body."""
    return status, dict(headers or {}), b""


def sequence(*responses: Response | Handler) -> Handler:
    """A handler that answers with each response (or handler) in turn, then repeats the last one."""
    items = list(responses)
    lock = threading.Lock()
    calls = [0]

    def handler(request: Request) -> Response:
        with lock:
            item = items[min(calls[0], len(items) - 1)]
            calls[0] += 1
        return item(request) if callable(item) else item

    return handler


class RestServer:
    """An HTTP server on 127.0.0.1 (a free port) answering with registered handlers.

    Unregistered paths answer 404 with a JSON body; a handler that raises answers 500 with the
    traceback as text, and the exception is kept in ``errors``. All methods are thread-safe.
    """

    def __init__(self, host: str = "127.0.0.1"):
        self._lock = threading.Lock()
        self._routes: dict[tuple[str | None, str], Handler | Response] = {}
        self._requests: list[Request] = []
        self.errors: list[BaseException] = []
        self._server = ThreadingHTTPServer((host, 0), _make_handler(self))
        self._server.daemon_threads = True
        self._server.handle_error = _quiet_handle_error
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self._server.server_address[0]}:{self.port}"

    def url(self, path: str = "/") -> str:
        """The absolute URL of ``path`` (which may carry a query string)."""
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def route(self, path: str, handler: Handler | Response | None = None, method: str | None = None):
        """Answer requests to ``path`` (any method, or only ``method``) with ``handler``.

        ``handler`` is a callable ``(Request) -> (status, headers, body)`` or a fixed response tuple;
        ``body`` may be bytes, str, or any JSON-serializable value (sent as JSON). Without a handler,
        returns a decorator. A later route for the same path replaces the earlier one.
        """
        if handler is None:
            def decorator(func: Handler) -> Handler:
                self.route(path, func, method)
                return func

            return decorator
        with self._lock:
            self._routes[(method.upper() if method else None, path)] = handler
        return handler

    @property
    def requests(self) -> list[Request]:
        """Every request received so far, in order (a copy)."""
        with self._lock:
            return list(self._requests)

    def requests_to(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path]

    def count(self, path: str | None = None) -> int:
        return len(self.requests if path is None else self.requests_to(path))

    def last(self, path: str | None = None) -> Request:
        found = self.requests if path is None else self.requests_to(path)
        if not found:
            raise AssertionError(f"no request to {path or 'the server'} was received")
        return found[-1]

    def clear(self) -> None:
        """Forget the recorded requests and errors (routes stay)."""
        with self._lock:
            self._requests.clear()
            self.errors.clear()

    def start(self) -> RestServer:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01},
                                            name=f"rest-server-{self.port}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _record(self, request: Request) -> Handler | Response | None:
        with self._lock:
            self._requests.append(request)
            return self._routes.get((request.method, request.path)) or self._routes.get((None, request.path))

    def _handle(self, request: Request) -> tuple[int, dict[str, str], bytes]:
        handler = self._record(request)
        if handler is None:
            return _encode(json_response({"error": f"no handler for {request.method} {request.path}"}, 404))
        try:
            return _encode(handler(request) if callable(handler) else handler)
        except Exception as exc:  # noqa: BLE001 - reported to the client and kept for the test
            with self._lock:
                self.errors.append(exc)
            return _encode(text_response(traceback.format_exc(), 500))


def _encode(response: Response) -> tuple[int, dict[str, str], bytes]:
    status, headers, body = response
    headers = dict(headers or {})
    if isinstance(body, bytes):
        data = body
    elif isinstance(body, str):
        data = body.encode()
        headers.setdefault("Content-Type", "text/plain; charset=utf-8")
    elif body is None:
        data = b""
    else:
        data = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    return status, headers, data


def _make_handler(server: RestServer) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are written separately; keep-alive would wait 40ms

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            query_all = parse_qs(parts.query, keep_blank_values=True)
            request = Request(
                method=self.command,
                path=parts.path,
                query={k: v[0] if len(v) == 1 else v for k, v in query_all.items()},
                query_all=query_all,
                headers=CaseInsensitiveDict(self.headers.items()),
                body=body,
                base_url=server.base_url,
                raw_path=self.path,
            )
            status, headers, data = server._handle(request)
            try:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                # The client gave up (a timeout test): nothing to answer.
                self.close_connection = True

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve

        def log_message(self, *args: Any) -> None:
            pass

    return _Handler


def _quiet_handle_error(request: Any, client_address: Any) -> None:
    """Connections the client dropped are expected in tests; anything else is printed."""
    exc = sys.exc_info()[1]
    if not isinstance(exc, (ConnectionError, TimeoutError)):
        traceback.print_exc()


@pytest.fixture(name="rest_server")
def rest_server_fixture() -> Iterable[RestServer]:
    """A started :class:`RestServer`, stopped after the test."""
    with RestServer() as srv:
        yield srv
