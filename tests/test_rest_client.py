"""The REST polling client against a real local HTTP server: pagination, resume, auth, retries, errors."""

from __future__ import annotations

import email.utils
import json
import logging
import pickle
import socket
import threading
import time

import pytest

from connectors.rest import EndpointError, PollResult, mask_url, poll
from connectors.rest.config import EndpointConfig
from tests.restserver import (
    RestServer,
    empty_response,
    json_response,
    rest_server_fixture,  # noqa: F401 - provides the rest_server fixture
    sequence,
    text_response,
)

RECORDS = [{"id": i, "name": f"row {i}"} for i in range(1, 6)]
SECRET = "s3cr3t-Value/42"


def endpoint(url: str, **fields) -> EndpointConfig:
    """An endpoint with test-sized durations: 0.2s timeout, millisecond backoffs, two retries."""
    defaults = {"name": "items", "url": url, "timeout": 0.2, "backoff": 0.004, "max_backoff": 0.01, "max_retries": 2}
    return EndpointConfig.model_validate({**defaults, **fields})


class Sleeps(list):
    """A fake ``sleep`` that records the delays asked."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def page_number_api(request):
    page, size = int(request.arg("page", "1")), int(request.arg("size", "2"))
    return json_response({"data": RECORDS[(page - 1) * size:page * size]})


def offset_api(request):
    offset, limit = int(request.arg("offset")), int(request.arg("limit"))
    return json_response(RECORDS[offset:offset + limit])


def cursor_api(request):
    start = int(request.arg("cursor", "0"))
    more = start + 2 < len(RECORDS)
    return json_response({"items": RECORDS[start:start + 2], "meta": {"next": str(start + 2) if more else None}})


def link_api(request):
    page = int(request.arg("page", "1"))
    headers = {}
    if page * 2 < len(RECORDS):
        # Relative on odd pages, absolute on even ones: both must resolve.
        link = f"/items?page={page + 1}" if page % 2 else f"{request.base_url}/items?page={page + 1}"
        headers["Link"] = f'<{link}>; rel="next", </items?page=1>; rel="first"'
    return json_response(RECORDS[(page - 1) * 2:page * 2], headers=headers)


def next_url_api(request):
    page = int(request.arg("page", "1"))
    nxt = None
    if page * 2 < len(RECORDS):
        nxt = f"items?page={page + 1}" if page % 2 else f"{request.base_url}/items?page={page + 1}"
    return json_response({"results": RECORDS[(page - 1) * 2:page * 2], "links": {"next": nxt}})


STYLES = {
    "page_number": (page_number_api, {"pagination": {"type": "page_number", "size_param": "size", "size": 2},
                                      "records_path": "data"}),
    "offset": (offset_api, {"pagination": {"type": "offset", "limit": 2}}),
    "cursor": (cursor_api, {"pagination": {"type": "cursor", "cursor_path": "meta.next"}, "records_path": "items"}),
    "link_header": (link_api, {"pagination": "link_header"}),
    "next_url": (next_url_api, {"pagination": {"type": "next_url", "next_url_path": "links.next"},
                                "records_path": "results"}),
}


def test_single_page_sends_method_params_and_headers(rest_server):
    rest_server.route("/items", json_response(RECORDS))
    ep = endpoint(rest_server.url("/items?fixed=1"), method="POST", params={"status": "open", "active": True,
                                                                             "tag": ["a", "b"]},
                  headers={"X-Client": "dataops"})

    result = poll(ep)

    assert result == PollResult(records=RECORDS, pages=1, done=True, resume=None)
    request = rest_server.last("/items")
    assert request.method == "POST"
    assert request.query_all == {"fixed": ["1"], "status": ["open"], "active": ["true"], "tag": ["a", "b"]}
    assert request.headers["x-client"] == "dataops"
    assert request.headers["Accept"] == "application/json"


def test_page_number_follows_pages_until_an_empty_one(rest_server):
    rest_server.route("/items", page_number_api)
    result = poll(endpoint(rest_server.url("/items"), **STYLES["page_number"][1]))

    assert result.records == RECORDS and result.done and result.pages == 4
    assert [r.query for r in rest_server.requests] == [{"page": str(p), "size": "2"} for p in (1, 2, 3, 4)]


def test_page_number_start_and_no_size(rest_server):
    rest_server.route("/items", lambda r: json_response(RECORDS[:2][int(r.arg("p")):int(r.arg("p")) + 1]))
    result = poll(endpoint(rest_server.url("/items"), pagination={"type": "page_number", "param": "p", "start": 0}))

    assert result.records == RECORDS[:2]
    assert [r.query for r in rest_server.requests] == [{"p": "0"}, {"p": "1"}, {"p": "2"}]


@pytest.mark.parametrize("total, expected_offsets", [(5, ["0", "2", "4"]), (4, ["0", "2", "4"]), (1, ["0"])])
def test_offset_stops_at_a_short_page(rest_server, total, expected_offsets):
    rest_server.route("/items", lambda r: json_response(RECORDS[:total][int(r.arg("offset")):][:int(r.arg("limit"))]))
    result = poll(endpoint(rest_server.url("/items"), **STYLES["offset"][1]))

    assert result.records == RECORDS[:total] and result.done
    assert [r.arg("offset") for r in rest_server.requests] == expected_offsets
    assert {r.arg("limit") for r in rest_server.requests} == {"2"}


def test_offset_custom_parameter_names(rest_server):
    rest_server.route("/items", lambda r: json_response(RECORDS[int(r.arg("skip")):int(r.arg("skip")) + 3]))
    result = poll(endpoint(rest_server.url("/items"),
                           pagination={"type": "offset", "offset_param": "skip", "limit_param": "take", "limit": 3}))

    assert result.records == RECORDS
    assert [r.query for r in rest_server.requests] == [{"skip": "0", "take": "3"}, {"skip": "3", "take": "3"}]


def test_cursor_sends_the_returned_cursor(rest_server):
    rest_server.route("/items", cursor_api)
    result = poll(endpoint(rest_server.url("/items"), **STYLES["cursor"][1]))

    assert result.records == RECORDS and result.pages == 3
    assert [r.arg("cursor") for r in rest_server.requests] == [None, "2", "4"]


@pytest.mark.parametrize("last", [{"meta": {"next": None}}, {"meta": {"next": ""}}, {"meta": {}}, {}])
def test_cursor_ends_when_the_cursor_is_null_empty_or_missing(rest_server, last):
    rest_server.route("/items", sequence(json_response({"items": [1], "meta": {"next": 7}}),
                                         json_response({"items": [2], **last})))
    result = poll(endpoint(rest_server.url("/items"),
                           pagination={"type": "cursor", "cursor_path": "meta.next", "param": "after"},
                           records_path="items"))

    assert result.records == [1, 2] and result.done
    assert [r.arg("after") for r in rest_server.requests] == [None, "7"]


def test_link_header_follows_relative_and_absolute_links_as_given(rest_server):
    rest_server.route("/items", link_api)
    result = poll(endpoint(rest_server.url("/items"), params={"filter": "x"}, **STYLES["link_header"][1]))

    assert result.records == RECORDS and result.pages == 3
    # The next URL is used as the API gave it: configured params are not added again.
    assert [r.query for r in rest_server.requests] == [{"filter": "x"}, {"page": "2"}, {"page": "3"}]


def test_next_url_follows_relative_and_absolute_urls(rest_server):
    rest_server.route("/items", next_url_api)
    result = poll(endpoint(rest_server.url("/items"), **STYLES["next_url"][1]))

    assert result.records == RECORDS and result.pages == 3
    assert [r.raw_path for r in rest_server.requests] == ["/items", "/items?page=2", "/items?page=3"]


@pytest.mark.parametrize("style", sorted(STYLES))
def test_resume_after_max_pages_continues_with_the_next_page(rest_server, style):
    handler, fields = STYLES[style]
    rest_server.route("/items", handler)
    ep = endpoint(rest_server.url("/items"), **fields)
    full = poll(ep)
    rest_server.clear()

    records, polls, resume = [], [], None
    while True:
        result = poll(ep, resume=resume, max_pages=1)
        records += result.records
        polls.append(result)
        if result.done:
            break
        assert result.pages == 1 and result.resume
        resume = json.loads(json.dumps(result.resume))  # it goes through a checkpoint as JSON
    assert records == full.records == RECORDS
    assert rest_server.count() == full.pages == len(polls)
    assert polls[-1].resume is None


def test_resume_formats(rest_server):
    rest_server.route("/items", page_number_api)
    assert poll(endpoint(rest_server.url("/items"), **STYLES["page_number"][1]), max_pages=2).resume == {"page": 3}
    rest_server.route("/items", offset_api)
    assert poll(endpoint(rest_server.url("/items"), **STYLES["offset"][1]), max_pages=1).resume == {"offset": 2}
    rest_server.route("/items", cursor_api)
    assert poll(endpoint(rest_server.url("/items"), **STYLES["cursor"][1]), max_pages=1).resume == {"cursor": "2"}
    rest_server.route("/items", link_api)
    assert poll(endpoint(rest_server.url("/items"), pagination="link_header"),
                max_pages=1).resume == {"url": rest_server.url("/items?page=2")}


def test_max_pages_defaults_to_the_endpoint_setting(rest_server):
    rest_server.route("/items", page_number_api)
    result = poll(endpoint(rest_server.url("/items"), max_pages_per_batch=2, **STYLES["page_number"][1]))

    assert (result.pages, result.done, result.records) == (2, False, RECORDS[:4])


def test_a_resume_that_does_not_fit_the_pagination_is_refused(rest_server):
    ep = endpoint(rest_server.url("/items"), **STYLES["offset"][1])
    with pytest.raises(EndpointError) as err:
        poll(ep, resume={"page": 2})
    assert err.value.kind == "resume" and rest_server.count() == 0


def test_since_is_sent_on_every_page(rest_server):
    rest_server.route("/items", page_number_api)
    ep = endpoint(rest_server.url("/items"), incremental={"cursor_field": "updated_at", "param": "updated_since"},
                  **STYLES["page_number"][1])

    poll(ep, since="2024-05-01T00:00:00Z")

    assert rest_server.count() == 4
    assert {r.arg("updated_since") for r in rest_server.requests} == {"2024-05-01T00:00:00Z"}


def test_since_is_not_sent_without_incremental_or_value(rest_server):
    rest_server.route("/items", json_response([]))
    poll(endpoint(rest_server.url("/items")), since="2024-01-01")
    poll(endpoint(rest_server.url("/items"), incremental={"cursor_field": "u", "param": "since"}))

    assert [r.query for r in rest_server.requests] == [{}, {}]


def test_since_rides_in_the_first_url_of_link_pagination(rest_server):
    def api(request):
        if request.arg("page") is None:
            return json_response([1], headers={"Link": '</items?page=2&since=x>; rel="next"'})
        return json_response([2])

    rest_server.route("/items", api)
    ep = endpoint(rest_server.url("/items"), pagination="link_header",
                  incremental={"cursor_field": "u", "param": "since"})
    result = poll(ep, since="x", max_pages=1)
    assert result.resume == {"url": rest_server.url("/items?page=2&since=x")}
    assert poll(ep, since="x", resume=result.resume).records == [2]
    assert [r.query for r in rest_server.requests] == [{"since": "x"}, {"page": "2", "since": "x"}]


def test_bearer_auth(rest_server, monkeypatch):
    monkeypatch.setenv("API_TOKEN", SECRET)
    rest_server.route("/items", lambda r: json_response([1]) if r.headers.get("Authorization") == f"Bearer {SECRET}"
                      else json_response({"error": "unauthorized"}, 401))

    result = poll(endpoint(rest_server.url("/items"), auth={"type": "bearer", "token_env": "API_TOKEN"}))
    assert result.records == [1]


def test_basic_auth(rest_server, monkeypatch):
    import base64

    monkeypatch.setenv("API_USER", "loader")
    monkeypatch.setenv("API_PASSWORD", SECRET)
    expected = "Basic " + base64.b64encode(f"loader:{SECRET}".encode()).decode()
    rest_server.route("/items", lambda r: json_response([1] if r.headers.get("Authorization") == expected else []))

    result = poll(endpoint(rest_server.url("/items"),
                           auth={"type": "basic", "username_env": "API_USER", "password_env": "API_PASSWORD"}))
    assert result.records == [1]


def test_api_key_in_a_header(rest_server, monkeypatch):
    monkeypatch.setenv("API_KEY", SECRET)
    rest_server.route("/items", lambda r: json_response([r.headers.get("X-Api-Key")]))

    result = poll(endpoint(rest_server.url("/items"),
                           auth={"type": "api_key", "name": "X-Api-Key", "in": "header", "value_env": "API_KEY"}))
    assert result.records == [SECRET]
    assert "api_key" not in rest_server.last().query


def test_api_key_in_the_query_is_sent_on_every_page_and_kept_out_of_resume(rest_server, monkeypatch):
    monkeypatch.setenv("API_KEY", SECRET)

    def api(request):
        page = int(request.arg("page", "1"))
        # Page 1 links without the key, page 2 echoes it: both must be sent once, with the key.
        link = "/items?page=2" if page == 1 else f"/items?page=3&api_key={SECRET}"
        return json_response([page], headers={"Link": f'<{link}>; rel="next"'} if page < 3 else {})

    rest_server.route("/items", api)
    ep = endpoint(rest_server.url("/items"), pagination="link_header",
                  auth={"type": "api_key", "name": "api_key", "in": "query", "value_env": "API_KEY"})

    first = poll(ep, max_pages=2)
    assert first.records == [1, 2] and first.resume == {"url": rest_server.url("/items?page=3")}
    assert SECRET not in json.dumps(first.resume)
    assert poll(ep, resume=first.resume).records == [3]
    assert [r.query_all.get("api_key") for r in rest_server.requests] == [[SECRET]] * 3


def test_credentials_are_not_sent_to_another_host(rest_server, monkeypatch):
    monkeypatch.setenv("API_TOKEN", SECRET)
    other = RestServer()
    with other:
        other.route("/more", json_response([2]))
        rest_server.route("/items", json_response([1], headers={"Link": f'<{other.url("/more")}>; rel="next"'}))
        result = poll(endpoint(rest_server.url("/items"), pagination="link_header",
                               auth={"type": "bearer", "token_env": "API_TOKEN"}))
        assert result.records == [1, 2]
        assert rest_server.last().headers.get("Authorization") == f"Bearer {SECRET}"
        assert "Authorization" not in other.last().headers


@pytest.mark.parametrize("value", [None, ""])
def test_a_missing_credential_variable_is_named_without_values(rest_server, monkeypatch, value):
    monkeypatch.setenv("API_USER", "loader-name")
    if value is None:
        monkeypatch.delenv("API_PASSWORD", raising=False)
    else:
        monkeypatch.setenv("API_PASSWORD", value)
    ep = endpoint(rest_server.url("/items"),
                  auth={"type": "basic", "username_env": "API_USER", "password_env": "API_PASSWORD"})

    with pytest.raises(EndpointError) as err:
        poll(ep)

    assert err.value.kind == "auth_env"
    assert str(err.value).startswith("endpoint items: ") and "API_PASSWORD" in str(err.value)
    assert "loader-name" not in str(err.value)
    assert rest_server.count() == 0


def test_429_honours_retry_after_seconds(rest_server):
    rest_server.route("/items", sequence(json_response({"error": "slow down"}, 429, {"Retry-After": "7"}),
                                         json_response([1])))
    sleeps, labels = Sleeps(), []

    result = poll(endpoint(rest_server.url("/items")), sleep=sleeps, on_request=labels.append)

    assert result.records == [1]
    assert sleeps == [7.0] and labels == ["429", "200"]


def test_retry_after_as_an_http_date_and_capped(rest_server):
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    rest_server.route("/items", sequence(empty_response(503, {"Retry-After": date}),
                                         empty_response(429, {"Retry-After": "86400"}), json_response([1])))
    sleeps = Sleeps()

    poll(endpoint(rest_server.url("/items")), sleep=sleeps)

    assert 28 <= sleeps[0] <= 30
    assert sleeps[1] == 300.0  # a day is cut to max(max_backoff, 300s)


def test_5xx_is_retried_with_exponential_backoff_then_succeeds(rest_server):
    rest_server.route("/items", sequence(text_response("boom", 500), text_response("bad gateway", 502),
                                         json_response([1, 2])))
    sleeps, labels, retries = Sleeps(), [], []
    ep = endpoint(rest_server.url("/items"), max_retries=3, backoff=1.0, max_backoff=1.5)

    result = poll(ep, sleep=sleeps, on_request=labels.append, on_retry=lambda: retries.append(1))

    assert result.records == [1, 2]
    assert labels == ["500", "502", "200"] and len(retries) == 2
    # Equal jitter: between half and all of backoff * 2**attempt, capped at max_backoff.
    assert len(sleeps) == 2 and 0.5 <= sleeps[0] <= 1.0 and 0.75 <= sleeps[1] <= 1.5


def test_retries_exhausted_raises_the_last_cause(rest_server, caplog):
    rest_server.route("/items", text_response("database is down", 500))
    sleeps, retries = Sleeps(), []

    with caplog.at_level(logging.WARNING, logger="connectors.rest.client"), pytest.raises(EndpointError) as err:
        poll(endpoint(rest_server.url("/items")), sleep=sleeps, on_retry=lambda: retries.append(1))

    assert err.value.kind == "http_5xx" and err.value.transient and err.value.status == 500
    assert "HTTP 500: database is down" in str(err.value) and "2 retries" in str(err.value)
    assert rest_server.count() == 3 and len(sleeps) == 2 and len(retries) == 2
    assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING"]
    assert all("items" in r.getMessage() and "HTTP 500" in r.getMessage() for r in caplog.records)


def test_a_timeout_is_retried(rest_server):
    calls = []

    def slow_once(request):
        calls.append(1)
        if len(calls) == 1:
            time.sleep(0.5)
        return json_response([1])

    rest_server.route("/items", slow_once)
    labels, sleeps = [], Sleeps()

    result = poll(endpoint(rest_server.url("/items")), sleep=sleeps, on_request=labels.append)

    assert result.records == [1] and labels == ["timeout", "200"] and len(sleeps) == 1


def test_connection_errors_are_retried_then_raised():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    labels = []

    with pytest.raises(EndpointError) as err:
        poll(endpoint(f"http://127.0.0.1:{port}/items", max_retries=1), sleep=Sleeps(), on_request=labels.append)

    assert err.value.kind == "connection" and err.value.transient
    assert labels == ["connection_error", "connection_error"]


def test_404_is_not_retried_and_shows_a_short_body(rest_server):
    rest_server.route("/items", text_response("not here " + "x" * 1000, 404))
    sleeps = Sleeps()

    with pytest.raises(EndpointError) as err:
        poll(endpoint(rest_server.url("/items")), sleep=sleeps)

    assert err.value.kind == "http_4xx" and not err.value.transient and err.value.status == 404
    assert "HTTP 404: not here xxx" in str(err.value) and len(str(err.value)) < 400
    assert rest_server.count() == 1 and sleeps == []


def test_malformed_json_names_the_page(rest_server):
    rest_server.route("/items", lambda r: json_response([1]) if r.arg("page") == "1" else text_response("<html>oops"))

    with pytest.raises(EndpointError) as err:
        poll(endpoint(rest_server.url("/items"), pagination={"type": "page_number"}))

    assert err.value.kind == "invalid_json"
    assert str(err.value).startswith("endpoint items: page 2 (") and "page=2" in str(err.value)
    assert str(err.value).endswith("is not JSON: HTML oops")  # the page's text, without its markup


def test_missing_records_path(rest_server):
    rest_server.route("/items", json_response({"data": {"rows": []}}))

    with pytest.raises(EndpointError) as err:
        poll(endpoint(rest_server.url("/items"), records_path="data.items"))

    assert err.value.kind == "records_path"
    assert "records_path 'data.items' not found in the response" in str(err.value)


def test_records_path_that_is_not_a_list(rest_server):
    rest_server.route("/items", json_response({"data": {"items": {"id": 1}}}))

    with pytest.raises(EndpointError) as err:
        poll(endpoint(rest_server.url("/items"), records_path="data.items"))

    assert err.value.kind == "records_path" and "'data.items' is a dict, not a list" in str(err.value)


def test_body_that_is_not_a_list_without_records_path(rest_server):
    rest_server.route("/items", json_response({"data": []}))

    with pytest.raises(EndpointError) as err:
        poll(endpoint(rest_server.url("/items")))

    assert err.value.kind == "records_path" and "is a dict, not a list; set records_path" in str(err.value)


def test_records_path_indexes_lists_and_204_is_an_empty_page(rest_server):
    rest_server.route("/items", json_response({"pages": [{"rows": [1, 2]}]}))
    rest_server.route("/none", empty_response(204))

    assert poll(endpoint(rest_server.url("/items"), records_path="pages.0.rows")).records == [1, 2]
    assert poll(endpoint(rest_server.url("/none"), records_path="rows")) == PollResult([], 1, True, None)


def test_a_repeated_cursor_is_a_loop(rest_server):
    following = {None: "A", "A": "B", "B": "A"}  # A -> B -> A again
    rest_server.route("/items", lambda r: json_response({"items": [r.arg("cursor")], "next": following[r.arg("cursor")]}))

    with pytest.raises(EndpointError) as err:
        poll(endpoint(rest_server.url("/items"), pagination={"type": "cursor", "cursor_path": "next"},
                      records_path="items"))

    assert err.value.kind == "pagination_loop" and "cursor 'A'" in str(err.value)
    assert [r.arg("cursor") for r in rest_server.requests] == [None, "A", "B"]


def test_a_link_to_the_same_page_is_a_loop(rest_server):
    rest_server.route("/items", json_response([1], headers={"Link": '</items>; rel="next"'}))

    with pytest.raises(EndpointError) as err:
        poll(endpoint(rest_server.url("/items"), pagination="link_header"))

    assert err.value.kind == "pagination_loop" and str(err.value).startswith("endpoint items: ")
    assert rest_server.count() == 1


def test_an_api_that_ignores_the_page_parameter_is_a_loop(rest_server):
    rest_server.route("/items", json_response([{"id": 1}, {"id": 2}]))

    with pytest.raises(EndpointError) as err:
        poll(endpoint(rest_server.url("/items"), pagination={"type": "page_number"}))

    assert err.value.kind == "pagination_loop" and rest_server.count() == 2


def test_next_url_that_is_not_a_string(rest_server):
    rest_server.route("/items", json_response({"rows": [1], "next": {"href": "/items?page=2"}}))

    with pytest.raises(EndpointError) as err:
        poll(endpoint(rest_server.url("/items"), pagination={"type": "next_url", "next_url_path": "next"},
                      records_path="rows"))

    assert err.value.kind == "pagination" and "is a dict, not a URL" in str(err.value)


def test_secrets_stay_out_of_errors_and_logs(rest_server, monkeypatch, caplog):
    monkeypatch.setenv("API_KEY", SECRET)
    # The API even echoes the key in its error body.
    rest_server.route("/items", lambda r: text_response(f"upstream failed for key {r.arg('api_key')}", 500))
    ep = endpoint(rest_server.url("/items"), auth={"type": "api_key", "name": "api_key", "in": "query",
                                                   "value_env": "API_KEY"})

    with caplog.at_level(logging.DEBUG, logger="connectors.rest"), pytest.raises(EndpointError) as err:
        poll(ep, sleep=Sleeps())

    assert rest_server.last().arg("api_key") == SECRET  # it was sent
    message = str(err.value)
    assert err.value.kind == "http_5xx" and "upstream failed for key ***" in message
    assert SECRET not in message and "s3cr3t" not in message
    assert err.value.__cause__ is None
    assert caplog.records and not any("s3cr3t" in r.getMessage() for r in caplog.records)


def test_a_token_echoed_in_a_4xx_body_is_masked(rest_server, monkeypatch):
    monkeypatch.setenv("API_TOKEN", SECRET)
    rest_server.route("/items", lambda r: text_response(f"bad token: {r.headers['Authorization']}", 401))

    with pytest.raises(EndpointError) as err:
        poll(endpoint(rest_server.url("/items?access_token=abc"), auth={"type": "bearer", "token_env": "API_TOKEN"}))

    assert err.value.kind == "http_4xx" and "bad token: Bearer ***" in str(err.value)
    assert "access_token=***" in str(err.value) and "abc" not in str(err.value)


def test_stop_abandons_the_poll(rest_server):
    rest_server.route("/items", text_response("down", 503))
    stop = threading.Event()
    stop.set()
    with pytest.raises(EndpointError) as err:
        poll(endpoint(rest_server.url("/items")), stop=stop)
    assert err.value.kind == "stopped" and rest_server.count() == 0

    stop.clear()
    started = time.monotonic()
    with pytest.raises(EndpointError) as err:
        # The default sleep waits on the event, so setting it ends a long backoff at once.
        poll(endpoint(rest_server.url("/items"), backoff=60, max_backoff=60), stop=stop, on_retry=stop.set)
    assert err.value.kind == "stopped" and rest_server.count() == 1
    assert time.monotonic() - started < 5


def test_endpoint_error_survives_pickling():
    err = EndpointError("items", "http_4xx", "page 1: HTTP 403", status=403)
    copy = pickle.loads(pickle.dumps(err))
    assert (str(copy), copy.kind, copy.status, copy.endpoint) == (str(err), "http_4xx", 403, "items")


def test_mask_url():
    url = "https://user:pw@api.example.com/v1/items?page=2&apiKey=k1&access_token=t&client_secret=s&q=token"
    assert mask_url(url, ("sig",)) == (
        "https://user:***@api.example.com/v1/items?page=2&apiKey=***&access_token=***&client_secret=***&q=token"
    )
    assert mask_url("https://h/x?sig=1&p=2", ("sig",)) == "https://h/x?sig=***&p=2"


def test_rest_server_records_requests_and_reports_handler_errors():
    with RestServer() as srv:
        import requests

        @srv.route("/echo", method="POST")
        def echo(request):
            return 201, {"X-Seen": request.method}, {"got": request.json(), "q": request.query}

        srv.route("/fail", lambda r: 1 / 0)
        answer = requests.post(srv.url("/echo?a=1&a=2&b=x"), json={"k": "v"}, timeout=5)
        assert answer.status_code == 201 and answer.headers["X-Seen"] == "POST"
        assert answer.json() == {"got": {"k": "v"}, "q": {"a": ["1", "2"], "b": "x"}}
        assert requests.get(srv.url("/echo"), timeout=5).status_code == 404  # POST only
        assert requests.get(srv.url("/fail"), timeout=5).status_code == 500
        assert srv.count() == 3 and srv.count("/echo") == 2 and isinstance(srv.errors[0], ZeroDivisionError)


def test_an_api_key_header_is_not_sent_to_another_host_on_redirect(rest_server, monkeypatch):
    from tests.restserver import RestServer

    monkeypatch.setenv("DATAOPS_TEST_REDIRECT_KEY", "k-e-y-value")
    with RestServer() as other:
        other.route("/moved", json_response([{"id": 1}]))
        rest_server.route("/items", (302, {"Location": other.url("/moved")}, b""))
        ep = endpoint(rest_server.url("/items"), auth={"type": "api_key", "name": "X-Api-Key", "in": "header",
                                                       "value_env": "DATAOPS_TEST_REDIRECT_KEY"})
        assert poll(ep).records == [{"id": 1}]
        assert rest_server.last("/items").headers.get("X-Api-Key") == "k-e-y-value"
        assert "X-Api-Key" not in other.last("/moved").headers
