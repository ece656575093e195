"""Polling one REST endpoint: authentication, pagination and retries; the result is raw JSON records.

Runs on the driver; nothing here touches Spark. A poll reads its credentials from the environment
when it starts, follows the endpoint's pagination until the last page or ``max_pages``, and retries
timeouts, connection errors, 429 and 5xx with exponential backoff and jitter.

``PollResult.resume`` continues a poll that stopped at ``max_pages``; it is a small JSON dict, safe to
keep in a checkpoint (it never holds a secret). Its format depends on the pagination type::

    page_number   {"page": 3}                  the next page number
    offset        {"offset": 200}              the next offset
    cursor        {"cursor": "abc"}            the cursor the API returned, sent as ``pagination.param``
    link_header   {"url": "https://..."}       the next URL, without the API key query parameter
    next_url      {"url": "https://..."}       same

Secrets (token, password, API key) are added to each request as it is sent, and only to requests
for the configured URL's host and port (like ``requests`` does on redirects). They never appear in an
error message, a log line or ``resume``: URLs shown are masked by :func:`mask_url`, messages are
scrubbed of the secret values, and errors from ``requests`` are not chained (their text may hold the
full URL).

``EndpointError.kind`` is one of:

    auth_env          an environment variable named by ``auth`` is unset or empty
    http_4xx          the API refused the request (a 4xx other than 429); not retried
    http_status       an unexpected status (1xx, or a 3xx that was not followed)
    http_429, http_5xx, timeout, connection
                      transient failures, raised once ``max_retries`` retries failed too
                      (``EndpointError.transient`` is True for these)
    request           ``requests`` refused the request (invalid URL, too many redirects)
    invalid_json      a page's body is not JSON
    records_path      ``records_path`` is missing from a page, or is not a list
    pagination        the body's cursor or next URL is not a string or number
    pagination_loop   a page token or URL already requested in this poll came back, or (page_number,
                      offset) a page repeated the previous page's records: the API ignores the parameter
    resume            ``resume`` does not fit the endpoint's pagination type
    stopped           ``stop`` was set
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import email.utils
import html
import json
import logging
import math
import os
import random
import re
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, quote_plus, unquote_plus, urlencode, urljoin, urlsplit, urlunsplit

import requests

from connectors.rest.config import ApiKeyAuth, BasicAuth, BearerAuth, EndpointConfig
from connectors.rest.jsontext import loads_strict
from streaming.errors import SourceError

__all__ = ["EndpointError", "PollResult", "mask_url", "poll"]

log = logging.getLogger(__name__)

TRANSIENT_KINDS = frozenset({"http_429", "http_5xx", "timeout", "connection"})
# A Retry-After longer than this (or max_backoff, if larger) is cut short: the API is down, not busy.
RETRY_AFTER_CAP = 300.0
BODY_SNIPPET = 200
_HIDDEN = re.compile(r"<(script|style)\b.*?</\1\s*>|<!--.*?-->", re.IGNORECASE | re.DOTALL)
_TAGS = re.compile(r"<[^>]*>")
MASK = "***"
_SECRET_PARAM = re.compile(r"token|key|secret|password|passwd|signature", re.IGNORECASE)
MISSING = object()


class EndpointError(SourceError):
    """An endpoint cannot be read. The message starts with ``endpoint <name>: `` and holds no secret.

    Attributes:
        endpoint: the endpoint's name.
        kind: short machine-readable reason (see the module docstring).
        detail: the message after ``endpoint <name>: ``.
        status: the HTTP status of the last response, when there was one.
    """

    def __init__(self, endpoint: str, kind: str, detail: str, *, status: int | None = None):
        super().__init__(f"endpoint {endpoint}: {detail}")
        self.endpoint = endpoint
        self.kind = kind
        self.detail = detail
        self.status = status

    @property
    def transient(self) -> bool:
        """Whether polling again later can succeed (the API was down or busy)."""
        return self.kind in TRANSIENT_KINDS

    def __reduce__(self):
        # Exceptions pickle their args by default, which does not fit this constructor.
        return type(self), (self.endpoint, self.kind, self.detail), {"status": self.status}


@dataclasses.dataclass
class PollResult:
    """What one poll fetched.

    Attributes:
        records: the raw JSON records (usually dicts) of every page fetched, in API order.
        pages: how many pages were fetched.
        done: True when pagination ended; False when the poll stopped at ``max_pages``.
        resume: when not done, the state that makes the next poll continue with the next page.
    """

    records: list[Any]
    pages: int
    done: bool
    resume: dict | None
    # Every page was read by the strict parser (:func:`connectors.rest.jsontext.loads_strict`): the
    # records hold no NaN or Infinity, no integer past 64 bits and no unpaired surrogate.
    strict: bool = dataclasses.field(default=False, compare=False)


def poll(
    endpoint: EndpointConfig,
    *,
    since: str | None = None,
    resume: dict | None = None,
    max_pages: int | None = None,
    session: requests.Session | None = None,
    on_request: Callable[[str], None] | None = None,
    on_retry: Callable[[], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    stop: threading.Event | None = None,
) -> PollResult:
    """Fetch an endpoint's records, page after page, from the first page or from ``resume``.

    Args:
        endpoint: the endpoint's configuration.
        since: sent as ``incremental.param`` on every page built from the configuration (a next URL
            given by the API is used as it is). Ignored without ``incremental``; the caller passes
            ``incremental.initial_value`` itself for a new query.
        resume: ``PollResult.resume`` of the previous poll, to continue where it stopped; pass the
            same ``since`` as that poll.
        max_pages: pages fetched at most; default ``endpoint.max_pages_per_batch``.
        session: a ``requests`` session to reuse; by default one is opened and closed per poll.
        on_request: called once per HTTP attempt with the status code (``"200"``, ``"429"``) or
            ``"timeout"``, ``"connection_error"`` or ``"error"``.
        on_retry: called once per retry, before its wait.
        sleep: waits between retries. With ``stop`` and the default, a wait ends when ``stop`` is set.
        stop: when set, the poll gives up at the next request or retry.

    Returns:
        The records of the pages fetched, and whether pagination ended.

    Raises:
        EndpointError: the endpoint cannot be read; ``kind`` says why.
    """
    limit = endpoint.max_pages_per_batch if max_pages is None else max_pages
    if limit < 1:
        raise ValueError(f"max_pages must be at least 1, not {limit}")
    poller = _Poller(endpoint, session, on_request, on_retry, sleep, stop)
    try:
        return poller.run(since, resume, limit)
    finally:
        poller.close()


def mask_url(url: str, secret_params: tuple[str, ...] = ()) -> str:
    """``url`` fit for a message: the values of ``secret_params`` and of query parameters named like a
    token, key, secret or password, and any password in the URL, are replaced by ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:{MASK}@{host}"
    query = []
    for item in parts.query.split("&") if parts.query else []:
        name = unquote_plus(item.split("=", 1)[0])
        secret = name in secret_params or _SECRET_PARAM.search(name)
        query.append(f"{item.split('=', 1)[0]}={MASK}" if secret else item)
    return urlunsplit((parts.scheme, netloc, parts.path, "&".join(query), ""))


