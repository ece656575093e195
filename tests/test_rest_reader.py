"""The endpoint stream reader's offsets, driven directly (as Spark's driver-side runner calls it)."""

from __future__ import annotations

import json

from connectors.rest.source import RestStreamReader
from connectors.rest.config import EndpointConfig
from tests.restserver import json_response, rest_server_fixture  # noqa: F401


def reader(url, **extra) -> RestStreamReader:
    entry = {"name": "things", "url": url, "poll_interval": "1ms", "max_retries": 0, **extra}
    return RestStreamReader(EndpointConfig.model_validate(entry), parallelism=2)


def batch(r: RestStreamReader, start: dict) -> tuple[dict, list]:
    end = r.latestOffset(start, None)
    records = [record for p in r.partitions(start, end) for text, _ in p.chunks for record in json.loads(text)]
    r.commit(end)
    return end, records


def test_numeric_cursor_with_a_text_initial_value(rest_server):
    items = [{"id": i} for i in range(1, 6)]

    def handle(request):
        since = int(request.arg("since_id", "0"))
        return json_response([i for i in items if i["id"] >= since])

    rest_server.route("/things", handle)
    r = reader(rest_server.url("/things"), incremental={"cursor_field": "id", "param": "since_id", "initial_value": "0"})
    start = r.initialOffset()
    end, records = batch(r, start)
    assert [x["id"] for x in records] == [1, 2, 3, 4, 5] and end["cursor"] == 5
    items.append({"id": 10})  # 10 sorts after 5 as a number, not as text
    end2, records = batch(r, end)
    assert [x["id"] for x in records] == [10]
    assert rest_server.last("/things").arg("since_id") == "5"
    assert r.latestOffset(end2, None) == end2  # nothing new: no batch


def test_timestamps_compare_as_instants(rest_server):
    items = [{"id": 1, "at": "2024-01-01T00:00:00Z"}]
    rest_server.route("/things", lambda req: json_response(items))  # an API that ignores "since"
    r = reader(rest_server.url("/things"), incremental={"cursor_field": "at", "param": "since"})
    end, records = batch(r, r.initialOffset())
    assert len(records) == 1
    items.append({"id": 2, "at": "2024-01-01T00:00:00.5Z"})  # later, though it sorts earlier as text
    _, records = batch(r, end)
    assert [x["id"] for x in records] == [2]


def test_a_checkpointed_chain_of_another_pagination_starts_over(rest_server):
    rest_server.route("/things", lambda req: json_response([{"id": 1}, {"id": 2}]))
    r = reader(rest_server.url("/things"))  # no pagination now
    start = {"cursor": None, "seen": "", "chain": {"since": None, "seen": "", "resume": {"page": 3}}, "polls": 4}
    end, records = batch(r, start)
    assert [x["id"] for x in records] == [1, 2] and end["chain"] is None


def test_overwrite_reads_every_page_in_one_batch(rest_server):
    def handle(request):
        page = int(request.arg("page", "1"))
        return json_response([{"id": page}] if page <= 5 else [])

    rest_server.route("/things", handle)
    r = reader(rest_server.url("/things"), mode="overwrite", max_pages_per_batch=2,
               pagination={"type": "page_number", "param": "page"})
    end, records = batch(r, r.initialOffset())
    assert [x["id"] for x in records] == [1, 2, 3, 4, 5] and end["chain"] is None


def test_a_replayed_batch_is_fetched_again_up_to_its_end(rest_server):
    items = [{"id": i, "at": f"2024-01-0{i}"} for i in range(1, 4)]
    rest_server.route("/things", lambda req: json_response([i for i in items if i["at"] >= req.arg("since", "")]))
    r = reader(rest_server.url("/things"), incremental={"cursor_field": "at", "param": "since"})
    start = r.initialOffset()
    end = r.latestOffset(start, None)
    items.append({"id": 4, "at": "2024-01-04"})  # arrives before the replay
    fresh = reader(rest_server.url("/things"), incremental={"cursor_field": "at", "param": "since"})  # a restart
    replayed = [x["id"] for p in fresh.partitions(start, end) for t, _ in p.chunks for x in json.loads(t)]
    assert replayed == [1, 2, 3]  # id 4 belongs to the next batch
    _, records = batch(fresh, end)
    assert [x["id"] for x in records] == [4]


