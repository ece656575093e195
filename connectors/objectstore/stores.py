"""S3-compatible object stores as a :class:`streaming.sources.Source`: one dataset per ``object_stores:`` entry.

Each entry's query reads :class:`connectors.objectstore.reader.ObjectsDataSource`, whose micro-batches
carry object keys only; ``plan`` turns them into the same CSV stage tasks as landed files, reading
each object with ranged requests (a large object is parsed in parts, like a large file). Objects are
never modified or deleted; an object that cannot be read as CSV is rejected with its reason in the
load history and a quarantine row naming it. Failures reaching the store are logged once (then every
tenth time) naming the dataset and URL, shown under ``object_stores`` in ``/readyz`` and counted in
``dataops_source_errors_total``; the reader retries with backoff and other datasets keep loading.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from connectors.files import LandedFile, file_batch
from connectors.objectstore.config import ObjectStoreConfig
from connectors.objectstore.reader import SOURCE_NAME, ObjectsDataSource
from connectors.objectstore.store import S3Object, StoreLocation
from streaming.events import EventReceiver
from streaming.sources import Batch, Dataset, Source, fingerprint

log = logging.getLogger(__name__)


class ObjectStoreSource(Source):
    """The ``object_stores:`` section; added, changed and removed entries apply while running."""

    kind = "object_store"
    checkpoint_folder = "object_stores"
    section = "object_stores"
    section_model = list[ObjectStoreConfig]
    status_section = "object_stores"

    @classmethod
    def declared_tables(cls, settings) -> list[str]:
        return [s.name for s in settings.section("object_stores")]

    def __init__(self, context):
        super().__init__(context)
        self._events: EventReceiver | None = None
        self._private: str | None = None
        self._errors: dict[str, tuple[str, int]] = {}  # dataset -> (last failure, times in a row)

    def _stores(self) -> list[ObjectStoreConfig]:
        return list(self.context.settings.section("object_stores"))

    def start(self, spark) -> None:
        """Driver: register the reader's data source; hand readers the ledger's DSN in a private file."""
        spark.dataSource.register(ObjectsDataSource)
        self._events = EventReceiver(self._event).start()
        self._private = tempfile.mkdtemp(prefix="dataops-objects-")
        path = Path(self._private) / "ledger.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"dsn": self.context.dsn, "catalog_schema": self.context.settings.postgres.catalog_schema}, f)
        for store in self._stores():
            log.info("object_store=%s: listing %s every %gs", store.name, store.url, store.poll_interval)

    def stop(self) -> None:
        if self._events is not None:
            self._events.stop()
        if self._private is not None:
            shutil.rmtree(self._private, ignore_errors=True)

    def reconfigure(self, settings) -> None:
        old = {s.name: s for s in self._stores()}
        new = {e.name: e for e in settings.section("object_stores")}
        for name in old.keys() - new.keys():
            self._errors.pop(name, None)
            log.info("object_store=%s: removed from the config; listing stopped", name)
        for name, store in new.items():
            if name not in old:
                log.info("object_store=%s: added; listing %s every %gs", name, store.url, store.poll_interval)
            elif fingerprint(store) != fingerprint(old[name]):
                self._errors.pop(name, None)
                log.info("object_store=%s: changed in the config; query restarted", name)

    def datasets(self) -> list[Dataset]:
        return [Dataset(s.name, s.name, s, fingerprint(s)) for s in self._stores()]

    def stream(self, spark, dataset: Dataset):
        """Driver: the reader (in the reader process) gets the entry as JSON and the ledger file's path."""
        store: ObjectStoreConfig = dataset.config
        max_objects = 1 if store.mode == "overwrite" else store.max_objects_per_batch
        return (spark.readStream.format(SOURCE_NAME)
                .option("store", store.model_dump_json(by_alias=True))
                .option("ledger", str(Path(self._private or "") / "ledger.json"))
                .option("events", self._events.path if self._events else "")
                .option("max_objects", str(max_objects)).load())

    def trigger_seconds(self, dataset: Dataset) -> float:
        # The reader lists at most once per poll_interval; the trigger only bounds how late it notices.
        return max(0.1, min(dataset.config.poll_interval, 1.0))

    def plan(self, dataset: Dataset, df, batch_id: int) -> Batch | None:
        """Driver: the batch's object keys (not contents) come here; one stage task per object or part."""
        store: ObjectStoreConfig = dataset.config
        rows = sorted((tuple(r) for r in df.collect()), key=lambda r: (r[2], r[0]))  # driver-ok: keys only
        if not rows:
            return None
        location = StoreLocation.of(store)
        files = [LandedFile(identity, key[len(store.prefix):] or key, S3Object(location, key, size))
                 for key, size, _mtime, identity in rows]
        return file_batch(self.context, files, store, store.url, keeps_rejected_input=True, record_rejections=True)

    def origin(self, dataset: Dataset) -> str:
        endpoint = f" at {dataset.config.endpoint_url}" if dataset.config.endpoint_url else ""
        return f"object store {dataset.config.url}{endpoint}"

    def status(self, dataset: Dataset) -> str:
        error = self._errors.get(dataset.table)
        return error[0] if error else "ok"

    def _event(self, event: dict) -> None:
        """Driver (the event receiver's thread): one event from a store's reader."""
        name = str(event.get("dataset", ""))
        metrics = self.context.metrics
        if event.get("event") == "error":
            message = str(event.get("message"))[:500]
            metrics.source_errors.labels(name, str(event.get("kind", "error"))).inc()
            last, repeats = self._errors.get(name, ("", 0))
            # Compare without the retry delay, which changes with every failure.
            same = last.rsplit("; retrying", 1)[0] == message.rsplit("; retrying", 1)[0]
            repeats = repeats + 1 if same else 1
            if repeats == 1 or repeats % 10 == 0:
                log.error("dataset=%s: %s%s", name, message, f" ({repeats} times in a row)" if repeats > 1 else "")
            if name in {s.name for s in self._stores()}:
                self._errors[name] = (message, repeats)
        elif event.get("event") == "poll":
            if self._errors.pop(name, None) is not None:
                log.info("dataset=%s: object store reachable again (%s new object(s))", name, event.get("records"))