@dataclasses.dataclass
class _Page:
    number: int
    url: str
    response: requests.Response
    body: Any
    records: list[Any]
    strict: bool = False  # read by the strict fast parser (see PollResult.strict)


class _Paginator:
    """Pagination as a state dict (the same dict is ``resume``): the first state, the URL a state
    requests, and the state after a page (None once the last page was fetched)."""

    repeated_records_mean_loop = False

    def __init__(self, endpoint: EndpointConfig, params: dict[str, Any], strip: Callable[[str], str]):
        self.endpoint = endpoint
        self.config = endpoint.pagination
        self.params = params
        self.strip = strip

    def start(self, resume: dict | None) -> dict:
        return {}

    def url(self, state: dict) -> str:
        return _with_params(self.endpoint.url, self.params)

    def advance(self, state: dict, page: _Page) -> dict | None:
        return None


class _PageNumber(_Paginator):
    repeated_records_mean_loop = True

    def start(self, resume: dict | None) -> dict:
        return {"page": _resume_value(resume, "page", int)} if resume else {"page": self.config.start}

    def url(self, state: dict) -> str:
        extra = {self.config.param: state["page"]}
        if self.config.size_param and self.config.size:
            extra[self.config.size_param] = self.config.size
        return _with_params(self.endpoint.url, {**self.params, **extra})

    def advance(self, state: dict, page: _Page) -> dict | None:
        return {"page": state["page"] + 1} if page.records else None


class _Offset(_Paginator):
    repeated_records_mean_loop = True

    def start(self, resume: dict | None) -> dict:
        return {"offset": _resume_value(resume, "offset", int)} if resume else {"offset": 0}

    def url(self, state: dict) -> str:
        extra = {self.config.offset_param: state["offset"], self.config.limit_param: self.config.limit}
        return _with_params(self.endpoint.url, {**self.params, **extra})

    def advance(self, state: dict, page: _Page) -> dict | None:
        # Counting the records received, not the limit asked, keeps an API that ignores the limit exact.
        if len(page.records) < self.config.limit:
            return None
        return {"offset": state["offset"] + len(page.records)}


