"""The daemon: one supervised streaming query per dataset, whatever its source; metrics; clean shutdown.

Every registered source (:mod:`streaming.sources`) says which datasets it feeds and builds each
one's Spark stream; ``foreachBatch`` asks the source to plan the micro-batch and hands it to
:func:`streaming.batch.load_batch`, which commits rows and ledger in one transaction, then lets the
source finish its input. A query that fails is restarted with backoff while the others keep
running; a dataset added or removed (a new landing folder, a config edit) starts or stops its query.
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
from streaming.batch import LinkRefresher, LoadContext, load_batch
from streaming.config import load_settings
from streaming.errors import ConfigError, ShutdownRequested, TransientSinkError
from streaming.health import HealthServer
from streaming.locks import CatalogLock, DaemonLocks, LockHeld
from streaming.metrics import Metrics, progress_listener
from streaming.sources import Dataset, Source, registry, stream_id
from streaming.status import PostgresProbe, daemon_status, startup_lines

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 60.0
TRANSIENT_RETRY_SECONDS = 300.0
RETRYING_NOT_READY_SECONDS = 30.0  # a batch retried longer than this makes the daemon not ready
CANCEL_WAIT_SECONDS = 10.0  # after cancelling at the end of the grace period, time for batches to unwind
STALE_STAGE_SECONDS = 3600.0  # older staging tables belong to no running batch (or ingest)


@dataclasses.dataclass
class _Query:
    source: Source
    dataset: Dataset
    query: object | None = None
    failures: int = 0
    restart_at: float = 0.0
    batch_active: bool = False
    stopping: threading.Thread | None = None  # a stop in progress (config change): no restart before it ends
    last_error: str | None = None  # the query's last failure, cleared by a committed batch
    retrying_since: float | None = None  # monotonic time the batch in flight first failed transiently
    retry_error: str | None = None

    @property
    def key(self) -> str:
        return self.source.query_key(self.dataset)

    @property
    def table(self) -> str:
        return self.dataset.table

    @property
    def what(self) -> str:
        return f"dataset {self.dataset.name}" if self.dataset.name == self.table else \
            f"dataset {self.table} ({self.dataset.name})"


class Daemon:
    """Runs until :meth:`request_stop` (SIGTERM / SIGINT); :meth:`run` returns the exit code."""

    def __init__(self, settings, dsn: str, metrics: Metrics | None = None, grace_seconds: float = 60.0,
                 spark=None, stop_event: threading.Event | None = None, config_path: str | None = None,
                 config_read: tuple | None = None):
        self.settings = settings
        self.config_path = config_path
        self._config_watch: ConfigWatch | None = None
        # The config file as the settings were read from it (ConfigWatch.signature; default: as it is
        # now): an edit made while the daemon starts, before the watch begins, is applied once it does.
        self._config_read = config_read or (ConfigWatch.signature(config_path) if config_path else None)
        self._stoppers: list[threading.Thread] = []  # queries of removed or changed datasets, stopping
        self.metrics = metrics or Metrics()
        self._datasets_changed = threading.Event()
        self.ctx = LoadContext(settings=settings, dsn=dsn, metrics=self.metrics,
                               datasets_changed=self._datasets_changed.set)
        # Key and join candidates are re-evaluated off the batches' path (see LinkRefresher).
        self.links = LinkRefresher(self.ctx)
        self.ctx.find_links = self.links.request
        self.grace_seconds = grace_seconds
        self.retrying_not_ready_seconds = RETRYING_NOT_READY_SECONDS
        self.stop_event = stop_event or threading.Event()
        self.queries: dict[str, _Query] = {}
        self._refused: set[str] = set()  # datasets whose table another dataset loads (logged once)
        self._lock = threading.Lock()
        self.sources: list[Source] = [cls(self.ctx) for cls in registry().values()]
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
        self.locks = DaemonLocks(self.landing_root, self.settings.spark.checkpoint_dir)
        self.locks.acquire_files()
        try:
            return self._run()
        finally:
            if self.health is not None:
                self.health.stop()
            self.locks.release()

    @property
    def landing_root(self) -> Path:
        return Path(self.settings.landing.path).resolve()

    def _run(self) -> int:
        from streaming.session import create_session, warm_workers

        self._install_signals()
        if self.settings.upload.enabled and not self.settings.metrics.enabled:
            raise ConfigError("upload.enabled needs metrics.enabled: uploads are served on the metrics port")
        for line in startup_lines(self.settings, self.ctx.dsn):
            log.info("%s", line)
        offered = [u for u in (source.uploads() for source in self.sources) if u is not None]
        if self.settings.metrics.enabled and self.health is None:
            m = self.settings.metrics
            uploads = offered[0] if offered and self.settings.upload.enabled else None
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
        warm_workers(self.spark)
        self._listener = progress_listener(self.metrics, self._dataset_of_query)
        self.spark.streams.addListener(self._listener)
        if self.stop_event.is_set():  # asked to stop while Spark was starting
            self._shutdown()
            return 0
        started: list[Source] = []
        try:
            for source in self.sources:
                source.start(self.spark)
                started.append(source)
        except BaseException:
            self.sources = started
            self._shutdown()
            raise
        if self.config_path:
            self._config_watch = ConfigWatch(self.config_path).start(self._config_read)
        self.links.start()
        self._sync_datasets()
        self.running = True
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
        queries = list(self.queries.values())
        pending = {q.table: q.source.pending(q.dataset) for q in queries}
        return {
            "postgres_up": self.postgres_probe.check()[0],
            "files_pending": {table: n for table, n in pending.items() if n is not None},
            "query_up": {q.table: bool(self.running and q.query is not None and _active(q.query)) for q in queries},
            "batch_retrying": {q.table: q.retrying_since is not None for q in queries},
            "source_up": {q.table: q.source.status(q.dataset) == "ok" for q in queries if q.source.status_section},
        }

    def _dataset_of_query(self, name: str | None) -> str | None:
        for q in list(self.queries.values()):
            if name == f"{q.source.kind}_{q.table}":
                return q.table
        return None

    def status(self) -> tuple[bool, dict]:
        """``/status``: readiness plus, per dataset, its source, query, pending files, last batch and error."""
        return daemon_status(self)

    def readiness(self) -> tuple[bool, dict]:
        """Ready when the daemon runs, every dataset's query is up and PostgreSQL answers.

        Each source with a ``status_section`` reports its datasets' input there (e.g. a failing
        API under ``endpoints``); a failing input does not make the daemon unready.
        """
        queries = list(self.queries.values())
        states = {q.key: "running" if q.query is not None and q.query.isActive else
                  ("restarting" if q.failures else "starting") for q in queries}
        now = time.monotonic()
        for q in queries:
            since = q.retrying_since
            if since is not None and now - since > self.retrying_not_ready_seconds:
                states[q.key] = f"retrying for {now - since:.0f}s: {q.retry_error}"
        inputs: dict[str, dict[str, str]] = {s.status_section: {} for s in self.sources if s.status_section}
        for q in queries:
            if q.source.status_section:
                inputs[q.source.status_section][q.table] = q.source.status(q.dataset)
        up, problem = self.postgres_probe.check()
        database = "ok" if up else f"unreachable: {_first_line(problem)}"
        state = "running" if self.running and not self.stop_event.is_set() else (
            "stopping" if self.stop_event.is_set() else "starting")
        ready = state == "running" and database == "ok" and all(v == "running" for v in states.values())
        return ready, {"daemon": state, "postgres": database, "queries": states, **inputs}

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
                _stop_quietly(q.query, q.dataset.name)
        self.links.stop(timeout=max(1.0, deadline - time.monotonic()))
        for source in self.sources:
            try:
                source.stop()
            except Exception as exc:  # one source failing to stop must not keep the others running
                log.warning("source %s: stop failed: %s", source.kind, exc)
        if self.spark is not None and self._listener is not None:
            self.spark.streams.removeListener(self._listener)
        if self.spark is not None and self._owns_spark:
            self.spark.stop()
        if self.health is not None:
            self.health.stop()
        log.info("stopped")

    def _cancel_batches(self) -> None:
        """The grace period is over: roll back the batches in flight (they replay on restart)."""
        active = [q.dataset.name for q in self.queries.values() if q.batch_active]
        sessions, jobs = self.ctx.in_flight.cancel(self.ctx.dsn, self.spark)
        log.warning("batch of %s still running after %.0fs grace; cancelled it (%d PostgreSQL session(s), "
                    "%d Spark job group(s)); it is uncommitted and replays on restart", ", ".join(active),
                    self.grace_seconds, sessions, jobs)
        deadline = time.monotonic() + CANCEL_WAIT_SECONDS
        while any(q.batch_active for q in self.queries.values()) and time.monotonic() < deadline:
            time.sleep(0.05)

    # --- datasets ----------------------------------------------------------------------------
    def _sync_datasets(self) -> None:
        """Match the queries to the sources' datasets: start new ones, stop removed ones, restart
        changed ones. No two datasets load the same table, whatever their sources."""
        self._datasets_changed.clear()
        wanted: dict[str, tuple[Source, Dataset]] = {}
        for source in self.sources:
            try:
                found = source.datasets()
            except Exception as exc:  # a source that cannot list its datasets keeps its running queries
                log.error("source %s: cannot list datasets: %s", source.kind, _first_line(exc))
                wanted.update({k: (q.source, q.dataset) for k, q in self.queries.items() if q.source is source})
                continue
            for dataset in found:
                wanted[source.query_key(dataset)] = (source, dataset)
        removed: list[_Query] = []
        with self._lock:
            for key in list(self.queries):
                if key not in wanted:
                    removed.append(self.queries.pop(key))
            tables = {q.table: q for q in self.queries.values()}
            for key, (source, dataset) in wanted.items():
                q = self.queries.get(key)
                if q is not None:
                    if dataset.fingerprint != q.dataset.fingerprint:
                        self._stop_query(q)
                        q.dataset, q.failures, q.restart_at = dataset, 0, 0.0
                    continue
                other = tables.get(dataset.table)
                if other is not None:
                    if key not in self._refused:
                        self._refused.add(key)
                        log.error("dataset=%s: ignored: %s already loads table %s", dataset.name, other.key,
                                  dataset.table)
                    continue
                self._refused.discard(key)
                self.queries[key] = tables[dataset.table] = _Query(source, dataset)
                log.info("dataset=%s: new %s dataset (table %s)", dataset.name, source.kind, dataset.table)
        for q in removed:
            self._stop_query(q)
            log.info("dataset=%s: removed; its query stopped", q.dataset.name)

    def _stop_query(self, q: _Query) -> None:
        """Stop a query in the background: its batch in flight may wait out PostgreSQL or a
        Retry-After, and supervision must go on meanwhile. ``q`` restarts only once it stopped."""
        query, q.query = q.query, None
        if query is None:
            return

        q.stopping = threading.Thread(target=_stop_quietly, args=(query, q.dataset.name),
                                      name=f"dataops-stop-{q.table}", daemon=True)
        q.stopping.start()
        self._stoppers = [t for t in self._stoppers if t.is_alive()] + [q.stopping]

    def _reload_config(self) -> None:
        """Apply an edited config file's source sections (endpoints, object stores, ...) while running."""
        try:
            fresh = load_settings(self.config_path)
        except ConfigError as exc:
            log.error("config %s: edit refused, running datasets continue unchanged: %s", self.config_path, exc)
            return
        with self._lock:
            running = {q.table: q for q in self.queries.values()}
        clash = [f"{source.describe_table(t)} would load the table of {running[t].key}"
                 for source in self.sources for t in source.declared_tables(fresh)
                 if t in running and running[t].source is not source]
        if clash:
            log.error("config %s: edit refused: %s", self.config_path, "; ".join(clash))
            return
        sections = {s.section for s in self.sources if s.section}
        changed_elsewhere = fresh.model_dump(exclude=sections) != self.settings.model_dump(exclude=sections)
        for source in self.sources:
            source.reconfigure(fresh)
        # Only the sources' own sections apply while running; the rest waits for a restart.
        for section in sections:
            setattr(self.settings, section, getattr(fresh, section))
        self._sync_datasets()
        if changed_elsewhere:
            log.warning("config %s: changes outside %s take effect at the next restart", self.config_path,
                        ", ".join(sorted(sections)) or "the source sections")

    def _supervise(self) -> None:
        now = time.monotonic()
        if self._config_watch is not None and self._config_watch.due():
            self._reload_config()
        if self._datasets_changed.is_set():
            self._sync_datasets()
        for q in list(self.queries.values()):
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
        q.last_error = _first_line(error)
        log.error("dataset=%s: query stopped: %s; restarting in %.0fs", q.dataset.name, _first_line(error), backoff)

    def _start(self, q: _Query) -> None:
        """Start ``q``'s query over its source's stream; each micro-batch is planned by the source,
        loaded by :func:`load_batch` and finished by the source.

        The ledger's stream id ``<kind>:<table>:<query id>`` keys exactly-once; the query id comes
        from Spark's checkpoint, ``<checkpoint_dir>/<source's checkpoint folder>/<table>``.
        """
        source, kind = q.source, q.source.kind
        checkpoint = Path(self.settings.spark.checkpoint_dir).resolve() / source.checkpoint_folder / q.table
        ready = threading.Event()
        ref: dict[str, str] = {}

        def on_batch(df, batch_id: int) -> None:
            ready.wait()
            q.batch_active = True
            try:
                if self.ctx.stopping.is_set():
                    # Raising (not returning) keeps the batch uncommitted in Spark: it replays on restart.
                    raise ShutdownRequested(f"{q.what}: batch {batch_id} not started, stopping")
                dataset = q.dataset
                batch = source.plan(dataset, df, batch_id)
                if batch is None:
                    return
                stream = stream_id(source, q.table, ref["id"])
                result = self._retry_transient(q, q.what, batch_id,
                                               lambda: load_batch(self.ctx, dataset, batch, stream, batch_id))
                source.finish(dataset, batch, result)
                q.last_error = None
            finally:
                q.batch_active = False

        trigger_ms = int(source.trigger_seconds(q.dataset) * 1000)
        try:
            stream = source.stream(self.spark, q.dataset)
            self.spark.sparkContext.setLocalProperty("spark.scheduler.pool", q.table)
            q.query = (stream.writeStream.queryName(f"{kind}_{q.table}").foreachBatch(on_batch)
                       .option("checkpointLocation", str(checkpoint))
                       .trigger(processingTime=f"{trigger_ms} milliseconds").start())
        except Exception as exc:
            q.failures += 1
            q.restart_at = time.monotonic() + min(MAX_BACKOFF_SECONDS, 2 ** q.failures)
            log.error("%s: cannot start query: %s", q.what, _first_line(exc))
            return
        ref["id"] = str(q.query.id)
        ready.set()
        log.info("%s: query started (trigger %d ms, checkpoint %s)", q.what, trigger_ms, checkpoint)

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

    @staticmethod
    def signature(path: str) -> tuple | None:
        """What tells two versions of the file apart (modification time, size, inode)."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def start(self, read: tuple | None = None) -> "ConfigWatch":
        """Watch from now on; ``read``: the file's :meth:`signature` when the running settings were
        read from it, so that an edit since then counts as a change too."""
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
        if read is not None and self.signature(str(self.path)) != read:
            with self._lock:
                self._changed_at = time.monotonic()
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