def test_errors_are_reported_and_the_offset_stays(rest_server):
    rest_server.route("/things", lambda req: (500, {}, "down"))
    events = []
    r = reader(rest_server.url("/things"))
    r.events.error = lambda kind, message: events.append((kind, message))
    start = r.initialOffset()
    assert r.latestOffset(start, None) == start
    assert events and events[0][0] == "http_5xx" and "endpoint things" in events[0][1]


def test_pages_past_a_batch_are_fetched_while_it_loads_and_none_is_lost_or_repeated(rest_server):
    import pickle

    from tests.conftest import poll

    def handle(request):
        page = int(request.arg("page", "1"))
        return json_response([{"id": page * 10 + i} for i in range(3)] if page <= 5 else [])

    rest_server.route("/things", handle)
    settings = {"max_pages_per_batch": 2, "pagination": {"type": "page_number", "param": "page"}}
    r = reader(rest_server.url("/things"), **settings)
    start = r.initialOffset()
    end1 = r.latestOffset(start, None)
    # Spark loads the batch; the pages after it are being fetched meanwhile.
    poll(lambda: {"3", "4"} <= {q.arg("page") for q in rest_server.requests_to("/things")}, 10,
         message="pages 3 and 4 fetched ahead")
    pickle.loads(pickle.dumps(r))  # Spark pickles the reader: what runs ahead stays behind
    first = [x["id"] for p in r.partitions(start, end1) for t, _ in p.chunks for x in json.loads(t)]
    r.commit(end1)
    end2, second = batch(r, end1)
    end3, third = batch(r, end2)
    assert first == [10, 11, 12, 20, 21, 22]
    assert [x["id"] for x in second] == [30, 31, 32, 40, 41, 42] and [x["id"] for x in third] == [50, 51, 52]
    assert end3["chain"] is None
    pages = [q.arg("page") for q in rest_server.requests_to("/things")]
    assert sorted(pages) == ["1", "2", "3", "4", "5", "6"]  # each page fetched once
    # A restart from the first batch's offset (what ran ahead was in no offset) fetches its pages again.
    again = reader(rest_server.url("/things"), **settings)
    _, records = batch(again, end1)
    assert [x["id"] for x in records] == [30, 31, 32, 40, 41, 42]


def test_a_replayed_batch_of_a_snapshot_endpoint_holds_the_pages_it_held(rest_server):
    def handle(request):
        page = int(request.arg("page", "1"))
        return json_response([{"id": page}] if page <= 6 else [])

    rest_server.route("/things", handle)
    settings = {"max_pages_per_batch": 2, "pagination": {"type": "page_number", "param": "page"}}
    r = reader(rest_server.url("/things"), **settings)
    start = r.initialOffset()
    end1, first = batch(r, start)
    end2, second = batch(r, end1)
    for a, b, held in ((start, end1, first), (end1, end2, second)):
        fresh = reader(rest_server.url("/things"), **settings)  # a restart replays the batch
        replayed = [x for p in fresh.partitions(a, b) for t, _ in p.chunks for x in json.loads(t)]
        assert replayed == held and len(held) == 2  # not the pages of the batches after it


def test_stopping_the_reader_ends_the_poll_running_ahead(rest_server):
    import threading

    release = threading.Event()

    def handle(request):
        page = int(request.arg("page", "1"))
        if page == 3:
            release.wait(10)  # the API is slow on the page fetched ahead
        return json_response([{"id": page}])

    rest_server.route("/things", handle)
    r = reader(rest_server.url("/things"), max_pages_per_batch=2, pagination={"type": "page_number", "param": "page"})
    events = []
    r.events.error = lambda kind, message: events.append(kind)
    r.latestOffset(r.initialOffset(), None)
    r.stop()
    release.set()
    ahead = r._ahead[1]
    assert ahead.result(timeout=10)["chain"]["resume"] == {"page": 3}  # it stopped before page 4
    assert events == []