class _Cursor(_Paginator):
    def start(self, resume: dict | None) -> dict:
        return {"cursor": _resume_value(resume, "cursor", (str, int, float))} if resume else {}

    def url(self, state: dict) -> str:
        extra = {self.config.param: state["cursor"]} if "cursor" in state else {}
        return _with_params(self.endpoint.url, {**self.params, **extra})

    def advance(self, state: dict, page: _Page) -> dict | None:
        cursor = lookup(page.body, self.config.cursor_path)
        if cursor is MISSING or cursor is None or cursor == "":
            return None
        if isinstance(cursor, bool) or not isinstance(cursor, (str, int, float)):
            raise _PaginationValue(f"cursor_path {self.config.cursor_path!r} is {_a(cursor)}, not a string")
        return {"cursor": cursor}


class _LinkHeader(_Paginator):
    def start(self, resume: dict | None) -> dict:
        return {"url": _resume_value(resume, "url", str)} if resume else {"url": self.strip(super().url({}))}

    def url(self, state: dict) -> str:
        return state["url"]

    def advance(self, state: dict, page: _Page) -> dict | None:
        link = page.response.links.get("next", {}).get("url")
        return {"url": self.strip(urljoin(page.response.url, link))} if link else None


class _NextUrl(_LinkHeader):
    def advance(self, state: dict, page: _Page) -> dict | None:
        link = lookup(page.body, self.config.next_url_path)
        if link is MISSING or link is None or link == "":
            return None
        if not isinstance(link, str):
            raise _PaginationValue(f"next_url_path {self.config.next_url_path!r} is {_a(link)}, not a URL")
        return {"url": self.strip(urljoin(page.response.url, link))}


_PAGINATORS: dict[str, type[_Paginator]] = {
    "none": _Paginator,
    "page_number": _PageNumber,
    "offset": _Offset,
    "cursor": _Cursor,
    "link_header": _LinkHeader,
    "next_url": _NextUrl,
}


class _PaginationValue(Exception):
    """The body's pagination value is unusable; becomes EndpointError(kind="pagination")."""


class _ResumeMismatch(Exception):
    """``resume`` does not fit the pagination type; becomes EndpointError(kind="resume")."""


class _Session(requests.Session):
    """A session that drops every credential header, not only ``Authorization``, when a redirect
    leaves the configured host (``requests`` strips only ``Authorization`` itself)."""

    credential_headers: set[str] = set()
    origin: tuple | None = None

    def rebuild_auth(self, prepared_request, response) -> None:
        super().rebuild_auth(prepared_request, response)
        if self.origin is not None and _origin(prepared_request.url) != self.origin:
            for name in self.credential_headers:
                prepared_request.headers.pop(name, None)


