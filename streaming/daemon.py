"""The daemon: one supervised streaming query per dataset, a landing watcher, metrics, clean shutdown.

Each dataset's query is a Spark file stream over its inbox whose micro-batches carry file paths
only (Spark checkpoints which files each batch owns); ``foreachBatch`` hands them to
:func:`streaming.batch.load_files`, which commits rows and ledger in one transaction. A query that
fails is restarted with backoff while the others keep running.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import signal
import threading
import time
from pathlib import Path

import psycopg2

from connectors import postgres
from connectors.landing import Landing
from connectors.rest.client import mask_url
from connectors.rest.events import EventReceiver
from connectors.rest.source import SOURCE_NAME, RestDataSource
from streaming.batch import LandedFile, LoadContext, load_files, load_records
from streaming.config import EndpointConfig, Settings, load_settings
from streaming.errors import ConfigError, ShutdownRequested, TransientSinkError
from streaming.health import HealthServer
from streaming.locks import CatalogLock, DaemonLocks, LockHeld
from streaming.metrics import Metrics, progress_listener
from streaming.naming import normalize_dataset_name
from streaming.status import PostgresProbe, daemon_status, startup_lines
from streaming.upload import Uploads

log = logging.getLogger(__name__)

BINARY_FILE_SCHEMA = "path string, modificationTime timestamp, length bigint, content binary"
MAX_BACKOFF_SECONDS = 60.0
TRANSIENT_RETRY_SECONDS = 300.0
RETRYING_NOT_READY_SECONDS = 30.0  # a batch retried longer than this makes the daemon not ready
CANCEL_WAIT_SECONDS = 10.0  # after cancelling at the end of the grace period, time for batches to unwind
STALE_STAGE_SECONDS = 3600.0  # older staging tables belong to no running batch (or ingest)


@dataclasses.dataclass
class _Query:
    dataset: str  # the landing folder's name, or the endpoint's
    table: str  # the dataset's table name: its name in the catalog, metrics and logs
    query: object | None = None
    failures: int = 0
    restart_at: float = 0.0
    batch_active: bool = False
    endpoint: EndpointConfig | None = None  # set for a REST endpoint's query
    last_error: str | None = None  # the endpoint's last failed poll (cleared by a good one) or query failure
    error_repeats: int = 0
    stopping: threading.Thread | None = None  # a stop in progress (config change): no restart before it ends
    retrying_since: float | None = None  # monotonic time the batch in flight first failed transiently
    retry_error: str | None = None

    @property
    def key(self) -> str:
        return f"endpoint:{self.table}" if self.endpoint is not None else self.dataset


class Daemon:
    """Runs until :meth:`request_stop` (SIGTERM / SIGINT); :meth:`run` returns the exit code."""

    def __init__(self, settings: Settings, dsn: str, metrics: Metrics | None = None, grace_seconds: float = 60.0,
                 spark=None, stop_event: threading.Event | None = None, config_path: str | None = None):
        self.settings = settings
        self.config_path = config_path
        self._config_watch: ConfigWatch | None = None
        self._events: EventReceiver | None = None
        self._stoppers: list[threading.Thread] = []  # queries of removed or changed endpoints, stopping
        self.metrics = metrics or Metrics()
        self.ctx = LoadContext(settings=settings, dsn=dsn, metrics=self.metrics)
        self.grace_seconds = grace_seconds
        self.retrying_not_ready_seconds = RETRYING_NOT_READY_SECONDS
        self.stop_event = stop_event or threading.Event()
        self.queries: dict[str, _Query] = {}
        self._lock = threading.Lock()
        self.landing = Landing(settings.landing.path, settings.landing.settle_seconds,
                               settings.landing.scan_interval, on_dataset=self._dataset_found,
                               metrics=self.metrics)
        self.spark = spark
        self._owns_spark = spark is None
        self._signals = 0
        self._listener = None
        self.health: HealthServer | None = None
        self.running = False
        self.started_at = time.time()
        self.locks: DaemonLocks | None = None
        self._exit_code = 0
        self.postgres_probe = PostgresProbe(dsn)
        self.metrics.observe(self._scrape_state)
        # A failing batch raises out of foreachBatch; py4j would log each with a full traceback. The
        # supervisor reports it in one line naming the dataset instead.
        logging.getLogger("py4j.clientserver").setLevel(logging.CRITICAL)

    # --- lifecycle ---------------------------------------------------------------------------
    def run(self) -> int:
        """Hold the landing folder, checkpoint directory and catalog schema, then run.

        Raises:
            LockHeld: another dataops process holds one of them (the message names it).
        """
        self.locks = DaemonLocks(self.landing.root, self.settings.spark.checkpoint_dir)
        self.locks.acquire_files()
        try:
            return self._run()
        finally:
            if self.health is not None:
                self.health.stop()
            self.locks.release()

    def _run(self) -> int:
        from streaming.session import create_session

        self._install_signals()
        if self.settings.upload.enabled and not self.settings.metrics.enabled:
            raise ConfigError("upload.enabled needs metrics.enabled: uploads are served on the metrics port")
        for line in startup_lines(self.settings, self.ctx.dsn):
            log.info("%s", line)
        Uploads.clean_staging(self.landing.root)
        if self.settings.metrics.enabled and self.health is None:
            m = self.settings.metrics
            uploads = Uploads(self.landing.root, self.settings, self.ctx.dsn) if self.settings.upload.enabled else None
            self.health = HealthServer(m.host, m.port, self.metrics.registry, self.readiness, status=self.status,
                                       uploads=uploads).start()
            log.info("metrics on http://%s:%d/metrics (health /healthz /readyz, status /status%s)", m.host,
                     self.health.port, ", uploads PUT /datasets/<dataset>/files/<file>" if uploads else "")
        pg = self.settings.postgres
        if not self._wait_for_postgres() or not self._lock_catalog():
            return 0
        dropped = postgres.drop_stale_stages(self.ctx.dsn, pg.catalog_schema, STALE_STAGE_SECONDS)
        if dropped:
            log.info("dropped %d staging table(s) left by interrupted batches", dropped)
        if self.spark is None:
            self.spark = create_session(self.settings)
        self.ctx.spark = self.spark
        self._listener = progress_listener(self.metrics)
        self.spark.streams.addListener(self._listener)
        if self.stop_event.is_set():  # asked to stop while Spark was starting
            self._shutdown()
            return 0
        self.spark.dataSource.register(RestDataSource)
        self._events = EventReceiver(self._endpoint_event).start()
        for endpoint in self.settings.endpoints:
            self._add_endpoint(endpoint)
        if self.config_path:
            self._config_watch = ConfigWatch(self.config_path).start()
        self.landing.start()
        self._finish_committed_files()
        self.running = True
        log.info("watching %s; %d dataset(s): %s; %d endpoint(s): %s", self.landing.root,
                 len(self.landing.datasets()), ", ".join(self.landing.datasets()) or "none yet",
                 len(self.settings.endpoints), ", ".join(e.name for e in self.settings.endpoints) or "none")
        try:
            while not self.stop_event.wait(0.5):
                self._supervise()
        finally:
            self._shutdown()
        return self._exit_code

    def request_stop(self) -> None:
        self.stop_event.set()

    def _wait_for_postgres(self) -> bool:
        """Create the catalog, waiting out a PostgreSQL that is not up yet; False if asked to stop."""
        pg, delay = self.settings.postgres, 1.0
        while True:
            try:
                postgres.ensure_catalog(self.ctx.dsn, pg.catalog_schema, pg.schema_name)
                return True
            except psycopg2.Error as exc:
                if not postgres.is_transient(exc):
                    raise postgres.classify_error(exc, "creating the catalog") from exc
                log.warning("PostgreSQL unavailable (%s); retrying in %.0fs", _first_line(exc), delay)
            if self.stop_event.wait(delay):
                return False
            delay = min(delay * 2, 30.0)

    def _lock_catalog(self) -> bool:
        """Hold the catalog schema's advisory lock for the daemon's life; False if asked to stop."""
        lock = CatalogLock(self.ctx.dsn, self.settings.postgres.catalog_schema)
        delay = 1.0
        while True:
            try:
                lock.acquire()
                break
            except psycopg2.Error as exc:
                log.warning("PostgreSQL unavailable (%s); retrying in %.0fs", _first_line(exc), delay)
            if self.stop_event.wait(delay):
                return False
            delay = min(delay * 2, 30.0)
        self.locks.catalog = lock.keep(self._catalog_lock_lost)
        return True

    def _catalog_lock_lost(self, message: str) -> None:
        log.error("%s (taken while the connection to PostgreSQL was down); stopping", message)
        self._exit_code = 1
        self.request_stop()

    def _scrape_state(self) -> dict:
        """The state gauges, computed when Prometheus scrapes (see streaming.metrics.StateCollector)."""
        queries = [q for q in list(self.queries.values()) if q.failures >= 0]
        return {
            "postgres_up": self.postgres_probe.check()[0],
            "files_pending": {q.table: self.landing.pending_count(q.dataset) for q in queries if q.endpoint is None},
            "query_up": {q.table: bool(self.running and q.query is not None and _active(q.query)) for q in queries},
            "batch_retrying": {q.table: q.retrying_since is not None for q in queries},
        }

    def status(self) -> tuple[bool, dict]:
        """``/status``: readiness plus, per dataset, its source, query, pending files, last batch and error."""
        return daemon_status(self)

    def readiness(self) -> tuple[bool, dict]:
        """Ready when the daemon runs, every dataset's query is up and PostgreSQL answers."""
        queries = {q.key: "running" if q.query is not None and q.query.isActive else
                   ("restarting" if q.failures else "starting") for q in list(self.queries.values())
                   if q.failures >= 0}  # < 0: a landing folder ignored (logged), not a query
        now = time.monotonic()
        for q in list(self.queries.values()):
            since = q.retrying_since
            if since is not None and now - since > self.retrying_not_ready_seconds and q.key in queries:
                queries[q.key] = f"retrying for {now - since:.0f}s: {q.retry_error}"
        # A failing API is reported, but does not make the daemon unready: restarting it cannot help.
        endpoints = {q.table: q.last_error or "ok" for q in list(self.queries.values()) if q.endpoint is not None}
        up, problem = self.postgres_probe.check()
        database = "ok" if up else f"unreachable: {_first_line(problem)}"
        state = "running" if self.running and not self.stop_event.is_set() else (
            "stopping" if self.stop_event.is_set() else "starting")
        ready = state == "running" and database == "ok" and all(v == "running" for v in queries.values())
        return ready, {"daemon": state, "postgres": database, "queries": queries, "endpoints": endpoints}

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum, _frame):
            self._signals += 1
            if self._signals > 1:
                log.warning("second signal: exiting now")
                os._exit(1)
            log.info("received %s: finishing the batches in flight, then exiting", signal.Signals(signum).name)
            self.request_stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def _shutdown(self) -> None:
        self.running = False
        self.landing.stop()
        if self._config_watch is not None:
            self._config_watch.stop()
        self.ctx.stopping.set()  # batches not yet started are abandoned; they replay on the next start
        deadline = time.monotonic() + self.grace_seconds
        while any(q.batch_active for q in self.queries.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        for stopper in self._stoppers:
            stopper.join(timeout=max(0.0, deadline - time.monotonic()))
        if any(q.batch_active for q in self.queries.values()):
            self._cancel_batches()
        for q in self.queries.values():
            if q.query is not None:
                _stop_quietly(q.query, q.dataset)
        if self._events is not None:
            self._events.stop()
        if self.spark is not None and self._listener is not None:
            self.spark.streams.removeListener(self._listener)
        if self.spark is not None and self._owns_spark:
            self.spark.stop()
        if self.health is not None:
            self.health.stop()
        log.info("stopped")

    def _cancel_batches(self) -> None:
        """The grace period is over: roll back the batches in flight (they replay on restart)."""
        active = [q.dataset for q in self.queries.values() if q.batch_active]
        sessions, jobs = self.ctx.in_flight.cancel(self.ctx.dsn, self.spark)
        log.warning("batch of %s still running after %.0fs grace; cancelled it (%d PostgreSQL session(s), "
                    "%d Spark job group(s)); it is uncommitted and replays on restart", ", ".join(active),
                    self.grace_seconds, sessions, jobs)
        deadline = time.monotonic() + CANCEL_WAIT_SECONDS
        while any(q.batch_active for q in self.queries.values()) and time.monotonic() < deadline:
            time.sleep(0.05)

    # --- queries -----------------------------------------------------------------------------
    def _dataset_found(self, dataset: str) -> None:
        table = normalize_dataset_name(dataset)
        with self._lock:
            if dataset in self.queries:
                return
            if self.settings.endpoint(table) is not None:
                log.error("dataset=%s: landing folder ignored: endpoint %s loads table %s", dataset, table, table)
                self.queries[dataset] = _Query(dataset, table, failures=-1)
                return
            self.queries[dataset] = _Query(dataset, table)
        log.info("dataset=%s: new landing folder", dataset)

    def _add_endpoint(self, endpoint: EndpointConfig) -> None:
        with self._lock:
            q = _Query(endpoint.name, endpoint.name, endpoint=endpoint)
            self.queries[q.key] = q
        log.info("endpoint=%s: polling %s every %gs", endpoint.name, mask_url(endpoint.url), endpoint.poll_interval)
        if endpoint.incremental is None and endpoint.mode == "append" and not endpoint.primary_key:
            log.warning("endpoint=%s: a snapshot endpoint (no incremental) in append mode without a primary_key "
                        "appends the whole response at every poll; use mode upsert with a primary_key, or "
                        "incremental", endpoint.name)

    def _stop_query(self, q: _Query) -> None:
        """Stop a query in the background: its batch in flight may wait out PostgreSQL or a
        Retry-After, and supervision must go on meanwhile. ``q`` restarts only once it stopped."""
        query, q.query = q.query, None
        if query is None:
            return

        q.stopping = threading.Thread(target=_stop_quietly, args=(query, q.dataset), name=f"dataops-stop-{q.table}",
                                      daemon=True)
        q.stopping.start()
        self._stoppers = [t for t in self._stoppers if t.is_alive()] + [q.stopping]

    def _reload_config(self) -> None:
        """Apply an edited config file's endpoints: add, remove and restart changed ones."""
        try:
            fresh = load_settings(self.config_path)
        except ConfigError as exc:
            log.error("config %s: edit refused, running endpoints continue unchanged: %s", self.config_path, exc)
            return
        old = {e.name: e for e in self.settings.endpoints}
        new = {e.name: e for e in fresh.endpoints}
        with self._lock:
            folders = {q.table for q in self.queries.values() if q.endpoint is None and q.failures >= 0}
            clash = [n for n in new if n not in old and n in folders]
            if clash:
                log.error("config %s: edit refused: endpoint(s) %s would load the table of a landing folder",
                          self.config_path, ", ".join(clash))
                return
            removed = [self.queries.pop(f"endpoint:{name}", None) for name in old.keys() - new.keys()]
        for q in removed:
            if q is not None:
                self._stop_query(q)
                log.info("endpoint=%s: removed from the config; polling stopped", q.table)
        for name, endpoint in new.items():
            if name not in old:
                self._add_endpoint(endpoint)
            elif endpoint.fingerprint() != old[name].fingerprint():
                q = self.queries.get(f"endpoint:{name}")
                if q is not None:
                    self._stop_query(q)
                    q.endpoint, q.failures, q.restart_at, q.last_error = endpoint, 0, 0.0, None
                log.info("endpoint=%s: changed in the config; query restarted", name)
        self.settings.endpoints = fresh.endpoints
        if fresh.model_dump(exclude={"endpoints"}) != self.settings.model_dump(exclude={"endpoints"}):
            log.warning("config %s: changes outside endpoints take effect at the next restart", self.config_path)

    def _endpoint_event(self, event: dict) -> None:
        """An event from an endpoint's stream reader (see connectors.rest.events)."""
        name = str(event.get("endpoint", ""))
        kind = event.get("event")
        if kind == "request":
            self.metrics.api_requests.labels(name, str(event.get("code", "error"))).inc()
        elif kind == "retry":
            self.metrics.api_retries.labels(name).inc()
        q = self.queries.get(f"endpoint:{name}")
        if kind == "error":
            message = str(event.get("message"))[:500]
            self.metrics.api_errors.labels(name, str(event.get("kind", "error"))).inc()
            repeats = q.error_repeats + 1 if q is not None and q.last_error == message else 1
            # The same failure every poll is logged once, then every tenth time.
            if repeats == 1 or repeats % 10 == 0:
                log.error("endpoint=%s: poll failed%s: %s", name, f" ({repeats} times in a row)" if repeats > 1 else "",
                          message)
            if q is not None:
                q.last_error, q.error_repeats = message, repeats
        elif kind == "poll":
            if q is not None and q.last_error:
                log.info("endpoint=%s: polling again (%s records)", name, event.get("records"))
                q.last_error, q.error_repeats = None, 0
            log.debug("endpoint=%s: poll fetched %s record(s) in %s page(s)", name, event.get("records"),
                      event.get("pages"))

    def _supervise(self) -> None:
        now = time.monotonic()
        if self._config_watch is not None and self._config_watch.due():
            self._reload_config()
        for q in list(self.queries.values()):
            if q.failures < 0:  # a folder that cannot get a query
                continue
            if q.query is not None and q.query.isActive:
                continue
            if q.stopping is not None:
                if q.stopping.is_alive():
                    continue
                q.stopping = None
            if q.query is not None:
                self._query_failed(q, now)
            if now >= q.restart_at and not self.stop_event.is_set():
                self._start(q)

    def _query_failed(self, q: _Query, now: float) -> None:
        error = q.query.exception()
        q.query = None
        q.failures += 1
        backoff = min(MAX_BACKOFF_SECONDS, 2 ** (q.failures - 1))
        q.restart_at = now + backoff
        self.metrics.query_restarts.labels(q.table).inc()
        if q.endpoint is None:
            q.last_error = _first_line(error)
        log.error("dataset=%s: query stopped: %s; restarting in %.0fs", q.dataset, _first_line(error), backoff)

    def _start(self, q: _Query) -> None:
        if q.endpoint is not None:
            self._start_endpoint(q)
            return
        dataset = q.dataset
        inbox = self.landing.inbox(dataset)
        inbox.mkdir(parents=True, exist_ok=True)
        cfg = self.settings.dataset(dataset)

        def load_batch(df, batch_id: int, stream: str) -> None:
            paths = sorted(r.path for r in df.select("path").collect())  # driver-ok: file paths only
            if paths:
                files = [LandedFile(_local_path(p), Landing.original_name(_local_path(p))) for p in paths]
                self._load_with_retry(q, files, stream, batch_id)

        # Overwrite loads one file per batch, so each file replaces the table in arrival order.
        max_files = 1 if cfg.mode == "overwrite" else self.settings.landing.max_files_per_batch
        # maxFileAge: the landing watcher stamps arrival time on every file, and none may be skipped.
        stream = (self.spark.readStream.format("binaryFile").schema(BINARY_FILE_SCHEMA)
                  .option("maxFilesPerTrigger", max_files).option("maxFileAge", "36500d")
                  .load(str(inbox)).select("path"))
        self._launch(q, stream, "landing", f"dataset {dataset}", int(self.settings.spark.trigger_seconds * 1000),
                     load_batch)

    def _start_endpoint(self, q: _Query) -> None:
        endpoint = q.endpoint

        def load_batch(df, batch_id: int, stream: str) -> None:
            self._retry_transient(q, f"endpoint {endpoint.name}", batch_id,
                                  lambda: load_records(self.ctx, endpoint, df, stream, batch_id))

        stream = (self.spark.readStream.format(SOURCE_NAME)
                  .option("endpoint", endpoint.model_dump_json(by_alias=True))
                  .option("events", self._events.path if self._events else "")
                  .option("parallelism", str(self.spark.sparkContext.defaultParallelism)).load())
        # The reader polls at most once per poll_interval; the trigger only bounds how late it notices.
        trigger_ms = int(max(0.1, min(endpoint.poll_interval, 1.0)) * 1000)
        self._launch(q, stream, "endpoint", f"endpoint {endpoint.name}", trigger_ms, load_batch)

    def _launch(self, q: _Query, stream, kind: str, what: str, trigger_ms: int, load_batch) -> None:
        """Start ``q``'s query over ``stream``; each micro-batch runs ``load_batch(df, batch_id, stream_id)``.

        ``stream_id`` (``<kind>:<table>:<query id>``) keys the exactly-once ledger; the query id comes
        from Spark's checkpoint, ``<checkpoint_dir>/landing/<table>`` or ``<checkpoint_dir>/endpoints/<table>``.
        """
        folder = "landing" if kind == "landing" else "endpoints"
        checkpoint = Path(self.settings.spark.checkpoint_dir).resolve() / folder / q.table
        ready = threading.Event()
        ref: dict[str, str] = {}

        def on_batch(df, batch_id: int) -> None:
            ready.wait()
            q.batch_active = True
            try:
                if self.ctx.stopping.is_set():
                    # Raising (not returning) keeps the batch uncommitted in Spark: it replays on restart.
                    raise ShutdownRequested(f"{what}: batch {batch_id} not started, stopping")
                load_batch(df, batch_id, f"{kind}:{q.table}:{ref['id']}")
            finally:
                q.batch_active = False

        try:
            self.spark.sparkContext.setLocalProperty("spark.scheduler.pool", q.table)
            q.query = (stream.writeStream.queryName(f"{kind}_{q.table}").foreachBatch(on_batch)
                       .option("checkpointLocation", str(checkpoint))
                       .trigger(processingTime=f"{trigger_ms} milliseconds").start())
        except Exception as exc:
            q.failures += 1
            q.restart_at = time.monotonic() + min(MAX_BACKOFF_SECONDS, 2 ** q.failures)
            log.error("%s: cannot start query: %s", what, _first_line(exc))
            return
        ref["id"] = str(q.query.id)
        ready.set()
        log.info("%s: query started (trigger %d ms, checkpoint %s)", what, trigger_ms, checkpoint)

    def _load_with_retry(self, q: _Query, files: list[LandedFile], stream: str, batch_id: int) -> None:
        """Load a batch of files, then archive or reject them."""
        dataset = q.dataset
        result = self._retry_transient(q, f"dataset {dataset}", batch_id,
                                       lambda: load_files(self.ctx, dataset, files, stream, batch_id))
        self._settle_files(dataset, files, result.files, result.load_id)
        q.last_error = None

    def _retry_transient(self, q: _Query, what: str, batch_id: int, load):
        """Run a load; wait out PostgreSQL outages here so the query keeps its place.

        While it waits, ``dataops_batch_retrying`` is 1 for the dataset; past
        ``retrying_not_ready_seconds`` the daemon reports itself not ready.
        """
        delay, deadline = 1.0, time.monotonic() + TRANSIENT_RETRY_SECONDS
        try:
            while True:
                try:
                    return load()
                except TransientSinkError as exc:
                    if self.ctx.stopping.is_set() or time.monotonic() > deadline:
                        raise
                    if q.retrying_since is None:
                        q.retrying_since = time.monotonic()
                    q.retry_error = _first_line(exc)
                    log.warning("%s; retrying in %.0fs", exc, delay)
                    if self.ctx.stopping.wait(delay):
                        raise ShutdownRequested(f"{what}: batch {batch_id} abandoned at shutdown") from exc
                    delay = min(delay * 2, 30.0)
        finally:
            q.retrying_since = q.retry_error = None

    def _settle_files(self, dataset: str, files: list[LandedFile], entries: list[dict], load_id: int) -> None:
        """After commit: archive loaded files, reject unreadable ones (idempotent on replay)."""
        by_path = {e["path"]: e for e in entries}
        for f in files:
            entry = by_path.get(f.path)
            if entry is None:
                continue
            if entry["status"] == "rejected":
                self.landing.reject(dataset, f, entry.get("reason", ""), entry.get("detail", ""), load_id,
                                    diff=entry.get("diff"))
            else:
                self.landing.archive(dataset, f)

    def _finish_committed_files(self) -> None:
        """Archive inbox files whose load committed before a crash stopped us from moving them."""
        root = self.landing.root / "_inbox"
        if not root.is_dir():
            return
        conn = postgres.connect(self.ctx.dsn)
        try:
            with conn, conn.cursor() as cur:
                for ds_dir in root.iterdir():
                    for f in ds_dir.iterdir() if ds_dir.is_dir() else ():
                        if f.name.startswith(("_", ".")):
                            continue
                        cur.execute(postgres.sql.SQL(
                            "SELECT load_id, e FROM {}.loads, jsonb_array_elements(files) e WHERE dataset = %s "
                            "AND status = 'committed' AND e->>'path' = %s LIMIT 1").format(
                            postgres.sql.Identifier(self.settings.postgres.catalog_schema)), (ds_dir.name, str(f)))
                        row = cur.fetchone()
                        if row:
                            landed = LandedFile(str(f), Landing.original_name(str(f)))
                            self._settle_files(self.landing.folder_of(ds_dir.name), [landed], [row[1]], row[0])
        finally:
            conn.close()


class ConfigWatch:
    """Watches the config file (watchdog) and says when an edit has settled and should be applied.

    Editors save by rewriting or by renaming a temporary file over the original; both show up as
    events on the file's folder naming the file.
    """

    SETTLE_SECONDS = 0.3

    def __init__(self, path: str):
        self.path = Path(path).resolve()
        self._changed_at: float | None = None
        self._lock = threading.Lock()
        self._observer = None

    def start(self) -> "ConfigWatch":
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        watch = self

        class _Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                # Reads (our own reload included) report opened / closed_no_write: not edits.
                if event.event_type not in ("modified", "created", "moved", "closed"):
                    return
                paths = {getattr(event, "src_path", ""), getattr(event, "dest_path", "")}
                if any(p and Path(os.fsdecode(p)).resolve() == watch.path for p in paths):
                    with watch._lock:
                        watch._changed_at = time.monotonic()

        self._observer = Observer()
        self._observer.schedule(_Handler(), str(self.path.parent), recursive=False)
        self._observer.daemon = True
        self._observer.start()
        return self

    def due(self) -> bool:
        """True once, when the file changed and has been quiet for SETTLE_SECONDS."""
        with self._lock:
            changed = self._changed_at
            if changed is None or time.monotonic() - changed < self.SETTLE_SECONDS:
                return False
            self._changed_at = None
            return True

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)


