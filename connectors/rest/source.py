"""A REST endpoint as a Structured Streaming source: a PySpark Python data source stream reader.

Where the code runs:

* :class:`RestStreamReader` ``initialOffset`` / ``latestOffset`` / ``partitions`` / ``commit`` run in
  one long-lived Python process that Spark's driver starts for the query. ``latestOffset`` polls the
  endpoint (see :func:`connectors.rest.client.poll`) at most once per ``poll_interval`` and keeps the
  records it fetched until ``partitions`` hands them out.
* ``read`` runs on executors and only replays the records pickled into its partition.

Offsets are what Spark checkpoints, as JSON::

    {"cursor": "2024-05-01T10:00:00Z",  # high-water mark of incremental.cursor_field (None: snapshot)
     "seen": "a1b2,c3d4",               # digests of the records at the high-water mark
     "chain": null,                     # a poll that stopped at max_pages: {"since", "seen", "resume"}
     "polls": 12,                       # polls that produced a batch
     "pages": 100}                      # pages the batch's poll read (a replay reads as many)

An incremental endpoint is asked for records since ``cursor``; records at or below the mark are
dropped unless they are new records at exactly the mark (their digest is not in ``seen``), so a
restarted query fetches nothing twice into an append table and misses nothing. A poll that hits
``max_pages_per_batch`` ends the batch and the next batch continues the same pages (``chain``).
If a batch must be replayed after a crash, ``partitions`` fetches its range again.

The reader process cannot reach the daemon's metrics registry, so it reports each request, retry
and poll outcome as a datagram on a Unix socket the daemon listens on (:mod:`streaming.events`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from decimal import Decimal, InvalidOperation
from typing import Any

from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition

from connectors.rest.client import MISSING, EndpointError, lookup, poll
from streaming.events import EventSender
from connectors.rest.config import EndpointConfig
from connectors.rest.records import CHUNK_RECORDS, encode_chunk

__all__ = ["RestDataSource", "RestStreamReader", "SOURCE_NAME", "SCHEMA"]

SOURCE_NAME = "dataops_rest"
SCHEMA = "record string, seq bigint"  # a JSON array of records, the position of its first in the batch
MAX_SEEN = 10_000
OVERWRITE_MAX_PAGES = 1_000_000  # an overwrite endpoint's poll reads to the last page (loops are caught)
REFETCH_PAGE_FACTOR = 10
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}")


class RecordsPartition(InputPartition):
    """Records for one Spark task: ``[(JSON array of records, position of the first in the batch), ...]``."""

    def __init__(self, chunks: list[tuple[str, int]]):
        super().__init__(None)
        self.chunks = chunks


class RestDataSource(DataSource):
    """``spark.readStream.format("dataops_rest").option("endpoint", <EndpointConfig JSON>)``.

    Options: ``endpoint`` (the endpoint's config as JSON, required), ``events`` (the daemon's event
    socket path, optional), ``parallelism`` (Spark's default parallelism: a batch is split into at
    least that many tasks, default 2) and ``partition_records`` (at most this many records per task,
    default 50,000).
    """

    @classmethod
    def name(cls) -> str:
        return SOURCE_NAME

    def schema(self) -> str:
        return SCHEMA

    def streamReader(self, schema) -> "RestStreamReader":
        endpoint = EndpointConfig.model_validate(json.loads(self.options["endpoint"]))
        return RestStreamReader(endpoint, self.options.get("events"), int(self.options.get("parallelism", 2)),
                                int(self.options.get("partition_records", 50_000)))


class RestStreamReader(DataSourceStreamReader):
    def __init__(self, endpoint: EndpointConfig, events_path: str | None = None, parallelism: int = 2,
                 partition_records: int = 50_000):
        self.endpoint = endpoint
        self.events = EventSender(events_path, endpoint.name)
        self.parallelism = max(1, parallelism)
        self.partition_records = max(1, partition_records)
        self._fetched: dict[str, list[RecordsPartition]] = {}  # planned batches by end offset
        self._lock = threading.Lock()  # _fetched, between Spark's calls and the poll running ahead
        self._ahead: tuple[str, Future] | None = None  # (start offset, its poll under way)
        self._pool: ThreadPoolExecutor | None = None
        self._stopping = threading.Event()  # ends a poll under way when the query stops
        self._last_poll = 0.0

    def __getstate__(self) -> dict:
        # Spark pickles the reader into the process that runs it: a lock or a thread does not travel.
        return {**self.__dict__, "_lock": None, "_ahead": None, "_pool": None, "_stopping": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock(), _stopping=threading.Event())

    # --- offsets (driver side) ------------------------------------------------------------
    def initialOffset(self) -> dict:
        inc = self.endpoint.incremental
        return {"cursor": inc.initial_value if inc else None, "seen": "", "chain": None, "polls": 0}

    def latestOffset(self, start: dict, limit=None) -> dict:
        """Poll the endpoint when it is due; return ``start`` when there is nothing new.

        A poll that stopped at ``max_pages_per_batch`` has more pages waiting: the next poll starts
        at once, on a thread, while Spark loads this batch, and the next call takes its result.
        Nothing fetched ahead is in an offset until this returns it, so a crash loses no record.
        """
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            end = ahead[1].result()
            if ahead[0] != _key(start):  # Spark asks from another offset: that poll is of no use
                if _key(end) != ahead[0]:
                    with self._lock:
                        self._fetched.pop(_key(end), None)
                end = None
        else:
            end = None
        if end is None:
            if start.get("chain") is None and time.monotonic() - self._last_poll < self.endpoint.poll_interval:
                return start
            end = self._next(start)
        if end.get("chain") is not None and _key(end) != _key(start):
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"dataops-poll-{self.endpoint.name}")
            self._ahead = (_key(end), self._pool.submit(self._next, end))
        return end

    def _next(self, start: dict) -> dict:
        """Poll from ``start``: the batch's end offset, its partitions kept for :meth:`partitions`
        (``start`` itself when there is nothing new, or the poll failed)."""
        self._last_poll = time.monotonic()
        since, base_seen, resume = self._chain_start(start)
        try:
            try:
                result = self._poll(since, resume)
            except EndpointError as exc:
                if exc.kind != "resume" or resume is None:
                    raise
                # The pagination settings changed since the checkpoint: start this poll's pages over.
                self.events.error("resume", f"{exc}; starting the pages over")
                start = {**start, "chain": None}
                since, base_seen, resume = self._chain_start(start)
                result = self._poll(since, None)
        except EndpointError as exc:
            if exc.kind != "stopped":  # the query is stopping: nothing went wrong
                self.events.error(exc.kind, str(exc))
            return start
        except Exception as exc:  # a bug must not kill the query; it is reported and retried next poll
            # Only the type and place: the message of an unexpected error could hold a URL with a key.
            where = exc.__traceback__.tb_frame.f_code.co_filename if exc.__traceback__ else "?"
            self.events.error("internal", f"endpoint {self.endpoint.name}: unexpected {type(exc).__name__} in {where}")
            return start
        records, cursor, seen = self._new_records(result.records, since, base_seen, start)
        self.events.poll(len(records), result.pages)
        end = {"cursor": cursor, "seen": seen,
               "chain": None if result.done else {"since": since, "seen": base_seen, "resume": result.resume},
               "polls": start.get("polls", 0) + 1, "pages": result.pages}
        if not records and end["chain"] == start.get("chain") and cursor == start.get("cursor"):
            return start
        planned = self._split(records, result.strict)
        with self._lock:
            self._fetched[_key(end)] = planned
        return end

    def _poll(self, since: Any, resume: dict | None, max_pages: int | None = None):
        # An overwrite replaces the table with each batch, so its batch must hold the whole response.
        if max_pages is None and self.endpoint.mode == "overwrite":
            max_pages = OVERWRITE_MAX_PAGES
        return poll(self.endpoint, since=since, resume=resume, max_pages=max_pages,
                    on_request=self.events.request, on_retry=self.events.retry, stop=self._stopping)

    def _chain_start(self, start: dict) -> tuple[Any, str, dict | None]:
        chain = start.get("chain")
        if chain:
            return chain.get("since"), chain.get("seen", ""), chain.get("resume")
        return start.get("cursor"), start.get("seen", ""), None

    def _new_records(self, records: list, since: Any, base_seen: str, start: dict) -> tuple[list, Any, str]:
        """Records past the mark the poll started from, the new high-water mark and its digests."""
        inc = self.endpoint.incremental
        if inc is None:
            return records, None, ""
        seen_before = set(filter(None, base_seen.split(",")))
        mark = _order(since)
        fresh = []
        for record in records:
            value = _cursor_of(record, inc.cursor_field)
            if value is not MISSING and since is not None:
                order = _order(value)
                if order < mark or (order == mark and _digest(record) in seen_before):
                    continue
            fresh.append(record)
        # The high-water mark only moves forward; records at it are remembered by digest.
        cursor = start.get("cursor")
        seen = set(filter(None, (start.get("seen") or "").split(",")))
        for record in fresh:
            value = _cursor_of(record, inc.cursor_field)
            if value is MISSING or value is None:
                continue
            if cursor is None or _order(value) > _order(cursor):
                cursor, seen = value, set()
            if _order(value) == _order(cursor):
                seen.add(_digest(record))
        return fresh, cursor, ",".join(sorted(seen)[:MAX_SEEN])

    def partitions(self, start: dict, end: dict) -> list[RecordsPartition]:
        if _key(start) == _key(end):  # e.g. a new query's first batch, before any poll
            return []
        with self._lock:
            planned = self._fetched.pop(_key(end), None)
        return planned if planned is not None else self._split(*self._refetch(start, end))

    def _split(self, records: list, strict: bool = False) -> list[RecordsPartition]:
        # One task per core, or more for large batches: each task stages its records in one COPY.
        # A row of the stream holds up to CHUNK_RECORDS of them, so Spark moves few, larger rows.
        size = min(self.partition_records, max(1, -(-len(records) // self.parallelism)))
        return [RecordsPartition([(encode_chunk(records[c:min(c + CHUNK_RECORDS, a + size)], strict), c)
                                  for c in range(a, min(a + size, len(records)), CHUNK_RECORDS)])
                for a in range(0, len(records), size)]

    def _refetch(self, start: dict, end: dict) -> tuple[list, bool]:
        """A batch replayed after a restart: fetch its range again, bounded by its end offset (the
        records, and whether they are strict, see :attr:`PollResult.strict`).

        The API may hold more than when the batch was planned, so pages of an incremental
        endpoint are followed past ``max_pages_per_batch`` (up to ten times that) until the end
        offset's mark is passed; a snapshot endpoint's batch is the pages its poll read.
        """
        since, base_seen, resume = self._chain_start(start)
        fetched: list = []
        strict = True
        limit = self.endpoint.max_pages_per_batch * REFETCH_PAGE_FACTOR
        if self.endpoint.incremental is None and end.get("pages"):
            limit = end["pages"]  # (offsets checkpointed before they held it: as for incremental ones)
        pages = 0
        while True:
            try:
                result = self._poll(since, resume, None if self.endpoint.mode == "overwrite" else
                                    min(self.endpoint.max_pages_per_batch, limit - pages))
            except EndpointError as exc:
                if exc.kind != "resume" or resume is None:
                    raise
                resume = None
                continue
            fetched.extend(result.records)
            strict = strict and result.strict
            pages += result.pages
            if result.done or pages >= limit or self._past(result.records, end):
                break
            resume = result.resume
        records, _, _ = self._new_records(fetched, since, base_seen, start)
        inc = self.endpoint.incremental
        if inc is None or end.get("cursor") is None:
            return records, strict
        limit, at_limit = _order(end["cursor"]), set(filter(None, (end.get("seen") or "").split(",")))
        kept = []
        for record in records:
            value = _cursor_of(record, inc.cursor_field)
            if value is not MISSING and value is not None:
                order = _order(value)
                if order > limit or (order == limit and _digest(record) not in at_limit):
                    continue
            kept.append(record)
        return kept, strict

    def _past(self, records: list, end: dict) -> bool:
        """Whether a page went beyond the end offset's mark (APIs sorted by the cursor)."""
        inc = self.endpoint.incremental
        if inc is None or end.get("cursor") is None:
            return False
        limit = _order(end["cursor"])
        return any(_order(v) > limit for v in (_cursor_of(r, inc.cursor_field) for r in records)
                   if v is not MISSING and v is not None)

    def read(self, partition: RecordsPartition):
        yield from partition.chunks

    def commit(self, end: dict) -> None:
        polls = end.get("polls", 0)
        with self._lock:
            for key in [k for k in self._fetched if json.loads(k).get("polls", 0) <= polls]:
                del self._fetched[key]

    def stop(self) -> None:
        self._stopping.set()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self.events.close()


def _key(offset: dict) -> str:
    return json.dumps(offset, sort_keys=True)


def _cursor_of(record: Any, path: str) -> Any:
    return lookup(record, path) if isinstance(record, dict) else MISSING


def _order(value: Any) -> tuple:
    """A cursor value's sort key: numbers (also as text, like ``initial_value: "0"``) compare as exact
    decimals, ISO 8601 timestamps as instants (``…00Z`` before ``…00.5Z``, naive ones as UTC), anything
    else as text; a number sorts before a timestamp, a timestamp before text."""
    if value is None:
        return (-1, 0)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return (0, Decimal(str(value)))
        except InvalidOperation:
            return (3, str(value))
    text = str(value).strip()
    if _NUMBER.fullmatch(text):
        return (0, Decimal(text))
    if _TIMESTAMP.match(text):
        try:
            stamp = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            return (2, text)
        return (1, stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.timezone.utc))
    return (2, text)


def _digest(record: Any) -> str:
    return hashlib.sha1(json.dumps(record, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