class _Poller:
    """One poll: credentials read once, a session, and the retry loop around each request."""

    def __init__(self, endpoint, session, on_request, on_retry, sleep, stop):
        self.endpoint = endpoint
        self.on_request = on_request or (lambda label: None)
        self.on_retry = on_retry or (lambda: None)
        self.sleep = sleep
        self.stop = stop
        self.secrets: list[str] = []
        self.auth_headers: dict[str, str] = {}
        self.auth_param: tuple[str, str] | None = None
        self._read_credentials()
        self.own_session = session is None
        self.session = session or _Session()
        self.origin = _origin(endpoint.url)
        if isinstance(self.session, _Session):
            self.session.credential_headers = set(self.auth_headers)
            self.session.origin = self.origin

    def close(self) -> None:
        if self.own_session:
            self.session.close()

    def run(self, since: str | None, resume: dict | None, limit: int) -> PollResult:
        ep = self.endpoint
        params = dict(ep.params)
        if since is not None and ep.incremental is not None:
            params[ep.incremental.param] = since
        paginator = _PAGINATORS[ep.pagination.type](ep, params, self._strip_auth_param)
        try:
            state = paginator.start(resume)
        except _ResumeMismatch as exc:
            raise self.error("resume", f"resume {exc} for {ep.pagination.type} pagination") from None
        seen = {_token(state)}
        records: list[Any] = []
        previous: list[Any] | None = None
        pages = 0
        strict = True
        while True:
            page = self.fetch(paginator.url(state), pages + 1)
            pages += 1
            strict = strict and page.strict
            if paginator.repeated_records_mean_loop and page.records and page.records == previous:
                raise self.error("pagination_loop", f"page {pages} ({self.show(page.url)}) repeats the records "
                                 f"of the page before; the API seems to ignore the {ep.pagination.type} parameter")
            records.extend(page.records)
            previous = page.records
            try:
                state = paginator.advance(state, page)
            except _PaginationValue as exc:
                raise self.error("pagination", f"page {pages} ({self.show(page.url)}): {exc}") from None
            if state is None:
                return PollResult(records, pages, True, None, strict)
            if _token(state) in seen:
                raise self.error("pagination_loop", f"page {pages} ({self.show(page.url)}) points to "
                                 f"{self._describe(state)}, already requested in this poll")
            seen.add(_token(state))
            if pages >= limit:
                return PollResult(records, pages, False, state, strict)

    def fetch(self, url: str, number: int) -> _Page:
        """One page, retried after timeouts, connection errors, 429 and 5xx."""
        ep = self.endpoint
        send_url, headers = self._authorize(url)
        for attempt in range(ep.max_retries + 1):
            self._check_stop(number)
            retry_after = status = None
            try:
                response = self.session.request(ep.method, send_url, headers=headers, timeout=(ep.timeout, ep.timeout))
            except requests.Timeout:
                self.on_request("timeout")
                kind, cause = "timeout", f"no response within {ep.timeout:g}s"
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                self.on_request("connection_error")
                kind, cause = "connection", f"connection failed ({type(exc).__name__})"
            except requests.RequestException as exc:
                self.on_request("error")
                raise self.error("request", f"cannot request page {number} ({self.show(url)}): "
                                 f"{type(exc).__name__}") from None
            else:
                status = response.status_code
                self.on_request(str(status))
                if 200 <= status < 300:
                    return self._page(response, url, number)
                cause = f"HTTP {status}{_snippet(response)}"
                if status == 429 or status >= 500:
                    kind = "http_429" if status == 429 else "http_5xx"
                    retry_after = _retry_after(response) if status in (429, 503) else None
                elif 400 <= status < 500:
                    raise self.error("http_4xx", f"page {number} ({self.show(url)}): {cause}", status)
                else:
                    raise self.error("http_status", f"page {number} ({self.show(url)}): unexpected {cause}", status)
            where = f"page {number} ({self.show(url)})"
            if attempt == ep.max_retries:
                retries = f"after {ep.max_retries} retries" if ep.max_retries else "(retries are off)"
                raise self.error(kind, f"{where}: {cause}; giving up {retries}", status)
            delay = self._delay(attempt, retry_after)
            log.warning("endpoint %s: %s: %s; retry %d of %d in %.2fs", ep.name, self.scrub(where),
                        self.scrub(cause), attempt + 1, ep.max_retries, delay)
            self.on_retry()
            self._wait(delay)
        raise AssertionError("unreachable")

    def _page(self, response: requests.Response, url: str, number: int) -> _Page:
        where = f"page {number} ({self.show(url)})"
        if response.status_code == 204:
            return _Page(number, url, response, None, [])
        strict = True
        try:
            body = loads_strict(response.content)
        except ValueError:  # not UTF-8, or what only the standard parser reads (NaN, a huge integer)
            strict = False
            try:
                body = response.json()
            except ValueError:
                raise self.error("invalid_json", f"{where} is not JSON{_snippet(response)}",
                                 response.status_code) from None
        path = self.endpoint.records_path
        if path is None:
            records = body
            if not isinstance(records, list):
                raise self.error("records_path", f"the body of {where} is {_a(body)}, not a list; set records_path "
                                 "to the path of the list of records")
        else:
            records = lookup(body, path)
            if records is MISSING:
                raise self.error("records_path", f"records_path {path!r} not found in the response of {where}")
            if not isinstance(records, list):
                raise self.error("records_path", f"records_path {path!r} is {_a(records)}, not a list, in {where}")
        log.debug("endpoint %s: %s: %d records", self.endpoint.name, self.scrub(where), len(records))
        return _Page(number, url, response, body, records, strict)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        ep = self.endpoint
        if retry_after is not None:
            return min(retry_after, max(ep.max_backoff, RETRY_AFTER_CAP))
        ceiling = min(ep.backoff * 2 ** min(attempt, 60), ep.max_backoff)
        # Equal jitter: never less than half the backoff, so a busy API still gets its pause.
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def _wait(self, delay: float) -> None:
        if self.stop is not None and self.sleep is time.sleep:
            self.stop.wait(delay)
        else:
            self.sleep(delay)

    def _check_stop(self, number: int) -> None:
        if self.stop is not None and self.stop.is_set():
            raise self.error("stopped", f"stopped before page {number} was fetched")

    def _read_credentials(self) -> None:
        auth = self.endpoint.auth
        if isinstance(auth, BearerAuth):
            token = self._env(auth.token_env)
            self.auth_headers["Authorization"] = f"Bearer {token}"
        elif isinstance(auth, BasicAuth):
            username, password = self._env(auth.username_env), self._env(auth.password_env)
            encoded = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
            self.secrets.append(encoded)
            self.auth_headers["Authorization"] = f"Basic {encoded}"
        elif isinstance(auth, ApiKeyAuth):
            value = self._env(auth.value_env)
            if auth.in_ == "header":
                self.auth_headers[auth.name] = value
            else:
                self.auth_param = (auth.name, value)

    def _env(self, name: str) -> str:
        value = os.environ.get(name)
        if value is None:
            raise self.error("auth_env", f"auth: environment variable {name} is not set")
        if not value:
            raise self.error("auth_env", f"auth: environment variable {name} is empty")
        # The percent-encoded forms are what a URL or a logged request would show.
        self.secrets.extend(dict.fromkeys([value, quote(value, safe=""), quote_plus(value)]))
        return value

    def _authorize(self, url: str) -> tuple[str, dict[str, str]]:
        """The URL and headers to send: credentials only for the configured host and port."""
        headers = {"Accept": "application/json", **self.endpoint.headers}
        if _origin(url) != self.origin:
            log.debug("endpoint %s: %s is on another host; sent without credentials",
                      self.endpoint.name, self.show(url))
            return url, headers
        headers.update(self.auth_headers)
        if self.auth_param:
            url = _with_params(self._strip_auth_param(url), {self.auth_param[0]: self.auth_param[1]})
        return url, headers

    def _strip_auth_param(self, url: str) -> str:
        if not self.auth_param:
            return url
        parts = urlsplit(url)
        kept = [item for item in parts.query.split("&")
                if item and unquote_plus(item.split("=", 1)[0]) != self.auth_param[0]]
        return urlunsplit((parts.scheme, parts.netloc, parts.path, "&".join(kept), parts.fragment))

    def _describe(self, state: dict) -> str:
        if "url" in state:
            return self.show(state["url"])
        key, value = next(iter(state.items()))
        return f"{key} {value!r}"

    def show(self, url: str) -> str:
        return mask_url(url, (self.auth_param[0],) if self.auth_param else ())

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text

    def error(self, kind: str, detail: str, status: int | None = None) -> EndpointError:
        return EndpointError(self.endpoint.name, kind, self.scrub(detail), status=status)


