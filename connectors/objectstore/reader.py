"""An object store's prefix as a Structured Streaming source: a listing ``DataSourceStreamReader``.

Where the code runs:

* :class:`ObjectStreamReader` ``initialOffset`` / ``latestOffset`` / ``partitions`` / ``commit`` run
  in the Python process Spark's driver starts for the query. ``latestOffset`` lists the prefix at
  most once per ``poll_interval`` (with backoff while the store fails).
* ``read`` runs on executors and only replays the object keys pickled into its partition; the
  daemon's ``foreachBatch`` turns them into stage tasks that read the objects.

Offsets are what Spark checkpoints, as JSON::

    {"batch": 7,                                   # batches planned so far
     "objects": [["invoices/2024/05.csv", 1234,    # the batch's objects: key, size,
                  1714550400000000000,             #   modification time (ns),
                  "s3://landing/invoices/2024/05.csv"]]}  # identity: the URL (+ "#" ETag with reload_changed)

The end offset lists the batch's objects itself (at most ``max_objects_per_batch``), so a batch
replayed after a crash reads exactly the same objects. Which objects were already planned is known
without a manifest: every committed load records its objects' identities in the ledger
(``loads.files``), and the start offset holds the batch before; so after a restart nothing is loaded
twice and nothing is missed, including objects that arrived while the daemon was down and keys that
sort before ones already seen. Objects are never modified or deleted.
"""

from __future__ import annotations

import json
import time

from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition

from connectors.objectstore.config import ObjectStoreConfig
from connectors.objectstore.store import StoreLocation, etag, list_objects
from streaming.errors import SourceError
from streaming.events import EventSender

__all__ = ["ObjectsDataSource", "ObjectStreamReader", "SOURCE_NAME", "SCHEMA"]

SOURCE_NAME = "dataops_objects"
SCHEMA = "key string, size bigint, mtime bigint, identity string"
MAX_BACKOFF_SECONDS = 60.0


class ObjectsPartition(InputPartition):
    """A batch's objects for one Spark task: ``[(key, size, mtime, identity), ...]``."""

    def __init__(self, rows: list[tuple]):
        super().__init__(None)
        self.rows = rows


class ObjectsDataSource(DataSource):
    """``spark.readStream.format("dataops_objects")`` with options ``store`` (the entry's config as
    JSON), ``ledger`` (a file holding ``{"dsn", "catalog_schema"}``, readable by the daemon's user
    only: a DSN may hold a password, and options show in query plans), ``events`` (the daemon's event
    socket, optional) and ``max_objects`` (objects per batch)."""

    @classmethod
    def name(cls) -> str:
        return SOURCE_NAME

    def schema(self) -> str:
        return SCHEMA

    def streamReader(self, schema) -> "ObjectStreamReader":
        config = ObjectStoreConfig.model_validate(json.loads(self.options["store"]))
        with open(self.options["ledger"], encoding="utf-8") as f:
            ledger = json.load(f)
        return ObjectStreamReader(config, ledger["dsn"], ledger["catalog_schema"], self.options.get("events"),
                                  int(self.options.get("max_objects", config.max_objects_per_batch)))


class ObjectStreamReader(DataSourceStreamReader):
    def __init__(self, config: ObjectStoreConfig, dsn: str, catalog_schema: str, events_path: str | None = None,
                 max_objects: int = 100):
        self.config = config
        self.location = StoreLocation.of(config)
        self.dsn, self.catalog_schema = dsn, catalog_schema
        self.events = EventSender(events_path, config.name)
        self.max_objects = max(1, max_objects)
        self._committed: set[str] = set()
        self._last_load = 0  # committed loads read from the ledger so far (by load_id)
        self._etags: dict[tuple, str] = {}  # (key, size, mtime) -> ETag, for reload_changed
        self._next_poll = 0.0
        self._failures = 0

    # --- offsets (reader process) -----------------------------------------------------------
    def initialOffset(self) -> dict:
        return {"batch": 0, "objects": []}

    def latestOffset(self, start: dict, limit=None) -> dict:
        """List the prefix when due; the next batch holds objects neither committed nor in ``start``."""
        now = time.monotonic()
        if now < self._next_poll:
            return start
        try:
            listing = list_objects(self.location, self.config.pattern)
            identities = [(key, size, mtime, self._identity(key, size, mtime)) for key, size, mtime in listing]
            seen = self._committed_identities() | {o[3] for o in start.get("objects", [])}
        except (OSError, SourceError) as exc:
            self._failures += 1
            backoff = min(MAX_BACKOFF_SECONDS, max(self.config.poll_interval, 2.0 ** self._failures))
            self._next_poll = now + backoff
            kind, message = self.location.describe(exc)
            self.events.error(kind, f"{message}; retrying in {backoff:.0f}s")
            return start
        except Exception as exc:  # e.g. the ledger unreachable: reported, retried at the next poll
            self._next_poll = now + self.config.poll_interval
            self.events.error("internal", f"object store {self.config.name}: {type(exc).__name__}: "
                                          f"{str(exc).splitlines()[0] if str(exc) else ''}")
            return start
        self._failures = 0
        self._next_poll = now + self.config.poll_interval
        # Oldest first, so that in upsert mode the newest object's rows win.
        fresh = sorted((o for o in identities if o[3] not in seen), key=lambda o: (o[2], o[0]))
        self.events.poll(len(fresh))
        if not fresh:
            return start
        return {"batch": start.get("batch", 0) + 1, "objects": [list(o) for o in fresh[:self.max_objects]]}

    def _identity(self, key: str, size: int, mtime: int) -> str:
        url = self.location.object_url(key)
        if not self.config.reload_changed:
            return url
        tag = self._etags.get((key, size, mtime))
        if tag is None:  # the listing has no ETag: open the object once per version seen
            tag = self._etags[(key, size, mtime)] = etag(self.location, key)
        return f"{url}#{tag}"

    def _committed_identities(self) -> set[str]:
        """Objects whose load committed, from the ledger (only loads newer than the last read)."""
        import psycopg2
        from psycopg2 import sql

        conn = psycopg2.connect(self.dsn, application_name="dataops-objects", connect_timeout=5)
        try:
            with conn, conn.cursor() as cur:
                cur.execute(sql.SQL(
                    "SELECT l.load_id, e->>'path' FROM {}.loads l, jsonb_array_elements(l.files) e "
                    "WHERE l.dataset = %s AND l.status = 'committed' AND l.load_id > %s").format(
                    sql.Identifier(self.catalog_schema)), (self.config.name, self._last_load))
                for load_id, path in cur.fetchall():
                    self._last_load = max(self._last_load, load_id)
                    if path:
                        self._committed.add(path)
        except psycopg2.errors.UndefinedTable:
            pass  # no catalog yet: nothing committed
        finally:
            conn.close()
        return self._committed

    def partitions(self, start: dict, end: dict) -> list[ObjectsPartition]:
        if start.get("batch") == end.get("batch"):
            return []
        return [ObjectsPartition([tuple(o) for o in end.get("objects", [])])]

    def read(self, partition: ObjectsPartition):
        """Executor: the partition's object keys (not their contents)."""
        yield from partition.rows

    def commit(self, end: dict) -> None:
        pass

    def stop(self) -> None:
        self.events.close()