def _active(query) -> bool:
    try:
        return bool(query.isActive)
    except Exception:  # the JVM is going away (shutdown): the query is not running
        return False


def _stop_quietly(query, dataset: str) -> None:
    try:
        query.stop()
    except Exception as exc:  # stopping a failed query can raise; nothing left to do
        log.debug("dataset=%s: stop: %s", dataset, exc)


def _local_path(uri: str) -> str:
    if uri.startswith("file://"):
        return uri[len("file://"):]
    if uri.startswith("file:"):
        return uri[len("file:"):]
    return uri


_PY_ERROR = re.compile(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception|Rejected|Requested)): (.+)$")


def _first_line(error: object) -> str:
    """One readable line from an error that may carry a Java and a Python stack trace."""
    text = str(getattr(error, "desc", None) or error or "unknown error").strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # foreachBatch failures embed the Python traceback: its last "SomeError: message" line is the cause.
    causes = [m for m in map(_PY_ERROR.match, lines) if m and not m.group(1).startswith("Py4J")]
    if causes:
        return f"{causes[-1].group(1)}: {causes[-1].group(2)}"[:500]
    for line in lines:
        if not line.startswith(("Traceback", "File ", "at ", "org.apache", "py4j", "===")):
            return line[:500]
    return text[:500]