def _with_params(url: str, params: dict[str, Any]) -> str:
    """``url`` with ``params`` appended to its query; lists repeat a parameter, None leaves it out."""
    pairs = []
    for name, value in params.items():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item is not None:
                pairs.append((name, str(item).lower() if isinstance(item, bool) else str(item)))
    if not pairs:
        return url
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode(pairs)) if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


def lookup(body: Any, path: str) -> Any:
    """The value at a dotted path (``data.items``; digits index lists), or ``MISSING``."""
    value = body
    for key in path.split("."):
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return MISSING
    return value


def _resume_value(resume: dict, key: str, types: type | tuple[type, ...]) -> Any:
    value = resume.get(key) if isinstance(resume, dict) else None
    if value is None or isinstance(value, bool) or not isinstance(value, types):
        raise _ResumeMismatch(f"{json.dumps(resume, default=str)[:100]} has no usable {key!r}")
    return value


def _retry_after(response: requests.Response) -> float | None:
    """Seconds asked by a ``Retry-After`` header (a number or an HTTP date), or None."""
    value = (response.headers.get("Retry-After") or "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        seconds = (when - dt.datetime.now(dt.timezone.utc)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _snippet(response: requests.Response) -> str:
    """A short excerpt of a body for an error message: an HTML page's text, without its markup."""
    text = response.text
    if "html" in response.headers.get("Content-Type", "").lower() or text.lstrip()[:1] == "<":
        text = "HTML " + html.unescape(_TAGS.sub(" ", _HIDDEN.sub(" ", text)))
    text = " ".join(text.split())
    if not text:
        return ""
    return f": {text[:BODY_SNIPPET]}{'...' if len(text) > BODY_SNIPPET else ''}"


def _token(state: dict) -> str:
    return json.dumps(state, sort_keys=True)


def _a(value: Any) -> str:
    return "null" if value is None else f"a {type(value).__name__}"
